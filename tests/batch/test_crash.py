"""Exactly once under crashes and signals, with real processes: kill -9 at random moments
(several rounds, with faults), a torn last line, a damaged output, Ctrl-C once (drain, exit 3,
the resume command) and twice (exit now), SIGTERM during retry waits."""

from __future__ import annotations

import json
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pacekeeper.batch._cli import (
    EXIT_DAMAGED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
)
from pacekeeper.sim import Faults, Latency, Scenario

from .conftest import StartSim
from .helpers import (
    FAKE_KEY,
    PACEKEEPER,
    Done,
    Running,
    assert_exactly_once,
    base_env,
    batch_line,
    line_count,
    read_results,
    run_cli,
    succeeded,
    wait_until,
    write_batch,
    write_lines,
)

QUICK_RETRIES = "backoff_base = 0.02\nbackoff_cap = 0.2\nretry_budget_ratio = 1.0\n"


def whole_lines_are_results(path: Path) -> int:
    """After a kill -9: every complete line is a valid result; only the last may be torn."""
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]
    for raw in complete.splitlines():
        record = json.loads(raw)
        assert set(record) == {"id", "custom_id", "response", "error"}
    return complete.count(b"\n")


def kill_rounds(
    args: list[str], out: Path, tmp_path: Path, total: int, *, rounds: int, seed: int
) -> int:
    """Start the run and kill -9 it at a random moment, ``rounds`` times; returns the kills."""
    rng = random.Random(seed)
    kills = 0
    for _ in range(rounds):
        before = line_count(out)
        left = total - before
        if left <= 0:
            break
        running = Running(args, cwd=tmp_path)
        try:
            # A random moment: before the first result, or after some of what is left.
            target = before + rng.choice([0, rng.randint(1, max(1, left * 2 // 3))])

            def reached(target: int = target, proc: Any = running.proc) -> bool:
                return line_count(out) >= target or proc.poll() is not None

            wait_until(reached)
            time.sleep(rng.uniform(0.0, 0.03))
            if running.proc.poll() is None:
                running.kill9()
                kills += 1
        finally:
            running.close()
        whole_lines_are_results(out)
    return kills


def test_kill_9_at_random_moments_then_resume_exactly_once(
    start_sim: StartSim, tmp_path: Path
) -> None:
    faults = Faults(http_500=0.05, http_503=0.03, drop=0.03, malformed=0.03)
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.01, spread=0.8), faults=faults, seed=21))
    rows: list[Any] = [batch_line(f"k-{i:04d}", f"question {i}") for i in range(240)]
    rows[50] = "{this line is broken"
    rows[120] = batch_line("k-0007")  # a duplicate
    rows[200] = {"custom_id": "k-0200", "method": "GET", "url": "/v1/x", "body": {}}
    write_lines(tmp_path / "in.jsonl", rows)
    expected: list[Any] = [f"k-{i:04d}" for i in range(240) if i not in (50, 120, 200)]
    expected += [("line-51", 51), ("k-0007", 121), ("k-0200", 201)]
    (tmp_path / "pacekeeper.toml").write_text(QUICK_RETRIES)
    out = tmp_path / "out.jsonl"
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", sim.base_url]
    args += ["--concurrency", "8", "--rpm", "9000", "--max-attempts", "10", "--progress", "none"]

    kills = kill_rounds(args, out, tmp_path, 240, rounds=5, seed=7)
    assert kills >= 3

    final = run_cli(args, cwd=tmp_path)
    assert final.code == EXIT_FAILED, final.stderr  # the three bad lines
    records = read_results(out)  # byte-valid JSONL, every line whole
    assert_exactly_once(records, expected)
    assert len(succeeded(records)) == 237
    # Work is repeated only for answers lost with a killed process: at most what was in
    # flight at each kill.
    assert len(sim.stats()["duplicates"]) <= 8 * kills
    again = run_cli(args, cwd=tmp_path)  # and once complete, a rerun sends nothing
    assert again.code == EXIT_FAILED
    assert "240 already done (3 of them errors)" in again.stderr


def test_ordered_output_survives_kill_9_in_input_order(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(
        Scenario(latency=Latency(ttft_s=0.01, spread=1.2), faults=Faults(http_500=0.05), seed=2)
    )
    ids = write_batch(tmp_path / "in.jsonl", 150)
    (tmp_path / "pacekeeper.toml").write_text(QUICK_RETRIES)
    out = tmp_path / "out.jsonl"
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--ordered", "--base-url", sim.base_url]
    args += ["--concurrency", "12", "--rpm", "9000", "--max-attempts", "10"]
    kills = kill_rounds(args, out, tmp_path, 150, rounds=3, seed=3)
    assert kills >= 2
    final = run_cli(args, cwd=tmp_path)
    assert final.code == EXIT_OK, final.stderr
    records = read_results(out)
    assert_exactly_once(records, ids)
    # ordered writes a prefix of the input, so a resumed run continues it: input order overall
    assert [r["custom_id"] for r in records] == ids


def test_a_torn_last_line_is_cut_and_its_request_sent_again(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(Scenario())
    ids = write_batch(tmp_path / "in.jsonl", 12)
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", sim.base_url]
    assert run_cli(args, cwd=tmp_path).code == EXIT_OK
    out = tmp_path / "out.jsonl"
    data = out.read_bytes()
    last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
    torn_id = json.loads(data[last_start:])["custom_id"]
    torn = data[: last_start + (len(data) - last_start) // 2]  # a crash in the middle of a write
    out.write_bytes(torn)
    sim.reset_stats()
    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.code == EXIT_OK, resumed.stderr
    assert f"a torn last line ({len(torn) - last_start} bytes) recovered" in resumed.stderr
    assert "1 succeeded, 0 failed, 11 already done" in resumed.stderr
    assert_exactly_once(read_results(out), ids)
    assert out.read_bytes().startswith(data[:last_start])  # earlier lines untouched
    assert sim.stats()["requests_received"] == 1
    assert sim.stats()["per_model"]["gpt-4o-mini"]["received"] == 1
    assert read_results(out)[-1]["custom_id"] == torn_id


def test_a_damaged_output_is_exit_4_and_nothing_is_sent(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(Scenario())
    write_batch(tmp_path / "in.jsonl", 6)
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", sim.base_url]
    assert run_cli(args, cwd=tmp_path).code == EXIT_OK
    out = tmp_path / "out.jsonl"
    lines = out.read_bytes().splitlines(keepends=True)
    damaged = b"".join([lines[0], b'{"custom_id": "edited by hand"\n', *lines[1:]])
    out.write_bytes(damaged)
    sim.reset_stats()
    for extra in ([], ["--dry-run"]):
        done = run_cli([*args, *extra], cwd=tmp_path)
        assert done.code == EXIT_DAMAGED
        assert "out.jsonl: line 2 is not a result line" in done.stderr
        assert "choose another --output" in done.stderr
        assert "Traceback" not in done.stderr
        assert out.read_bytes() == damaged
    assert sim.stats()["requests_received"] == 0


def resume_command(stderr: str) -> list[str]:
    """The command the run printed to resume itself, runnable."""
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith("Resume with:"))
    words = shlex.split(lines[at + 1])
    assert words[:2] == ["pacekeeper", "run"]
    return words[1:]


def test_ctrl_c_once_drains_in_flight_then_resumes(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.15)))
    ids = write_batch(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", sim.base_url]
    args += ["--concurrency", "4", "--metrics", "metrics.json"]
    running = Running(args, cwd=tmp_path)
    try:
        wait_until(lambda: line_count(out) >= 4)
        wait_until(lambda: sim.stats()["in_flight"] > 0)
        sent = time.monotonic()
        running.signal(signal.SIGINT)
        done = running.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        running.close()
    assert done.code == EXIT_INTERRUPTED, done.stderr
    assert took < 2.0
    assert "stopping: finishing" in done.stderr
    assert "Ctrl-C again to exit now" in done.stderr
    records = read_results(out)
    assert 4 <= len(records) < 40
    assert len(succeeded(records)) == len(records)
    # Drained: everything the server answered (those in flight at Ctrl-C too) is written.
    assert sim.stats()["by_status"]["200"] == len(records)
    assert sim.stats()["in_flight"] == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["interrupted"] is True
    assert metrics["succeeded"] == len(records)
    assert metrics["not_sent"] + metrics["not_reached"] == 40 - len(records)
    command = resume_command(done.stderr)
    assert command == args
    assert FAKE_KEY not in done.stderr + done.stdout

    resumed = run_cli(command, cwd=tmp_path)
    assert resumed.code == EXIT_OK, resumed.stderr
    assert f"{len(records)} already done" in resumed.stderr
    assert_exactly_once(read_results(out), ids)
    assert sim.stats()["duplicates"] == {}  # nothing was done twice, not even at the server


def test_ctrl_c_twice_exits_at_once_and_stays_resumable(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=1.0)))
    ids = write_batch(tmp_path / "in.jsonl", 16)
    out = tmp_path / "out.jsonl"
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", sim.base_url, "--log", "log.jsonl"]
    running = Running([*args, "--concurrency", "4"], cwd=tmp_path)
    try:
        wait_until(lambda: line_count(out) >= 4)
        wait_until(lambda: sim.stats()["in_flight"] == 4)  # the next four, a second to go
        sent = time.monotonic()
        running.signal(signal.SIGINT)
        wait_until(lambda: "stopping" in running.stderr_so_far(), timeout=5)
        running.signal(signal.SIGINT)
        done: Done = running.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        running.close()
    assert done.code == EXIT_INTERRUPTED
    assert took < 0.8  # did not wait for the requests in flight
    assert "exiting now" in done.stderr
    assert "Resume with:" in done.stderr
    assert FAKE_KEY not in done.stderr + done.stdout
    records = read_results(out)  # every line whole
    assert len(records) in (4, 5, 6, 7, 8)
    resumed = run_cli([*args, "--concurrency", "16"], cwd=tmp_path)
    assert resumed.code == EXIT_OK, resumed.stderr
    assert_exactly_once(read_results(out), ids)
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    for line in log:  # the log too stays valid after a hard exit
        json.loads(line)


def test_a_stop_does_not_wait_for_retry_backoffs(start_sim: StartSim, tmp_path: Path) -> None:
    """SIGTERM (like a first Ctrl-C) while requests sleep before their retries (503s with
    long backoffs): they are not in flight, so the run ends at once; they are sent next run."""
    sim = start_sim(Scenario(faults=Faults(http_503=1.0)))
    ids = write_batch(tmp_path / "in.jsonl", 6)
    (tmp_path / "pacekeeper.toml").write_text(
        "backoff_base = 5\nbackoff_cap = 60\nretry_budget_ratio = 1.0\n"
    )
    out = tmp_path / "out.jsonl"
    args = [
        "run",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--base-url",
        sim.base_url,
        "--max-attempts",
        "30",
    ]
    running = Running(args, cwd=tmp_path)
    try:
        wait_until(lambda: sim.stats()["requests_received"] >= 14, timeout=30)
        sent = time.monotonic()
        running.signal(signal.SIGTERM)
        done = running.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        running.close()
    assert done.code == EXIT_INTERRUPTED, done.stderr
    # By then each line sleeps a full-jitter backoff of up to 5, 10 or 20 s (base 5 s,
    # doubling): a stop that waited for six of them would take far longer than a busy
    # machine's slow exit (2.1 s seen).
    assert took < 4.0, f"waited {took:.1f}s for retry backoffs"
    records = read_results(out)
    assert all(r["error"] is not None for r in records)  # only exhausted retry budgets
    assert {r["custom_id"] for r in records} <= set(ids)
    assert "Resume with:" in done.stderr


def test_a_write_error_stops_the_run_cleanly_and_the_next_run_completes(
    start_sim: StartSim, tmp_path: Path
) -> None:
    """A full disk, played by a file size limit (RLIMIT_FSIZE): the run stops at the first
    failed write, cuts the half-written line back, says so (exit 2), and the same command
    then completes exactly once."""
    sim = start_sim(Scenario())
    ids = write_batch(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", sim.base_url, "--log", "log.jsonl"]
    limit = 5000
    wrapper = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    command = [sys.executable, "-c", wrapper, *PACEKEEPER, *args]
    if not Path(command[3]).is_absolute():  # pragma: no cover (PACEKEEPER is a path)
        raise AssertionError(command)
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "cannot write the results: File too large (out.jsonl)" in proc.stderr
    assert "Traceback" not in proc.stderr
    data = out.read_bytes()
    assert len(data) <= limit
    first = read_results(out)  # whole lines only: the failed write was cut back
    assert 0 < len(first) < 40

    resumed = run_cli(args, cwd=tmp_path)
    assert resumed.code == EXIT_OK, resumed.stderr
    assert f"{len(first)} already done" in resumed.stderr
    assert_exactly_once(read_results(out), ids)
