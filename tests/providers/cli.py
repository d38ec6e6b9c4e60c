"""The real CLI in a subprocess, and result files, for the provider tests (the batch tests'
helpers, as far as these tests need them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .upstream import KEY

_BIN = Path(sys.executable).with_name("pacekeeper")
PACEKEEPER: list[str] = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "pacekeeper"]


def base_env(**extra: str) -> dict[str, str]:
    """No provider variables from the caller; the test key as OpenAI's."""
    prefixes = ("OPENAI_", "PACEKEEPER_", "AZURE_OPENAI_", "ANTHROPIC_", "GEMINI_", "GROQ_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["OPENAI_API_KEY"] = KEY
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "160"
    env.update(extra)
    return env


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


def run_cli(args: Sequence[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> Done:
    proc = subprocess.run(
        [*PACEKEEPER, *map(str, args)],
        cwd=cwd,
        env=env or base_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Done(proc.returncode, proc.stdout, proc.stderr)


def write_lines(path: Path, rows: Iterable[Any]) -> Path:
    with path.open("wb") as f:
        for row in rows:
            f.write(json.dumps(row).encode() + b"\n")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """OpenAI-format results, strictly."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    for record in records:
        assert set(record) == {"id", "custom_id", "response", "error"}, record
    return records
