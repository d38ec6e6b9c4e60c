"""Helpers for the batch tests: input files, strict output readers, the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A distinctive fake key: it must never show up in anything pacekeeper writes or prints.
FAKE_KEY = "sk-pktest-7f3a9c1e5b2d4068aa1c9e3fQZ"

_BIN = Path(sys.executable).with_name("pacekeeper")
PACEKEEPER: list[str] = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "pacekeeper"]


def chat_body(content: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def batch_line(
    custom_id: str, content: str | None = None, model: str = "gpt-4o-mini", **extra: Any
) -> dict[str, Any]:
    """An OpenAI Batch API input line."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_body(
            content or f"Say something about {custom_id}", model, max_tokens=16, **extra
        ),
    }


def write_lines(path: Path, rows: Iterable[dict[str, Any] | str | bytes]) -> Path:
    """One line per row: dicts as JSON, str and bytes as they are."""
    with path.open("wb") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row + b"\n")
            elif isinstance(row, str):
                f.write(row.encode() + b"\n")
            else:
                f.write(json.dumps(row).encode() + b"\n")
    return path


def write_batch(
    path: Path, n: int, *, prefix: str = "req", model: str = "gpt-4o-mini"
) -> list[str]:
    """n Batch API lines; returns their custom_ids in order."""
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    write_lines(path, (batch_line(cid, model=model) for cid in ids))
    return ids


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every line of a result file, strictly: whole lines, each a JSON result object."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the output ends in a torn line"
    records = []
    for n, raw in enumerate(data.split(b"\n")[:-1], start=1):
        record = json.loads(raw)  # valid JSON, or the test fails here
        assert isinstance(record, dict), f"line {n} is not an object"
        assert set(record) == {"id", "custom_id", "response", "error"}, f"line {n}: {record}"
        assert isinstance(record["custom_id"], str)
        records.append(record)
    return records


def result_keys(records: Sequence[dict[str, Any]]) -> Counter[tuple[str, int | None]]:
    """How often each result key occurs: (custom_id, None) for a request's result,
    (custom_id, line) for a bad line's error record."""
    keys: Counter[tuple[str, int | None]] = Counter()
    for r in records:
        error = r["error"]
        line = error.get("line") if isinstance(error, dict) and r["response"] is None else None
        keys[(r["custom_id"], line)] += 1
    return keys


def assert_exactly_once(records: Sequence[dict[str, Any]], expected: Iterable[Any]) -> None:
    """Every expected key (a custom_id, or (custom_id, line) for a bad line) exactly once,
    and nothing else."""
    counts = result_keys(records)
    want = Counter((k, None) if isinstance(k, str) else k for k in expected)
    repeated = {k: n for k, n in counts.items() if n > 1}
    assert not repeated, f"results written more than once: {repeated}"
    assert counts == want, (
        f"missing: {sorted(set(want) - set(counts))[:10]}, "
        f"unexpected: {sorted(set(counts) - set(want))[:10]}"
    )


def succeeded(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["error"] is None]


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: no OPENAI_* from the caller, the fake key set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PACEKEEPER_"))}
    env["OPENAI_API_KEY"] = FAKE_KEY
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "160"
    env.update(extra)
    return env


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


def run_cli(
    args: Sequence[str | Path],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Done:
    """``pacekeeper <args>`` to completion."""
    proc = subprocess.run(
        [*PACEKEEPER, *map(str, args)],
        cwd=cwd,
        env=env or base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Done(proc.returncode, proc.stdout, proc.stderr)


class Running:
    """``pacekeeper <args>`` started in the background, its output going to files."""

    def __init__(
        self, args: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None
    ) -> None:
        self._out = (cwd / f".stdout-{time.monotonic_ns()}").open("w+")
        self._err = (cwd / f".stderr-{time.monotonic_ns()}").open("w+")
        self.proc = subprocess.Popen(
            [*PACEKEEPER, *map(str, args)],
            cwd=cwd,
            env=env or base_env(),
            stdout=self._out,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float = 60.0) -> Done:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return Done(code, self._read(self._out), self._read(self._err))

    def stderr_so_far(self) -> str:
        return self._read(self._err)

    @staticmethod
    def _read(f: Any) -> str:
        f.flush()
        f.seek(0)
        text: str = f.read()
        return text

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()


def line_count(path: Path) -> int:
    """Complete lines in a file (0 when it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 20.0, every: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(every)
