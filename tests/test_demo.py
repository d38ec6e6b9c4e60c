"""`make demo` end to end: the real CLI against the built-in simulator, outside a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_the_demo_runs_its_batch_and_prints_full_lines_with_costs() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-m", "pacekeeper", "demo", "--requests", "40"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    seen = [line for line in lines if line.startswith("what pacekeeper saw: model=")]
    assert len(seen) == 2  # gpt-4o and gpt-4o-mini, each on one full-width line
    assert all(" cost=$" in line for line in seen), seen  # OpenAI's prices, never "unknown"
    assert "what the server saw: " in done.stdout
    assert all(" failed=0 " in line for line in seen), seen  # faults were retried
