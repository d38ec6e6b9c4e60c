"""Two proxies side by side: this tree's and another source tree's, against one simulator.

``python -m bench.proxy_ab OTHER_SRC [--rounds N] [--seconds S]`` starts the simulator, then
``pacekeeper proxy`` twice (one with ``PYTHONPATH=OTHER_SRC``, e.g. a ``git archive`` of the
baseline's ``src``), and measures them interleaved (the machine is shared: noise hits both
alike): latency blocks alternate direct / A / B on one connection each, floods alternate A and
B round by round. Per request: proxy CPU µs (user + system from /proc) and p50 added.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.cost import _cpu_s, _flood, _latencies, _quantile, _start_proxy
from pacekeeper.sim import Scenario, SimulatorProcess

__all__ = ["main"]


def _start(upstream: str, src: str | None) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    return _start_proxy(upstream, env)


def _kind(
    sim_port: int, proxies: dict[str, tuple[int, int]], *, stream: bool, rounds: int, seconds: float
) -> dict[str, Any]:
    path = "/v1/chat/completions"
    targets = {"direct": (sim_port, path)} | {n: (port, path) for n, (port, _) in proxies.items()}
    asyncio.run(_latencies(targets, 200, stream=stream))
    lat = asyncio.run(_latencies(targets, 2_000, stream=stream))
    us: dict[str, list[float]] = {name: [] for name in proxies}
    for _ in range(rounds):
        for name, (port, pid) in proxies.items():
            cpu0 = _cpu_s(pid)
            n, failed = asyncio.run(_flood(port, path, seconds, stream=stream))
            if failed:
                raise RuntimeError(f"{name}: {failed} failed")
            us[name].append((_cpu_s(pid) - cpu0) / n * 1e6)
    d50 = _quantile(lat["direct"], 0.5)
    return {
        name: {
            "us_per_req_median": statistics.median(us[name]),
            "us_per_req": [round(x) for x in us[name]],
            "added_p50_ms": (_quantile(lat[name], 0.5) - d50) * 1e3,
            "direct_p50_ms": d50 * 1e3,
        }
        for name in proxies
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other_src", help="the other tree's src directory (the baseline)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", choices=("non-streaming", "streaming"))
    parser.add_argument("--out", type=Path, help="also write the lines to this markdown file")
    args = parser.parse_args()
    lines = [
        f"# Proxy A/B: this tree vs {args.other_src}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.rounds} floods of "
        f"{args.seconds:g} s each way (64 connections), alternating; 2,000 sequential requests "
        f"each way for latency; load average {os.getloadavg()[0]:.1f} at start.",
        "",
    ]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with SimulatorProcess(Scenario()) as sim:
        base = _start(sim.base_url, args.other_src)
        new = _start(sim.base_url, None)
        proxies = {"base": (base[1], base[0].pid), "this": (new[1], new[0].pid)}
        try:
            for kind in ("non-streaming", "streaming"):
                if args.only and args.only != kind:
                    continue
                started = time.monotonic()
                out = _kind(
                    sim.port,
                    proxies,
                    stream=kind == "streaming",
                    rounds=args.rounds,
                    seconds=args.seconds,
                )
                say(f"- {kind} ({time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.1f})")
                for name, row in out.items():
                    say(
                        f"  - {name}: {row['us_per_req_median']:.0f} µs of proxy CPU per request "
                        f"(median; rounds {row['us_per_req']}), added p50 "
                        f"{row['added_p50_ms']:.3f} ms (direct {row['direct_p50_ms']:.3f} ms)"
                    )
        finally:
            for proc, _ in (base, new):
                proc.terminate()
                proc.wait(30)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
