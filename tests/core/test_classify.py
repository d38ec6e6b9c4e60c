"""Tests for pacekeeper.core.classify: every provider shape to a kind, retryability and hint."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacekeeper.core.classify import (
    OutcomeKind,
    Verdict,
    classify_response,
    verdict_for_failure,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "provider-429s.json"
RESPONSES: list[dict[str, Any]] = json.loads(FIXTURES.read_text())["responses"]
NOW = datetime(2026, 11, 26, 3, 50, 0, tzinfo=timezone.utc).timestamp()

EXPECTED_KIND = {
    "openai_tpm_429": OutcomeKind.RATE_LIMITED,
    "openai_rpm_429_no_retry_after": OutcomeKind.RATE_LIMITED,
    "openai_insufficient_quota": OutcomeKind.QUOTA_EXHAUSTED,
    "openai_server_error": OutcomeKind.SERVER_ERROR,
    "openai_should_retry_false": OutcomeKind.OVERLOADED,
    "openai_bad_request": OutcomeKind.CLIENT_ERROR,
    "azure_openai_429_integer_seconds": OutcomeKind.RATE_LIMITED,
    "anthropic_rate_limit": OutcomeKind.RATE_LIMITED,
    "anthropic_overloaded": OutcomeKind.OVERLOADED,
    "anthropic_spend_limit": OutcomeKind.QUOTA_EXHAUSTED,
    "gateway_bare_429": OutcomeKind.RATE_LIMITED,
    "http_date_retry_after": OutcomeKind.OVERLOADED,
}


def body_bytes(body: object) -> bytes:
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


def classify_fixture(response: dict[str, Any]) -> Verdict:
    return classify_response(
        response["status"], response["headers"], body_bytes(response["body"]), now_wall_s=NOW
    )


@pytest.mark.parametrize("response", RESPONSES, ids=[r["name"] for r in RESPONSES])
def test_fixture_retryable_kind_and_hint(response: dict[str, Any]) -> None:
    verdict = classify_fixture(response)
    assert verdict.retryable is response["expect"]["retryable"]
    assert verdict.kind is EXPECTED_KIND[response["name"]]
    assert verdict.status == response["status"]
    expected_wait = response["expect"].get("wait_s")
    if expected_wait is not None:
        assert verdict.hint_s == pytest.approx(expected_wait)
    if response["name"] == "http_date_retry_after":
        assert verdict.hint_s == 60.0


def test_every_fixture_has_an_expected_kind() -> None:
    assert {r["name"] for r in RESPONSES} == set(EXPECTED_KIND)


@pytest.mark.parametrize("response", RESPONSES, ids=[r["name"] for r in RESPONSES])
def test_fixture_with_httpx_headers(response: dict[str, Any]) -> None:
    verdict = classify_response(
        response["status"],
        httpx2.Headers(response["headers"]),
        body_bytes(response["body"]),
        now_wall_s=NOW,
    )
    assert verdict == classify_fixture(response)


def test_error_codes_from_each_shape() -> None:
    codes = {r["name"]: classify_fixture(r).error_code for r in RESPONSES}
    assert codes["openai_tpm_429"] == "rate_limit_exceeded"
    assert codes["openai_insufficient_quota"] == "insufficient_quota"
    assert codes["openai_server_error"] == "server_error"  # no code: the type
    assert codes["azure_openai_429_integer_seconds"] == "429"
    assert codes["anthropic_rate_limit"] == "rate_limit_error"
    assert codes["anthropic_overloaded"] == "overloaded_error"
    assert codes["anthropic_spend_limit"] == "enforced_spend_limit_reached"
    assert codes["gateway_bare_429"] is None


def test_reason_is_one_readable_line() -> None:
    verdict = classify_fixture(
        next(r for r in RESPONSES if r["name"] == "openai_rpm_429_no_retry_after")
    )
    assert verdict.reason.startswith("HTTP 429 rate_limit_exceeded: Rate limit reached for gpt-4o")
    assert verdict.reason.endswith("(server hint: retry in 0.12s)")
    html = classify_fixture(next(r for r in RESPONSES if r["name"] == "http_date_retry_after"))
    assert html.reason == "HTTP 503: Service Unavailable (server hint: retry in 60s)"


def test_reason_is_truncated_and_has_no_other_header_values() -> None:
    message = "word " * 500
    headers = {
        "x-request-id": "req_secret_123",
        "authorization": "Bearer sk-secret",
        "retry-after": "2",
    }
    body = json.dumps({"error": {"message": message, "code": "rate_limit_exceeded"}}).encode()
    verdict = classify_response(429, headers, body, now_wall_s=NOW)
    assert "\n" not in verdict.reason
    assert len(verdict.reason) < 320
    assert "req_secret_123" not in verdict.reason
    assert "sk-secret" not in verdict.reason
    assert "retry in 2s" in verdict.reason


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (200, OutcomeKind.OK, False),
        (201, OutcomeKind.OK, False),
        (204, OutcomeKind.OK, False),
        (301, OutcomeKind.OTHER, False),
        (400, OutcomeKind.CLIENT_ERROR, False),
        (401, OutcomeKind.CLIENT_ERROR, False),
        (402, OutcomeKind.QUOTA_EXHAUSTED, False),
        (403, OutcomeKind.CLIENT_ERROR, False),
        (404, OutcomeKind.CLIENT_ERROR, False),
        (408, OutcomeKind.REQUEST_TIMEOUT, True),
        (409, OutcomeKind.CONFLICT, True),
        (413, OutcomeKind.CLIENT_ERROR, False),
        (422, OutcomeKind.CLIENT_ERROR, False),
        (425, OutcomeKind.CLIENT_ERROR, False),
        (429, OutcomeKind.RATE_LIMITED, True),
        (500, OutcomeKind.SERVER_ERROR, True),
        (501, OutcomeKind.SERVER_ERROR, False),
        (502, OutcomeKind.SERVER_ERROR, True),
        (503, OutcomeKind.OVERLOADED, True),
        (504, OutcomeKind.SERVER_ERROR, True),
        (520, OutcomeKind.SERVER_ERROR, True),
        (529, OutcomeKind.OVERLOADED, True),
        (0, OutcomeKind.OTHER, False),
        (700, OutcomeKind.OTHER, False),
    ],
)
def test_status_table(status: int, kind: OutcomeKind, retryable: bool) -> None:
    verdict = classify_response(status, {}, None, now_wall_s=NOW)
    assert (verdict.kind, verdict.retryable) == (kind, retryable)


@pytest.mark.parametrize(
    "error",
    [
        {"code": "insufficient_quota"},
        {"type": "insufficient_quota", "code": None},
        {"code": "billing_hard_limit_reached", "type": "invalid_request_error"},
        {"type": "rate_limit_error", "details": {"error_code": "enforced_spend_limit_reached"}},
        {"type": "rate_limit_error", "details": [{"reason": "ENFORCED_SPEND_LIMIT_REACHED"}]},
    ],
)
def test_billing_429s_are_quota_exhausted(error: dict[str, Any]) -> None:
    body = json.dumps({"error": error}).encode()
    verdict = classify_response(429, {"retry-after": "30"}, body, now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.QUOTA_EXHAUSTED
    assert not verdict.retryable
    assert not verdict.is_backpressure


def test_billing_words_in_the_message_alone_are_still_a_rate() -> None:
    # Gemini says this for ordinary per-minute limits; only codes decide.
    error = {"code": 429, "message": "You exceeded your current quota", "status": "EXHAUSTED"}
    body = json.dumps({"error": error}).encode()
    verdict = classify_response(429, {}, body, now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.RATE_LIMITED
    assert verdict.retryable
    assert verdict.error_code == "EXHAUSTED"  # Google: code repeats the status; status names it


def test_x_should_retry_overrides_both_ways() -> None:
    bad_request = b'{"error": {"message": "nope", "code": "invalid_value"}}'
    verdict = classify_response(400, {"X-Should-Retry": "TRUE"}, bad_request, now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.CLIENT_ERROR
    assert verdict.retryable
    assert "server asks to retry" in verdict.reason
    verdict = classify_response(500, {"x-should-retry": "false"}, None, now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.SERVER_ERROR
    assert not verdict.retryable
    quota = b'{"error": {"code": "insufficient_quota"}}'
    assert classify_response(429, {"x-should-retry": "true"}, quota, now_wall_s=NOW).retryable
    # Anything but true/false is ignored.
    verdict = classify_response(503, {"x-should-retry": "maybe"}, None, now_wall_s=NOW)
    assert verdict.retryable


def test_2xx_body_is_not_parsed_but_limits_are_read() -> None:
    headers = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0"}
    verdict = classify_response(200, headers, b"\xff not json {{{", now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.OK
    assert not verdict.retryable
    assert verdict.hint_s is None
    assert verdict.limits is not None
    assert verdict.limits.limit_requests == 500
    assert verdict.error_code is None


def test_limits_are_none_without_rate_limit_headers() -> None:
    assert classify_response(200, {"content-type": "x"}, None, now_wall_s=NOW).limits is None


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b'{"error": "upstream timed out"}', None, "upstream timed out"),
        (b'{"detail": "Not Found"}', None, "Not Found"),
        (b'{"message": "slow down", "code": "throttled"}', "throttled", "slow down"),
        (b'[{"error": {"code": 503, "message": "The model is overloaded."}}]', "503", None),
        (b'"Too Many Requests"', None, "Too Many Requests"),
        (b"Too Many Requests", None, "Too Many Requests"),
        (
            b"<html><head><title>502</title></head><body><h1>Bad gateway</h1></body></html>",
            None,
            "502 Bad gateway",
        ),
        (b"", None, None),
        (b"\x00\xff\xfe garbage", None, None),
        (b'{"error": {"message": "half', None, None),
    ],
)
def test_odd_bodies(body: bytes, code: str | None, message: str | None) -> None:
    verdict = classify_response(502, {}, body, now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.SERVER_ERROR
    assert verdict.error_code == code
    if message is not None:
        assert message in verdict.reason


def test_overloaded_error_type_on_a_500_is_overload() -> None:
    body = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    verdict = classify_response(500, {}, body, now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.OVERLOADED
    assert verdict.is_backpressure


def test_body_is_bounded() -> None:
    # A valid JSON error larger than the 64 KiB read limit is read as text, not parsed whole.
    huge = json.dumps({"error": {"message": "x" * 200_000, "code": "insufficient_quota"}})
    verdict = classify_response(429, {}, huge.encode(), now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.RATE_LIMITED
    assert len(verdict.reason) < 300


def test_deeply_nested_body_does_not_raise() -> None:
    verdict = classify_response(500, {}, b"[" * 60_000, now_wall_s=NOW)
    assert verdict.kind is OutcomeKind.SERVER_ERROR


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["error", "code", "type", "message", "details", "error_code", "detail"])
            | st.text(max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(
    status=st.integers(min_value=-1, max_value=1000),
    body=st.binary(max_size=200) | _json_values.map(lambda v: json.dumps(v).encode()),
    headers=st.dictionaries(
        st.sampled_from(["retry-after", "x-should-retry", "x-ratelimit-reset-tokens", "x"]),
        st.text(max_size=20),
    ),
)
def test_classify_never_raises(status: int, body: bytes, headers: dict[str, str]) -> None:
    verdict = classify_response(status, headers, body, now_wall_s=NOW)
    assert isinstance(verdict.kind, OutcomeKind)
    assert "\n" not in verdict.reason
    assert verdict.status == status


def test_outcome_kind_values() -> None:
    assert {kind.value for kind in OutcomeKind} == {
        "ok",
        "rate_limited",
        "quota_exhausted",
        "overloaded",
        "server_error",
        "request_timeout",
        "conflict",
        "client_error",
        "timeout",
        "connection_error",
        "malformed",
        "other",
    }


@pytest.mark.parametrize(
    "kind", [OutcomeKind.TIMEOUT, OutcomeKind.CONNECTION_ERROR, OutcomeKind.MALFORMED]
)
def test_verdict_for_failure_is_retryable(kind: OutcomeKind) -> None:
    verdict = verdict_for_failure(kind, "ReadError:\n  connection reset by peer")
    assert verdict == Verdict(
        kind=kind, retryable=True, reason="ReadError: connection reset by peer"
    )
    assert verdict.hint_s is None
    assert verdict.limits is None
    assert verdict.status is None
    assert not verdict.is_backpressure


def test_verdict_for_failure_other_kinds_and_long_reasons() -> None:
    assert not verdict_for_failure(OutcomeKind.OTHER, "ValueError").retryable
    assert len(verdict_for_failure(OutcomeKind.TIMEOUT, "x" * 10_000).reason) <= 200


def test_backpressure_kinds() -> None:
    pressing = {
        k for k in OutcomeKind if Verdict(kind=k, retryable=True, reason="").is_backpressure
    }
    assert pressing == {OutcomeKind.RATE_LIMITED, OutcomeKind.OVERLOADED}


GEMINI_429 = b"""[{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
  "message": "You exceeded your current quota, please check your plan and billing details.",
  "details": [
    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
      "quotaMetric":
        "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
      "quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier"}]},
    {"@type": "type.googleapis.com/google.rpc.Help", "links": []},
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37.5s"}]}}]"""


def test_gemini_429s_give_their_retry_delay_and_token_scope_from_the_details() -> None:
    """Gemini sends no retry-after: its hint is RetryInfo.retryDelay in the body's details, and
    QuotaFailure names the quota; its "exceeded your current quota" is an ordinary rate limit."""
    verdict = classify_response(429, {}, GEMINI_429, now_wall_s=0.0)
    assert verdict.kind is OutcomeKind.RATE_LIMITED
    assert verdict.retryable
    assert verdict.hint_s == 37.5
    assert verdict.limit_scope == "input_tokens"  # Gemini's TPM counts the prompt alone
    assert verdict.error_code == "RESOURCE_EXHAUSTED"
    headers_win = classify_response(429, {"retry-after": "3"}, GEMINI_429, now_wall_s=0.0)
    assert headers_win.hint_s == 3.0


@pytest.mark.parametrize(
    ("quota", "scope"),
    [
        ("GenerateContentPaidTierInputTokensPerModelPerMinute", "input_tokens"),
        ("generativelanguage.googleapis.com/generate_content_input_token_count", "input_tokens"),
        ("GenerateContentTokensPerModelPerMinute", "tokens"),
        ("GenerateRequestsPerMinutePerProjectPerModel", None),
        ("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "daily"),
        ("GenerateContentInputTokensPerModelPerDay", "daily"),
    ],
)
def test_a_google_quota_names_which_tokens_it_counts(quota: str, scope: str | None) -> None:
    violation = json.dumps({"quotaId": quota})
    body = (
        '{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [{"@type": '
        f'"type.googleapis.com/google.rpc.QuotaFailure", "violations": [{violation}]}}]}}}}'
    )
    assert classify_response(429, {}, body.encode(), now_wall_s=0.0).limit_scope == scope


def _google_quota(quota_id: str, value: object) -> bytes:
    violation = json.dumps({"quotaId": quota_id, "quotaValue": value})
    return (
        '{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [{"@type": '
        f'"type.googleapis.com/google.rpc.QuotaFailure", "violations": [{violation}]}}]}}}}'
    ).encode()


@pytest.mark.parametrize(
    ("quota", "value", "field", "expected"),
    [
        ("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "15", "limit_requests", 15),
        (
            "GenerateContentInputTokensPerModelPerMinute",
            "250000",
            "limit_input_tokens",
            250000,
        ),
        ("GenerateContentTokensPerModelPerMinute", 90000, "limit_tokens", 90000),
        # a day's quota is no rate; 0 (not in the plan) states none; nor does junk
        ("GenerateRequestsPerDayPerProjectPerModel", "50", None, None),
        ("GenerateRequestsPerMinutePerProjectPerModel", "0", None, None),
        ("GenerateRequestsPerMinutePerProjectPerModel", "many", None, None),
        ("GenerateRequestsPerMinutePerProjectPerModel", True, None, None),
        ("generate_content_requests", "15", None, None),  # no period named
    ],
)
def test_a_google_quota_states_its_per_minute_limit(
    quota: str, value: object, field: str | None, expected: int | None
) -> None:
    """Gemini sends no rate-limit headers: a QuotaFailure's quotaValue is where it states a
    limit, read as the limit header of the same budget."""
    verdict = classify_response(429, {}, _google_quota(quota, value), now_wall_s=0.0)
    if field is None:
        assert verdict.limits is None
    else:
        assert verdict.limits is not None
        assert getattr(verdict.limits, field) == expected


def test_a_limit_header_wins_over_a_quota_in_the_body() -> None:
    body = _google_quota("GenerateRequestsPerMinutePerProjectPerModel", "15")
    verdict = classify_response(429, {"x-ratelimit-limit-requests": "30"}, body, now_wall_s=0.0)
    assert verdict.limits is not None
    assert verdict.limits.limit_requests == 30


@pytest.mark.parametrize(
    "details",
    [
        "[]",
        '[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"}]',
        '[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "-4s"}]',
        '[{"@type": 7}, "x", null, {"@type": "type.googleapis.com/google.rpc.QuotaFailure"}]',
        '{"not": "a list"}',
    ],
)
def test_odd_google_details_are_ignored(details: str) -> None:
    head = '{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": '
    body = head + details + "}}"
    verdict = classify_response(429, {}, body.encode(), now_wall_s=0.0)
    assert verdict.kind is OutcomeKind.RATE_LIMITED
    assert verdict.hint_s is None
    assert verdict.limit_scope is None


def test_openrouter_limit_stated_only_in_the_429_body_is_read() -> None:
    # OpenRouter's 429 (tests/sim/fixtures/provider_shapes.json): no rate-limit header, the
    # limit, remaining and reset (Unix ms) inside error.metadata.headers, no retry-after.
    now_wall_s = 1741305590.0
    body = json.dumps(
        {
            "error": {
                "message": "Rate limit exceeded: free-models-per-min.",
                "code": 429,
                "metadata": {
                    "headers": {
                        "X-RateLimit-Limit": "20",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": "1741305600000",
                    }
                },
            }
        }
    ).encode()
    verdict = classify_response(429, {}, body, now_wall_s=now_wall_s)
    assert verdict.kind is OutcomeKind.RATE_LIMITED
    assert verdict.limits is not None
    assert (verdict.limits.limit_requests, verdict.limits.remaining_requests) == (20, 0)
    assert verdict.limits.requests_window_unknown
    assert verdict.hint_s == pytest.approx(10.0)  # the exhausted budget's reset
    # Real headers win where both say something; a 2xx body is never read.
    both = classify_response(
        429, {"x-ratelimit-remaining": "3", "retry-after": "2"}, body, now_wall_s=now_wall_s
    )
    assert both.limits is not None
    assert (both.limits.limit_requests, both.limits.remaining_requests) == (20, 3)
    assert both.hint_s == 2.0
    assert classify_response(200, {}, body, now_wall_s=now_wall_s).limits is None
