"""Running one scenario: every contender against a fresh simulator process of its own.

A fresh process per contender (rather than /_reset between them) gives each one full buckets,
no connections left hanging by the previous contender, and the capacity-change clock starting
just before it: every contender meets exactly the same provider. The simulator runs in its own
process so it has its own CPU core.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2

from bench.contenders import Contender, RunContext
from bench.measures import ideal_s, mean_latencies, row_for, verdicts
from bench.scenarios import BenchScenario
from bench.workload import Workload
from pacekeeper.sim import Scenario, SimulatorProcess

__all__ = ["free_port", "log", "run_scenario", "warm_up"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port free now, for a server the bench starts (llmock, redis-server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _completion_tokens(wl: Workload) -> list[int]:
    """Each request's completion length (deterministic per prompt), read from an unlimited
    zero-latency simulator: the in-flight ideal needs every request's latency."""

    async def main(base_url: str) -> list[int]:
        async with httpx2.AsyncClient(base_url=base_url, timeout=30) as client:
            slots = asyncio.Semaphore(16)

            async def one(i: int) -> int:
                async with slots:
                    response = await client.post("/chat/completions", json=wl.body(i))
                    response.raise_for_status()
                    return int(response.json()["usage"]["completion_tokens"])

            return list(await asyncio.gather(*(one(i) for i in range(wl.n))))

    with SimulatorProcess(Scenario()) as sim:
        return asyncio.run(main(sim.base_url))


def warm_up() -> None:
    """One request through each kind of client before anything is timed: lazy imports, the
    SDK's first-use work and pacekeeper's tokenizer (about 0.3 s and 27 MB on first use) would
    otherwise land on whichever contender runs first. The overhead section measures that
    first-use cost separately."""
    import openai

    import pacekeeper

    async def main(base_url: str) -> None:
        wl = Workload(n=1)
        plain = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        governed = pacekeeper.wrap(
            openai.AsyncOpenAI(base_url=base_url, api_key="x"), pacekeeper.Governor()
        )
        for client in (plain, governed):
            await client.chat.completions.create(
                model=wl.model,
                messages=[{"role": "user", "content": wl.prompt(0)}],
                max_tokens=wl.max_tokens,
            )
            await client.close()

    with SimulatorProcess(Scenario()) as sim:
        asyncio.run(main(sim.base_url))


def _wait_idle(sim: SimulatorProcess, limit_s: float = 5.0) -> dict[str, Any]:
    """The stats once the server has nothing in flight (answers to requests a client gave up
    on still count as delivered work, so they must be in)."""
    deadline = time.monotonic() + limit_s
    stats = sim.stats()
    while stats.get("in_flight") and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = sim.stats()
    return stats


def run_scenario(
    scenario: BenchScenario, contenders: Sequence[Contender], workdir: Path
) -> dict[str, Any]:
    """Run every contender; returns the scenario's section of the results."""
    latencies = None
    if scenario.truth.max_in_flight is not None:
        latencies = mean_latencies(scenario, _completion_tokens(scenario.workload))
    nominal = ideal_s(scenario, offset_s=0.0, latencies_s=latencies)
    cap_s = 10 * nominal + 60
    rows: list[dict[str, Any]] = []
    for contender in contenders:
        log(f"[{scenario.name}] {contender.label} ...")
        with SimulatorProcess(scenario.sim) as sim:
            started_at = float(sim.stats()["started_at"])
            ctx = RunContext(
                base_url=sim.base_url,
                scenario=scenario,
                sim_started_at=started_at,
                workdir=workdir,
                cap_s=cap_s,
            )
            outcome = contender.run(ctx)
            stats = _wait_idle(sim)
        restarted_at = outcome.diagnostics.get("sim_restarted_at")  # a fleet restarts it
        if restarted_at is not None:
            ctx = dataclasses.replace(ctx, sim_started_at=float(restarted_at))
        offset_s = outcome.started_at - ctx.sim_started_at
        ideal = ideal_s(scenario, offset_s=offset_s, latencies_s=latencies)
        row = row_for(scenario, outcome, stats, ideal=ideal, change_wall=ctx.change_wall)
        row = {"contender": contender.key, "label": contender.label, **row}
        row["diagnostics"] = outcome.diagnostics
        if contender.key in scenario.checked_on:
            row["targets"] = verdicts(scenario, row)
        rows.append(row)
        log(
            f"[{scenario.name}] {contender.label}: {row['wall_s']:.1f} s "
            f"(ideal {ideal:.1f}, efficiency {row['efficiency']:.2f}), "
            f"429s {row['429s']} ({row['share_429']:.1%}), sent {row['sent']}/{row['needed']}, "
            f"ok {row['ok']}, failed {row['failed']}, lost {row['lost']}, "
            f"dup {row['duplicated']}, non-retryable repeated {row['nonretryable_repeated']}"
            + (f", recovery {row.get('recovery_s')} s" if "recovery_s" in row else "")
        )
    return {
        "name": scenario.name,
        "title": scenario.title,
        "requests": scenario.workload.n,
        "max_tokens": scenario.workload.max_tokens,
        "truth": {
            "rpm": scenario.truth.rpm,
            "tpm": scenario.truth.tpm,
            "max_in_flight": scenario.truth.max_in_flight,
            "change_at_s": scenario.truth.change_at_s,
            "change_factor": scenario.truth.change_factor,
        },
        "latency": {
            "ttft_s": scenario.sim.latency.ttft_s,
            "per_token_s": scenario.sim.latency.per_token_s,
            "spread": scenario.sim.latency.spread,
        },
        "timeout_s": scenario.timeout_s,
        "ideal_s": nominal,
        "tokens_charged_ideal": scenario.workload.total_charge(),
        "rows": rows,
    }
