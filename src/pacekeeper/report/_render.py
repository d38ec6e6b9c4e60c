"""Records in, one HTML report out: :func:`render_report` (a file of records),
:func:`write_report_from_records` (records in memory) and :class:`ReportRecorder` (a hook that
aggregates as a run goes, in flat memory, and writes the report at the end)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacekeeper.core.errors import PacekeeperError
from pacekeeper.core.records import AttemptRecord, RequestRecord
from pacekeeper.report._load import (
    BadLine,
    RunAggregator,
    RunData,
    aggregate,
    iter_records,
)
from pacekeeper.report._plots import ImageFormat, render_charts, require_matplotlib
from pacekeeper.report._verdict import Finding, binding, findings

__all__ = [
    "ReportError",
    "ReportRecorder",
    "ReportSummary",
    "render_report",
    "write_report_from_records",
]


class ReportError(PacekeeperError, ValueError):
    """There is nothing to report: no readable record at all (a wrong or empty file)."""


@dataclass(frozen=True, slots=True)
class ReportSummary:
    """What was written, and what the report says."""

    output_path: Path
    title: str
    attempts: int
    requests: int
    duration_s: float
    findings: tuple[Finding, ...]
    charts: tuple[str, ...]
    """The ids of the charts drawn, in page order."""
    bad_line_count: int
    bad_lines: tuple[BadLine, ...]
    """The first unreadable lines (up to 50), with their line numbers."""

    @property
    def verdict(self) -> tuple[str, ...]:
        """The findings' sentences."""
        return tuple(f.text for f in self.findings)


def render_report(
    records_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    title: str | None = None,
    image_format: ImageFormat = "png",
) -> ReportSummary:
    """Read a records file (``pacekeeper run --log``; plain or gzip) and write the report.

    Unreadable lines are left out and listed in the report and in the summary. Raises
    :class:`ReportError` when the file holds no record at all, ``OSError`` when it cannot be
    read, and :class:`~pacekeeper.report.MissingExtraError` without matplotlib.
    """
    require_matplotlib()  # fail before reading a large file
    source = Path(records_path)
    run = aggregate(iter_records(source), source=str(source)).finish()
    if run.empty:
        raise ReportError(_nothing_message(str(source), run))
    return _write(run, Path(output_path), title or f"pacekeeper run: {source.name}", image_format)


def write_report_from_records(
    records: Iterable[AttemptRecord | RequestRecord | Mapping[str, Any]],
    output_path: str | os.PathLike[str],
    *,
    title: str | None = None,
    image_format: ImageFormat = "png",
) -> ReportSummary:
    """Write the report of records held in memory (record objects or their ``as_dict()``
    form; dicts that are not records are counted as bad, by position)."""
    require_matplotlib()
    run = aggregate(records).finish()
    if run.empty:
        raise ReportError(_nothing_message("the records given", run))
    return _write(run, Path(output_path), title or "pacekeeper run", image_format)


class ReportRecorder:
    """A :class:`~pacekeeper.RecordHook` that aggregates records as they come (memory grows
    with the run's duration in seconds, not its number of requests) and writes the report
    on demand::

        recorder = ReportRecorder()
        gov = Governor(hooks=[recorder])
        ...  # run
        recorder.write("report.html", title="nightly batch")

    Thread-safe: the governor calls hooks from whichever thread settles an attempt.
    """

    def __init__(self) -> None:
        self._agg = RunAggregator()
        self._lock = threading.Lock()

    def on_attempt(self, record: AttemptRecord) -> None:
        with self._lock:
            self._agg.on_attempt(record)

    def on_request(self, record: RequestRecord) -> None:
        with self._lock:
            self._agg.on_request(record)

    @property
    def records(self) -> int:
        return self._agg.attempts + self._agg.requests

    def data(self) -> RunData:
        """The aggregates so far."""
        with self._lock:
            return self._agg.finish()

    def findings(self) -> list[Finding]:
        """The verdict so far (no matplotlib needed)."""
        return findings(self.data())

    def write(
        self,
        output_path: str | os.PathLike[str],
        *,
        title: str | None = None,
        image_format: ImageFormat = "png",
    ) -> ReportSummary:
        """Write the report of everything recorded so far; :class:`ReportError` if nothing."""
        require_matplotlib()
        run = self.data()
        if run.empty:
            raise ReportError("no requests were recorded: there is nothing to report")
        return _write(run, Path(output_path), title or "pacekeeper run", image_format)


def _nothing_message(source: str, run: RunData) -> str:
    message = f"{source}: no pacekeeper records found"
    if run.bad_line_count:
        reasons: dict[str, int] = {}
        for bad in run.bad_lines:
            reasons.setdefault(bad.reason, bad.line_no)
        first = "; ".join(f"line {line}: {reason}" for reason, line in list(reasons.items())[:3])
        message += f" ({run.bad_line_count} unreadable lines; {first})"
    return message + ". Give the file written by pacekeeper run --log (not the results file)."


def _write(run: RunData, output: Path, title: str, image_format: ImageFormat) -> ReportSummary:
    from pacekeeper import __version__
    from pacekeeper.report._html import render_html

    bindings = {lane.key: binding(run, lane) for lane in run.lanes}
    verdict = findings(run)
    charts = render_charts(run, bindings, image_format=image_format)
    page = render_html(
        title=title,
        run=run,
        findings=verdict,
        charts=charts,
        bindings=bindings,
        generator=f"pacekeeper {__version__}",
    )
    _write_atomically(output, page)
    return ReportSummary(
        output_path=output,
        title=title,
        attempts=run.attempts,
        requests=run.requests,
        duration_s=run.duration_s,
        findings=tuple(verdict),
        charts=tuple(chart.id for chart in charts),
        bad_line_count=run.bad_line_count,
        bad_lines=run.bad_lines,
    )


def _write_atomically(path: Path, text: str) -> None:
    """Never leave half a report behind: write a sibling temporary file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "x") rather than mkstemp: the report gets the umask's usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
