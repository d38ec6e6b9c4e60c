"""Rows measured for specific issues (``--only extras``; part of the full run).

* issue 11 (a): embeddings against a tpm limit, auto mode: the governor must not reserve
  completion tokens for embeddings, so the run reaches >= 0.9 of the limit.
* issue 11 (b): the proxy's throughput while 16 clients stall (headers announcing a 32 MiB
  body, then nothing) against its throughput with no stalled client.
* issue 12: Anthropic's ITPM-bound and OTPM-bound runs through the anthropic SDK under
  ``pacekeeper.wrap`` (auto mode, nothing configured) against the simulator's /v1/messages:
  >= 0.9 of the limit, <= 1% 429s.

Every simulator runs in its own process (its own core); the proxy runs in a thread of this
process, as the client does, both with and without the stalled clients.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import socket
import time
from collections.abc import Callable
from typing import Any

from bench.cost_rows import cap_row, cost_lines, cost_row_names, forecast_row
from bench.runner import log
from pacekeeper.sim import Latency, ModelLimits, Scenario, SimulatorProcess

TARGET_SHARE = 0.9
MAX_429_SHARE = 0.01
STALLED_CLIENTS = 16
STALLED_BODY_BYTES = 32 * 1024 * 1024
_TIMEOUT_S = 30.0


def _prose(i: int, tokens: int) -> str:
    """About `tokens` tokens of prose (4 characters each, as the simulator counts), distinct
    per `i` so that replies differ."""
    head = f"item {i} "
    return head + "lorem " * max(0, (tokens * 4 - len(head)) // 6)


def _row(name: str, issue: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "issue": issue, **fields}


def _verdict(row: dict[str, Any]) -> dict[str, Any]:
    share_ok = row["share"] >= TARGET_SHARE
    rate_ok = row.get("rate_429", 0.0) <= MAX_429_SHARE
    row["met"] = bool(share_ok and rate_ok and row.get("failed", 0) == 0)
    return row


# --- issue 11 (a): embeddings against tpm -----------------------------------------------------


async def _embed_all(base_url: str, inputs: list[str]) -> tuple[float, int]:
    import openai

    import pacekeeper

    client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="x", timeout=_TIMEOUT_S))
    failed = 0

    async def one(text: str) -> None:
        nonlocal failed
        try:
            await client.embeddings.create(model="text-embedding-3-small", input=text)
        except Exception:
            failed += 1

    started = time.monotonic()
    await asyncio.gather(*(one(t) for t in inputs))
    wall = time.monotonic() - started
    await client.close()
    return wall, failed


def _embeddings(quick: bool) -> dict[str, Any]:
    tpm = 300_000.0
    rate = tpm / 60.0
    run_s = 3.0 if quick else 10.0
    tokens_each = 400
    latency_s = 0.05
    n = int((rate * run_s + rate) / tokens_each)  # the bucket's 1 s goes at once
    inputs = [_prose(i, tokens_each) for i in range(n)]
    scenario = Scenario(default=ModelLimits(tpm=tpm), latency=Latency(ttft_s=latency_s))
    with SimulatorProcess(scenario) as sim:
        wall, failed = asyncio.run(_embed_all(sim.base_url, inputs))
        stats = sim.stats()
    charged = stats["tokens_charged"]
    ideal = max(0.0, charged - rate) / rate + latency_s
    received = max(1, stats["requests_received"])
    return _verdict(
        _row(
            "embeddings vs tpm (auto)",
            "11",
            limit=f"{tpm:,.0f} tpm",
            requests=n,
            wall_s=round(wall, 2),
            ideal_s=round(ideal, 2),
            share=round(ideal / wall, 3),
            server_429s=stats["rejected_rate_limited"],
            rate_429=stats["rejected_rate_limited"] / received,
            failed=failed,
        )
    )


# --- issue 11 (b): the proxy with stalled clients ---------------------------------------------


async def _through_proxy(base_url: str, n: int, concurrency: int) -> tuple[float, int]:
    import httpx2

    body = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": ""}]}
    failed = 0
    gate = asyncio.Semaphore(concurrency)
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=base_url, timeout=_TIMEOUT_S, limits=limits) as http:

        async def one(i: int) -> None:
            nonlocal failed
            async with gate:
                payload = {**body, "messages": [{"role": "user", "content": f"q {i}"}]}
                try:
                    reply = await http.post("/chat/completions", json=payload)
                    if reply.status_code != 200:
                        failed += 1
                except Exception:
                    failed += 1

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.monotonic() - started, failed


def _stall(host: str, port: int) -> list[socket.socket]:
    """Open STALLED_CLIENTS connections that announce a big body and never send it."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {STALLED_BODY_BYTES}\r\n\r\n"
    ).encode()
    sockets = []
    for _ in range(STALLED_CLIENTS):
        sock = socket.create_connection((host, port), timeout=5)
        sock.sendall(head)
        sockets.append(sock)
    return sockets


def _stalled_proxy(quick: bool) -> dict[str, Any]:
    from urllib.parse import urlsplit

    from pacekeeper import Governor
    from pacekeeper.proxy import Proxy, ProxyConfig

    n = 300 if quick else 1000
    rounds = 1 if quick else 3
    concurrency = 32
    scenario = Scenario(latency=Latency(ttft_s=0.02))
    base_wall = wall = 0.0
    base_failed = failed = 0
    with SimulatorProcess(scenario) as sim:
        proxy = Proxy(ProxyConfig(upstream=sim.base_url, port=0), Governor()).start()
        try:
            asyncio.run(_through_proxy(proxy.base_url, 200, concurrency))  # warm up
            parts = urlsplit(proxy.url)
            # Interleaved rounds: without, then with the stalled clients, `rounds` times.
            for _ in range(rounds):
                spent, lost = asyncio.run(_through_proxy(proxy.base_url, n, concurrency))
                base_wall += spent
                base_failed += lost
                stalled = _stall(parts.hostname or "127.0.0.1", parts.port or 80)
                try:
                    spent, lost = asyncio.run(_through_proxy(proxy.base_url, n, concurrency))
                    wall += spent
                    failed += lost
                finally:
                    for sock in stalled:
                        sock.close()
        finally:
            proxy.stop()
    n *= rounds
    baseline_rps = n / base_wall
    stalled_rps = n / wall
    return _verdict(
        _row(
            f"proxy with {STALLED_CLIENTS} stalled clients",
            "11",
            limit=f"no stall: {baseline_rps:.0f} req/s",
            requests=n,
            wall_s=round(wall, 2),
            ideal_s=round(base_wall, 2),
            share=round(stalled_rps / baseline_rps, 3),
            baseline_rps=round(baseline_rps, 1),
            stalled_rps=round(stalled_rps, 1),
            failed=failed + base_failed,
        )
    )


# --- issue 12: Anthropic ITPM / OTPM ----------------------------------------------------------


async def _messages_all(
    url: str, prompts: list[str], max_tokens: int
) -> tuple[float, int, list[int]]:
    """Send every prompt at once through a wrapped AsyncAnthropic: the wall time, the failures
    and each reply's output tokens (0 for a failed one), in the order of `prompts`."""
    import anthropic

    import pacekeeper

    client = pacekeeper.wrap(
        anthropic.AsyncAnthropic(base_url=url, api_key="x", timeout=_TIMEOUT_S)
    )
    failed = 0
    outputs = [0] * len(prompts)

    async def one(i: int, text: str) -> None:
        nonlocal failed
        try:
            reply = await client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=max_tokens,
                messages=[{"role": "user", "content": text}],
            )
            outputs[i] = reply.usage.output_tokens
        except Exception:
            failed += 1

    started = time.monotonic()
    await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.monotonic() - started
    await client.close()
    return wall, failed, outputs


def ideal_output_bound_s(
    outputs: list[int],
    *,
    max_tokens: int,
    rate_per_s: float,
    capacity: float,
    latency_s: Callable[[int], float],
    counting: str = "max_tokens",
) -> float:
    """The wall time of a client that knows everything in advance, against the simulator's
    output-token bucket counted as `counting` says: each request, in order, is sent the
    moment the bucket admits it, and the run ends when the last answer (`latency_s(tokens)`
    after its admission) is back.

    With "max_tokens" (Anthropic's rule) a request needs `max_tokens` in the bucket and takes
    them; its answer gives back what it did not use (never past `capacity`). With "generated"
    a request goes while the bucket is not in debt and its answer charges what it generated.

    >>> flat = lambda tokens: 1.0
    >>> ideal_output_bound_s([50, 50, 50], max_tokens=100, rate_per_s=50, capacity=100,
    ...                      latency_s=flat)  # at 0 s; at 1 s (50 refilled, 50 back); at 2 s
    3.0
    >>> ideal_output_bound_s([50, 50, 50], max_tokens=100, rate_per_s=50, capacity=100,
    ...                      latency_s=flat, counting="generated")  # all at 0 s
    1.0
    """
    reserve = float(max_tokens) if counting == "max_tokens" else 0.0
    need = min(reserve, capacity) if reserve else min(1.0, capacity)
    level, now, end = capacity, 0.0, 0.0
    answers: list[tuple[float, float]] = []  # (answered at, tokens given back or charged)

    def advance(to: float) -> None:
        nonlocal level, now
        # Refill and answers in time order up to `to`.
        while answers and answers[0][0] <= to:
            at, delta = heapq.heappop(answers)
            level = min(capacity, level + (at - now) * rate_per_s) + delta
            level = min(capacity, level)
            now = at
        level = min(capacity, level + (to - now) * rate_per_s)
        now = to

    for tokens in outputs:
        while True:
            advance(now)
            if level >= need - 1e-6:  # float refills may stop a hair short
                break
            refilled_at = now + (need - level) / rate_per_s
            advance(min(refilled_at, answers[0][0]) if answers else refilled_at)
        level -= reserve
        answer_at = now + latency_s(tokens)
        heapq.heappush(answers, (answer_at, (reserve - tokens) if reserve else -tokens))
        end = max(end, answer_at)
    return end


def _anthropic(bound: str, quick: bool) -> dict[str, Any]:
    run_s = 3.0 if quick else 10.0
    latency = Latency(ttft_s=0.3, per_token_s=0.004, spread=0.3)
    if bound == "itpm":
        limits = ModelLimits(rpm=6000, input_tpm=240_000, output_tpm=2_000_000)
        rate = 240_000 / 60.0
        prompt_tokens, max_tokens = 400, 64
        n = int((rate * run_s + rate) / (prompt_tokens + 7))
    else:
        limits = ModelLimits(rpm=6000, input_tpm=2_000_000, output_tpm=60_000)
        rate = 60_000 / 60.0
        prompt_tokens, max_tokens = 50, 256
        n = int((rate * run_s + rate) / 108)  # replies average 108 tokens
    prompts = [_prose(i, prompt_tokens) for i in range(n)]
    scenario = Scenario(default=limits, latency=latency, rate_limit_headers="anthropic")
    with SimulatorProcess(scenario) as sim:
        wall, failed, outputs = asyncio.run(_messages_all(sim.url, prompts, max_tokens))
        stats = sim.stats()
    # Each answer takes its expected latency: the simulator draws exp(spread * z) around
    # ttft + per_token * its tokens (replies of 64 tokens at most in the ITPM run, not 108).
    spread_mean = math.exp(latency.spread**2 / 2)
    if bound == "itpm":
        # Input is charged at admission, nothing given back (the sim's tokens_charged is
        # input + max_tokens): the bucket's first second goes at once, the rest at the rate.
        admitted_input = stats["tokens_charged"] - max_tokens * stats["accepted"]
        mean_tokens = sum(outputs) / max(1, len(outputs))
        mean_latency = (latency.ttft_s + latency.per_token_s * mean_tokens) * spread_mean
        ideal = max(0.0, admitted_input - rate) / rate + mean_latency
    else:
        # Output is counted as the simulator counts it (scenario.otpm_counting: by default
        # max_tokens held from admission to the answer): the reserves of the answers in
        # flight are part of what the limit allows, and the ideal must hold them too.
        ideal = ideal_output_bound_s(
            outputs,
            max_tokens=max_tokens,
            rate_per_s=rate,
            capacity=rate * limits.burst_s,
            latency_s=lambda tokens: (latency.ttft_s + latency.per_token_s * tokens) * spread_mean,
            counting=scenario.otpm_counting,
        )
    received = max(1, stats["requests_received"])
    label = "ITPM" if bound == "itpm" else "OTPM"
    limit = limits.input_tpm if bound == "itpm" else limits.output_tpm
    return _verdict(
        _row(
            f"Anthropic {label}-bound (anthropic SDK, auto)",
            "12",
            limit=f"{limit:,.0f} {label.lower()}",
            requests=n,
            wall_s=round(wall, 2),
            ideal_s=round(ideal, 2),
            share=round(ideal / wall, 3),
            server_429s=stats["rejected_rate_limited"],
            rate_429=stats["rejected_rate_limited"] / received,
            failed=failed,
        )
    )


def _itpm(quick: bool) -> dict[str, Any]:
    return _anthropic("itpm", quick)


def _otpm(quick: bool) -> dict[str, Any]:
    return _anthropic("otpm", quick)


MEASURES: dict[str, Callable[[bool], dict[str, Any]]] = {
    "embeddings": _embeddings,
    "stalled": _stalled_proxy,
    "itpm": _itpm,
    "otpm": _otpm,
    "forecast": forecast_row,
    "cap": cap_row,
}


def measure_extras(*, quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    """Every row (or those named in `only`); a row that crashes says why instead."""
    rows = []
    for key, measure in MEASURES.items():
        if only and key not in only:
            continue
        log(f"[extras] {key} ...")
        try:
            row = measure(quick)
        except Exception as exc:  # one row's crash must not lose the others
            row = {"name": key, "issue": "?", "error": f"{type(exc).__name__}: {exc}"}
        log(f"[extras] {row}")
        rows.append(row)
    return {"rows": rows}


def extras_lines(extras: dict[str, Any]) -> list[str]:
    """The markdown section."""
    if not extras or not extras.get("rows"):
        return []
    cost_rows = [r for r in extras["rows"] if r["name"] in cost_row_names() or r.get("kind")]
    rows = [r for r in extras["rows"] if r not in cost_rows]
    if not rows:
        return cost_lines(cost_rows)
    lines = [
        "## Issue rows",
        "",
        f"Targets: share >= {TARGET_SHARE} (of the limit: ideal s / wall s; for the proxy, "
        f"throughput with {STALLED_CLIENTS} stalled clients / without, its ideal s being the "
        "wall s without them), 429s <= "
        f"{MAX_429_SHARE:.0%} of requests received, nothing failed.",
        "",
        "| row | issue | limit | requests | wall s | ideal s | share | 429s | failed | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(
                f"| {row['name']} | {row['issue']} | crashed: {row['error']} | "
                + " | ".join(["—"] * 6)
                + " | no |"
            )
            continue
        rejected = f"{row['server_429s']} ({row['rate_429']:.1%})" if "server_429s" in row else "—"
        lines.append(
            f"| {row['name']} | {row['issue']} | {row['limit']} | {row['requests']} | "
            f"{row['wall_s']:.2f} | {row['ideal_s']:.2f} | {row['share']:.2f} | {rejected} | "
            f"{row['failed']} | {'yes' if row['met'] else '**no**'} |"
        )
    return [*lines, "", *cost_lines(cost_rows)]
