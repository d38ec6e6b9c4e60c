"""The result file: appended one whole line at a time, recovered on the next run.

Exactly once rests on two rules. Each result is written with a single ``os.write`` of one
complete line, so a crash (even ``kill -9``) leaves every earlier line intact and at worst one
torn last line. On the next run the file is scanned: the custom_ids it holds are done and are
skipped, and a torn last line is cut off (its request runs again). A result is therefore never
lost once written and never written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DoneSet", "OutputDamaged", "ResultFile", "record_key"]

_FSYNC_EVERY_S = 1.0


class OutputDamaged(Exception):
    """The output file holds a line that pacekeeper did not write whole (not the last one)."""


def record_key(custom_id: str, line_no: int | None = None) -> int:
    """The resume key of a result: its custom_id, or (custom_id, line) for a duplicate's error
    record, which shares the custom_id of the line it duplicates. 8 bytes of BLAKE2b, so a
    million keys take tens of MB, not the ids' full text."""
    text = custom_id if line_no is None else f"{custom_id}\x00{line_no}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class DoneSet:
    """What an earlier run already finished."""

    keys: set[int] = field(default_factory=set)
    torn_bytes: int = 0
    """Bytes of a torn last line that were cut off."""

    def __contains__(self, key: int) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)


class ResultFile:
    """An append-only JSON-lines file of results."""

    __slots__ = ("_fd", "_last_sync", "_unsynced", "lines_written", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._last_sync = time.monotonic()
        self._unsynced = 0
        self.lines_written = 0

    @staticmethod
    def recover(path: Path) -> DoneSet:
        """Scan an existing output: collect done keys; cut a torn last line off.

        Raises :class:`OutputDamaged` for a broken line that is not the last one: that file
        was not written by an interrupted run, and guessing would risk losing results.
        """
        done = DoneSet()
        if not path.exists():
            return done
        good_end = 0
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                complete = raw.endswith(b"\n")
                try:
                    obj = json.loads(raw) if complete else None
                except ValueError:
                    obj = None
                if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
                    rest = f.read(1)
                    if rest or (complete and obj is not None):
                        raise OutputDamaged(
                            f"{path}: line {line_no} is not a complete result line, and it is "
                            "not the last line. This file was not left by an interrupted "
                            "pacekeeper run; move it aside or choose another --output."
                        )
                    done.torn_bytes = len(raw)
                    break
                done.keys.add(_key_of(obj))
                good_end += len(raw)
        if done.torn_bytes:
            os.truncate(path, good_end)
        return done

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode()
        # One write per line: O_APPEND makes it land whole at the end.
        written = os.write(self._fd, data)
        while written < len(data):  # pragma: no cover (short writes only on full disks)
            written += os.write(self._fd, data[written:])
        self.lines_written += 1
        self._unsynced += 1
        now = time.monotonic()
        if now - self._last_sync >= _FSYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1


def _key_of(obj: dict[str, Any]) -> int:
    error = obj.get("error")
    if isinstance(error, dict) and error.get("code") == "duplicate_custom_id":
        line = error.get("line")
        return record_key(obj["custom_id"], line if isinstance(line, int) else None)
    return record_key(obj["custom_id"])
