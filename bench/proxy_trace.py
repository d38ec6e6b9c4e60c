"""Where a proxied request's time goes, one request at a time (issue 15's added latency).

``python -m bench.proxy_trace [--requests N] [--only KIND] [--out FILE.md]``

A proxy served in this process, a zero-latency simulator and a client (bench/cost.py's
sequential requests on one keep-alive connection) each in a process of their own. The
proxy's serving thread stamps four moments of every request: its bytes in from the client
(``in``), its bytes out to the upstream (``up_out``), the upstream's bytes in (``up_in``,
once per read) and the proxy's write to the client (``out``, once per flush, with the number
of writes it joined). Requests are grouped by the order of those moments (their shape), and
the commonest shape's steps are given as medians: what the proxy spends before sending, what
the upstream round trip takes as the proxy sees it, and what the proxy spends after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacekeeper.proxy import Proxy, ProxyConfig, _guard, _server
from pacekeeper.sim import Scenario, SimulatorProcess
from pacekeeper.transports import _upstream

__all__ = ["main"]

_CLIENT = """
import asyncio
from bench.cost import _latencies
asyncio.run(_latencies({{"proxy": ({port}, "/v1/chat/completions")}}, {n}, stream={stream}))
"""

Event = tuple[str, float, int]


def _stamping(events: list[Event]) -> Callable[[], None]:
    """Stamp the moments on the proxy's classes; returns what undoes it."""
    clock = time.perf_counter
    flush = _guard.CorkedTransport.flush
    received = _upstream._Connection.data_received
    forward = _upstream.UpstreamTransport.handle_async_request
    guarded = _guard.guarded_protocol

    def stamped_flush(self: Any) -> None:
        if self._pending:
            events.append(("out", clock(), len(self._pending)))
        flush(self)

    def stamped_received(self: Any, data: bytes) -> None:
        events.append(("up_in", clock(), 0))
        received(self, data)

    async def stamped_forward(self: Any, request: Any) -> Any:
        events.append(("up_out", clock(), 0))
        return await forward(self, request)

    def stamped_protocol(base: Any, guard: Any) -> Any:
        cls = guarded(base, guard)
        data_received = cls.data_received

        def stamped(self: Any, data: bytes) -> None:
            events.append(("in", clock(), 0))
            data_received(self, data)

        cls.data_received = stamped
        return cls

    _guard.CorkedTransport.flush = stamped_flush  # type: ignore[method-assign]
    _upstream._Connection.data_received = stamped_received  # type: ignore[method-assign]
    _upstream.UpstreamTransport.handle_async_request = stamped_forward  # type: ignore[method-assign]
    _server.guarded_protocol = stamped_protocol  # type: ignore[attr-defined]

    def undo() -> None:
        _guard.CorkedTransport.flush = flush  # type: ignore[method-assign]
        _upstream._Connection.data_received = received  # type: ignore[method-assign]
        _upstream.UpstreamTransport.handle_async_request = forward  # type: ignore[method-assign]
        _server.guarded_protocol = guarded  # type: ignore[attr-defined]

    return undo


def _client(port: int, n: int, *, stream: bool) -> None:
    code = _CLIENT.format(port=port, n=n, stream=stream)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def _shape(request: list[Event]) -> tuple[tuple[str, int], ...]:
    return tuple((kind, joined) for kind, _, joined in request)


def trace(upstream: str, *, stream: bool, requests: int) -> list[list[Event]]:
    """The stamped moments of ``requests`` sequential requests, one list per request."""
    events: list[Event] = []
    undo = _stamping(events)
    try:
        with Proxy(ProxyConfig(upstream=upstream, port=0)) as proxy:
            _client(proxy.port, 200, stream=stream)  # warm-up: connections, lanes
            events.clear()
            _client(proxy.port, requests, stream=stream)
    finally:
        undo()
    out: list[list[Event]] = []
    for event in events:
        if event[0] == "in":
            out.append([event])
        elif out:
            out[-1].append(event)
    return out


def describe(requests: list[list[Event]]) -> list[str]:
    shapes = Counter(_shape(r) for r in requests)
    lines = []
    for shape, count in shapes.most_common(3):
        order = " -> ".join(kind if kind != "out" else f"out({n})" for kind, n in shape)
        lines.append(f"  - {count / len(requests):.0%} of requests: {order}")
    common = shapes.most_common(1)[0][0]
    rows = [r for r in requests if _shape(r) == common]
    steps = []
    for i in range(1, len(common)):
        delta = statistics.median((r[i][1] - r[i - 1][1]) * 1e6 for r in rows)
        steps.append(f"{common[i - 1][0]} -> {common[i][0]} {delta:.0f} µs")
    whole = statistics.median((r[-1][1] - r[0][1]) * 1e6 for r in rows)
    lines.append(f"  - the commonest, medians: {'; '.join(steps)}; in -> last out {whole:.0f} µs")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--only", choices=("non-streaming", "streaming"))
    parser.add_argument("--out", type=Path, help="also write the lines to this markdown file")
    args = parser.parse_args()
    lines = [
        "# One proxied request at a time: where its time goes",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m bench.proxy_trace "
        f"--requests {args.requests}`; load average {os.getloadavg()[0]:.1f} at start "
        "(2 cores shared).",
        "",
    ]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with SimulatorProcess(Scenario()) as sim:
        for kind in ("non-streaming", "streaming"):
            if args.only and args.only != kind:
                continue
            requests = trace(sim.base_url, stream=kind == "streaming", requests=args.requests)
            say(f"- {kind} ({len(requests)} requests, load {os.getloadavg()[0]:.1f}):")
            for line in describe(requests):
                say(line)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
