"""What pacekeeper costs: CPU per request, the simulator's own rate, peak memory.

CPU is measured as this process's CPU time (time.process_time) while the same client code
sends the same requests; only the transport differs (bare, or pacekeeper.Transport over the
same transport). Twice:

- over the network to a zero-latency, unlimited simulator in another process (the target's
  definition; includes the HTTP stack, so it is noisy);
- in process, over a transport that answers at once with a canned completion and OpenAI-style
  rate-limit headers: no sockets, so the difference is pacekeeper's own work, far less noisy.

Runs alternate so that drifting background load hits both alike; medians are reported.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

import pacekeeper
from bench.contenders import pacekeeper_command
from bench.loadgen import flood, process_cpu_s
from bench.rss import batch_rss, queued_rss
from bench.runner import log
from bench.workload import Workload
from pacekeeper.sim import Scenario, SimulatorProcess

__all__ = ["measure_overhead", "summarise"]

_CONCURRENCY = 32
_CPU_TARGET_US = 50.0  # issue 15: over the network
_CPU_IN_PROCESS_TARGET_US = 25.0  # issue 15: in process, pacekeeper's own work
_RSS_TARGET_MB = 150.0


_CANNED_BODY = json.dumps(
    {
        "id": "chatcmpl-canned",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "word " * 80},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 90, "completion_tokens": 100, "total_tokens": 190},
    }
).encode()
_CANNED_HEADERS = [
    ("content-type", "application/json"),
    ("x-request-id", "req_canned"),
    # Limits far above what is sent: pacekeeper reads and learns them, but never waits.
    ("x-ratelimit-limit-requests", "100000000"),
    ("x-ratelimit-remaining-requests", "99999999"),
    ("x-ratelimit-reset-requests", "1ms"),
    ("x-ratelimit-limit-tokens", "10000000000"),
    ("x-ratelimit-remaining-tokens", "9999999999"),
    ("x-ratelimit-reset-tokens", "1ms"),
]


class _Canned(httpx2.AsyncBaseTransport):
    """Answers every request at once with the same completion (one loop turn, no socket)."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0)
        return httpx2.Response(
            200,
            headers=_CANNED_HEADERS,
            stream=httpx2.ByteStream(_CANNED_BODY),
            request=request,
        )


_KINDS = ("bare", "pacekeeper", "pacekeeper-fixed")
"""bare: the transport alone; pacekeeper: pacekeeper.Transport(Governor()) over it (auto);
pacekeeper-fixed: the same with a fixed concurrency of 64, which takes the adaptive limit's
ramp-up out of the comparison (fewer requests in flight cost more CPU each: less batching)."""


def _governed(inner: httpx2.AsyncBaseTransport, kind: str) -> httpx2.AsyncBaseTransport:
    if kind == "bare":
        return inner
    limits = pacekeeper.Limits(concurrency=64) if kind == "pacekeeper-fixed" else None
    return pacekeeper.Transport(pacekeeper.Governor(limits=limits), transport=inner)


def _transport(kind: str) -> httpx2.AsyncBaseTransport:
    # A bounded pool larger than the client's concurrency: the pool never queues, and
    # pacekeeper caps its concurrency at the pool's size, as wrap() does with the SDK's pool.
    inner = httpx2.AsyncHTTPTransport(
        limits=httpx2.Limits(max_connections=64, max_keepalive_connections=64)
    )
    return _governed(inner, kind)


def _canned(kind: str) -> httpx2.AsyncBaseTransport:
    return _governed(_Canned(), kind)


async def _send_all(
    base_url: str,
    kind: str,
    n: int,
    offset: int,
    make: Callable[[str], httpx2.AsyncBaseTransport] = _transport,
) -> tuple[float, float, str]:
    """(CPU seconds, wall seconds, final lane state) of ``n`` requests from
    ``_CONCURRENCY`` workers."""
    wl = Workload(n=n)
    bodies = [wl.body(i) for i in range(n)]  # built before the clock starts: not measured
    transport = make(kind)
    client = httpx2.AsyncClient(
        transport=transport, headers={"authorization": "Bearer x"}, timeout=30
    )
    url = base_url.rstrip("/") + "/chat/completions"
    indices = iter(range(n))

    async def worker() -> None:
        for i in indices:
            response = await client.post(
                url, json=bodies[i], headers={"x-client-request-id": f"cpu-{offset + i}"}
            )
            if response.status_code != 200:
                raise RuntimeError(f"unexpected {response.status_code}")

    gc.collect()
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(_CONCURRENCY)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    await client.aclose()
    gov = getattr(transport, "governor", None)
    lanes = repr(gov.lanes) if isinstance(gov, pacekeeper.Governor) else ""
    return cpu, wall, lanes


def _alternate(
    base_url: str, n: int, rounds: int, make: Callable[[str], httpx2.AsyncBaseTransport]
) -> dict[str, Any]:
    """µs of CPU per request and req/s of each kind, per run; the total wall time; the
    governors' final lane states."""
    per_request: dict[str, list[float]] = {kind: [] for kind in _KINDS}
    rates: dict[str, list[float]] = {kind: [] for kind in _KINDS}
    lanes: dict[str, list[str]] = {kind: [] for kind in _KINDS}
    for kind in _KINDS:  # warm-up: imports, the tokenizer, connections
        asyncio.run(_send_all(base_url, kind, 200, offset=10_000_000, make=make))
    wall_total = 0.0
    offset = 0
    for r in range(rounds):
        # Rotate the order so that no kind always runs first (or after the same one).
        order = _KINDS[r % len(_KINDS) :] + _KINDS[: r % len(_KINDS)]
        for kind in order:
            cpu, wall, lane = asyncio.run(_send_all(base_url, kind, n, offset, make=make))
            offset += n
            per_request[kind].append(cpu / n * 1e6)
            rates[kind].append(n / wall)
            lanes[kind].append(lane)
            wall_total += wall
    return {"us": per_request, "req_per_s": rates, "wall_s": wall_total, "lanes": lanes}


def _cpu_overhead(quick: bool) -> dict[str, Any]:
    n, rounds = (500, 2) if quick else (5000, 3)
    with SimulatorProcess(Scenario()) as sim:
        sim_cpu0 = process_cpu_s(sim.pid)
        network = _alternate(sim.base_url, n, rounds, _transport)
        sim_cpu_share = (process_cpu_s(sim.pid) - sim_cpu0) / network["wall_s"]
    canned = _alternate("http://canned/v1", n, rounds, _canned)
    for kind in _KINDS:
        log(
            f"[overhead] {kind}: µs CPU/request over the network "
            + ", ".join(f"{x:.0f}" for x in network["us"][kind])
            + "; in process "
            + ", ".join(f"{x:.0f}" for x in canned["us"][kind])
        )
    net = {kind: statistics.median(v) for kind, v in network["us"].items()}
    local = {kind: statistics.median(v) for kind, v in canned["us"].items()}
    return {
        "requests_per_run": n,
        "rounds": rounds,
        "concurrency": _CONCURRENCY,
        "network": network,
        "in_process": canned,
        "median_us": net,
        "median_us_in_process": local,
        "bare_us": net["bare"],
        "pacekeeper_us": net["pacekeeper"],
        "added_us": net["pacekeeper"] - net["bare"],
        "added_fixed_us": net["pacekeeper-fixed"] - net["bare"],
        "ratio": net["pacekeeper"] / net["bare"],
        "canned_bare_us": local["bare"],
        "canned_pacekeeper_us": local["pacekeeper"],
        "canned_added_us": local["pacekeeper"] - local["bare"],
        "sim_cpu_share_during_runs": sim_cpu_share,
    }


def _sim_rate(quick: bool) -> dict[str, Any]:
    with SimulatorProcess(Scenario()) as sim:
        asyncio.run(flood("127.0.0.1", sim.port, seconds=0.5))
        cpu0 = process_cpu_s(sim.pid)
        seconds = 1.0 if quick else 3.0
        per_s = asyncio.run(flood("127.0.0.1", sim.port, seconds=seconds))
        cpu_share = (process_cpu_s(sim.pid) - cpu0) / seconds
    return {"req_per_s": per_s, "sim_cpu_share": cpu_share}


def measure_overhead(*, quick: bool, workdir: Path) -> dict[str, Any]:
    """Every overhead measure, with the lines and target verdicts the report shows."""
    log("[overhead] CPU per request: bare httpx2 vs pacekeeper.Transport ...")
    cpu = _cpu_overhead(quick)
    log("[overhead] simulator's zero-latency rate ...")
    sim = _sim_rate(quick)
    n_queued = 2_000 if quick else 100_000
    log(f"[overhead] peak RSS with {n_queued:,} requests queued ...")
    with SimulatorProcess(Scenario()) as s:
        queued = queued_rss(s.base_url, n_queued, "pacekeeper")
        # The floor is linear in the count (one task and request per call): a fifth of the
        # calls says as much per request in a fifth of the time.
        floor = queued_rss(s.base_url, n_queued // 5, "floor")
    batch: list[dict[str, Any]] = []
    for lines in (10, 500, 2_000) if quick else (10, 50_000, 200_000):
        log(f"[overhead] peak RSS of pacekeeper run on {lines:,} lines ...")
        with SimulatorProcess(Scenario()) as s:
            batch.append(batch_rss(s.base_url, lines, workdir, pacekeeper_command()))
        log(f"[overhead] pacekeeper run {lines:,} lines: {batch[-1]}")
    # The same largest input without the exact token counter (about 27 MB of the peak above).
    largest_lines = batch[-1]["lines"]
    log(f"[overhead] peak RSS of pacekeeper run --tokenizer heuristic on {largest_lines:,} lines")
    with SimulatorProcess(Scenario()) as s:
        batch.append(
            batch_rss(
                s.base_url,
                largest_lines,
                workdir,
                pacekeeper_command(),
                extra_args=("--tokenizer", "heuristic"),
            )
        )
    return {
        "cpu": cpu,
        "sim": sim,
        "queued": queued,
        "queued_floor": floor,
        "batch": batch,
        **_summary(cpu, sim, queued, floor, batch),
    }


def remeasure_cpu(stored: dict[str, Any], *, quick: bool) -> dict[str, Any]:
    """``stored`` (an overhead section) with its CPU rows measured again and the memory rows
    kept as they were: the CPU per request moves with every change to the hot path, the
    memory rows take half an hour."""
    log("[overhead] CPU per request: bare httpx2 vs pacekeeper.Transport ...")
    cpu = _cpu_overhead(quick)
    log("[overhead] simulator's zero-latency rate ...")
    sim = _sim_rate(quick)
    section = {**stored, "cpu": cpu, "sim": sim}
    section.update(summarise(section))
    return section


def summarise(overhead: dict[str, Any]) -> dict[str, Any]:
    """The report lines and target verdicts of stored overhead measures (for --render)."""
    return _summary(
        overhead["cpu"],
        overhead["sim"],
        overhead["queued"],
        overhead["queued_floor"],
        overhead["batch"],
    )


def _summary(
    cpu: dict[str, Any],
    sim: dict[str, Any],
    queued: dict[str, Any],
    floor: dict[str, Any],
    batch: list[dict[str, Any]],
) -> dict[str, Any]:
    client_rate = max(max(v) for v in cpu["network"]["req_per_s"].values())
    lines = [
        {
            "measure": "CPU per request, bare httpx2 (median of runs)",
            "value": f"{cpu['bare_us']:.0f} µs ({cpu['rounds']} runs x {cpu['requests_per_run']})",
        },
        {
            "measure": "CPU per request, pacekeeper.Transport over the same httpx2 transport",
            "value": f"{cpu['pacekeeper_us']:.0f} µs",
        },
        {
            "measure": "added by pacekeeper",
            "value": f"{cpu['added_us']:.0f} µs per request (x{cpu['ratio']:.2f}); with a fixed "
            f"concurrency of 64 instead of the adaptive limit: {cpu['added_fixed_us']:.0f} µs",
        },
        {
            "measure": "in process, canned answers (no sockets): bare → pacekeeper.Transport",
            "value": f"{cpu['canned_bare_us']:.0f} → {cpu['canned_pacekeeper_us']:.0f} µs: "
            f"pacekeeper's own work {cpu['canned_added_us']:.0f} µs per request",
        },
        {
            "measure": "simulator's zero-latency rate (raw HTTP/1.1 flood, 64 connections)",
            "value": f"{sim['req_per_s']:,.0f} req/s at {sim['sim_cpu_share']:.0%} of a core; "
            f"the fastest client run above reached {client_rate:,.0f} req/s",
        },
    ]
    local = cpu.get("median_us_in_process", {})
    fixed_local = local.get("pacekeeper-fixed", cpu["canned_pacekeeper_us"]) - cpu["canned_bare_us"]
    targets = [
        {
            "target": f"CPU added per request over the network <= {_CPU_TARGET_US:g} µs",
            "measured": f"{cpu['added_us']:.0f} µs (fixed concurrency: "
            f"{cpu['added_fixed_us']:.0f} µs)",
            "met": max(cpu["added_us"], cpu["added_fixed_us"]) <= _CPU_TARGET_US,
        },
        {
            "target": f"CPU added per request in process <= {_CPU_IN_PROCESS_TARGET_US:g} µs",
            "measured": f"{cpu['canned_added_us']:.0f} µs (fixed concurrency: "
            f"{fixed_local:.0f} µs)",
            "met": max(cpu["canned_added_us"], fixed_local) <= _CPU_IN_PROCESS_TARGET_US,
        },
    ]
    if "growth_mb" in queued:
        # The floor, per request, scaled to the queued count: what any queue holding SDK calls
        # that have built their requests would cost.
        own_floor_mb = (
            floor["per_request_kb"] * queued["requests"] / 1024 if "growth_mb" in floor else None
        )
        lines.append(
            {
                "measure": f"peak RSS growth, {queued['requests']:,} SDK calls queued in "
                "pacekeeper",
                "value": f"{queued['growth_mb']:.0f} MB ({queued['per_request_kb']:.2f} kB each; "
                f"all queued after {queued['seconds_to_queue']:.0f} s; process peak "
                f"{queued['peak_mb']:.0f} MB)",
            }
        )
        if "growth_mb" in floor:
            lines.append(
                {
                    "measure": f"floor: {floor['requests']:,} plain SDK calls stalled at a "
                    "transport that never answers",
                    "value": f"{floor['growth_mb']:.0f} MB ({floor['per_request_kb']:.2f} kB "
                    f"each): {_against_floor(queued['per_request_kb'], floor['per_request_kb'])}",
                }
            )
            lines.append(
                {
                    "measure": "first request in a fresh process (lazy imports, connection, "
                    "tokenizer): plain SDK → through pacekeeper",
                    "value": f"{floor['first_request_s']:.2f} → {queued['first_request_s']:.2f} s; "
                    f"RSS after it {floor['baseline_mb']:.0f} → {queued['baseline_mb']:.0f} MB",
                }
            )
        targets.append(
            {
                "target": f"peak RSS growth with {queued['requests']:,} queued <= "
                f"{_RSS_TARGET_MB:g} MB",
                "measured": f"{queued['growth_mb']:.0f} MB"
                + (
                    f" (as many calls stalled inside the SDK: {own_floor_mb:.0f} MB; "
                    + (
                        f"pacekeeper's own: {queued['growth_mb'] - own_floor_mb:.0f} MB)"
                        if queued["growth_mb"] >= own_floor_mb
                        else "a call queued in pacekeeper waits before the SDK builds its request)"
                    )
                    if own_floor_mb is not None
                    else ""
                ),
                "met": queued["growth_mb"] <= _RSS_TARGET_MB,
            }
        )
    else:
        lines.append({"measure": "queued RSS", "value": f"error: {queued.get('error')}"})
    lines.extend(
        {
            "measure": " ".join(
                ["pacekeeper run", item.get("args", "")] if item.get("args") else ["pacekeeper run"]
            )
            + f", {item['lines']:,} lines, zero-latency sim",
            "value": f"peak RSS {item['peak_rss_mb']:.0f} MB; {item['wall_s']:.0f} s "
            f"({item['lines_per_s']:,} lines/s, {item['cpu_s']:.0f} s CPU); every custom_id "
            f"once: {'yes' if item['exactly_once'] else 'NO'}",
        }
        for item in batch
    )
    default = [b for b in batch if not b.get("args")]
    heuristic = [b for b in batch if b.get("args")]
    largest = max(default, key=lambda item: item["lines"])
    others = ", ".join(f"{b['lines']:,} lines: {b['peak_rss_mb']:.0f} MB" for b in default[:-1])
    if heuristic:
        others += f"; with --tokenizer heuristic: {heuristic[-1]['peak_rss_mb']:.0f} MB"
    targets.append(
        {
            "target": f"pacekeeper run peak RSS on {largest['lines']:,} lines <= "
            f"{_RSS_TARGET_MB:g} MB",
            "measured": f"{largest['peak_rss_mb']:.0f} MB ({others})",
            "met": largest["peak_rss_mb"] <= _RSS_TARGET_MB,
        }
    )
    return {"lines": lines, "targets": targets}


def _against_floor(queued_kb: float, floor_kb: float) -> str:
    """A queued call against one stalled inside the SDK: before issue 15's admission at the
    SDK method a queued call held the SDK's request and more; now it waits before it."""
    if queued_kb >= floor_kb:
        return f"pacekeeper adds {queued_kb - floor_kb:.2f} kB per request"
    return (
        f"a call queued in pacekeeper holds {floor_kb - queued_kb:.2f} kB less (it waits before "
        "the SDK builds its request)"
    )
