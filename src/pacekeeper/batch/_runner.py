"""The batch runner: a JSONL file of requests in, a JSONL file of results out, exactly once.

Lines are read lazily. At most ``window`` lines, and at most ``max_buffer_bytes`` of input,
are in progress at once (queued in the governor, in flight, or waiting to be written in order),
so memory stays flat however long the input. Every request goes through the same governed
transport the library offers.

Each input line gets exactly one result line: a response, an error record for a request that
failed, or an error record for a bad input line (which names its line). A result is written
the moment it is known; what is not written when the run stops is sent by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from pacekeeper.batch._input import BadLine, BatchLine, InputFormat, count_lines, read_lines
from pacekeeper.batch._keys import KeySet
from pacekeeper.batch._output import (
    DoneSet,
    ResultFile,
    anthropic_record,
    record_key,
    redact_text,
    redaction_list,
)
from pacekeeper.batch._sender import LineSender
from pacekeeper.core.classify import classify_response
from pacekeeper.core.errors import AdmissionClosed, PacekeeperError, SpendCapReached
from pacekeeper.core.governor import Governor
from pacekeeper.core.priority import Priority, priority
from pacekeeper.core.records import AttemptRecord, RequestRecord
from pacekeeper.providers import PROVIDERS, Provider
from pacekeeper.transports import RECORD_EXTENSION, TAG_EXTENSION, Transport
from pacekeeper.transports._engine import PRIORITY_HEADER, path_facts
from pacekeeper.transports._flow import attempts_for, run_admitted
from pacekeeper.transports._httpx2 import sending_transport

__all__ = ["BatchJob", "BatchResult", "join_url", "run_batch", "shard_of"]

_SAFE_HEADER = re.compile(r"^[\x21-\x7e]{1,128}$")
_YIELD_EVERY = 256
"""Lines read between two turns of the event loop when nothing else awaits (skipping done
lines on resume), so that signals and the progress display are served."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchJob:
    """Everything one run needs (the key is held here and nowhere else)."""

    input: Path
    output: Path
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    fmt: InputFormat = "jsonl"
    model: str | None = None
    url: str = "/v1/chat/completions"
    ordered: bool = False
    window: int = 1024
    """Lines in progress at most (queued, in flight, or waiting to be written in order): twice
    the largest adaptive concurrency limit, so the limit is never starved, while each line in
    progress (its task and request, about 15 kB) stays bounded."""
    max_buffer_bytes: int = 64 << 20
    """Bytes of input lines in progress at most (at least one line is always admitted)."""
    timeout_s: float = 600.0
    log_path: Path | None = None
    shard: tuple[int, int] | None = None
    """(K, N): take only the lines whose custom_id hashes to shard K of N (1-based K)."""
    provider: Provider = PROVIDERS["openai"]
    """How the key is sent and how routes are built (Azure deployments)."""
    api_version: str | None = None
    """Azure's ``api-version`` on deployment routes (default: the provider's)."""
    default_model: str | None = None
    """The model of lines that name none (``model`` overrides every line's)."""
    priority: Priority = Priority.BATCH
    """The class of every request (sent to a pacekeeper proxy as ``x-pacekeeper-priority``):
    batch by default, so that interactive traffic on the same key goes first."""
    tenant: str | None = None
    """Whose fair share the requests count in within their class (a governor shared with
    other runs, or a Redis fleet)."""
    max_wait_s: float = 3600.0
    """How long the run may park when the provider refuses for longer than the governor's
    ``max_hint_s`` (a daily limit); a longer wait stops the run (resumable)."""
    max_requests: int | None = None
    """Send at most this many requests, then stop reading (a dry run's sample)."""


@dataclass(slots=True)
class BatchResult:
    total_lines: int = 0
    """Non-blank lines of the input."""
    lines_read: int = 0
    skipped_done: int = 0
    """Lines an earlier run had finished (resume)."""
    skipped_failed: int = 0
    """Of ``skipped_done``, those whose result is an error record."""
    skipped_shard: int = 0
    succeeded: int = 0
    failed: int = 0
    """Requests that ended in an error record (API errors, exhausted retries)."""
    bad_lines: int = 0
    """Malformed, duplicate or incomplete input lines (error records too)."""
    not_sent: int = 0
    """Requests that were read but not sent, or not answered, when the run stopped: the next
    run sends them."""
    not_reached: int = 0
    """Lines not read when the run stopped (some may be done already or another shard's)."""
    torn_bytes: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    parked_until_wall_s: float | None = None
    """While the run is parked (a limit that resets in a long time): when it resumes sending."""
    parked_reason: str | None = None
    stopped_for_wait_s: float | None = None
    """The wait that stopped the run (longer than ``max_wait_s``); None if it did not."""
    stopped_for_cost: str | None = None
    """Why the spend cap stopped the run (``--max-cost``); None if it did not."""

    @property
    def written(self) -> int:
        return self.succeeded + self.failed + self.bad_lines

    @property
    def settled(self) -> int:
        """Lines that need nothing more: written now, done before, or another shard's."""
        return self.written + self.skipped_done + self.skipped_shard

    @property
    def all_succeeded(self) -> bool:
        """Every line of the input (this shard) has a successful result."""
        return (
            self.failed == 0
            and self.bad_lines == 0
            and self.skipped_failed == 0
            and not self.interrupted
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_lines": self.total_lines,
            "skipped_done": self.skipped_done,
            "skipped_failed": self.skipped_failed,
            "skipped_shard": self.skipped_shard,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "bad_lines": self.bad_lines,
            "not_sent": self.not_sent,
            "not_reached": self.not_reached,
            "torn_bytes_recovered": self.torn_bytes,
            "interrupted": self.interrupted,
            "elapsed_s": self.elapsed_s,
            "errors_by_code": dict(self.errors_by_code),
            "stopped_for_wait_s": self.stopped_for_wait_s,
            "stopped_for_cost": self.stopped_for_cost,
        }


class _LogHook:
    """Writes every attempt and request record as a JSON line (``--log FILE``).

    Line-buffered, so a crash loses at most the line being written; a torn last line left by
    a crash is ended before appending, so that every later line stays valid JSON."""

    def __init__(self, path: Path, secrets: tuple[str, ...]) -> None:
        self.path = path
        self.failed: OSError | None = None
        needs_newline = False
        with contextlib.suppress(OSError), path.open("rb") as f:
            f.seek(0, 2)
            if f.tell() > 0:
                f.seek(-1, 2)
                needs_newline = f.read(1) != b"\n"
        self._file = path.open("a", encoding="utf-8", buffering=1)
        if needs_newline:
            self._file.write("\n")
        self._secrets = secrets

    def _write(self, data: dict[str, Any]) -> None:
        if self.failed is not None:
            return
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
        try:
            self._file.write(redact_text(text, self._secrets) + "\n")
        except OSError as exc:  # the log is not worth failing requests for: stop logging
            self.failed = exc

    def on_attempt(self, record: AttemptRecord) -> None:
        self._write(record.as_dict())

    def on_request(self, record: RequestRecord) -> None:
        self._write(record.as_dict())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


class _Pauses:
    """Knows which requests are sleeping before a retry, so that a stop does not wait for them:
    a request in its retry pause is not in flight, and its wait may be long (a backoff, a
    server's retry-after). After a stop, such a request is cancelled (it is sent next run)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.tasks: dict[str, asyncio.Future[_Outcome | None]] = {}
        self._until: dict[str, float] = {}

    def on_attempt(self, record: AttemptRecord) -> None:
        tag = record.tag
        if tag is None:
            return
        if record.retry_in_s is None:
            self._until.pop(tag, None)
            return
        self._until[tag] = time.monotonic() + record.retry_in_s
        if self._stop.is_set():
            self._cancel(tag)

    def on_request(self, record: RequestRecord) -> None:
        if record.tag is not None:
            self._until.pop(record.tag, None)

    def track(self, tag: str, task: asyncio.Future[_Outcome | None]) -> None:
        self.tasks[tag] = task
        task.add_done_callback(lambda _: self._forget(tag))

    def _forget(self, tag: str) -> None:
        self.tasks.pop(tag, None)
        self._until.pop(tag, None)

    def cancel_pausing(self) -> None:
        now = time.monotonic()
        for tag, until in list(self._until.items()):
            if until > now:
                self._cancel(tag)

    def _cancel(self, tag: str) -> None:
        self._until.pop(tag, None)
        task = self.tasks.get(tag)
        if task is not None and not task.done():
            # The attempt is over and the task is about to sleep (or sleeping): no bytes of
            # an answer are lost. It is cancelled at its next await, the retry pause.
            task.cancel()


class _Parked(Exception):
    """The provider refused with a wait longer than the governor retries (a daily limit)."""

    def __init__(self, wait_s: float, reason: str) -> None:
        super().__init__(reason)
        self.wait_s = wait_s
        self.reason = reason


class _Park:
    """The whole run waits, once, until a long refusal's reset: every request checks it before
    it is sent. One timer per waiting request, woken early by a stop; never a busy loop."""

    def __init__(
        self,
        result: BatchResult,
        stop: asyncio.Event,
        max_wait_s: float,
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        self._result = result
        self._stop = stop
        self._max_wait_s = max_wait_s
        self._on_notice = on_notice
        self._until = 0.0  # monotonic
        self.max_hint_s = float("inf")
        """The governor's longest retry wait: a refusal asking for more parks the run."""

    def stop_for_cost(self, exc: SpendCapReached) -> None:
        """The spend cap refused a request: nothing more is sent (in flight finishes)."""
        if self._result.stopped_for_cost is None:
            self._result.stopped_for_cost = str(exc)
        self._stop.set()

    def hold(self, parked: _Parked) -> bool:
        """Park until the reset (True), or stop the run when it is too far (False)."""
        if parked.wait_s > self._max_wait_s:
            if self._result.stopped_for_wait_s is None:
                self._result.stopped_for_wait_s = parked.wait_s
                self._result.parked_reason = parked.reason
            self._stop.set()
            return False
        until = time.monotonic() + parked.wait_s
        if until > self._until:
            parking_anew = self._until < time.monotonic()
            self._until = until
            self._result.parked_until_wall_s = time.time() + parked.wait_s
            self._result.parked_reason = parked.reason
            if parking_anew and self._on_notice is not None:
                resumes = time.strftime("%H:%M:%S UTC", time.gmtime(time.time() + parked.wait_s))
                self._on_notice(
                    f"parked until {resumes} (in {parked.wait_s:.0f} s): the provider refuses "
                    f"until then ({parked.reason[:200]}); nothing is sent meanwhile. Ctrl-C "
                    "stops, and the same command resumes."
                )
        return True

    async def wait_open(self) -> bool:
        """Wait out a parking; False when the run stops meanwhile."""
        while not self._stop.is_set():
            left = self._until - time.monotonic()
            if left <= 0:
                self._result.parked_until_wall_s = None
                return True
            with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError before 3.11
                await asyncio.wait_for(self._stop.wait(), left)
        return False


def join_url(base_url: str, route: str) -> str:
    """base_url ``https://host/v1`` + route ``/v1/chat/completions`` without doubling /v1."""
    base = base_url.rstrip("/")
    if base.endswith("/v1") and (route.startswith("/v1/") or route == "/v1"):
        base = base[: -len("/v1")]
    return base + route


def shard_of(custom_id: str, shards: int) -> int:
    """1-based shard of a custom_id (stable across machines and Python versions)."""
    return record_key(custom_id) % shards + 1


@dataclass(frozen=True, slots=True)
class _Outcome:
    record: dict[str, Any]
    kind: str
    """"ok", "failed" (an error record for a request) or "bad" (an input line)."""
    code: str | None = None
    """The error's code (for the summary), whatever the record's format."""


def _outcome(record: dict[str, Any], kind: str, dialect: str) -> _Outcome:
    """The outcome of an OpenAI-format ``record``, written in the line's own format."""
    error = record.get("error")
    code = str(error.get("code", "unknown")) if isinstance(error, dict) else None
    if dialect == "anthropic":
        record = anthropic_record(record)
    return _Outcome(record, kind, code)


async def run_batch(
    job: BatchJob,
    gov: Governor,
    *,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[BatchResult], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> BatchResult:
    """Run ``job`` through ``gov``. Setting ``stop`` stops admitting: queued requests (and
    requests waiting to retry) are left for the next run; those in flight finish and are
    written. ``on_notice`` is told, once each time, when the run parks until a provider's
    limit resets (see ``BatchJob.max_wait_s``).

    Raises :class:`~pacekeeper.batch.OutputDamaged` when the output holds a line that is not
    a result, and :class:`~pacekeeper.batch.OutputBusy` when another run is writing it.
    """
    with priority(job.priority, tenant=job.tenant):  # inherited by every task started below
        return await _run_batch(job, gov, stop, on_progress, on_notice)


_Pending = asyncio.Future[_Outcome | None]


class _Window:
    """The lines sent and not yet written, and their writing: the moment each finishes, or
    (``ordered``) as soon as every line before it has. Bounds how many lines are out at once
    and how many bytes of input they hold; a write that fails stops the run (what is not
    written is sent next run)."""

    __slots__ = (
        "_buffered",
        "_max_buffer_bytes",
        "_ordered",
        "_out",
        "_result",
        "_room",
        "_sizes",
        "_stop",
        "on_progress",
        "ordered_queue",
        "pending",
        "write_error",
    )

    def __init__(
        self,
        out: ResultFile,
        result: BatchResult,
        *,
        ordered: bool,
        max_buffer_bytes: int,
        stop: asyncio.Event,
        on_progress: Callable[[BatchResult], None] | None,
    ) -> None:
        self._out = out
        self._result = result
        self._ordered = ordered
        self._max_buffer_bytes = max_buffer_bytes
        self._stop = stop
        self.on_progress = on_progress
        self.ordered_queue: deque[_Pending] = deque()
        self.pending: set[_Pending] = set()
        self._sizes: dict[_Pending, int] = {}
        self._buffered = 0  # bytes of input held by pending lines
        self._room = asyncio.Event()
        self.write_error: OSError | None = None

    def enqueue(self, fut: _Pending, size: int) -> None:
        self.pending.add(fut)
        self._sizes[fut] = size
        self._buffered += size
        if self._ordered:
            self.ordered_queue.append(fut)
        fut.add_done_callback(self._on_done)

    def enqueue_done(self, outcome: _Outcome) -> None:
        fut: _Pending = asyncio.get_running_loop().create_future()
        self.enqueue(fut, 0)
        fut.set_result(outcome)  # its callback runs on the next loop turn

    async def wait_for_room(self, limit: int) -> None:
        """Until at most ``limit`` lines are out and their input is under the buffer's size."""
        while self.pending and (
            len(self.pending) > limit or self._buffered >= self._max_buffer_bytes
        ):
            self._room.clear()
            await self._room.wait()

    def wake(self) -> None:
        self._room.set()

    def _on_done(self, fut: _Pending) -> None:
        try:
            if self._ordered:
                queue = self.ordered_queue
                while queue and queue[0].done():
                    self._settle(queue.popleft())
            else:
                self._settle(fut)
        finally:
            self._room.set()
        if self.on_progress is not None:
            self.on_progress(self._result)

    def _settle(self, fut: _Pending) -> None:
        self.pending.discard(fut)
        self._buffered -= self._sizes.pop(fut, 0)
        self._write(fut)

    def _write(self, fut: _Pending) -> None:
        result = self._result
        # _process turns every error into a record, so a result is an outcome or None.
        outcome = None if fut.cancelled() else fut.result()
        if outcome is None or self.write_error is not None:  # left for the next run
            result.not_sent += 1
            return
        try:
            self._out.write(outcome.record)
        except OSError as exc:
            # Cannot write (a full disk...): stop; what is not written is sent next run.
            self.write_error = exc
            result.not_sent += 1
            self._stop.set()
            return
        if outcome.kind == "ok":
            result.succeeded += 1
        else:
            if outcome.kind == "bad":
                result.bad_lines += 1
            else:
                result.failed += 1
            result.errors_by_code[outcome.code or "unknown"] += 1


async def _run_batch(
    job: BatchJob,
    gov: Governor,
    stop: asyncio.Event | None,
    on_progress: Callable[[BatchResult], None] | None,
    on_notice: Callable[[str], None] | None,
) -> BatchResult:
    result = BatchResult()
    started = time.monotonic()
    secrets = redaction_list([job.api_key])
    result.total_lines = count_lines(job.input)
    out, done = ResultFile.open(job.output, redact=secrets)
    result.torn_bytes = done.torn_bytes
    stop = stop or asyncio.Event()
    pauses = _Pauses(stop)
    log_hook: _LogHook | None = None
    client: LineSender | None = None
    window = _Window(
        out,
        result,
        ordered=job.ordered,
        max_buffer_bytes=job.max_buffer_bytes,
        stop=stop,
        on_progress=on_progress,
    )
    watcher: asyncio.Task[None] | None = None
    try:
        if job.log_path is not None:
            log_hook = _LogHook(job.log_path, secrets)
            gov.hooks.append(log_hook)
        gov.hooks.append(pauses)
        headers = {
            "user-agent": "pacekeeper-run",
            PRIORITY_HEADER: job.priority.value,  # for a pacekeeper proxy on the way
            **job.provider.auth_headers(job.api_key),
        }
        park = _Park(result, stop, job.max_wait_s, on_notice)
        park.max_hint_s = gov.retry.max_hint_s
        client = LineSender(
            Transport(gov, transport=sending_transport(), provider=job.provider),
            headers,
            httpx2.Timeout(job.timeout_s, connect=min(job.timeout_s, 30.0)),
        )

        async def close_on_stop() -> None:
            await stop.wait()
            gov.close()  # queued requests fail with AdmissionClosed: not sent, left for next run
            pauses.cancel_pausing()
            window.wake()

        watcher = asyncio.create_task(close_on_stop())
        await _send_lines(
            job,
            gov=gov,
            client=client,
            window=window,
            done=done,
            result=result,
            stop=stop,
            pauses=pauses,
            park=park,
            secrets=secrets,
        )
        await window.wait_for_room(0)
    finally:
        if watcher is not None:
            watcher.cancel()
        result.interrupted = stop.is_set()
        pending = window.pending
        for fut in list(pending):
            fut.cancel()
        if pending:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.sleep(0)  # let the last done-callbacks run
        result.not_reached = max(0, result.total_lines - result.lines_read)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        out.close()
        for hook in (pauses, log_hook):
            if hook is not None and hook in gov.hooks:
                gov.hooks.remove(hook)
        if log_hook is not None:
            log_hook.close()
            if log_hook.failed is not None:
                result.warnings.append(
                    f"the log {log_hook.path} stopped at an error: {log_hook.failed.strerror}"
                )
        result.elapsed_s = time.monotonic() - started
        if on_progress is not None:
            on_progress(result)
    exc = window.write_error
    if exc is not None:
        raise OSError(exc.errno, f"cannot write the results: {exc.strerror}", str(job.output))
    return result


async def _send_lines(
    job: BatchJob,
    *,
    gov: Governor,
    client: LineSender,
    window: _Window,
    done: DoneSet,
    result: BatchResult,
    stop: asyncio.Event,
    pauses: _Pauses,
    park: _Park,
    secrets: tuple[str, ...],
) -> None:
    """Read the input and send each line not done yet (a bad or duplicate line gets its error
    record), as the window has room; until the input ends, ``stop`` is set, or
    ``--max-requests`` lines were sent."""
    # Sized for every line at once: growing would hold the old and the new table together.
    seen = KeySet(capacity=result.total_lines)
    sent = 0
    on_progress = window.on_progress
    for item in read_lines(
        job.input, fmt=job.fmt, model=job.model, url=job.url, default_model=job.default_model
    ):
        if result.lines_read % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
            if on_progress is not None and result.lines_read:
                on_progress(result)
        if stop.is_set():
            break
        result.lines_read += 1
        if job.shard is not None and shard_of(item.custom_id, job.shard[1]) != job.shard[0]:
            result.skipped_shard += 1
            continue
        id_key = record_key(item.custom_id)
        if isinstance(item, BadLine) or id_key in seen:
            # A bad line, or a duplicate: an error record keyed by its line too.
            key = record_key(item.custom_id, item.line_no)
            seen.add(id_key)
            if _skip_done(key, done, result):
                continue
            bad = item if isinstance(item, BadLine) else _duplicate(item)
            window.enqueue_done(_outcome(_bad_record(bad), "bad", bad.dialect))
        else:
            seen.add(id_key)
            if _skip_done(id_key, done, result):
                continue
            task = asyncio.ensure_future(
                _process(client, gov, job, item, secrets=secrets, park=park)
            )
            pauses.track(item.custom_id, task)
            window.enqueue(task, item.size)
            sent += 1
            if job.max_requests is not None and sent >= job.max_requests:
                break
        await window.wait_for_room(job.window - 1)


def _skip_done(key: int, done: DoneSet, result: BatchResult) -> bool:
    if key not in done:
        return False
    result.skipped_done += 1
    if key in done.failed:
        result.skipped_failed += 1
    return True


def _duplicate(line: BatchLine) -> BadLine:
    return BadLine(
        line.line_no,
        line.custom_id,
        "duplicate_custom_id",
        f"line {line.line_no}: custom_id {json.dumps(line.custom_id)[:200]} was already used by "
        "an earlier line; this line was not sent",
    )


async def _process(
    client: LineSender,
    gov: Governor,
    job: BatchJob,
    line: BatchLine,
    *,
    secrets: tuple[str, ...],
    park: _Park,
) -> _Outcome | None:
    while True:
        if not await park.wait_open():
            return None  # stopped while parked: sent next run
        try:
            record, ok = await _send(client, gov, job, line, park.max_hint_s)
        except SpendCapReached as exc:
            park.stop_for_cost(exc)
            return None  # not sent: the next run (with a higher cap) sends it
        except AdmissionClosed:
            return None
        except _Parked as parked:
            if not park.hold(parked):
                return None  # the wait is longer than --max-wait: the run stops, resumable
            continue
        except Exception as exc:  # never lose a line to an unexpected error: record it
            message = redact_text(_message(exc), secrets)
            record, ok = _error_record(line.custom_id, "client_error", message), False
        return _outcome(record, "ok" if ok else "failed", line.dialect)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def _send(
    client: LineSender,
    gov: Governor,
    job: BatchJob,
    line: BatchLine,
    max_hint_s: float,
) -> tuple[dict[str, Any], bool]:
    headers = {}
    if _SAFE_HEADER.match(line.custom_id):
        headers["x-client-request-id"] = line.custom_id
    model = line.body.get("model")
    url = job.provider.route_url(
        job.base_url,
        line.url,
        model=model if isinstance(model, str) else None,
        api_version=job.api_version,
    )
    try:
        response = await _post_admitted(client, gov, url, line, headers)
    except (PacekeeperError, httpx2.HTTPError) as exc:
        if isinstance(exc, AdmissionClosed):
            raise
        return _error_record(line.custom_id, _exception_code(exc), _message(exc)), False
    record = response.extensions.get(RECORD_EXTENSION)
    if response.status_code == 429:
        _park_if_long(response, record, max_hint_s)
    body: Any
    try:
        body = json.loads(response.content, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        body = response.text[:2000]
    answer = {
        "status_code": response.status_code,
        "request_id": response.headers.get("x-request-id"),
        "body": body,
    }
    if 200 <= response.status_code < 300:
        if isinstance(body, dict):
            return {
                "id": _new_id(),
                "custom_id": line.custom_id,
                "response": answer,
                "error": None,
            }, True
        error: dict[str, Any] = {
            "code": "malformed_response",
            "type": None,
            "status": response.status_code,
            "message": "the answer was not a JSON object",
        }
        if record is not None and record.error:
            error["message"] = f"{error['message']}: {record.error}"
    else:
        error = _api_error(response.status_code, body)
        if record is not None and record.error:
            error["message"] = record.error[:1000]
    return {
        "id": _new_id(),
        "custom_id": line.custom_id,
        "response": answer,
        "error": error,
    }, False


async def _post_admitted(
    client: LineSender,
    gov: Governor,
    url: str,
    line: BatchLine,
    headers: dict[str, str],
) -> httpx2.Response:
    """POST the line once the governor admits it: a line waiting for its turn holds its body
    and a small call, not a built request and httpx's frames (about 11 kB more each, with up
    to ``window`` lines in progress)."""
    # the route and model by the transports' cache, keyed by the URL (one per route and model)
    attempts = attempts_for(gov, *path_facts(url), line.body)
    await anext(attempts)
    return await run_admitted(
        gov,
        attempts,
        client.post,
        url,
        line.body,
        headers,
        {TAG_EXTENSION: line.custom_id},
    )


def _park_if_long(response: httpx2.Response, record: Any, max_hint_s: float) -> None:
    """Raise :class:`_Parked` for a final 429 whose wait is longer than the governor retries:
    one it gave up on (``RetryWaitTooLong``), or one that ran out of attempts while asking for
    more; the hint in the headers or in the body (Gemini's ``RetryInfo.retryDelay``), as the
    classifier reads them."""
    verdict = classify_response(429, response.headers, response.content, now_wall_s=time.time())
    wait_s = verdict.hint_s
    if wait_s is None:
        return
    if wait_s > max_hint_s or getattr(record, "error_type", None) == "RetryWaitTooLong":
        raise _Parked(wait_s, _api_error(429, _json_or_text(response))["message"])


def _json_or_text(response: httpx2.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        return response.text[:2000]


def _unwrap_list(body: Any) -> Any:
    """Gemini's OpenAI-compatible endpoint answers errors as a one-element list."""
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        return body[0]
    return body


def _api_error(status: int, body: Any) -> dict[str, Any]:
    """The provider's error: its ``code`` (``http_STATUS`` when it gave none), its ``type``
    (None when it gave none) kept apart, and the HTTP ``status`` beside them."""
    body = _unwrap_list(body)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, kind = error.get("code"), error.get("type")
        message = str(error.get("message") or f"HTTP {status}")[:1000]
    else:
        code = kind = None
        message = (body if isinstance(body, str) and body else f"HTTP {status}")[:1000]
    return {
        "code": str(code) if code not in (None, "") else f"http_{status}",
        "type": str(kind) if kind not in (None, "") else None,
        "status": status,
        "message": message,
    }


def _bad_record(bad: BadLine) -> dict[str, Any]:
    return {
        "id": _new_id(),
        "custom_id": bad.custom_id,
        "response": None,
        "error": {"code": bad.code, "message": bad.message, "line": bad.line_no},
    }


def _error_record(custom_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "id": _new_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def _exception_code(exc: BaseException) -> str:
    record = getattr(exc, "record", None)
    if getattr(record, "outcome", None) == "malformed":
        return "malformed_response"  # 200s whose body never parsed, retries spent
    if isinstance(exc, httpx2.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx2.TransportError):
        return "connection_error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", None)
    if notes:
        text = f"{text} ({'; '.join(notes)})"
    return text[:1000]


def _new_id() -> str:
    return f"batch_req_{uuid.uuid4().hex[:24]}"
