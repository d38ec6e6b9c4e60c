"""A day's quota under a minute's header names (Groq: ``x-ratelimit-*-requests`` state requests
per day) is not a rate to pace at: against the real simulator speaking Groq's headers, the
governor paces at the unstated per-minute limit it finds from 429s, not at the daily figure."""

from __future__ import annotations

import asyncio

import openai
import pytest

import pacekeeper
from pacekeeper import Governor, RecordCollector
from pacekeeper.core.config import Limits
from pacekeeper.core.headers import RateLimitSnapshot
from pacekeeper.sim import ModelLimits, Scenario, Simulator

CHAT = "/v1/chat/completions"


def test_a_reset_hours_away_withdraws_a_limit_taken_from_earlier_answers() -> None:
    gov = Governor(limits=Limits())
    lane = gov.lane(CHAT, "m")
    # A reading that looks like a minute: 1,000 of 14,400 used, whole again in 6 s.
    lane.learn(
        RateLimitSnapshot(limit_requests=14_400, remaining_requests=13_400, reset_requests_s=6.0)
    )
    assert (lane.learned_rpm, lane.requests is not None) == (14_400, True)
    # A reset three minutes away: no per-minute budget takes that long to refill.
    lane.learn(
        RateLimitSnapshot(
            limit_requests=14_400,
            remaining_requests=14_370,
            reset_requests_s=179.56,
            limit_tokens=6_000,
            remaining_tokens=5_900,
            reset_tokens_s=1.0,
        )
    )
    assert lane.learned_rpm is None
    assert lane.requests is None, "no pacing at the day's figure"
    assert lane.request_rate.rpm is None, "to be discovered from 429s"
    assert lane.learned_tpm == 6_000  # the token budget is still per minute
    lane.learn(
        RateLimitSnapshot(limit_requests=14_400, remaining_requests=14_399, reset_requests_s=6.0)
    )
    assert lane.learned_rpm is None  # the quota is remembered


@pytest.mark.parametrize("day_refill", [False, True], ids=["reset-at-day-end", "refilling"])
async def test_groq_headers_pace_at_the_unstated_minute_limit_not_the_daily_quota(
    day_refill: bool,
) -> None:
    # 480 rpm enforced but stated nowhere; 100,000 requests per day stated as Groq states them:
    # reset at the day's end, or (as Groq documents) refilling all day, when the reset reads
    # seconds ("0.864s" after one request) and only its refill rate shows a day.
    scenario = Scenario(
        default=ModelLimits(rpm=480, rpd=100_000, day_refill=day_refill),
        rate_limit_headers="groq",
    )
    attempts = RecordCollector()
    with Simulator(scenario) as sim:
        gov = Governor(hooks=[attempts])
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="gsk-test"), gov)
        await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=5
                )
                for i in range(120)
            )
        )
    lane = gov.lane(CHAT, "m")
    assert lane.learned_rpm is None  # the day's 100,000 never became a per-minute ceiling
    assert lane.discovered_rpm is not None
    assert lane.discovered_rpm < 800  # found near the real 480, far below 100,000
    throttled = sum(1 for r in attempts.attempts if r.status == 429)
    assert throttled <= 12  # finding the rate costs a few 429s, not a storm
    assert sum(1 for r in attempts.attempts if r.status == 200) == 120
