"""What pacekeeper costs besides the requests themselves (issue 15): the proxy's throughput
and added latency, memory of queued SDK calls and of long batches, start-up time, and the
offline tokenizers. ``python -m bench --only cost``.

Every measure runs side by side with its bare counterpart in the same run (direct to the
upstream vs through the proxy, a bare asyncio.Semaphore vs wrap(), ...), each heavy one in a
fresh process, and every line says its target and whether it was met.

- Proxy: the simulator (zero latency, no limits) and ``python -m pacekeeper.proxy`` in their
  own processes, driven by a minimal keep-alive HTTP/1.1 client (an HTTP client library costs
  more CPU per request than the servers do). Latency: requests one at a time on one
  connection, alternating blocks direct and proxied; p50 proxied minus p50 direct is what the
  proxy adds. Throughput "per core": requests answered per CPU-second the proxy process used
  (user + system, from /proc) under a flood of 64 connections, since the flood, the simulator
  and other work share the machine's two cores. Non-streaming and streaming (SSE) alike.
- Queued calls: 100,000 openai AsyncOpenAI chat.completions.create calls started at once,
  waiting behind a held asyncio.Semaphore (what a program without pacekeeper writes; once
  with each call's arguments built after the wait, once before it, as a queued call holds
  them) or queued in a wrap()ped client (bench/rss.py); peak RSS growth per call.
- `pacekeeper run`: peak RSS (the child's own, from wait4) on 10, 100,000 and 1,000,000 lines
  of the benchmark's workload (gpt-4o-mini: o200k_base), exact counts (``--tokenizer auto``)
  and heuristic, real runs against the simulator and ``--dry-run``.
- Start-up: wall time of ``import pacekeeper`` and ``pacekeeper --help`` in fresh processes,
  best of several; the import graph's size.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.contenders import pacekeeper_command
from bench.loadgen import read_response
from bench.rss import batch_rss, queued_rss
from bench.runner import log
from pacekeeper.sim import Scenario, SimulatorProcess

__all__ = ["cost_lines", "measure_cost", "summarise_cost"]

PROXY_RPS_TARGET = 3_000.0
PROXY_P50_TARGET_MS = 0.5
QUEUED_KB_TARGET = 1.5
RUN_RSS_TARGET_MB = 100.0
HELP_TARGET_MS = 150.0

_LISTENING = "pacekeeper proxy listening on "


# --- the proxy ---------------------------------------------------------------------------


def _request(port: int, path: str, index: int, *, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Say something about item {index}."}],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer sk-bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode()
    return head + data


async def _latencies(
    targets: dict[str, tuple[int, str]], total: int, *, stream: bool, block: int = 100
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in targets}
    conns = {
        name: await asyncio.open_connection("127.0.0.1", port)
        for name, (port, _) in targets.items()
    }
    payloads = {
        name: [_request(port, path, i, stream=stream) for i in range(64)]
        for name, (port, path) in targets.items()
    }
    try:
        done = 0
        while done < total:
            for name, (reader, writer) in conns.items():
                for i in range(block):
                    started = time.perf_counter()
                    writer.write(payloads[name][(done + i) % 64])
                    status = await read_response(reader)
                    out[name].append(time.perf_counter() - started)
                    if status != 200:
                        raise RuntimeError(f"{name}: status {status}")
            done += block
    finally:
        for _, writer in conns.values():
            writer.close()
    return out


async def _flood(port: int, path: str, seconds: float, *, stream: bool) -> tuple[int, int]:
    payload = [_request(port, path, i, stream=stream) for i in range(64)]
    deadline = time.monotonic() + seconds
    failed = 0

    async def worker() -> int:
        nonlocal failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        done = 0
        try:
            while time.monotonic() < deadline:
                writer.write(payload[done % 64])
                if await read_response(reader) != 200:
                    failed += 1
                done += 1
        finally:
            writer.close()
        return done

    counts = await asyncio.gather(*(worker() for _ in range(64)))
    return sum(counts), failed


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_proxy(
    upstream: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    command = [*pacekeeper_command(), "proxy", "--upstream", upstream, "--port", "0"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(_LISTENING):
        proc.kill()
        raise RuntimeError(f"proxy did not start: {line!r}")
    return proc, int(line[len(_LISTENING) :].strip().rsplit(":", 1)[1].split("/")[0])


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _proxy_kind(sim_port: int, proxy_port: int, pid: int, *, stream: bool, quick: bool) -> Any:
    total, seconds = (300, 1.0) if quick else (3_000, 5.0)
    targets = {
        "direct": (sim_port, "/v1/chat/completions"),
        "proxy": (proxy_port, "/v1/chat/completions"),
    }
    asyncio.run(_latencies(targets, 200, stream=stream))  # warm-up: connections, lanes
    lat = asyncio.run(_latencies(targets, total, stream=stream))
    asyncio.run(_flood(proxy_port, "/v1/chat/completions", 1.0, stream=stream))  # warm-up
    direct_n, _ = asyncio.run(_flood(sim_port, "/v1/chat/completions", seconds, stream=stream))
    cpu0, wall0 = _cpu_s(pid), time.monotonic()
    proxy_n, failed = asyncio.run(
        _flood(proxy_port, "/v1/chat/completions", seconds, stream=stream)
    )
    cpu, wall = _cpu_s(pid) - cpu0, time.monotonic() - wall0
    d50, p50 = _quantile(lat["direct"], 0.5), _quantile(lat["proxy"], 0.5)
    return {
        "stream": stream,
        "sequential_requests": total,
        "direct_p50_ms": d50 * 1e3,
        "proxy_p50_ms": p50 * 1e3,
        "added_p50_ms": (p50 - d50) * 1e3,
        "direct_p99_ms": _quantile(lat["direct"], 0.99) * 1e3,
        "proxy_p99_ms": _quantile(lat["proxy"], 0.99) * 1e3,
        "direct_req_per_s": direct_n / seconds,
        "proxy_req_per_s": proxy_n / wall,
        "proxy_cpu_share": cpu / wall,
        "proxy_req_per_cpu_s": proxy_n / cpu if cpu else None,
        "proxy_us_per_req": cpu / proxy_n * 1e6 if proxy_n else None,
        "failed": failed,
    }


def measure_proxy(quick: bool) -> dict[str, Any]:
    with SimulatorProcess(Scenario()) as sim:
        proc, port = _start_proxy(sim.base_url)
        try:
            return {
                kind: _proxy_kind(sim.port, port, proc.pid, stream=kind == "streaming", quick=quick)
                for kind in ("non-streaming", "streaming")
            }
        finally:
            proc.terminate()
            proc.wait(30)


# --- start-up ------------------------------------------------------------------------------


def _best_wall_ms(argv: list[str], runs: int) -> float:
    # With its bytecode cached, as after `pip install` (which compiles it): an environment
    # that sets PYTHONDONTWRITEBYTECODE would otherwise time compiling every module, each
    # run (`pacekeeper.Governor` read 337 ms so on 12-02). One untimed run caches it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(argv, capture_output=True, check=True, timeout=60, env=env)
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=60, env=env)
        best = min(best, (time.perf_counter() - started) * 1e3)
    return best


def measure_startup(quick: bool) -> dict[str, Any]:
    runs = 3 if quick else 9
    python = sys.executable
    probe = "import sys; n = len(sys.modules); import pacekeeper; print(len(sys.modules) - n)"
    modules = int(
        subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
    )
    return {
        "runs": runs,
        "python_ms": _best_wall_ms([python, "-c", "pass"], runs),
        "import_ms": _best_wall_ms([python, "-c", "import pacekeeper"], runs),
        "import_governor_ms": _best_wall_ms(
            [python, "-c", "import pacekeeper; pacekeeper.Governor"], runs
        ),
        "help_ms": _best_wall_ms([*pacekeeper_command(), "--help"], runs),
        "import_modules": modules,
    }


# --- memory ---------------------------------------------------------------------------------


def measure_queued(quick: bool) -> dict[str, Any]:
    n = 2_000 if quick else 100_000
    with SimulatorProcess(Scenario()) as sim:
        modes = ("semaphore", "semaphore-args", "pacekeeper")
        return {mode: queued_rss(sim.base_url, n, mode) for mode in modes}


def measure_run_rss(quick: bool, workdir: Path) -> list[dict[str, Any]]:
    sizes = (10, 1_000, 5_000) if quick else (10, 100_000, 1_000_000)
    out: list[dict[str, Any]] = []
    for tokenizer in ("auto", "heuristic"):
        for lines in sizes:
            for dry in (True, False):
                # A real run of a million lines takes about half an hour here: with exact
                # counts (the target) only; the heuristic's million is a dry run.
                if not dry and lines == 1_000_000 and tokenizer != "auto":
                    continue
                args = ("--tokenizer", tokenizer, *(("--dry-run",) if dry else ()))
                log(f"[cost] pacekeeper run {' '.join(args)} on {lines:,} lines ...")
                with SimulatorProcess(Scenario()) as sim:
                    row = batch_rss(
                        sim.base_url,
                        lines,
                        workdir,
                        pacekeeper_command(),
                        extra_args=args,
                        dry_run=dry,
                    )
                row.update(tokenizer=tokenizer, dry_run=dry)
                out.append(row)
                log(f"[cost] {row}")
    return out


def measure_tokenizers() -> list[dict[str, Any]]:
    from bench.tokenizers import measure_all

    return measure_all()


COST_PARTS = ("startup", "proxy", "queued", "tokenizers", "run")


def measure_cost(
    *,
    quick: bool,
    workdir: Path,
    parts: tuple[str, ...] = COST_PARTS,
    stored: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The cost section; with ``parts``, only those measured and the others kept from
    ``stored`` (a section measured before: the 1,000,000-line runs take half an hour)."""
    measures: dict[str, tuple[str, Any]] = {
        "startup": ("start-up", lambda: measure_startup(quick)),
        "proxy": ("proxy: direct vs proxied", lambda: measure_proxy(quick)),
        "queued": ("queued SDK calls: semaphore vs wrap()", lambda: measure_queued(quick)),
        "tokenizers": ("offline tokenizers", measure_tokenizers),
        "run": ("pacekeeper run's memory", lambda: measure_run_rss(quick, workdir)),
    }
    cost: dict[str, Any] = {key: (stored or {}).get(key) for key in COST_PARTS}
    for part in COST_PARTS:
        if part in parts:
            label, measure = measures[part]
            log(f"[cost] {label} ...")
            cost[part] = measure()
            log(f"[cost] {part}: {cost[part]}")
    for key in ("measured", "run_measured", "parts_measured"):
        if stored and key in stored:
            cost[key] = stored[key]
    cost = {key: value for key, value in cost.items() if value is not None}
    cost.update(summarise_cost(cost))
    return cost


# --- the report -----------------------------------------------------------------------------


def _verdict(measure: str, target: str, value: str, met: bool) -> dict[str, Any]:
    return {"measure": measure, "target": target, "value": value, "met": met}


def summarise_cost(cost: dict[str, Any]) -> dict[str, Any]:
    """The report's lines (each with its target and whether it was met)."""
    rows: list[dict[str, Any]] = []
    for kind, p in cost.get("proxy", {}).items():
        per_core = p["proxy_req_per_cpu_s"] or 0.0
        rows.append(
            _verdict(
                f"proxy throughput per core, {kind} (64 connections; direct to the simulator: "
                f"{p['direct_req_per_s']:,.0f} req/s)",
                f">= {PROXY_RPS_TARGET:,.0f} req/s per core",
                f"{per_core:,.0f} requests per proxy CPU-second ({p['proxy_us_per_req']:.0f} µs "
                f"each; {p['proxy_req_per_s']:,.0f} req/s at {p['proxy_cpu_share']:.0%} of a core)",
                per_core >= PROXY_RPS_TARGET,
            )
        )
        rows.append(
            _verdict(
                f"proxy added latency p50, {kind} ({p['sequential_requests']:,} sequential "
                "requests each way)",
                f"<= {PROXY_P50_TARGET_MS} ms",
                f"{p['added_p50_ms']:.2f} ms (direct {p['direct_p50_ms']:.2f} → proxied "
                f"{p['proxy_p50_ms']:.2f} ms; p99 {p['direct_p99_ms']:.2f} → "
                f"{p['proxy_p99_ms']:.2f} ms)",
                p["added_p50_ms"] <= PROXY_P50_TARGET_MS,
            )
        )
    queued = cost.get("queued", {})
    sem, pk = queued.get("semaphore", {}), queued.get("pacekeeper", {})
    held = queued.get("semaphore-args", {})
    if "per_request_kb" in sem and "per_request_kb" in pk:
        # The plain semaphore program builds each call's arguments after its wait; a call
        # queued in pacekeeper (or behind a semaphore, built first) holds them while it
        # waits: the like-for-like baseline, so pacekeeper's own part is read against it.
        like = (
            f"; with the arguments built before the wait {held['per_request_kb']:.2f} kB, "
            f"pacekeeper's own part {pk['per_request_kb'] - held['per_request_kb']:+.2f} kB"
            if "per_request_kb" in held
            else ""
        )
        rows.append(
            _verdict(
                f"RSS of {pk['requests']:,} SDK calls queued at once: bare asyncio.Semaphore → "
                "wrap()",
                f"<= {QUEUED_KB_TARGET} kB each",
                f"{sem['per_request_kb']:.2f} → {pk['per_request_kb']:.2f} kB each "
                f"({sem['growth_mb']:.0f} → {pk['growth_mb']:.0f} MB; "
                f"{pk['per_request_kb'] - sem['per_request_kb']:+.2f} kB{like}; all queued after "
                f"{pk['seconds_to_queue']:.0f} s)",
                pk["per_request_kb"] <= QUEUED_KB_TARGET,
            )
        )
    for row in cost.get("run", []):
        if "peak_rss_mb" not in row:
            continue
        what = "--dry-run" if row["dry_run"] else "run (zero-latency simulator)"
        once = (
            ""
            if row["dry_run"]
            else f"; every custom_id once: {'yes' if row['exactly_once'] else 'NO'}"
        )
        rows.append(
            _verdict(
                f"pacekeeper {what} --tokenizer {row['tokenizer']}, {row['lines']:,} lines",
                f"<= {RUN_RSS_TARGET_MB:g} MB peak",
                f"{row['peak_rss_mb']:.0f} MB ({row['wall_s']:.0f} s, "
                f"{row['cpu_s']:.0f} s CPU{once})",
                row["peak_rss_mb"] <= RUN_RSS_TARGET_MB and row.get("exactly_once", True),
            )
        )
    s = cost.get("startup")
    if s:
        rows.append(
            _verdict(
                f"pacekeeper --help, wall, best of {s['runs']} (a bare python: "
                f"{s['python_ms']:.0f} ms)",
                f"<= {HELP_TARGET_MS:g} ms",
                f"{s['help_ms']:.0f} ms",
                s["help_ms"] <= HELP_TARGET_MS,
            )
        )
        rows.append(
            _verdict(
                "import pacekeeper, wall, best of "
                f"{s['runs']} (then pacekeeper.Governor: {s['import_governor_ms']:.0f} ms)",
                "no HTTP client, tokenizer or CLI loaded (tests/test_import_budget.py)",
                f"{s['import_ms']:.0f} ms, {s['import_modules']} modules",
                True,
            )
        )
    return {"rows": rows}


def _run_remeasured(run_measured: dict[str, Any] | None) -> str:
    if not run_measured:
        return "."
    return (
        f"; the `pacekeeper run` rows were measured again on {run_measured['date']} at git "
        f"{run_measured['git']} (load average {run_measured['load_at_start']} at start), after "
        "the run path changed."
    )


def _parts_remeasured(parts_measured: dict[str, Any] | None) -> list[str]:
    if not parts_measured:
        return []
    lines = []
    for part, measured in parts_measured.items():
        lines += [
            f"The {part} rows were measured again on {measured['date']} at git "
            f"{measured['git']} (load average {measured['load_at_start']} at start), with "
            f"`python -m bench --only cost --parts {part}`."
            # What a reader needs to weigh the rows (another machine, a side-by-side run),
            # written into the results by hand.
            + (f" {measured['note']}" if measured.get("note") else ""),
            "",
        ]
    return lines


def cost_lines(cost: dict[str, Any]) -> list[str]:
    """The markdown section."""
    if not cost or not cost.get("rows"):
        return []
    lines = ["## Cost", ""]
    measured = cost.get("measured")
    if measured:
        lines += [
            f"Measured {measured['date']} ({measured['mode']} run, git {measured['git']}, load "
            f"average {measured['load_at_start']} at start), with `python -m bench --only cost`"
            + _run_remeasured(cost.get("run_measured")),
            "",
        ]
    lines += _parts_remeasured(cost.get("parts_measured"))
    lines += ["| measure | target | measured | |", "|---|---|---|---|"]
    for row in cost["rows"]:
        met = "met" if row["met"] else "**MISSED**"
        lines.append(f"| {row['measure']} | {row['target']} | {row['value']} | {met} |")
    tokenizers = cost.get("tokenizers") or []
    if tokenizers:
        lines += [
            "",
            "Offline tokenizers, one encoding loaded in a fresh process, then counting this "
            "repository's Python and Markdown in 4,000-character pieces:",
            "",
            "| tokenizer | encoding | memory added | load | tokens/s | exact |",
            "|---|---|---|---|---|---|",
        ]
        for t in tokenizers:
            if "error" in t:
                lines.append(f"| {t['tokenizer']} | {t['encoding']} | {t['error']} | | | |")
                continue
            lines.append(
                f"| {t['tokenizer']} | {t['encoding']} | {t['rss_added_mb']:.0f} MB | "
                f"{t['load_s']:.2f} s | {t['tokens_per_s'] / 1e6:.2f} M | "
                f"{'yes' if t['exact'] else 'no'} |"
            )
    return [*lines, ""]
