"""A gateway's unsuffixed ``X-RateLimit-Limit/-Remaining/-Reset`` (N requests per a window it
does not name, the reset a Unix time in milliseconds), sent as headers or, as OpenRouter does,
only inside the 429's body: against the real simulator speaking them, auto mode paces at the
window's budget over the window's length, not over a minute, and waits a spent window out."""

from __future__ import annotations

import asyncio
from typing import Literal

import openai
import pytest

import pacekeeper
from pacekeeper import Governor, RecordCollector
from pacekeeper.sim import ModelLimits, Scenario, Simulator

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize("headers", ["gateway", "openrouter"])
async def test_a_gateway_window_budget_is_paced_over_its_window(
    headers: Literal["gateway", "openrouter"],
) -> None:
    # 30 requests per fixed 2-s window: 900/min. Read as 30 a minute the run would take 3 min.
    scenario = Scenario(
        default=ModelLimits(rpm=900, window_s=2.0), rate_limit_headers=headers, seed=3
    )
    attempts = RecordCollector()
    with Simulator(scenario) as sim:
        gov = Governor(hooks=[attempts])
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-gw"), gov)
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=5
                    )
                    for i in range(150)
                )
            ),
            timeout=120,
        )
    lane = gov.lane(CHAT, "m")
    if headers == "gateway":
        # Stated on every answer: paced at 30 per 2 s, the window its resets bound.
        assert lane.learned_rpm == pytest.approx(900, rel=0.05)
    throttled = sum(1 for r in attempts.attempts if r.status == 429)
    assert sum(1 for r in attempts.attempts if r.status == 200) == 150
    # Every 429 says when its window ends, and the lane waits for it: at most a burst of
    # refusals per window (5 windows), not a 429 for every request.
    assert throttled <= 25
