"""The batch runner: a JSONL file of requests in, a JSONL file of results out, exactly once.

Lines are read lazily and at most ``window`` of them are in progress at once (queued in the
governor, in flight, or waiting to be written in order), so memory stays flat however long
the input. Every request goes through the same governed transport the library offers.
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
from pacekeeper.batch._output import DoneSet, ResultFile, record_key
from pacekeeper.core.errors import AdmissionClosed, PacekeeperError
from pacekeeper.core.governor import Governor
from pacekeeper.core.records import AttemptRecord, RequestRecord
from pacekeeper.transports import RECORD_EXTENSION, TAG_EXTENSION, Transport

__all__ = ["BatchJob", "BatchResult", "run_batch"]

_SAFE_HEADER = re.compile(r"^[\x21-\x7e]{1,128}$")


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
    window: int = 4096
    timeout_s: float = 600.0
    log_path: Path | None = None
    shard: tuple[int, int] | None = None
    """(K, N): take only the lines whose custom_id hashes to shard K of N (1-based K)."""


@dataclass(slots=True)
class BatchResult:
    total_lines: int = 0
    skipped_done: int = 0
    """Lines an earlier run had finished (resume)."""
    skipped_shard: int = 0
    succeeded: int = 0
    failed: int = 0
    """Requests that ended in an error record (API errors, exhausted retries)."""
    bad_lines: int = 0
    """Malformed, duplicate or incomplete input lines (error records too)."""
    not_sent: int = 0
    """Lines left for the next run (interrupted)."""
    torn_bytes: int = 0
    interrupted: bool = False
    elapsed_s: float = 0.0
    errors_by_code: Counter[str] = field(default_factory=Counter)

    @property
    def written(self) -> int:
        return self.succeeded + self.failed + self.bad_lines

    @property
    def all_succeeded(self) -> bool:
        return self.failed == 0 and self.bad_lines == 0 and not self.interrupted

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_lines": self.total_lines,
            "skipped_done": self.skipped_done,
            "skipped_shard": self.skipped_shard,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "bad_lines": self.bad_lines,
            "not_sent": self.not_sent,
            "torn_bytes_recovered": self.torn_bytes,
            "interrupted": self.interrupted,
            "elapsed_s": self.elapsed_s,
            "errors_by_code": dict(self.errors_by_code),
        }


class _LogHook:
    """Writes every attempt and request record as a JSON line (``--log FILE``)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def on_attempt(self, record: AttemptRecord) -> None:
        self._file.write(json.dumps(record.as_dict(), separators=(",", ":")) + "\n")

    def on_request(self, record: RequestRecord) -> None:
        self._file.write(json.dumps(record.as_dict(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


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


async def run_batch(
    job: BatchJob,
    gov: Governor,
    *,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[BatchResult], None] | None = None,
) -> BatchResult:
    """Run ``job`` through ``gov``. Setting ``stop`` stops admitting: queued requests are left
    for the next run, those in flight finish and are written."""
    result = BatchResult()
    started = time.monotonic()
    done: DoneSet = ResultFile.recover(job.output)
    result.torn_bytes = done.torn_bytes
    result.total_lines = count_lines(job.input)
    out = ResultFile(job.output)
    log_hook = _LogHook(job.log_path) if job.log_path else None
    if log_hook is not None:
        gov.hooks.append(log_hook)
    headers = {"user-agent": "pacekeeper-run"}
    if job.api_key:
        headers["authorization"] = f"Bearer {job.api_key}"
    client = httpx2.AsyncClient(
        transport=Transport(gov),
        headers=headers,
        timeout=httpx2.Timeout(job.timeout_s, connect=min(job.timeout_s, 30.0)),
    )
    stop = stop or asyncio.Event()
    seen: set[int] = set()
    # Results are written the moment they can be: as they finish, or (ordered) as soon as
    # everything before them has finished. ``in_progress`` holds what is not written yet.
    in_progress: deque[asyncio.Future[_Outcome | None]] = deque()
    room = asyncio.Event()

    def write(fut: asyncio.Future[_Outcome | None]) -> None:
        outcome = None if fut.cancelled() else fut.result()
        if outcome is None:  # not sent (closed or cancelled): left for the next run
            result.not_sent += 1
            return
        out.write(outcome.record)
        if outcome.kind == "ok":
            result.succeeded += 1
        else:
            if outcome.kind == "bad":
                result.bad_lines += 1
            else:
                result.failed += 1
            error = outcome.record.get("error") or {}
            result.errors_by_code[str(error.get("code", "unknown"))] += 1
        if on_progress is not None:
            on_progress(result)

    def on_done(fut: asyncio.Future[_Outcome | None]) -> None:
        if job.ordered:
            while in_progress and in_progress[0].done():
                write(in_progress.popleft())
        else:
            in_progress.remove(fut)
            write(fut)
        if len(in_progress) < job.window:
            room.set()

    async def wait_for_room(limit: int) -> None:
        while len(in_progress) > limit:
            room.clear()
            await room.wait()

    def enqueue(fut: asyncio.Future[_Outcome | None]) -> None:
        in_progress.append(fut)
        fut.add_done_callback(on_done)

    def enqueue_done(outcome: _Outcome) -> None:
        fut: asyncio.Future[_Outcome | None] = asyncio.get_running_loop().create_future()
        enqueue(fut)
        fut.set_result(outcome)  # its callback runs on the next loop turn

    async def close_on_stop() -> None:
        await stop.wait()
        gov.close()  # queued requests fail with AdmissionClosed: not sent, left for next run
        room.set()

    watcher = asyncio.create_task(close_on_stop())
    last_line = 0
    try:
        for item in read_lines(job.input, fmt=job.fmt, model=job.model, url=job.url):
            if stop.is_set():
                break
            last_line = item.line_no
            if job.shard is not None and shard_of(item.custom_id, job.shard[1]) != job.shard[0]:
                result.skipped_shard += 1
                continue
            key = record_key(item.custom_id)
            if key in seen:
                if record_key(item.custom_id, item.line_no) in done:
                    result.skipped_done += 1
                    continue
                duplicate = BadLine(
                    item.line_no,
                    item.custom_id,
                    "duplicate_custom_id",
                    f"line {item.line_no}: custom_id {item.custom_id!r} was already used by an "
                    "earlier line; this line was not sent",
                )
                enqueue_done(_Outcome(_bad_record(duplicate), "bad"))
            else:
                seen.add(key)
                if key in done:
                    result.skipped_done += 1
                    continue
                if isinstance(item, BadLine):
                    enqueue_done(_Outcome(_bad_record(item), "bad"))
                else:
                    enqueue(asyncio.ensure_future(_process(client, job, item)))
            await wait_for_room(job.window - 1)
        await wait_for_room(0)
    finally:
        watcher.cancel()
        result.interrupted = stop.is_set()
        if result.interrupted:
            result.not_sent += max(0, result.total_lines - last_line)
        for fut in list(in_progress):
            fut.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*in_progress, return_exceptions=True)
        await asyncio.sleep(0)  # let the last done-callbacks run
        await client.aclose()
        out.close()
        if log_hook is not None:
            gov.hooks.remove(log_hook)
            log_hook.close()
        result.elapsed_s = time.monotonic() - started
    return result


async def _process(client: httpx2.AsyncClient, job: BatchJob, line: BatchLine) -> _Outcome | None:
    try:
        record, ok = await _send(client, job, line)
    except AdmissionClosed:
        return None
    return _Outcome(record, "ok" if ok else "failed")


async def _send(
    client: httpx2.AsyncClient, job: BatchJob, line: BatchLine
) -> tuple[dict[str, Any], bool]:
    headers = {}
    if _SAFE_HEADER.match(line.custom_id):
        headers["x-client-request-id"] = line.custom_id
    try:
        response = await client.post(
            join_url(job.base_url, line.url),
            json=line.body,
            headers=headers,
            extensions={TAG_EXTENSION: line.custom_id},
        )
    except (PacekeeperError, httpx2.HTTPError) as exc:
        if isinstance(exc, AdmissionClosed):
            raise
        return _error_record(line.custom_id, None, _exception_code(exc), _message(exc)), False
    record = response.extensions.get(RECORD_EXTENSION)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:2000]
    if 200 <= response.status_code < 300 and isinstance(body, dict):
        return {
            "id": _new_id(),
            "custom_id": line.custom_id,
            "response": {
                "status_code": response.status_code,
                "request_id": response.headers.get("x-request-id"),
                "body": body,
            },
            "error": None,
        }, True
    code, message = _api_error(response.status_code, body)
    if record is not None and record.error:
        message = record.error
    elif 200 <= response.status_code < 300:
        code, message = "malformed_response", "the answer was not a JSON object"
    return {
        "id": _new_id(),
        "custom_id": line.custom_id,
        "response": {
            "status_code": response.status_code,
            "request_id": response.headers.get("x-request-id"),
            "body": body,
        },
        "error": {"code": code, "message": message},
    }, False


def _api_error(status: int, body: Any) -> tuple[str, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or f"http_{status}"
        return str(code), str(error.get("message") or f"HTTP {status}")[:1000]
    return f"http_{status}", (body if isinstance(body, str) else f"HTTP {status}")[:1000]


def _bad_record(bad: BadLine) -> dict[str, Any]:
    return {
        "id": _new_id(),
        "custom_id": bad.custom_id,
        "response": None,
        "error": {"code": bad.code, "message": bad.message, "line": bad.line_no},
    }


def _error_record(custom_id: str, status: int | None, code: str, message: str) -> dict[str, Any]:
    return {
        "id": _new_id(),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
    }


def _exception_code(exc: BaseException) -> str:
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
