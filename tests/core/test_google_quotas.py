"""A Google 429 body's QuotaFailure states its quotas' values (Gemini sends no rate-limit
headers): which of them a lane takes as its limits, and in which units. Free-tier bodies list
several violations in one QuotaFailure; a quota may be per model, per project or per day."""

from __future__ import annotations

import json

import pytest

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane

from .simclock import SimClock
from .test_token_discovery import _MAX_TOKENS, _lane_after_answers


def _body(*violations: tuple[str, str, int]) -> bytes:
    error = {
        "code": 429,
        "message": "You exceeded your current quota",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
                        "quotaId": quota_id,
                        "quotaDimensions": {"location": "global", "model": "m"},
                        "quotaValue": str(value),
                    }
                    for metric, quota_id, value in violations
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "40s"},
        ],
    }
    return json.dumps({"error": error}).encode()


def test_a_day_and_a_minute_s_input_quota_in_one_body_keep_their_units() -> None:
    clock = SimClock()
    lane = _lane_after_answers(clock)
    clock.now = 1.0
    permit = lane._grant(1.0, 400, 1.0)
    body = _body(
        (
            "generate_content_free_tier_input_token_count",
            "GenerateContentInputTokensPerModelPerMinute-FreeTier",
            250_000,
        ),
        (
            "generate_content_free_tier_requests",
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            250,
        ),
    )
    verdict = classify_response(429, {}, body, now_wall_s=0.0)
    assert verdict.limit_scope == "daily"
    lane.settle(permit, verdict, now=1.005, max_hint_s=600.0, retry=False)
    # The limit counts input tokens alone: either it is not taken, or the bucket charges
    # the prompt alone. Taken in prompt + reserve, a 50-token prompt is charged 306.
    if lane.tpm is not None:
        grant = lane._grant(50.0, 50 + _MAX_TOKENS, 50.0, _MAX_TOKENS)
        assert lane._charged_for(grant) == 50, (lane.tpm, lane._charged_for(grant))


def test_two_minute_quotas_of_one_budget_take_the_lower() -> None:
    body = _body(
        ("generate_content_requests", "GenerateRequestsPerMinutePerProjectPerModel", 10),
        ("generate_content_requests", "GenerateRequestsPerMinutePerProjectPerModel-Tier2", 1000),
    )
    verdict = classify_response(429, {}, body, now_wall_s=0.0)
    assert verdict.limits is not None
    assert verdict.limits.limit_requests == 10, verdict.limits.limit_requests


def test_a_header_stated_token_budget_s_hint_is_waited_whole() -> None:
    # OpenAI-shaped: the 2xx answers state the token limit; a 429 that names tokens comes
    # with retry-after: 3 and no rate-limit headers (a gateway that strips them on errors).
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    ok_headers = {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-limit-tokens": "200000",
        "x-ratelimit-remaining-tokens": "199000",
        "x-ratelimit-reset-tokens": "300ms",
    }
    for i in range(20):
        clock.now = 0.05 * i
        permit = lane._grant(clock.now, 400, clock.now)
        ok = classify_response(200, ok_headers, None, now_wall_s=0.0)
        lane.settle(permit, ok, now=clock.now + 0.01, max_hint_s=600.0, retry=False)
    assert lane.token_rate.ceiling == 200_000
    clock.now = 1.0
    permit = lane._grant(1.0, 400, 1.0)
    body = json.dumps(
        {"error": {"message": "TPM", "type": "tokens", "code": "rate_limit_exceeded"}}
    ).encode()
    verdict = classify_response(429, {"retry-after": "3"}, body, now_wall_s=0.0)
    lane.settle(permit, verdict, now=1.005, max_hint_s=600.0, retry=False)
    # stated by headers that count a window down: waited whole (a body's quota is not)
    assert lane.cooldown.remaining_s(now=1.005) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "quota_id",
    [
        "GenerateRequestsPerMinutePerProject",  # the project's, not this model's lane
        "GenerateContentOutputTokensPerModelPerMinute",  # no such budget paced by this name
        "CountTokensRequestsPerMinutePerProjectPerModel",
    ],
)
def test_a_quota_not_of_one_model_s_paced_budget_states_no_limit(quota_id: str) -> None:
    body = _body(("generate_content_requests", quota_id, 30))
    assert classify_response(429, {}, body, now_wall_s=0.0).limits is None


def test_a_gateway_s_window_of_unknown_length_is_not_given_a_minute_s_quota() -> None:
    body = _body(("generate_content_requests", "GenerateRequestsPerMinutePerProjectPerModel", 15))
    headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "3"}
    verdict = classify_response(429, headers, body, now_wall_s=0.0)
    assert verdict.limits is not None
    assert verdict.limits.requests_window_unknown
    assert verdict.limits.limit_requests is None
