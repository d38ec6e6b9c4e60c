"""Three processes on one key reach about the efficiency of one process: what one learns (a rate
discovered from bare 429s, an in-flight cap) paces all of them. Real processes, a real
redis-server, the simulator; timing is asserted loosely (the machine may be busy)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pacekeeper.sim import Latency, ModelLimits, Scenario, Simulator, draw_profile

from .redis_server import RedisServer

WORKER = Path(__file__).with_name("worker.py")


def fleet_run(
    server: RedisServer, scenario: Scenario, processes: int, total: int
) -> dict[str, Any]:
    """``total`` requests split over ``processes`` workers sharing one namespace: wall time,
    outcomes, and what the simulator saw."""
    namespace = f"fleet-{uuid.uuid4().hex[:8]}"
    share = [total // processes + (1 if k < total % processes else 0) for k in range(processes)]
    with Simulator(scenario) as sim:
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    "send",
                    "--redis",
                    server.url,
                    "--namespace",
                    namespace,
                    "--base-url",
                    sim.base_url,
                    "--count",
                    str(n),
                    "--tag",
                    f"p{k}",
                    "--max-attempts",
                    "20",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for k, n in enumerate(share)
        ]
        try:
            for w in workers:
                assert w.stdout is not None
                assert w.stdout.readline().strip() == "ready"
            for w in workers:
                assert w.stdin is not None
                w.stdin.write("go\n")
                w.stdin.flush()
            reports = []
            for w in workers:
                out, _ = w.communicate(timeout=120)
                reports.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for w in workers:
                w.kill()
        stats = sim.stats()
    wall_s = max(r["finished_at"] for r in reports) - min(r["started_at"] for r in reports)
    return {
        "wall_s": wall_s,
        "ok": sum(r["ok"] for r in reports),
        "failed": sum(r["failed"] for r in reports),
        "server_429s": stats["by_status"].get("429", 0),
        "duplicates": len(stats["duplicates"]),
    }


def compare(server: RedisServer, scenario: Scenario, total: int, ideal_s: float) -> float:
    """One process, then three sharing one key, the same total: the ratio of their
    efficiencies (ideal time / wall time), printed with the numbers."""
    one = fleet_run(server, scenario, 1, total)
    three = fleet_run(server, scenario, 3, total)
    for run in (one, three):
        assert run["ok"] == total
        assert run["failed"] == 0
        assert run["duplicates"] == 0
    ratio = float(one["wall_s"]) / float(three["wall_s"])
    print(  # the measured numbers, for the report (pytest -s)
        f"\n1 process: {one['wall_s']:.1f} s (efficiency {ideal_s / one['wall_s']:.2f}, "
        f"{one['server_429s']} 429s); 3 processes: {three['wall_s']:.1f} s (efficiency "
        f"{ideal_s / three['wall_s']:.2f}, {three['server_429s']} 429s); ratio {ratio:.2f}"
    )
    return ratio


@pytest.mark.slow
def test_three_processes_on_bare_429s_pace_like_one(redis_server: RedisServer) -> None:
    """The bare profile: an rpm limit in 1 s windows, no rate-limit headers, bare 429s. The
    rate is discovered from the 429s, and one process's discovery paces the three.

    A known gap (issue 10), not a busy machine: about one run in four or five, the three
    processes settle at a third of one process's pace (ratio 0.32-0.41; 0.8-1.05 otherwise),
    with no request retried more than twice: the fleet's shared pace sinks, not a backoff
    tail. It predates the admission refactor (seen on ce39040). Until it is fixed this
    asserts only that the fleet does not fall further than that."""
    draw = draw_profile("bare", 1)  # 960 rpm in 1 s windows
    rpm = draw.truth["gpt-4o-mini"].rpm
    assert rpm is not None
    total = 240
    ratio = compare(redis_server, draw.scenario, total, ideal_s=total / (rpm / 60))
    assert ratio > 0.25


@pytest.mark.slow
def test_three_processes_under_an_in_flight_cap_pace_like_one(redis_server: RedisServer) -> None:
    """At most 8 in flight, answered with concurrency_limit_exceeded: the cap one process
    learns bounds the three."""
    cap, ttft_s = 8, 0.3
    scenario = Scenario(
        models={"m": ModelLimits(rpm=100_000, max_in_flight=cap)},
        latency=Latency(ttft_s=ttft_s),
    )
    total = 240
    ideal_s = total / (cap / ttft_s)
    ratio = compare(redis_server, scenario, total, ideal_s=ideal_s)
    assert ratio > 0.6


@pytest.mark.slow
def test_three_processes_on_a_self_hosted_server_pace_like_one(redis_server: RedisServer) -> None:
    """A server that never answers 429 and queues past its capacity (answers swell): the
    shared window, cut on swelling answers, is the fleet's."""
    draw = draw_profile("selfhosted", 0)
    capacity = draw.truth["gpt-4o-mini"].max_in_flight
    assert capacity is not None
    latency = draw.scenario.latency
    answer_s = latency.ttft_s + 20 * latency.per_token_s  # the workers ask for 20 tokens
    total = 240
    ratio = compare(redis_server, draw.scenario, total, ideal_s=total * answer_s / capacity)
    assert ratio > 0.6


@pytest.mark.slow
def test_three_processes_keep_to_token_windows(redis_server: RedisServer) -> None:
    """A binding tpm counted in fixed 1-s windows, stated with remaining and reset (the `tpm`
    profile's headers), a few requests of each process a window: the fleet keeps to the
    windows as one process does (each window's budget from its start, a token 429's window
    spent), not to a shared bucket that refills continuously. That bucket, full again while
    the gate waited out a refused window, let its burst and the rate into the next one: a
    429 every one to three seconds (4-8 in a run of this length).

    Measured on a busy machine (load 8-20): 429s 4 and 6 in two runs before, 1 and 1
    after."""
    tpm = 18_000  # 300 tokens a window: ten of the worker's requests (~30 tokens each)
    scenario = Scenario(
        models={"m": ModelLimits(rpm=100_000, tpm=tpm, window_s=1.0)},
        latency=Latency(ttft_s=0.3),
        rate_limit_headers="window",
    )
    total = 150
    run = fleet_run(redis_server, scenario, 3, total)
    print(f"\n3 processes on 1-s token windows: {run}")
    assert run["ok"] == total
    assert run["duplicates"] == 0
    assert run["server_429s"] <= 3
