"""A limit on input tokens that nothing states (Gemini): against the real simulator speaking
Google's errors (no rate-limit headers, a 429 whose ``QuotaFailure`` names the input-token
quota), the governor paces tokens at a rate it discovers, not requests."""

from __future__ import annotations

import asyncio

import openai

import pacekeeper
from pacekeeper import Governor, RecordCollector
from pacekeeper.sim import ModelLimits, Scenario, Simulator

CHAT = "/v1/chat/completions"
_WORDS = ("quarterly", "revenue", "grew", "across", "regions", "while", "margins", "narrowed")


def _prompt(i: int) -> str:
    """A prompt of 30 to 300 words (about 40 to 400 tokens): ten times apart."""
    words = 30 + (i * 7919) % 271
    return f"Request {i}: " + " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(words))


async def _gemini_run(
    *, input_tpm: int, max_tokens: int, n: int = 90
) -> tuple[Governor, RecordCollector]:
    """``n`` chat calls through ``wrap()`` against Gemini's errors (no headers, 429s naming
    the quota), an input-token limit binding, requests not (a bucket of a second)."""
    scenario = Scenario(
        default=ModelLimits(rpm=100_000, input_tpm=input_tpm, burst_s=1.0),
        rate_limit_headers="gemini",
    )
    attempts = RecordCollector()
    with Simulator(scenario) as sim:
        gov = Governor(hooks=[attempts])
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="g-test"), gov)
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="gemini-2.5-flash",
                        messages=[{"role": "user", "content": _prompt(i)}],
                        max_tokens=max_tokens,
                    )
                    for i in range(n)
                )
            ),
            timeout=120,
        )
    return gov, attempts


async def test_an_unstated_input_token_limit_is_discovered_and_paced_in_tokens() -> None:
    # 150,000 input tokens a minute bind (2,500 a second, a bucket of a second); requests do not.
    gov, attempts = await _gemini_run(input_tpm=150_000, max_tokens=8)
    lane = gov.lane(CHAT, "gemini-2.5-flash")
    assert lane.tpm is not None, "a token rate was discovered from the input-token 429s"
    assert lane.request_rate.rpm is None, "the requests, never refused, are not paced"
    assert sum(1 for r in attempts.attempts if r.status == 200) == 90
    throttled = sum(1 for r in attempts.attempts if r.status == 429)
    assert throttled <= 12  # finding the rate costs a few 429s, not a storm


async def test_an_input_token_limit_is_discovered_in_input_tokens_not_prompt_and_reserve() -> None:
    # Gemini's TPM counts the prompt alone; every request reserves 256 for its answer. Charged
    # prompt and reserve, the lane found about twice the limit in its own units (a 50-token
    # prompt then paced as 306, a 400-token one as 656: wrong both ways).
    gov, attempts = await _gemini_run(input_tpm=120_000, max_tokens=256)
    lane = gov.lane(CHAT, "gemini-2.5-flash")
    assert lane.tpm is not None
    # Charged prompt and reserve, a lane read about twice the limit in its own units.
    # Counted in input tokens it reads 0.8-1.1 times, and up to 1.6 when the second before
    # a 429 held much of the bucket's stored second on top of its rate: a faster client (the
    # per-request cost's sixth round) sends more of a burst into that second (94-131k over
    # 20 runs before it; 91-189k over 38 runs since, and 183k once in CI).
    assert lane.tpm <= 1.8 * 120_000, f"paced at {lane.tpm:.0f} input tokens a minute"
    assert lane.local.input_only, "the 429 named an input-token quota"
    assert sum(1 for r in attempts.attempts if r.status == 200) == 90
    assert sum(1 for r in attempts.attempts if r.status == 429) <= 12
