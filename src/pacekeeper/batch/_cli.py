"""``pacekeeper run``: the command line of the batch runner.

Exit codes: 0 every line succeeded; 1 some lines failed (their error records are in the
output); 2 bad usage (a flag, the config file, an unreadable input); 3 interrupted (nothing is
lost: run the same command again to resume); 4 the output file is damaged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pacekeeper.batch._input import BadLine, read_lines
from pacekeeper.batch._output import OutputDamaged
from pacekeeper.batch._progress import BatchProgress
from pacekeeper.batch._runner import BatchJob, BatchResult, run_batch
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.governor import Governor
from pacekeeper.core.tokens import estimate_request_tokens
from pacekeeper.report.summary import summary_table
from pacekeeper.settings import Settings, load_settings, parse_concurrency

__all__ = [
    "EXIT_DAMAGED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "configure_parser",
    "run",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3
EXIT_DAMAGED = 4

_DEFAULT_BASE_URL = "https://api.openai.com/v1"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send every request of a JSONL file (OpenAI Batch format, bare bodies or prompts) "
        "through pacekeeper, as fast as the provider's limits allow, writing one result line "
        "per input line. Exactly once and resumable: run the same command again after a "
        "crash or Ctrl-C."
    )
    parser.add_argument("input", type=Path, help="the requests, one per line")
    parser.add_argument(
        "-o", "--output", type=Path, help="the results (default: INPUT with .results.jsonl)"
    )
    parser.add_argument(
        "--format",
        choices=("jsonl", "text"),
        default="jsonl",
        help="jsonl (default; formats told apart per line) or text (one prompt per line)",
    )
    parser.add_argument("--model", help="model for prompts; overrides the body's model")
    parser.add_argument(
        "--url",
        default="/v1/chat/completions",
        help="route for bare bodies and prompts (default /v1/chat/completions)",
    )
    parser.add_argument(
        "--base-url", help="the API's base URL (default: $OPENAI_BASE_URL, else OpenAI's)"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key (default OPENAI_API_KEY)",
    )
    parser.add_argument("--rpm", type=float, help="requests per minute (default: learned)")
    parser.add_argument("--tpm", type=float, help="tokens per minute (default: learned)")
    parser.add_argument(
        "--concurrency", metavar="N|auto", help="requests in flight: a number or auto (default)"
    )
    parser.add_argument("--max-attempts", type=int, help="attempts per request (default 6)")
    parser.add_argument("--timeout", type=float, help="seconds per attempt (default 600)")
    parser.add_argument(
        "--config", type=Path, help="a pacekeeper.toml (default: ./pacekeeper.toml if present)"
    )
    parser.add_argument(
        "--ordered", action="store_true", help="write results in input order (bounded buffer)"
    )
    parser.add_argument("--metrics", type=Path, help="write the run's aggregates as JSON here")
    parser.add_argument("--log", type=Path, help="write every attempt's record as JSONL here")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the file and estimate tokens and duration; send nothing",
    )
    parser.add_argument("--shard", metavar="K/N", help="take only shard K of N (by custom_id)")
    parser.add_argument(
        "--progress",
        choices=("auto", "live", "plain", "none"),
        default="auto",
        help="live display on a terminal, plain lines elsewhere (auto)",
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"pacekeeper run: error: {message}\n")
    return EXIT_USAGE


def _resolve(args: argparse.Namespace) -> tuple[BatchJob, Settings, Governor]:
    settings = load_settings(args.config)
    if not args.input.is_file():
        raise ConfigurationError(f"input file {args.input} does not exist or is not a file")
    limits = settings.limits
    overrides: dict[str, Any] = {}
    if args.rpm is not None:
        overrides["rpm"] = args.rpm
    if args.tpm is not None:
        overrides["tpm"] = args.tpm
    if args.concurrency is not None:
        overrides["concurrency"] = parse_concurrency(args.concurrency, where="--concurrency")
    try:
        limits = Limits(**{**_limit_fields(limits), **overrides})
        models = {
            name: Limits(**{**_limit_fields(m), **overrides}) for name, m in settings.models.items()
        }
        retry_fields = _retry_fields(settings.retry)
        if args.max_attempts is not None:
            retry_fields["max_attempts"] = args.max_attempts
        if args.timeout is not None:
            retry_fields["attempt_timeout_s"] = args.timeout
        retry = RetryPolicy(**retry_fields)
    except ConfigurationError as exc:
        raise ConfigurationError(f"bad limit: {exc}") from None
    shard = _parse_shard(args.shard) if args.shard else None
    key_env = args.api_key_env or settings.api_key_env or "OPENAI_API_KEY"
    base_url = (
        args.base_url or settings.base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL
    )
    output = args.output or args.input.with_name(args.input.stem + ".results.jsonl")
    if output.resolve() == args.input.resolve():
        raise ConfigurationError("--output must not be the input file")
    job = BatchJob(
        input=args.input,
        output=output,
        base_url=base_url,
        api_key=os.environ.get(key_env),
        fmt=args.format,
        model=args.model,
        url=args.url,
        ordered=args.ordered,
        timeout_s=retry.attempt_timeout_s or 600.0,
        log_path=args.log,
        shard=shard,
    )
    return job, settings, Governor(limits=limits, models=models, retry=retry)


def _limit_fields(limits: Limits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__dataclass_fields__}


def _retry_fields(retry: RetryPolicy) -> dict[str, Any]:
    return {name: getattr(retry, name) for name in retry.__dataclass_fields__}


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise ConfigurationError(f"--shard must look like K/N (e.g. 2/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise ConfigurationError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def run(args: argparse.Namespace) -> int:
    try:
        job, _settings, gov = _resolve(args)
    except ConfigurationError as exc:
        return _fail(str(exc))
    if args.dry_run:
        return _dry_run(job, gov)
    if not job.api_key and "api.openai.com" in job.base_url:
        key_env = args.api_key_env or "OPENAI_API_KEY"
        return _fail(f"no API key: set {key_env} (or pass --api-key-env NAME)")
    try:
        result = asyncio.run(_run_with_signals(job, gov, progress=args.progress))
    except OutputDamaged as exc:
        sys.stderr.write(f"pacekeeper run: error: {exc}\n")
        return EXIT_DAMAGED
    console = Console()
    console.print(summary_table(gov.stats(), title=f"pacekeeper run: {job.output}"))
    _print_outcome(job, result)
    if args.metrics:
        payload = {
            "input": str(job.input),
            "output": str(job.output),
            **result.as_dict(),
            "models": [s.as_dict() for s in gov.stats()],
        }
        args.metrics.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if result.interrupted:
        return EXIT_INTERRUPTED
    return 0 if result.all_succeeded else EXIT_FAILED


def _print_outcome(job: BatchJob, result: BatchResult) -> None:
    parts = [f"{result.succeeded} succeeded", f"{result.failed} failed"]
    if result.bad_lines:
        parts.append(f"{result.bad_lines} bad input lines")
    if result.skipped_done:
        parts.append(f"{result.skipped_done} already done")
    if result.torn_bytes:
        parts.append(f"a torn last line ({result.torn_bytes} bytes) recovered")
    sys.stderr.write(f"pacekeeper run: {', '.join(parts)} in {result.elapsed_s:.1f}s\n")
    if result.errors_by_code:
        codes = ", ".join(f"{code}: {n}" for code, n in result.errors_by_code.most_common())
        sys.stderr.write(f"pacekeeper run: errors by code: {codes}\n")
    if result.interrupted:
        resume = shlex.join(["pacekeeper", *sys.argv[1:]])
        sys.stderr.write(
            f"pacekeeper run: interrupted; {result.not_sent} lines not sent yet. "
            f"Resume with:\n  {resume}\n"
        )


async def _run_with_signals(job: BatchJob, gov: Governor, *, progress: str) -> BatchResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            in_flight = sum(lane.slots.in_flight for lane in gov.lanes)
            sys.stderr.write(
                f"\npacekeeper run: stopping: finishing {in_flight} requests in flight "
                "(Ctrl-C again to exit now; the run stays resumable)\n"
            )
            stop.set()
        else:
            sys.stderr.write("\npacekeeper run: exiting now; run the same command to resume\n")
            sys.stderr.flush()
            os._exit(130)  # every written line is whole: the output stays resumable

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    from pacekeeper.batch._input import count_lines

    total = count_lines(job.input)
    live = {"auto": None, "live": True, "plain": False}.get(progress)
    if progress == "none":
        return await run_batch(job, gov, stop=stop)
    with BatchProgress(gov, total=total, live=live) as display:
        return await run_batch(job, gov, stop=stop, on_progress=display.update)


def _dry_run(job: BatchJob, gov: Governor) -> int:
    per_model: dict[str, dict[str, float]] = defaultdict(
        lambda: {"requests": 0, "prompt": 0, "reserve": 0}
    )
    bad: list[BadLine] = []
    seen: set[str] = set()
    for item in read_lines(job.input, fmt=job.fmt, model=job.model, url=job.url):
        if isinstance(item, BadLine):
            bad.append(item)
            continue
        if item.custom_id in seen:
            bad.append(BadLine(item.line_no, item.custom_id, "duplicate_custom_id", "duplicate"))
            continue
        seen.add(item.custom_id)
        model = str(item.body.get("model"))
        estimate = estimate_request_tokens(item.body, model=model)
        lane_limits = gov.limits_for(model)
        row = per_model[model]
        row["requests"] += 1
        row["prompt"] += estimate.prompt_tokens
        row["reserve"] += (
            estimate.max_completion_tokens
            if estimate.max_completion_tokens is not None
            else lane_limits.default_completion_tokens
        )
    table = Table(title=f"dry run: {job.input}", title_justify="left", header_style="bold")
    for name in ("model", "requests", "prompt tokens", "tokens charged", "rpm", "tpm", "time"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for model, row in sorted(per_model.items()):
        limits = gov.limits_for(model)
        charged = row["prompt"] + row["reserve"]
        minutes = [
            value
            for value in (
                row["requests"] / limits.rpm if limits.rpm else None,
                charged / limits.tpm if limits.tpm else None,
            )
            if value is not None
        ]
        duration = f"{max(minutes):.1f} min" if minutes else "unknown (limits are learned)"
        table.add_row(
            model,
            f"{row['requests']:.0f}",
            f"{row['prompt']:.0f}",
            f"{charged:.0f}",
            f"{limits.rpm:g}" if limits.rpm else "-",
            f"{limits.tpm:g}" if limits.tpm else "-",
            duration,
        )
    Console().print(table)
    for item in bad[:20]:
        sys.stderr.write(f"pacekeeper run: {item.code}: {item.message}\n")
    if len(bad) > 20:
        sys.stderr.write(f"pacekeeper run: ... and {len(bad) - 20} more bad lines\n")
    total = sum(int(r["requests"]) for r in per_model.values())
    sys.stderr.write(
        f"pacekeeper run: dry run: {total} requests valid, {len(bad)} bad lines; nothing sent\n"
    )
    return 0 if not bad else EXIT_FAILED
