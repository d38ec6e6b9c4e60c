"""Limits enforced over real HTTP: rpm exactness under a flood, tpm charging, in-flight caps,
capacity changes."""

from __future__ import annotations

import asyncio
import math
import time

import httpx2

from pacekeeper.sim import CapacityChange, Latency, ModelLimits, Scenario

from .helpers import StartSim, chat


async def flood(base_url: str, seconds: float, *, workers: int = 16, model: str = "m") -> float:
    """Send chat completions as fast as possible for `seconds`; returns the elapsed time."""
    limits = httpx2.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx2.AsyncClient(base_url=base_url, limits=limits) as http:
        start = time.monotonic()
        deadline = start + seconds

        async def worker(w: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                await http.post("/chat/completions", json=chat(f"{w}-{i}", model=model))
                i += 1

        await asyncio.gather(*(worker(w) for w in range(workers)))
        return time.monotonic() - start


async def test_rpm_is_exact_under_a_flood(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=ModelLimits(rpm=1200)))  # 20 capacity, 20/s
    elapsed = await flood(sim.base_url, 1.5)
    stats = sim.stats()
    accepted = stats["accepted"]
    assert accepted <= 20 + 20 * elapsed  # never more than the bucket allows
    assert accepted >= 20 + 20 * (elapsed - 0.25)  # and close to it: the flood kept it busy
    assert stats["rejected_rate_limited"] > accepted  # the flood really was a flood
    assert stats["by_status"]["429"] == stats["rejected_rate_limited"]


def test_tpm_charges_prompt_plus_max_tokens_times_n(start_sim: StartSim) -> None:
    # burst_s 60: the bucket holds the whole minute (1000 tokens) and refills 16.7/s.
    sim = start_sim(Scenario(default=ModelLimits(tpm=1000, burst_s=60)))
    prompt = "x" * 40  # 3 priming + 4 per message + 10 = 17 prompt tokens
    with httpx2.Client(base_url=sim.base_url) as http:
        first = http.post("/chat/completions", json=chat(prompt, max_tokens=500))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-tokens"] == "483"  # 1000 - 517
        assert sim.stats()["tokens_charged"] == 517

        again = http.post("/chat/completions", json=chat(prompt, max_tokens=500))
        assert again.status_code == 429
        error = again.json()["error"]
        assert error["type"] == "tokens"
        assert error["code"] == "rate_limit_exceeded"
        assert "tokens per min (TPM): Limit 1000, Used 517, Requested 517." in error["message"]
        wait_ms = int(again.headers["retry-after-ms"])
        assert 1900 <= wait_ms <= 2041  # (517 - 483) / (1000 / 60) s
        assert again.headers["retry-after"] == str(math.ceil(wait_ms / 1000))

        default_max = http.post("/chat/completions", json=chat(prompt))  # 17 + 256 = 273
        assert default_max.status_code == 200
        assert sim.stats()["tokens_charged"] == 517 + 273

        two = http.post("/chat/completions", json=chat(prompt, max_tokens=100, n=2))
        assert two.status_code == 429  # 17 + 2 x 100 = 217 > ~210 left
        assert "Requested 217." in two.json()["error"]["message"]
    assert sim.stats()["tokens_charged"] == 517 + 273  # rejected requests charge nothing


def test_oversize_request_is_admitted_on_a_full_bucket_and_leaves_debt(
    start_sim: StartSim,
) -> None:
    sim = start_sim(Scenario(default=ModelLimits(tpm=600)))  # capacity 10 tokens, 10/s
    with httpx2.Client(base_url=sim.base_url) as http:
        big = http.post("/chat/completions", json=chat("x" * 40, max_tokens=100))  # 117 tokens
        assert big.status_code == 200  # never starves
        assert big.headers["x-ratelimit-remaining-tokens"] == "0"
        assert big.headers["x-ratelimit-reset-tokens"] == "11.7s"  # from -107 back to 10
        after = http.post("/chat/completions", json=chat("x" * 40, max_tokens=100))
    assert after.status_code == 429
    assert 11_500 <= int(after.headers["retry-after-ms"]) <= 11_700
    assert after.headers["retry-after"] == "12"


async def test_max_in_flight(start_sim: StartSim) -> None:
    sim = start_sim(
        Scenario(default=ModelLimits(max_in_flight=2), latency=Latency(ttft_s=0.4)),
    )
    async with httpx2.AsyncClient(base_url=sim.base_url) as http:
        responses = await asyncio.gather(
            *(http.post("/chat/completions", json=chat(f"q{i}")) for i in range(5))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    rejected = [r for r in responses if r.status_code == 429]
    for response in rejected:
        error = response.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert "too many concurrent requests" in error["message"].lower()
        assert "retry-after" not in response.headers
        assert "retry-after-ms" not in response.headers
    stats = sim.stats()
    assert stats["peak_in_flight"] == 2
    assert stats["rejected_in_flight"] == 3
    assert stats["in_flight"] == 0


async def test_capacity_change_halves_the_budget(start_sim: StartSim) -> None:
    scenario = Scenario(
        default=ModelLimits(rpm=600),  # 10 capacity, 10/s
        capacity_changes=(CapacityChange(at_s=0.4, factor=0.5, model="m"),),
    )
    sim = start_sim(scenario)
    started = time.monotonic()
    with httpx2.Client(base_url=sim.base_url) as http:
        before = http.post("/chat/completions", json=chat(model="m"))
        other_before = http.post("/chat/completions", json=chat(model="other"))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
        after = http.post("/chat/completions", json=chat(model="m"))
        other_after = http.post("/chat/completions", json=chat(model="other"))
    assert before.headers["x-ratelimit-limit-requests"] == "600"
    assert after.headers["x-ratelimit-limit-requests"] == "300"
    assert other_before.headers["x-ratelimit-limit-requests"] == "600"
    assert other_after.headers["x-ratelimit-limit-requests"] == "600"  # only "m" changed

    accepted_before = sim.stats()["per_model"]["m"]["accepted"]
    elapsed = await flood(sim.base_url, 1.0, model="m")
    accepted = sim.stats()["per_model"]["m"]["accepted"] - accepted_before
    assert accepted <= 5 + 5 * elapsed  # the new capacity (5) and rate (5/s)
    assert accepted >= 5 * (elapsed - 0.25)


def test_capacity_change_scales_max_in_flight(start_sim: StartSim) -> None:
    scenario = Scenario(
        default=ModelLimits(max_in_flight=4),
        capacity_changes=(CapacityChange(at_s=0.0, factor=0.5),),
    )
    sim = start_sim(scenario)
    with httpx2.Client(base_url=sim.base_url) as http:
        assert http.post("/chat/completions", json=chat()).status_code == 200
    limiter = sim.app.limiters()[0]
    assert limiter.max_in_flight == 2
