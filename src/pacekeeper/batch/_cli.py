"""``pacekeeper run``: the command line of the batch runner.

Exit codes:

- 0: every line of the input (of this shard) has a successful result in the output;
- 1: some lines failed: their error records are in the output (API errors, exhausted retries,
  bad input lines; also error records a previous run wrote). With ``--dry-run``: some lines
  are bad;
- 2: bad usage: a flag, the config file, the API key's variable, an unreadable input or an
  unwritable output, or another run writing the same output; nothing was sent. Also when the
  output cannot be written during the run (a full disk): the run stopped, every line written
  is whole, and the same command resumes once there is room;
- 3: interrupted (Ctrl-C or SIGTERM, once or twice): nothing is lost, run the same command
  again to resume;
- 4: the output file is damaged (a line in it is not a result and is not a torn last line);
  nothing was sent;
- 5: the spend cap (``--max-cost``) stopped the run: requests in flight finished, the rest were
  not sent; the output says how many lines remain and what they are expected to cost. Run the
  same command with a higher cap to resume (the cap counts this run's spend).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pacekeeper.batch._forecast import forecast
from pacekeeper.batch._input import BadLine, BatchLine, check_route, read_lines
from pacekeeper.batch._output import OutputBusy, OutputDamaged, scan
from pacekeeper.batch._progress import BatchProgress
from pacekeeper.batch._runner import BatchJob, BatchResult, run_batch
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.cost import SpendCap
from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.governor import Governor
from pacekeeper.core.priority import Priority
from pacekeeper.core.tokens import warm_up
from pacekeeper.prices import price_lookup
from pacekeeper.providers import AZURE_API_VERSION, PROVIDERS, get_provider
from pacekeeper.report.summary import queue_wait_table, summary_lines, summary_table, usd
from pacekeeper.settings import Settings, load_settings, parse_concurrency

__all__ = [
    "EXIT_DAMAGED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SPEND_CAP",
    "EXIT_USAGE",
    "configure_parser",
    "run",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 3
EXIT_DAMAGED = 4
EXIT_SPEND_CAP = 5

_EPILOG = """\
exit codes:
  0  every line succeeded
  1  some lines failed (their error records are in the output)
  2  bad usage (flag, config file, key variable, input or output); nothing was sent
     (or the output could not be written during the run: free space, then resume)
  3  interrupted (Ctrl-C or SIGTERM): run the same command again to resume
  4  the output file is damaged; nothing was sent
  5  the spend cap (--max-cost) stopped the run: run the same command with a higher cap
     to resume (the cap counts this run's spend)

Ctrl-C once stops admitting new requests and lets those in flight finish; twice exits at
once. Either way every finished result is in the output, and the same command resumes.
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send every request of a JSONL file (OpenAI Batch format, bare bodies or prompts) "
        "through pacekeeper, as fast as the provider's limits allow, writing one result line "
        "per input line. Exactly once and resumable: run the same command again after a "
        "crash or Ctrl-C."
    )
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
    parser.add_argument(
        "--provider",
        choices=list(PROVIDERS),
        help="the provider: its base URL, how the key is sent, its key variable (default "
        "openai; compatible: any OpenAI-compatible server at --base-url)",
    )
    parser.add_argument("--model", help="the model of every line (overrides the lines' own)")
    parser.add_argument(
        "--default-model", help="the model of lines that name none (a line's own model wins)"
    )
    parser.add_argument(
        "--url",
        default=None,
        help="route for bare bodies and prompts (default /v1/chat/completions; "
        "/v1/messages for anthropic)",
    )
    parser.add_argument(
        "--base-url",
        help="the API's base URL (default: the provider's, or its variable such as "
        "$OPENAI_BASE_URL or $AZURE_OPENAI_ENDPOINT)",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key (default: the provider's, such as "
        "OPENAI_API_KEY or ANTHROPIC_API_KEY)",
    )
    parser.add_argument(
        "--api-version",
        help=f"Azure OpenAI api-version on deployment routes (default {AZURE_API_VERSION})",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        metavar="SECONDS",
        default=3600.0,
        help="when the provider refuses until a reset further away than the retries wait "
        "(a daily limit), park the run up to this long; beyond, stop (exit 3, resumable). "
        "Default 3600",
    )
    parser.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="never spend more than this (USD, at genai-prices' or pacekeeper.toml's prices): "
        "requests in flight finish, the rest are not sent (exit 5, resumable)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="with --dry-run: send N requests first (their results are written) to learn the "
        "answers' lengths and the provider's limits, then forecast the rest",
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
        help="validate the file and forecast tokens, cost and duration per model; send "
        "nothing (unless --sample N)",
    )
    parser.add_argument("--shard", metavar="K/N", help="take only shard K of N (by custom_id)")
    parser.add_argument(
        "--priority",
        type=_priority,
        default=Priority.BATCH,
        help="the class of every request: interactive, batch (default) or background; a "
        "higher class goes first on a shared governor, Redis fleet or pacekeeper proxy",
    )
    parser.add_argument(
        "--tenant",
        help="whose fair share the requests count in within their class (shared limits)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share the limits with every process using the same Redis and namespace",
    )
    parser.add_argument(
        "--redis-namespace",
        metavar="NAME",
        default="pacekeeper",
        help="the shared quota's name in Redis, one per API key (default pacekeeper)",
    )
    parser.add_argument(
        "--tokenizer",
        choices=("auto", "heuristic"),
        default=None,
        help="count prompt tokens with the offline BPE tokenizer where it applies (auto), or "
        "with the conservative heuristic that usage then calibrates (14-27 MB less memory)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write an HTML report of the run (charts and a verdict); needs pacekeeper[report]",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "live", "plain", "none"),
        default="auto",
        help="live display on a terminal, plain lines elsewhere (auto)",
    )


def _priority(value: str) -> Priority:
    try:
        return Priority.parse(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    sys.stderr.write(f"pacekeeper run: error: {message}\n")
    return code


def _resolve(args: argparse.Namespace) -> tuple[BatchJob, Settings, Governor]:
    settings = load_settings(args.config)
    if not args.input.is_file():
        raise ConfigurationError(f"input file {args.input} does not exist or is not a file")
    if not os.access(args.input, os.R_OK):
        raise ConfigurationError(f"input file {args.input} is not readable")
    overrides: dict[str, Any] = {}
    if args.rpm is not None:
        overrides["rpm"] = args.rpm
    if args.tpm is not None:
        overrides["tpm"] = args.tpm
    if args.concurrency is not None:
        overrides["concurrency"] = parse_concurrency(args.concurrency, where="--concurrency")
    try:
        limits = Limits(**{**_fields(settings.limits), **overrides})
        models = {
            name: Limits(**{**_fields(m), **overrides}) for name, m in settings.models.items()
        }
        retry_fields = _fields(settings.retry)
        if args.max_attempts is not None:
            retry_fields["max_attempts"] = args.max_attempts
        if args.timeout is not None:
            retry_fields["attempt_timeout_s"] = args.timeout
        retry = RetryPolicy(**retry_fields)
    except ConfigurationError as exc:
        flag = _flag_of(str(exc))
        raise ConfigurationError(f"{flag}: {exc}" if flag else f"bad limit: {exc}") from None
    if args.format == "text" and not (args.model or args.default_model):
        raise ConfigurationError(
            "--format text needs --model or --default-model (the model that answers)"
        )
    for flag, value in (("--model", args.model), ("--default-model", args.default_model)):
        if value is not None and not value:
            raise ConfigurationError(f"{flag} must not be empty")
    if args.max_cost is not None and not (math.isfinite(args.max_cost) and args.max_cost >= 0):
        raise ConfigurationError(f"--max-cost must be a number of USD >= 0, got {args.max_cost}")
    if args.sample is not None and (not args.dry_run or args.sample < 1):
        raise ConfigurationError(
            "--sample N needs --dry-run and N >= 1 (it sends N requests, then forecasts the rest)"
        )
    if not args.max_wait >= 0:
        raise ConfigurationError(
            f"--max-wait must be a number of seconds >= 0, got {args.max_wait}"
        )
    provider = get_provider(args.provider or settings.provider)
    url = args.url or provider.chat_route
    route_problem = check_route(url)
    if route_problem is not None:
        raise ConfigurationError(f"--url: {route_problem}")
    shard = _parse_shard(args.shard) if args.shard else None
    key_env = args.api_key_env or settings.api_key_env or provider.key_env
    api_key = _api_key(key_env)
    if api_key is None and (args.api_key_env or settings.api_key_env):
        how = "--api-key-env" if args.api_key_env else f"api_key_env in {settings.source}"
        raise ConfigurationError(f"{how} names ${key_env}, which is not set or is empty")
    base_url = (
        args.base_url
        or settings.base_url
        or (os.environ.get(provider.base_url_env) if provider.base_url_env else None)
        or provider.base_url
    )
    if base_url is None:
        variable = f" (or set ${provider.base_url_env})" if provider.base_url_env else ""
        example = (
            "https://RESOURCE.openai.azure.com"
            if provider.name == "azure"
            else "http://HOST:PORT/v1"
        )
        raise ConfigurationError(
            f"--provider {provider.name} has no default base URL: pass --base-url {example}"
            f"{variable}"
        )
    if not base_url.startswith(("http://", "https://")) or len(base_url) <= len("https://"):
        raise ConfigurationError(
            f"the base URL must start with http:// or https://, got {base_url[:80]!r}"
        )
    output = args.output or args.input.with_name(args.input.stem + ".results.jsonl")
    if output.resolve() == args.input.resolve():
        raise ConfigurationError("--output must not be the input file")
    if output.is_dir():
        raise ConfigurationError(f"--output {output} is a directory")
    if output.exists() and not output.is_file():
        raise ConfigurationError(
            f"--output {output} is not a regular file (resuming needs one to read back)"
        )
    job = BatchJob(
        input=args.input,
        output=output,
        base_url=base_url,
        api_key=api_key,
        fmt=args.format,
        model=args.model,
        default_model=args.default_model,
        url=url,
        provider=provider,
        api_version=args.api_version or settings.api_version,
        max_wait_s=args.max_wait,
        ordered=args.ordered,
        timeout_s=retry.attempt_timeout_s or 600.0,
        log_path=args.log,
        shard=shard,
        priority=args.priority,
        tenant=args.tenant or None,
    )
    backend = None
    redis_url = args.redis or settings.redis
    if redis_url:
        from pacekeeper.backends import RedisBackend

        backend = RedisBackend(redis_url, namespace=args.redis_namespace)
    prices = price_lookup(provider=provider.name, overrides=settings.prices)
    budget = SpendCap(usd=args.max_cost) if args.max_cost is not None else None
    gov = Governor(
        limits=limits,
        models=models,
        retry=retry,
        backend=backend,
        prices=prices,
        budget=budget,
        tenant_weights=settings.tenant_weights,
    )
    return job, settings, gov


def _needs_key(job: BatchJob) -> bool:
    """A hosted provider's own URL needs a key; a local server or a gateway may not."""
    import ipaddress
    from urllib.parse import urlsplit

    if not job.provider.key_required or job.provider.name == "compatible":
        return False
    host = urlsplit(job.base_url).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: a hosted API
        return True


def _origin(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _flag_of(message: str) -> str | None:
    for name, flag in (
        ("rpm", "--rpm"),
        ("tpm", "--tpm"),
        ("max_attempts", "--max-attempts"),
        ("attempt_timeout_s", "--timeout"),
    ):
        if message.startswith(name + " "):
            return flag
    return None


def _api_key(key_env: str) -> str | None:
    """The key from the environment, stripped; it never appears in any message."""
    raw = os.environ.get(key_env)
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        return None
    if not all("\x21" <= ch <= "\x7e" for ch in key):
        raise ConfigurationError(
            f"the API key in ${key_env} holds characters that cannot be sent in an HTTP header "
            "(spaces, control characters or non-ASCII letters); check how it was set"
        )
    return key


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


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
        return _run(args)
    except KeyboardInterrupt:  # a Ctrl-C outside the event loop (start-up, the summary)
        sys.stderr.write("\npacekeeper run: interrupted; run the same command to resume\n")
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        job, settings, gov = _resolve(args)
    except ConfigurationError as exc:
        return _fail(str(exc))
    if args.tokenizer is not None:
        from pacekeeper.core.tokens import use_bpe

        use_bpe(args.tokenizer == "auto")
    if args.dry_run and args.sample is None:
        return _dry_run(job, gov, metrics=args.metrics)
    _warm_up(job)
    if not job.api_key and _needs_key(job):
        key_env = args.api_key_env or settings.api_key_env or job.provider.key_env
        return _fail(
            f"no API key: set {key_env} (or pass --api-key-env NAME); {job.provider.name} at "
            f"{_origin(job.base_url)} needs one"
        )
    recorder = None
    if args.report is not None:
        from pacekeeper.report import MissingExtraError, ReportRecorder, require_matplotlib

        try:  # before the run, not after an hour of it
            require_matplotlib()
        except MissingExtraError as exc:
            return _fail(str(exc))
        recorder = ReportRecorder()
        gov.hooks.append(recorder)
    if args.dry_run:
        sampled = replace(job, max_requests=args.sample)
        try:
            asyncio.run(_run_with_signals(sampled, gov, progress="none"))
        except OutputDamaged as exc:
            return _fail(str(exc), EXIT_DAMAGED)
        except (OutputBusy, OSError) as exc:
            return _fail(str(exc))
        finally:
            backend = gov.backend
            if backend is not None and hasattr(backend, "close"):
                backend.close()
        return _dry_run(job, gov, metrics=args.metrics, sampled=args.sample)
    try:
        result = asyncio.run(_run_with_signals(job, gov, progress=args.progress))
    except OutputDamaged as exc:
        return _fail(str(exc), EXIT_DAMAGED)
    except OutputBusy as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}")
    finally:
        backend = gov.backend
        if backend is not None and hasattr(backend, "close"):
            backend.close()
    console = Console()
    if console.is_terminal:
        stats = gov.stats()
        console.print(summary_table(stats, title=f"pacekeeper run: {job.output}"))
        waits = queue_wait_table(stats)
        if waits is not None:
            console.print(waits)
    else:  # logs and CI: full width, one key=value line per model
        for line in summary_lines(gov.stats()):
            print(f"pacekeeper run: {line}", flush=True)
    _print_outcome(job, result)
    cost = _print_cost(job, gov, result)
    if recorder is not None:
        _write_report(recorder, args.report, job)
    if args.metrics:
        payload = {
            "input": str(job.input),
            "output": str(job.output),
            **result.as_dict(),
            "cost": cost,
            "models": [s.as_dict() for s in gov.stats()],
        }
        try:
            _write_atomically(args.metrics, json.dumps(payload, indent=2) + "\n")
        except OSError as exc:
            sys.stderr.write(f"pacekeeper run: could not write --metrics: {exc.strerror}\n")
    if result.stopped_for_cost is not None:
        return EXIT_SPEND_CAP
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.all_succeeded else EXIT_FAILED


def _print_cost(job: BatchJob, gov: Governor, result: BatchResult) -> dict[str, Any]:
    """Spent, the models whose cost is unknown (said once), and, when the spend cap stopped
    the run, what remains and what it is expected to cost."""
    stats = gov.stats()
    unpriced = sorted({s.model or "-" for s in stats if s.cost_usd is None})
    spent = sum(s.cost_usd or 0.0 for s in stats)
    cap = gov.budget.usd if gov.budget is not None else None
    info: dict[str, Any] = {
        "spent_usd": None if unpriced else spent,
        "cap_usd": cap,
        "unpriced_models": unpriced,
    }
    if unpriced:
        sys.stderr.write(
            f"pacekeeper run: cost unknown for {', '.join(unpriced)}: no price in genai-prices; "
            'give one in pacekeeper.toml ([models."NAME".price] input = ..., output = ... USD '
            "per million tokens)\n"
        )
    if result.stopped_for_cost is None and not result.interrupted:
        return info
    try:
        left = forecast(job, gov, scan(job.output))
    except OutputDamaged:
        return info
    expected = left.expected_cost_usd
    info["remaining"] = left.as_dict()
    what = f"expected {usd(expected)}, " if expected is not None else ""
    low, high = left.cost_low_usd, left.cost_high_usd
    if result.stopped_for_cost is not None:
        sys.stderr.write(
            f"pacekeeper run: stopped by the spend cap of {usd(cap)} with {usd(spent)} spent: "
            f"{left.requests} lines remain ({what}{usd(low)} to {usd(high)}); every finished "
            f"result is in {job.output}. Resume with a higher --max-cost:\n"
            f"  {resume_command()}\n"
        )
    return info


def _write_report(recorder: Any, path: Path, job: BatchJob) -> None:
    """The HTML report; a report that cannot be made never changes the run's exit code."""
    from pacekeeper.report import ReportError

    try:
        summary = recorder.write(path, title=f"pacekeeper run: {job.input.name}")
    except ReportError:
        sys.stderr.write("pacekeeper run: no report: no requests were sent\n")
    except OSError as exc:
        sys.stderr.write(f"pacekeeper run: could not write --report: {exc.strerror}\n")
    else:
        sys.stderr.write(f"pacekeeper run: report: {summary.output_path}\n")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resume_command() -> str:
    """The command that resumes this run: the same command line."""
    return shlex.join(["pacekeeper", *sys.argv[1:]])


def _print_outcome(job: BatchJob, result: BatchResult) -> None:
    parts = [f"{result.succeeded} succeeded", f"{result.failed} failed"]
    if result.bad_lines:
        parts.append(f"{result.bad_lines} bad input lines")
    if result.skipped_done:
        errors = f" ({result.skipped_failed} of them errors)" if result.skipped_failed else ""
        parts.append(f"{result.skipped_done} already done{errors}")
    if result.skipped_shard:
        parts.append(f"{result.skipped_shard} in other shards")
    if result.torn_bytes:
        parts.append(f"a torn last line ({result.torn_bytes} bytes) recovered")
    sys.stderr.write(f"pacekeeper run: {', '.join(parts)} in {result.elapsed_s:.1f}s\n")
    for warning in result.warnings:
        sys.stderr.write(f"pacekeeper run: warning: {warning}\n")
    if result.errors_by_code:
        codes = ", ".join(f"{code}: {n}" for code, n in result.errors_by_code.most_common())
        sys.stderr.write(f"pacekeeper run: errors by code: {codes}\n")
    if result.stopped_for_wait_s is not None:
        resets = time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + result.stopped_for_wait_s)
        )
        sys.stderr.write(
            f"pacekeeper run: stopped: the provider refuses until {resets} "
            f"(in {_hours(result.stopped_for_wait_s)}), longer than --max-wait "
            f"{_hours(job.max_wait_s)} ({result.parked_reason or 'a limit is exhausted'}). "
            "Nothing is lost; run the same command after the reset (or raise --max-wait).\n"
        )
    if result.interrupted and result.stopped_for_cost is None:
        left = [f"{result.not_sent} requests not sent or not answered"]
        if result.not_reached:
            left.append(f"{result.not_reached} lines not read yet")
        sys.stderr.write(
            f"pacekeeper run: interrupted; {' and '.join(left)}. Every finished result is in "
            f"{job.output}. Resume with:\n  {resume_command()}\n"
        )


async def _run_with_signals(job: BatchJob, gov: Governor, *, progress: str) -> BatchResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupts = 0
    display: BatchProgress | None = None

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            in_flight = sum(lane.slots.in_flight for lane in gov.lanes)
            sys.stderr.write(
                f"\npacekeeper run: stopping: finishing {in_flight} requests in flight "
                "(Ctrl-C again to exit now; the run stays resumable)\n"
            )
            sys.stderr.flush()
            stop.set()
        else:
            if display is not None:
                display.abort()
            sys.stderr.write(
                "\npacekeeper run: exiting now; every finished result is in the output. "
                f"Resume with:\n  {resume_command()}\n"
            )
            sys.stderr.flush()
            # Every written line is whole (one write each): the output stays resumable.
            os._exit(EXIT_INTERRUPTED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        if progress == "none":
            return await run_batch(job, gov, stop=stop, on_notice=_notice)
        live = {"auto": None, "live": True, "plain": False}[progress]
        display = BatchProgress(gov, total=_lines_of(job), live=live)
        with display:
            ticker = asyncio.create_task(display.ticker())
            try:
                return await run_batch(
                    job, gov, stop=stop, on_progress=display.update, on_notice=display.notice
                )
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _notice(text: str) -> None:
    sys.stderr.write(f"pacekeeper run: {text}\n")
    sys.stderr.flush()


def first_models(items: Iterator[BatchLine | BadLine], lines: int = 1_000) -> set[str]:
    """The models of the first ``lines`` items: the tokenizers a run will need first.

    >>> from pacekeeper.batch._input import parse_line
    >>> first_models(iter([parse_line(1, b'{"model": "gpt-4o", "prompt": "hi"}')]))
    {'gpt-4o'}
    """
    models: set[str] = set()
    for line_no, item in enumerate(items):
        if line_no >= lines:
            break
        if not isinstance(item, BadLine) and isinstance(item.body.get("model"), str):
            models.add(item.body["model"])
    return models


def _warm_up(job: BatchJob) -> None:
    """Load the first lines' tokenizers in the background while the run starts; a request
    that needs one meanwhile waits for it."""
    items = read_lines(
        job.input, fmt=job.fmt, model=job.model, url=job.url, default_model=job.default_model
    )
    try:
        models = first_models(items)
    except OSError:  # the run reports an unreadable input itself
        return
    finally:
        items.close()
    warm_up(models, wait=False)


def _lines_of(job: BatchJob) -> int:
    from pacekeeper.batch._input import count_lines

    return count_lines(job.input)


def _dry_run(
    job: BatchJob, gov: Governor, *, metrics: Path | None, sampled: int | None = None
) -> int:
    """Validate every line and forecast, per model, tokens, cost and time; read the output (if
    any) without changing it, to leave out what is done; send nothing (a sample was sent
    before, when asked)."""
    try:
        done = scan(job.output)
    except OutputDamaged as exc:
        return _fail(str(exc), EXIT_DAMAGED)
    result = forecast(job, gov, done, capacity=_lines_of(job))
    table = Table(title=f"dry run: {job.input}", title_justify="left", header_style="bold")
    names = ("model", "requests", "prompt tokens", "completion budget", "cost", "rpm", "tpm")
    for name in (*names, "time"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for row in sorted(result.models.values(), key=lambda r: r.model):
        exact = "" if row.exact_tokens else " ~"
        cost = f"{usd(row.cost_low_usd)} to {usd(row.cost_high_usd)}"
        if row.expected_cost_usd is not None:
            cost += f", expected {usd(row.expected_cost_usd)}"
            cost += f" ± {usd(row.expected_margin_usd)}" if row.expected_margin_usd else ""
        if row.cost_low_usd is None:
            cost = "unknown (no price)"
        learned = " (learned)" if row.limits_learned else ""
        table.add_row(
            row.model,
            str(row.requests),
            f"{row.prompt_tokens}{exact}",
            str(row.completion_budget),
            cost,
            f"{row.rpm:g}" if row.rpm else "-",
            f"{row.tpm:g}" if row.tpm else "-",
            f"{_minutes(row.minutes)}{learned}, {row.binding} binds"
            if row.minutes is not None
            else "unknown (limits are learned)",
        )
    Console().print(table)
    for item in result.bad[:20]:
        sys.stderr.write(f"pacekeeper run: {item.code}: {item.message}\n")
    if len(result.bad) > 20:
        sys.stderr.write(f"pacekeeper run: ... and {len(result.bad) - 20} more bad lines\n")
    extra = ""
    if sampled is not None:
        extra += f" after a sample of {sampled} sent"
    if result.skipped_done:
        extra += f", {result.skipped_done} already done in {job.output}"
    if result.skipped_shard:
        extra += f", {result.skipped_shard} in other shards"
    if result.models:
        minutes = result.minutes
        extra += (
            f"; about {_minutes(minutes)} at these limits"
            if minutes is not None
            else "; duration unknown until the limits are learned (pass --rpm/--tpm, or --sample N)"
        )
        if result.cost_low_usd is not None:
            expected = result.expected_cost_usd
            extra += f"; cost {usd(result.cost_low_usd)} to {usd(result.cost_high_usd)}"
            margin = result.expected_margin_usd
            extra += f" (expected {usd(expected)}" if expected is not None else ""
            extra += f" ± {usd(margin)} at 95%" if expected is not None and margin else ""
            extra += ")" if expected is not None else ""
    if any(r.cost_low_usd is None for r in result.models.values()):
        unpriced = sorted(r.model for r in result.models.values() if r.cost_low_usd is None)
        sys.stderr.write(
            f"pacekeeper run: cost unknown for {', '.join(unpriced)}: no price in genai-prices; "
            'give one in pacekeeper.toml ([models."NAME".price] input = ..., output = ... USD '
            "per million tokens)\n"
        )
    sys.stderr.write(
        f"pacekeeper run: dry run: {result.requests} requests valid, {len(result.bad)} bad "
        f"lines{extra}; nothing {'more ' if sampled else ''}sent\n"
    )
    if metrics is not None:
        payload = {"input": str(job.input), "dry_run": True, "sampled": sampled}
        payload.update(result.as_dict())
        try:
            _write_atomically(metrics, json.dumps(payload, indent=2) + "\n")
        except OSError as exc:
            sys.stderr.write(f"pacekeeper run: could not write --metrics: {exc.strerror}\n")
    return EXIT_OK if not result.bad else EXIT_FAILED


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _minutes(value: float) -> str:
    if value < 1:
        return f"{math.ceil(value * 60)} s"
    return f"{value:.1f} min"
