"""Per-request timelines against llmock, from its journal (issue 10: where the proxy's time goes).

``python -m bench.independent_timeline [--cases rpm,errors] [--contenders direct,auto,proxy]``

Each contender of bench/independent.py runs one case on a fresh API key, and llmock's journal
(every request it served: when it began and ended, its status, a fingerprint shared by the
retries of one call) gives the timeline: when the first request reached the server, requests
per second after it, every retry and how long after its failure it was sent again, and when
the last answer ended. ``direct`` is the plain SDK client of the proxy contender sent straight
to llmock, nothing pacing it (a minute's capacity, 1,200 requests, is more than a case sends,
so none is refused): when its first request reaches the server is the client's own start cost,
which the proxy cannot make shorter.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

import httpx2

from bench import independent as ind

__all__ = ["main"]

Run = Callable[[str, ind.Case, str, float], Coroutine[Any, Any, dict[str, Any]]]


async def _run_direct(base_url: str, case: ind.Case, key: str, limit_s: float) -> dict[str, Any]:
    """The proxy contender's client, straight at llmock: no pacing, no proxy."""
    return await ind._send_all(ind._sdk_client(case, base_url, key, proxied=False), case, limit_s)


_RUNS: dict[str, Run] = {
    "direct": _run_direct,
    "reference": ind._run_reference,
    "auto": ind._run_auto,
    "proxy": ind._run_proxy,
}


def _timeline(name: str, records: list[dict[str, Any]], started: float, wall_s: float) -> str:
    """What the journal shows of one run, times in seconds from when the caller began."""
    if not records:
        return f"{name}: the server saw nothing"
    records = sorted(records, key=lambda r: float(r["started_at"]))
    starts = [float(r["started_at"]) - started for r in records]
    per_s = Counter(int(s) for s in starts)
    statuses = Counter(str(r["status"]) for r in records)
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        calls[str(record["fingerprint"])].append(record)
    retries = sorted(
        (float(a["ended_at"]) - started, int(a["status"]), float(b["started_at"] - a["ended_at"]))
        for attempts in calls.values()
        for a, b in itertools.pairwise(attempts)
    )
    last_end = max(float(r["ended_at"]) for r in records) - started
    lines = [
        f"{name}: wall {wall_s:.2f} s, {len(records)} sent, statuses {dict(statuses)}",
        f"  first request at the server {starts[0]:.3f} s, last {starts[-1]:.3f} s, "
        f"last answer ended {last_end:.3f} s",
        f"  sent per second: {[per_s.get(i, 0) for i in range(int(starts[-1]) + 1)]}",
        "  retries (failed at s, status, sent again after s): "
        + ", ".join(f"{at:.2f} {status} {wait:.2f}" for at, status, wait in retries),
    ]
    return "\n".join(lines)


def _journal(base_url: str) -> list[dict[str, Any]]:
    response = httpx2.get(f"{base_url}/_llmock/requests", timeout=30.0)
    response.raise_for_status()
    records: list[dict[str, Any]] = response.json()["requests"]
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.independent_timeline")
    parser.add_argument("--cases", default="rpm", help="comma-separated llmock cases")
    parser.add_argument("--contenders", default="direct,auto,proxy", help=", ".join(_RUNS))
    args = parser.parse_args(argv)
    command = ind.llmock_command()
    if command is None:
        raise SystemExit("llmock is not installed: make .venv/llmock/bin/llmock")
    names = args.cases.split(",")
    contenders = args.contenders.split(",")
    unknown = sorted(set(contenders) - set(_RUNS))
    if unknown:
        raise SystemExit(
            f"--contenders: no {', '.join(unknown)} (the contenders: {', '.join(_RUNS)})"
        )
    began: list[float] = []
    send_all = ind._send_all

    async def stamped(client: Any, case: ind.Case, limit_s: float) -> dict[str, Any]:
        began.append(time.monotonic())  # llmock's journal uses the same monotonic clock
        return await send_all(client, case, limit_s)

    ind._send_all = stamped
    try:
        for case in (c for c in ind.CASES if c.name in names):
            with ind._Server(command, case) as server:
                base_url = f"http://127.0.0.1:{server.port}"
                for contender in contenders:
                    ind._clear_journal(base_url)
                    key = f"sk-timeline-{case.name}-{contender}-{time.time_ns()}"
                    limit_s = 6 * case.requests * 60.0 / case.rpm + 20
                    result = asyncio.run(_RUNS[contender](base_url, case, key, limit_s))
                    name = f"{case.name}/{contender}"
                    print(_timeline(name, _journal(base_url), began.pop(), result["wall_s"]))
    finally:
        ind._send_all = send_all
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
