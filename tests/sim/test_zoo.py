"""The providers the governor has no special case for, over real HTTP on loopback: Gemini
(no headers, RESOURCE_EXHAUSTED with RetryInfo), Groq (limit-requests is per day), and
OpenRouter-like gateways (unsuffixed X-RateLimit-* with a reset in Unix milliseconds, or the
same values only in the 429's body). Each answer's structure is compared with the documented
or reported one in fixtures/provider_shapes.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.sim import ModelLimits, Scenario, draw_profile
from pacekeeper.sim._cli import build_scenario, configure_parser
from pacekeeper.sim._headers import go_duration, rate_limit_headers
from pacekeeper.sim._limits import ModelLimiter

from .helpers import StartSim, chat

SHAPES: dict[str, Any] = json.loads(
    (Path(__file__).parent / "fixtures" / "provider_shapes.json").read_text(encoding="utf-8")
)


def _same_structure(got: object, documented: object, where: str = "body") -> None:
    """`got` has the documented keys, value types and (for typed details) the same kinds."""
    if isinstance(documented, dict):
        assert isinstance(got, dict), f"{where}: expected an object, got {got!r}"
        assert set(got) == set(documented), f"{where}: keys {sorted(got)} != {sorted(documented)}"
        for key, value in documented.items():
            _same_structure(got[key], value, f"{where}.{key}")
    elif isinstance(documented, list):
        assert isinstance(got, list), f"{where}: expected a list, got {got!r}"
        if documented and isinstance(documented[0], dict) and "@type" in documented[0]:
            by_type = {d["@type"]: d for d in documented}
            assert sorted(g["@type"] for g in got) == sorted(by_type), where
            for item in got:
                _same_structure(item, by_type[item["@type"]], f"{where}[{item['@type']}]")
        else:
            assert len(got) == len(documented), f"{where}: {len(got)} items"
            for i, (g, d) in enumerate(zip(got, documented, strict=True)):
                _same_structure(g, d, f"{where}[{i}]")
    else:
        assert type(got) is type(documented), f"{where}: {got!r} is not like {documented!r}"


def _burst(base_url: str, n: int, model: str = "gpt-4o-mini") -> list[httpx2.Response]:
    with httpx2.Client(base_url=base_url, timeout=10) as http:
        return [http.post("/chat/completions", json=chat(f"z{i}", model=model)) for i in range(n)]


# -- Gemini ------------------------------------------------------------------------------------


def test_gemini_answers_no_headers_and_a_google_429_with_retry_info(start_sim: StartSim) -> None:
    sim = start_sim(
        Scenario(default=ModelLimits(rpm=300, rpd=10_000), rate_limit_headers="gemini")
    )  # 5 requests per second, a bucket of 1 s
    answers = _burst(sim.base_url, 8, model="gemini-2.5-flash")
    assert [a.status_code for a in answers[:5]] == [200] * 5
    assert not [h for h in answers[0].headers if "ratelimit" in h]
    rejected = next(a for a in answers if a.status_code == 429)
    shape = SHAPES["gemini_429"]
    for name in shape["headers_absent"]:
        assert name not in rejected.headers
    body = rejected.json()
    _same_structure(body, shape["body"])
    error = body[0]["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in error["details"]}
    (violation,) = details["QuotaFailure"]["violations"]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaValue"] == "300"
    assert violation["quotaDimensions"]["model"] == "gemini-2.5-flash"
    # Whole seconds, rounded up: a 0.2 s wait is stated as "1s".
    assert details["RetryInfo"]["retryDelay"] == "1s"


def test_gemini_input_tokens_and_daily_quota_name_their_quota(start_sim: StartSim) -> None:
    sim = start_sim(
        Scenario(
            models={
                "tokens": ModelLimits(input_tpm=3000),  # 50 input tokens per second
                "daily": ModelLimits(rpd=2),
            },
            rate_limit_headers="gemini",
        )
    )
    with httpx2.Client(base_url=sim.base_url, timeout=10) as http:
        long = [
            http.post("/chat/completions", json=chat("y" * 160 + str(i), model="tokens"))
            for i in range(3)
        ]
        sent_at = time.time()
        daily = [
            http.post("/chat/completions", json=chat(f"d{i}", model="daily")) for i in range(3)
        ]
    quota_ids = {
        a.json()[0]["error"]["details"][0]["violations"][0]["quotaId"]
        for a in long + daily
        if a.status_code == 429
    }
    assert quota_ids == {
        "GenerateContentInputTokensPerModelPerMinute",
        "GenerateRequestsPerDayPerProjectPerModel",
    }
    day_429 = daily[-1].json()[0]["error"]["details"][-1]
    # until the day ends: a Unix day, UTC midnight (the CI that ran this at 23:59:55 read 5 s)
    to_day_end_s = 86400.0 - sent_at % 86400.0
    assert abs(int(day_429["retryDelay"].removesuffix("s")) - to_day_end_s) <= 2.0


# -- Groq ----------------------------------------------------------------------------------------


def test_groq_states_the_daily_requests_and_hides_the_per_minute_limit(
    start_sim: StartSim,
) -> None:
    sim = start_sim(
        Scenario(
            default=ModelLimits(rpm=120, tpm=60_000, rpd=14_400, day_refill=True),
            rate_limit_headers="groq",
        )
    )  # 2 requests per second
    answers = _burst(sim.base_url, 4, model="llama-3.1-8b-instant")
    first = answers[0]
    documented = SHAPES["groq_200"]["headers"]
    assert {h for h in first.headers if h.startswith("x-ratelimit-")} == set(documented)
    assert first.headers["x-ratelimit-limit-requests"] == "14400"  # per day, not per minute
    assert first.headers["x-ratelimit-remaining-requests"] == "14399"
    assert first.headers["x-ratelimit-limit-tokens"] == "60000"  # per minute
    # The time to regain the one request used at the day's rate (86400 s / 14400), not the
    # time to midnight; the next answer's reset grows by as much.
    assert first.headers["x-ratelimit-reset-requests"] == "6s"
    second_reset_s = float(answers[1].headers["x-ratelimit-reset-requests"].removesuffix("s"))
    assert 10.0 < second_reset_s <= 12.0  # two used, less what refilled meanwhile
    rejected = next(a for a in answers if a.status_code == 429)
    shape = SHAPES["groq_429"]
    for name in shape["headers_present"]:
        assert name in rejected.headers
    assert "retry-after-ms" not in rejected.headers
    assert int(rejected.headers["retry-after"]) >= 1
    _same_structure(rejected.json(), shape["body"])
    error = rejected.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    # The per-minute request limit is stated only here.
    assert "requests per min (RPM): Limit 120" in error["message"]


# -- OpenRouter-like gateways --------------------------------------------------------------------


def test_gateway_headers_count_a_window_and_reset_in_epoch_milliseconds(
    start_sim: StartSim,
) -> None:
    sim = start_sim(
        Scenario(default=ModelLimits(rpm=30, window_s=10.0), rate_limit_headers="gateway")
    )  # 5 requests per 10 s window
    before_ms = time.time() * 1000
    answers = _burst(sim.base_url, 7)
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    first = answers[0]
    assert first.headers["x-ratelimit-limit"] == "5"  # per window, not per minute
    assert first.headers["x-ratelimit-remaining"] == "4"
    reset_ms = int(first.headers["x-ratelimit-reset"])
    assert before_ms < reset_ms <= before_ms + 10_500  # the window's end, in milliseconds
    assert not [h for h in first.headers if h.startswith("x-ratelimit-") and h.count("-") > 2]
    rejected = answers[-1]
    assert rejected.headers["x-ratelimit-remaining"] == "0"
    assert "retry-after" not in rejected.headers
    _same_structure(rejected.json(), SHAPES["openrouter_429"]["body"])
    assert rejected.json()["error"]["metadata"]["headers"]["X-RateLimit-Reset"] == str(reset_ms)


def test_ietf_headers_state_the_window_in_the_policy_and_reset_in_whole_seconds(
    start_sim: StartSim,
) -> None:
    sim = start_sim(Scenario(default=ModelLimits(rpm=30, window_s=10.0), rate_limit_headers="ietf"))
    answers = _burst(sim.base_url, 7)
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    first = answers[0]
    assert first.headers["ratelimit-limit"] == "5, 5;w=10"  # per window, its policy after it
    assert first.headers["ratelimit-remaining"] == "4"
    assert 1 <= int(first.headers["ratelimit-reset"]) <= 10  # whole seconds to the window's end
    assert not [h for h in first.headers if h.startswith("x-ratelimit")]
    rejected = answers[-1]
    assert rejected.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(rejected.headers["retry-after"]) <= 10
    assert rejected.json() == {"message": "API rate limit exceeded"}  # Kong's


def test_openrouter_states_its_limit_only_in_the_429_body(start_sim: StartSim) -> None:
    sim = start_sim(
        Scenario(default=ModelLimits(rpm=30, window_s=10.0), rate_limit_headers="openrouter")
    )
    answers = _burst(sim.base_url, 6)
    assert not [h for h in answers[0].headers if "ratelimit" in h]
    rejected = answers[-1]
    assert rejected.status_code == 429
    shape = SHAPES["openrouter_429"]
    for name in shape["headers_absent"]:
        assert name not in rejected.headers
    _same_structure(rejected.json(), shape["body"])
    stated = rejected.json()["error"]["metadata"]["headers"]
    assert stated["X-RateLimit-Limit"] == "5"
    assert stated["X-RateLimit-Remaining"] == "0"
    assert int(stated["X-RateLimit-Reset"]) > time.time() * 1000


# -- the profiles --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_zoo_profiles_draw_within_documented_ranges(seed: int) -> None:
    gemini = draw_profile("gemini", seed)
    limits = gemini.scenario.default
    assert gemini.scenario.rate_limit_headers == "gemini"
    assert limits.rpm is not None
    assert 600 <= limits.rpm <= 1500
    assert limits.input_tpm is not None
    assert limits.tpm is None  # Gemini's TPM counts input tokens
    assert gemini.truth["gemini-2.5-flash"].input_tpm == limits.input_tpm
    groq = draw_profile("groq", seed)
    assert groq.scenario.rate_limit_headers == "groq"
    assert groq.scenario.default.rpd is not None
    assert groq.truth["llama-3.1-8b-instant"].rpm == groq.scenario.default.rpm
    gateway = draw_profile("gateway", seed)
    assert gateway.scenario.rate_limit_headers in ("gateway", "ietf", "openrouter")
    assert gateway.scenario.default.window_s == 10.0
    per_window = gateway.scenario.default.rpm * 10 / 60  # type: ignore[operator]
    assert per_window == round(per_window)  # a whole number of requests per window


def test_gateway_profile_draws_both_styles() -> None:
    styles = {draw_profile("gateway", seed).scenario.rate_limit_headers for seed in range(1, 9)}
    assert styles == {"gateway", "ietf", "openrouter"}


async def test_gemini_profile_serves_its_drawn_limits(start_sim: StartSim) -> None:
    draw = draw_profile("gemini", 1)
    sim = start_sim(draw.scenario)
    started = time.monotonic()
    async with httpx2.AsyncClient(base_url=sim.base_url, timeout=10) as http:
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(
                    http.post("/chat/completions", json=chat(f"p{i}", model=draw.models[0]))
                    for i in range(120)
                )
            ),
            timeout=30,
        )
    elapsed_s = time.monotonic() - started
    statuses = [a.status_code for a in answers]
    rpm = draw.truth[draw.models[0]].rpm
    assert rpm is not None
    depth = rpm / 60 * draw.truth[draw.models[0]].burst_s
    # A bucket admits its depth at once plus what refills meanwhile (503s are admitted too),
    # then refuses with Google's 429.
    assert statuses.count(200) + statuses.count(503) <= depth + rpm / 60 * elapsed_s + 1
    assert 429 in statuses
    rejected = next(a for a in answers if a.status_code == 429)
    assert rejected.json()[0]["error"]["status"] == "RESOURCE_EXHAUSTED"


# -- invariants of the new header modes, on an injected clock -------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    per_window=st.integers(min_value=1, max_value=300),
    window_s=st.sampled_from([1.0, 10.0, 60.0]),
    gaps_s=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=60),
)
def test_gateway_headers_state_the_window_truthfully(
    per_window: int, window_s: float, gaps_s: list[float]
) -> None:
    rpm = per_window * 60 / window_s
    limiter = ModelLimiter("m", ModelLimits(rpm=rpm, window_s=window_s), now=0.0)
    wall0 = 1_764_000_000.0
    now = 0.0
    for gap_s in gaps_s:
        now += gap_s
        admitted = limiter.admit(1.0, now) is None
        if admitted:
            limiter.release()
        values = dict(rate_limit_headers("gateway", limiter, now, wall0 + now))
        limit = int(values[b"x-ratelimit-limit"])
        remaining = int(values[b"x-ratelimit-remaining"])
        reset_ms = int(values[b"x-ratelimit-reset"])
        assert limit == per_window  # the window's budget, never the minute's
        assert 0 <= remaining < limit if admitted else remaining == 0
        # The end of the current window, in Unix milliseconds.
        window_end_s = (now // window_s + 1) * window_s
        assert reset_ms == math.ceil((wall0 + window_end_s) * 1000)


@settings(max_examples=200, deadline=None)
@given(
    rpd=st.sampled_from([1000.0, 14_400.0, 500_000.0]),
    used=st.integers(min_value=0, max_value=50),
)
def test_groq_day_reset_is_the_time_to_regain_what_was_used(rpd: float, used: int) -> None:
    limiter = ModelLimiter("m", ModelLimits(rpd=rpd, day_refill=True), now=0.0, day_origin=0.0)
    for _ in range(used):
        assert limiter.admit(1.0, 1.0) is None
    values = dict(rate_limit_headers("groq", limiter, 1.0, 0.0))
    assert values[b"x-ratelimit-limit-requests"] == str(round(rpd)).encode()
    assert int(values[b"x-ratelimit-remaining-requests"]) == rpd - used
    reset_text = values[b"x-ratelimit-reset-requests"].decode()
    expected_s = used * 86400 / rpd
    assert reset_text == go_duration(expected_s)


def test_a_refilling_day_budget_comes_back_a_little_at_a_time() -> None:
    refilling = ModelLimiter("m", ModelLimits(rpd=2, day_s=10.0, day_refill=True), now=0.0)
    fixed = ModelLimiter("m", ModelLimits(rpd=2, day_s=10.0), now=0.0, day_origin=0.0)
    for limiter in (refilling, fixed):
        assert limiter.admit(1.0, 0.0) is None
        assert limiter.admit(1.0, 0.0) is None
    refused = refilling.admit(1.0, 0.0)
    assert refused is not None
    assert (refused.kind, refused.wait_s) == ("requests_day", 5.0)  # one of two per 10 s
    assert refilling.admit(1.0, 5.0) is None
    refused = fixed.admit(1.0, 5.0)
    assert refused is not None
    assert refused.wait_s == 5.0  # the fixed day ends at 10 s
    # Without day_refill, Groq's reset-requests is the time to the day's end.
    values = dict(rate_limit_headers("groq", fixed, 5.0, 0.0))
    assert values[b"x-ratelimit-reset-requests"] == b"5s"


def test_cli_day_refill_and_the_zoo_profiles() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--rpd", "100", "--day-refill", "--headers", "groq"])
    scenario = build_scenario(args)
    assert scenario.default.day_refill
    assert scenario.rate_limit_headers == "groq"
    assert not build_scenario(parser.parse_args(["--rpd", "100"])).default.day_refill
    for name in ("gemini", "groq", "gateway"):
        args = parser.parse_args(["--profile", name, "--seed", "2"])
        assert build_scenario(args) == draw_profile(name, 2).scenario
