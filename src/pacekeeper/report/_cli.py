"""``pacekeeper report``: turn a run's records (``pacekeeper run --log FILE``) into one HTML page.

Exit codes: 0 the report was written (unreadable lines, if any, are listed on stderr and in the
report); 1 the file holds no record at all; 2 bad usage (no such file, an output path that
cannot be written, matplotlib not installed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["EXIT_NO_RECORDS", "EXIT_USAGE", "configure_parser", "default_output", "main", "run"]

EXIT_NO_RECORDS = 1
EXIT_USAGE = 2

_PROG = "pacekeeper report"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a self-contained HTML report of a run from its records (the file written by "
        "pacekeeper run --log; plain or gzip): a verdict saying what held the run back, "
        "charts of throughput, concurrency, 429s and retries, tokens and latency against the "
        "limits, and the per-model table. The page has no external links and opens offline."
    )
    parser.add_argument("records", type=Path, help="the records file (JSON lines)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the HTML file to write (default: RECORDS with .html instead of .jsonl)",
    )
    parser.add_argument("--title", help="the page's title (default: the records file's name)")
    parser.add_argument(
        "--image-format",
        choices=("png", "svg"),
        default="png",
        help="how charts are embedded (default png; svg is sharper and larger)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but errors and warnings"
    )


def default_output(records: Path) -> Path:
    """``attempts.jsonl`` -> ``attempts.html`` (``.gz`` and ``.jsonl``/``.json`` dropped).

    >>> default_output(Path("logs/run.jsonl.gz")).as_posix()
    'logs/run.html'
    """
    name = records.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".log"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return records.with_name(name + ".html")


def _error(message: str, code: int) -> int:
    sys.stderr.write(f"{_PROG}: error: {message}\n")
    return code


def run(args: argparse.Namespace) -> int:
    from pacekeeper.report._extras import MissingExtraError
    from pacekeeper.report._render import ReportError, render_report

    records: Path = args.records
    if not records.is_file():
        return _error(f"{records} does not exist or is not a file", EXIT_USAGE)
    output: Path = args.output or default_output(records)
    if output.resolve() == records.resolve():
        return _error("the output must not be the records file", EXIT_USAGE)
    try:
        summary = render_report(records, output, title=args.title, image_format=args.image_format)
    except MissingExtraError as exc:
        return _error(str(exc), EXIT_USAGE)
    except ReportError as exc:
        return _error(str(exc), EXIT_NO_RECORDS)
    except OSError as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename or records}", EXIT_USAGE)
    if summary.bad_line_count:
        noun = "line" if summary.bad_line_count == 1 else "lines"
        sys.stderr.write(
            f"{_PROG}: warning: {summary.bad_line_count} {noun} of {records} could not be read "
            "and were left out:\n"
        )
        for bad in summary.bad_lines[:10]:
            sys.stderr.write(f"  {bad}\n")
        if summary.bad_line_count > 10:
            sys.stderr.write(f"  ... and {summary.bad_line_count - 10} more\n")
    if not args.quiet:
        out = sys.stdout
        out.write(
            f"{_PROG}: wrote {output} ({summary.requests} requests, {summary.attempts} "
            f"attempts over {summary.duration_s:.1f}s)\n"
        )
        for finding in summary.findings:
            out.write(f"- {finding.text}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=_PROG)
    configure_parser(parser)
    return run(parser.parse_args(argv))
