"""Where the proxy's CPU per request goes: by part, counted and measured (issue 15).

``python -m bench.proxy_parts [--rounds N] [--seconds S] [--only KIND] [--out FILE.md]``

Two views of the same flood (64 keep-alive connections, bench/cost.py's requests, a
zero-latency simulator in another process, the flood in another process):

- **measured**: CPU per request of proxies served in this process, side by side, rounds
  interleaved: the proxy as shipped ("governed"), the same with its Prometheus hooks
  detached ("no metrics"), and the same with the governed transport taken out, so requests go
  straight to the upstream connection pool ("ungoverned": the server, the application and the
  upstream client alone). The differences are the governor's and the metrics' share.
- **counted**: Python calls per request of the serving thread (cProfile, counts only: they do
  not move with the machine's load), grouped by part; a builtin call counts for the part
  that made it. CPU on this machine follows the count closely (about 1 µs a call).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pacekeeper.proxy import Proxy, ProxyConfig
from pacekeeper.sim import Scenario, SimulatorProcess

__all__ = ["main"]

# The first pattern found in a function's file names its part.
_PARTS: tuple[tuple[str, str], ...] = (
    ("pacekeeper/transports/_upstream", "upstream client (lean HTTP/1.1 pool)"),
    ("pacekeeper/transports/_objects", "proxy app (_app: body, JSON, headers, records)"),
    ("httpx2", "upstream client (httpx2 request/response objects)"),
    ("pacekeeper/proxy/_guard", "server (uvicorn + guard)"),
    ("uvicorn", "server (uvicorn + guard)"),
    ("pacekeeper/proxy/", "proxy app (_app: body, JSON, headers, records)"),
    ("json", "proxy app (_app: body, JSON, headers, records)"),
    ("pacekeeper/report/prometheus", "governor: Prometheus hooks"),
    ("prometheus_client", "governor: Prometheus hooks"),
    ("pacekeeper/transports", "governor: transport (facts, usage, verdict)"),
    ("pacekeeper/core", "governor: core (admission, settle, records)"),
)
_OTHER = "other (asyncio, stdlib)"
_FLOOD = """
import asyncio
from bench.cost import _flood
print(asyncio.run(_flood({port}, "/v1/chat/completions", {seconds}, stream={stream}))[0])
"""


def _part(filename: str) -> str:
    for pattern, part in _PARTS:
        if pattern in filename:
            return part
    return _OTHER


def _flood(port: int, seconds: float, *, stream: bool) -> int:
    """Requests answered in a flood from another process (so it takes none of our CPU)."""
    code = _FLOOD.format(port=port, seconds=seconds, stream=stream)
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return int(out.stdout)


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _proxies(upstream: str) -> dict[str, Proxy]:
    governed = Proxy(ProxyConfig(upstream=upstream, port=0)).start()
    no_metrics = Proxy(ProxyConfig(upstream=upstream, port=0)).start()
    if no_metrics.app.metrics is not None:
        no_metrics.app.metrics.detach()
    ungoverned = Proxy(ProxyConfig(upstream=upstream, port=0)).start()
    # What the governed transport wraps: the proxy's own signal over the upstream pool.
    ungoverned.app._transport = ungoverned.app._transport._inner
    return {"governed": governed, "no metrics": no_metrics, "ungoverned": ungoverned}


def measure(upstream: str, *, stream: bool, rounds: int, seconds: float) -> dict[str, list[float]]:
    """CPU µs per request of each variant, one value per round."""
    proxies = _proxies(upstream)
    try:
        for proxy in proxies.values():
            _flood(proxy.port, 1.0, stream=stream)  # warm-up: connections, lanes, limits
        us: dict[str, list[float]] = {name: [] for name in proxies}
        for _ in range(rounds):
            for name, proxy in proxies.items():
                cpu0 = _cpu_s()
                n = _flood(proxy.port, seconds, stream=stream)
                us[name].append((_cpu_s() - cpu0) / n * 1e6)
        return us
    finally:
        for proxy in proxies.values():
            proxy.stop()


def _on_loop(proxy: Proxy, action: Any) -> None:
    loop = proxy._loop
    assert loop is not None
    done = threading.Event()

    def run() -> None:
        action()
        done.set()

    loop.call_soon_threadsafe(run)
    if not done.wait(10):
        raise RuntimeError("the proxy's loop did not answer")


def count(upstream: str, *, stream: bool, seconds: float) -> tuple[int, Counter[str]]:
    """Requests answered, and the Python calls of the serving thread by part."""
    with Proxy(ProxyConfig(upstream=upstream, port=0)) as proxy:
        _flood(proxy.port, 1.0, stream=stream)
        profile = cProfile.Profile()
        _on_loop(proxy, profile.enable)  # on the serving thread: it profiles that thread
        n = _flood(proxy.port, seconds, stream=stream)
        _on_loop(proxy, profile.disable)
    stats: dict[Any, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    calls: Counter[str] = Counter()
    for (filename, _, _), (_, ncalls, _, _, callers) in stats.items():
        if filename != "~":
            calls[_part(filename)] += ncalls
            continue
        # A builtin: counted for the parts of its callers.
        for (caller_file, _, _), caller in callers.items():
            calls[_part(caller_file)] += caller[1]
    return n, calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--only", choices=("non-streaming", "streaming"))
    parser.add_argument("--out", type=Path, help="also write the lines to this markdown file")
    args = parser.parse_args()
    lines = [
        "# Where the proxy's CPU per request goes",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m bench.proxy_parts "
        f"--rounds {args.rounds} --seconds {args.seconds:g}`; load average "
        f"{os.getloadavg()[0]:.1f} at start (2 cores shared).",
        "",
    ]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with SimulatorProcess(Scenario()) as sim:
        for kind in ("non-streaming", "streaming"):
            if args.only and args.only != kind:
                continue
            stream = kind == "streaming"
            us = measure(sim.base_url, stream=stream, rounds=args.rounds, seconds=args.seconds)
            say(f"- {kind}, measured (load {os.getloadavg()[0]:.1f}):")
            for name, values in us.items():
                say(
                    f"  - {name}: {statistics.median(values):.0f} µs of proxy CPU per request "
                    f"(median; rounds {[round(v) for v in values]})"
                )
            n, calls = count(sim.base_url, stream=stream, seconds=args.seconds)
            total = sum(calls.values())
            say(f"- {kind}, counted: {total / n:.0f} Python calls per request ({n} requests):")
            for part, ncalls in sorted(calls.items(), key=lambda kv: -kv[1]):
                say(f"  - {part}: {ncalls / n:.0f} ({ncalls / total:.0%})")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
