"""Shared limits through Redis: what an admission costs, and how K processes share one quota.

- Admission cost: one lane, admissions taken and released back to back in one process, with the
  in-memory lanes and with RedisBackend on a local redis-server (one round trip each).
- Aggregate efficiency for 1, 2, 4 and 8 processes: the same total of requests split over K
  processes (``python -m bench.share_worker``), all governed through one Redis namespace,
  against one simulator limit. Ideal time is what the limit alone forces.
- The same for 1 and 3 processes on the ``bare`` profile (an rpm limit no header states, bare
  429s): the rate is discovered from the 429s, and what one process discovers paces all.

The redis-server is started from PATH on a free loopback port and stopped afterwards; without
one the section says so and measures nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.runner import free_port, log
from pacekeeper.sim import Latency, ModelLimits, Scenario, SimulatorProcess, draw_profile

__all__ = ["LocalRedis", "measure_sharing", "sharing_lines"]

_RPM = 1200


class LocalRedis:
    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._dir.cleanup()


def _admission_cost(url: str | None, n: int) -> dict[str, float]:
    """µs of wall and CPU time per admission + release on one lane, back to back."""
    import pacekeeper
    from pacekeeper.backends import RedisBackend

    async def main() -> dict[str, float]:
        backend = RedisBackend(url, namespace=f"cost-{uuid.uuid4().hex[:6]}") if url else None
        gov = pacekeeper.Governor(limits=pacekeeper.Limits(concurrency=64), backend=backend)
        lane = gov.lane("/v1/chat/completions", "m")
        for _ in range(200):  # warm: connection, scripts loaded
            (await lane.acquire(100)).release(pacekeeper.Signal.SUCCESS)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            (await lane.acquire(100)).release(pacekeeper.Signal.SUCCESS)
        result = {
            "wall_us": (time.perf_counter() - wall) / n * 1e6,
            "cpu_us": (time.process_time() - cpu) / n * 1e6,
        }
        if backend is not None:
            backend.close()
        return result

    return asyncio.run(main())


def _shared_run(
    url: str,
    processes: int,
    total: int,
    *,
    scenario: Scenario | None = None,
    rpm: float = _RPM,
    max_attempts: int = 6,
) -> dict[str, Any]:
    if scenario is None:
        scenario = Scenario(
            models={"m": ModelLimits(rpm=rpm)},
            latency=Latency(ttft_s=0.3, per_token_s=0.004, spread=0.3),
        )
    namespace = f"share-{processes}-{uuid.uuid4().hex[:6]}"
    with SimulatorProcess(scenario) as sim:
        share = [total // processes + (1 if k < total % processes else 0) for k in range(processes)]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.share_worker",
                    "--redis",
                    url,
                    "--namespace",
                    namespace,
                    "--base-url",
                    sim.base_url,
                    "--count",
                    str(n),
                    "--tag",
                    f"p{k}",
                    "--max-attempts",
                    str(max_attempts),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            for k, n in enumerate(share)
        ]
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("a sharing worker did not start")
        started = time.monotonic()
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        reports = []
        for w in workers:
            out, _ = w.communicate(timeout=600)
            reports.append(json.loads(out.strip().splitlines()[-1]))
        stats = sim.stats()
    wall = max(r["finished_at"] for r in reports) - min(r["started_at"] for r in reports)
    ideal = total / (rpm / 60.0)
    throttled = stats["by_status"].get("429", 0)
    return {
        "processes": processes,
        "requests": total,
        "wall_s": round(wall, 2),
        "ideal_s": ideal,
        "efficiency": round(ideal / wall, 3),
        "ok": sum(r["ok"] for r in reports),
        "failed": sum(r["failed"] for r in reports),
        "server_429s": throttled,
        "rate_429": throttled / max(1, stats["requests_received"]),
        "duplicated": len(stats["duplicates"]),
        "harness_s": round(time.monotonic() - started, 2),
    }


def measure_sharing(*, quick: bool) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        return {"skipped": "redis-server is not on PATH (apt-get install redis-server)"}
    redis = LocalRedis(binary)
    try:
        n = 500 if quick else 3000
        log("[sharing] admission cost: in memory vs Redis ...")
        cost = {"memory": _admission_cost(None, n), "redis": _admission_cost(redis.url, n)}
        runs = []
        total = 120 if quick else 600
        for processes in (1, 2) if quick else (1, 2, 4, 8):
            log(f"[sharing] {processes} processes sharing {_RPM} rpm, {total} requests ...")
            runs.append(_shared_run(redis.url, processes, total))
            log(f"[sharing] {runs[-1]}")
        draw = draw_profile("bare", 1)
        bare_rpm = draw.truth["gpt-4o-mini"].rpm or 0.0
        bare = []
        for processes in (1, 3):
            log(f"[sharing] {processes} processes, bare profile ({draw.summary}) ...")
            bare.append(
                _shared_run(
                    redis.url,
                    processes,
                    total // 2 if quick else 240,
                    scenario=draw.scenario,
                    rpm=bare_rpm,
                    max_attempts=20,
                )
            )
            log(f"[sharing] {bare[-1]}")
        return {
            "admission": cost,
            "runs": runs,
            "rpm": _RPM,
            "bare": {"summary": draw.summary, "runs": bare},
        }
    finally:
        redis.close()


def sharing_lines(sharing: dict[str, Any]) -> list[str]:
    """The markdown section."""
    if not sharing:
        return []
    lines = ["## Shared limits through Redis", ""]
    if "skipped" in sharing:
        return [*lines, f"Not measured: {sharing['skipped']}.", ""]
    memory, redis = sharing["admission"]["memory"], sharing["admission"]["redis"]
    lines += [
        "Admission + release on one lane, back to back, one process:",
        "",
        "| lanes | wall µs per admission | CPU µs per admission |",
        "|---|---|---|",
        f"| in memory | {memory['wall_us']:.0f} | {memory['cpu_us']:.0f} |",
        f"| RedisBackend (local redis-server) | {redis['wall_us']:.0f} | {redis['cpu_us']:.0f} |",
        "",
        f"K processes sharing one namespace against one simulator limit of {sharing['rpm']} rpm "
        "(per-second enforced, latency 0.3 s + 4 ms/token), the same total of requests split "
        "between them:",
        "",
        "| processes | requests | wall s | ideal s | efficiency | 429s (% of received) | ok | "
        "failed | duplicated |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_run_line(run) for run in sharing["runs"]]
    bare = sharing.get("bare")
    if bare:
        lines += [
            "",
            f"The bare profile ({bare['summary']}): no header states the limit, the rate is "
            "discovered from bare 429s, and what one process discovers paces all of them:",
            "",
            "| processes | requests | wall s | ideal s | efficiency | 429s (% of received) | ok | "
            "failed | duplicated |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [_run_line(run) for run in bare["runs"]]
    return [*lines, ""]


def _run_line(run: dict[str, Any]) -> str:
    return (
        f"| {run['processes']} | {run['requests']} | {run['wall_s']:.1f} | "
        f"{run['ideal_s']:.1f} | {run['efficiency']:.2f} | {run['server_429s']} "
        f"({run['rate_429']:.1%}) | {run['ok']} | {run['failed']} | {run['duplicated']} |"
    )
