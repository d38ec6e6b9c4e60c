"""The result file: appended one whole line at a time, recovered on the next run.

Exactly once rests on three rules. Each result is written with a single ``os.write`` of one
complete line (``O_APPEND``), so a crash (even ``kill -9``) leaves every earlier line intact and
at worst one torn last line. On the next run the file is scanned: the custom_ids it holds are
done and are skipped, and a torn last line is cut off (its request runs again). And only one
run writes a given file at a time (an exclusive ``flock``, released by the kernel however the
process ends), so two runs of the same command cannot both send a line. A result is therefore
never lost once written and never written twice.

A result line is an object with ``custom_id``, ``response`` and ``error`` (OpenAI's Batch output
format), or with ``custom_id`` and ``result`` (Anthropic's Message Batches results format, for
lines given in that format). Anything else that
is not the torn last line (a line that does not parse, a JSON value of another shape, a blank
line) means the file was not written by pacekeeper alone: :class:`OutputDamaged`, and nothing
is guessed or cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacekeeper.batch._keys import KeySet

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: no advisory locks, one run at a time)
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DoneSet",
    "OutputBusy",
    "OutputDamaged",
    "ResultFile",
    "anthropic_record",
    "is_bad_line_record",
    "record_key",
    "scan",
]

_FSYNC_EVERY_S = 1.0
_REDACTED = "[redacted]"
_MIN_SECRET_LEN = 8


class OutputDamaged(Exception):
    """The output file holds a line that pacekeeper did not write whole (not the last one)."""


class OutputBusy(Exception):
    """Another process is writing the same output file."""


def record_key(custom_id: str, line_no: int | None = None) -> int:
    """The resume key of a result: its custom_id, or (custom_id, line) for the error record of
    a bad input line (a duplicate shares the custom_id of the line it duplicates). 8 bytes of
    BLAKE2b, so a million keys take tens of MB, not the ids' full text."""
    text = custom_id if line_no is None else f"{custom_id}\x00{line_no}"
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big"
    )


def is_bad_line_record(record: dict[str, Any]) -> bool:
    """An error record for an input line that was never sent (it names its line)."""
    result = record.get("result")
    if isinstance(result, dict):
        line = result.get("line")
        return isinstance(line, int) and not isinstance(line, bool)
    error = record.get("error")
    return (
        record.get("response") is None
        and isinstance(error, dict)
        and isinstance(error.get("line"), int)
        and not isinstance(error.get("line"), bool)
    )


def _key_of(record: dict[str, Any]) -> int:
    if is_bad_line_record(record):
        result = record.get("result")
        line = result["line"] if isinstance(result, dict) else record["error"]["line"]
        return record_key(record["custom_id"], line)
    return record_key(record["custom_id"])


def _is_failed(record: dict[str, Any]) -> bool:
    result = record.get("result")
    if isinstance(result, dict):
        return result.get("type") != "succeeded"
    return record.get("error") is not None


def anthropic_record(record: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-format result in Anthropic's Message Batches results format.

    Succeeded: ``{"custom_id", "result": {"type": "succeeded", "message": ...}}``. Errored:
    ``{"custom_id", "result": {"type": "errored", "error": {"type": "error", "error":
    {"type", "message"}}, ...}}`` with the API's own error body when it sent one; pacekeeper
    adds ``code``, ``status`` and ``message`` (why it stopped) beside it, and ``line`` for
    a bad input line.
    """
    custom_id = record["custom_id"]
    error = record.get("error")
    response = record.get("response")
    if error is None and isinstance(response, dict):
        return {
            "custom_id": custom_id,
            "result": {"type": "succeeded", "message": response["body"]},
        }
    error = error if isinstance(error, dict) else {}
    body = response.get("body") if isinstance(response, dict) else None
    if (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
    ):
        api_error = body
    else:
        api_error = {
            "type": "error",
            "error": {
                "type": error.get("type") or _anthropic_error_type(error),
                "message": str(error.get("message", "")),
            },
        }
    result: dict[str, Any] = {
        "type": "errored",
        "error": api_error,
        "code": error.get("code"),
        "status": error.get("status"),
        "message": error.get("message"),
    }
    if "line" in error:
        result["line"] = error["line"]
    return {"custom_id": custom_id, "result": result}


def _anthropic_error_type(error: dict[str, Any]) -> str:
    status = error.get("status")
    if status == 429:
        return "rate_limit_error"
    if isinstance(status, int) and status >= 500:
        return "api_error"
    if "line" in error or (isinstance(status, int) and 400 <= status < 500):
        return "invalid_request_error"
    return "api_error"


@dataclass(slots=True)
class DoneSet:
    """What an earlier run already finished."""

    keys: KeySet = field(default_factory=KeySet)
    failed: set[int] = field(default_factory=set)
    """Keys of the error records among ``keys``."""
    torn_bytes: int = 0
    """Bytes of a torn last line (cut off when the file is opened for writing)."""
    good_end: int = 0
    """Length of the file without its torn last line."""

    def __contains__(self, key: int) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)


def _is_result(obj: object) -> bool:
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        return False
    if "response" in obj and "error" in obj:
        return True
    result = obj.get("result")
    return isinstance(result, dict) and isinstance(result.get("type"), str)


def scan(path: Path) -> DoneSet:
    """Read an existing output without changing it: done keys, and a torn last line if any.

    Raises :class:`OutputDamaged` for a line that is not a result and is not a torn last line.
    """
    done = DoneSet()
    if not path.exists():
        return done
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):  # the last line, without its newline: torn
                done.torn_bytes = len(raw)
                break
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                obj = None
            if not _is_result(obj):
                raise OutputDamaged(
                    f"{path}: line {line_no} is not a result line ({_describe(raw)}). A run that "
                    "is interrupted can only leave a torn last line without a newline, so this "
                    "file was changed by something else; pacekeeper will not guess which "
                    "results it holds. Move it aside, fix that line, or choose another --output."
                )
            assert isinstance(obj, dict)
            key = _key_of(obj)
            done.keys.add(key)
            if _is_failed(obj):
                done.failed.add(key)
            done.good_end += len(raw)
    return done


def _describe(raw: bytes) -> str:
    if not raw.strip():
        return "a blank line"
    head = raw[:60].decode("utf-8", "replace").rstrip("\n")
    return f"it starts {head!r}"


class ResultFile:
    """An append-only JSON-lines file of results, held by one process at a time."""

    __slots__ = ("_fd", "_last_sync", "_secrets", "_size", "_unsynced", "lines_written", "path")

    def __init__(self, path: Path, *, redact: Iterable[str | None] = ()) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._fd)
                self._fd = -1
                raise OutputBusy(
                    f"{path} is being written by another pacekeeper run; wait for it to "
                    "finish (or stop it) before running this command again"
                ) from None
        self._secrets = redaction_list(redact)
        self._size = os.fstat(self._fd).st_size
        self._last_sync = time.monotonic()
        self._unsynced = 0
        self.lines_written = 0

    @classmethod
    def open(cls, path: Path, *, redact: Iterable[str | None] = ()) -> tuple[ResultFile, DoneSet]:
        """Lock ``path``, recover what it holds and cut a torn last line off."""
        out = cls(path, redact=redact)
        try:
            done = scan(path)
            if done.torn_bytes:
                os.ftruncate(out._fd, done.good_end)
                out._size = done.good_end
        except BaseException:
            out.close()
            raise
        return out, done

    @staticmethod
    def recover(path: Path) -> DoneSet:
        """Scan ``path`` and cut a torn last line off (without holding it open)."""
        out, done = ResultFile.open(path)
        out.close()
        return done

    def write(self, record: dict[str, Any]) -> None:
        """Append one result line. On an error (a full disk, a file size limit) the file is cut
        back to its last whole line before the error is raised, so that nothing written later
        can bury a torn line in the middle."""
        data = encode_line(record, self._secrets)
        try:
            # One write per line: O_APPEND makes it land whole at the end.
            written = os.write(self._fd, data)
            while written < len(data):  # short writes only when the disk is full
                written += os.write(self._fd, data[written:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)
        self.lines_written += 1
        self._unsynced += 1
        if time.monotonic() - self._last_sync >= _FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        if self._unsynced and self._fd >= 0:
            os.fsync(self._fd)
            self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self.sync()
            os.close(self._fd)  # releases the lock
            self._fd = -1


def redaction_list(secrets: Iterable[str | None]) -> tuple[str, ...]:
    """The forms in which each secret would appear in a JSON line (long enough ones only)."""
    forms: list[str] = []
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            forms.append(secret)
            escaped = json.dumps(secret)[1:-1]
            if escaped != secret:
                forms.append(escaped)
    return tuple(forms)


def redact_text(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return text


def encode_line(record: dict[str, Any], secrets: tuple[str, ...] = ()) -> bytes:
    """One JSON line, UTF-8; falls back to ASCII escapes for text UTF-8 cannot carry (an
    unpaired surrogate in an answer), so that writing a result never fails."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    text = redact_text(text, secrets)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        text = redact_text(json.dumps(record, ensure_ascii=True, separators=(",", ":")), secrets)
        return (text + "\n").encode("ascii")
