"""Tests for pacekeeper.core.headers: durations, retry-after, rate-limit snapshots, hints."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacekeeper.core.headers import (
    RateLimitSnapshot,
    parse_duration_s,
    parse_rate_limit_headers,
    parse_retry_after_s,
    retry_hint_s,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "provider-429s.json"
RESPONSES: list[dict[str, Any]] = json.loads(FIXTURES.read_text())["responses"]
BY_NAME = {r["name"]: r for r in RESPONSES}
# The fixtures' Anthropic resets and HTTP date are in late November 2026; measure from a fixed
# point just before them.
NOW = datetime(2026, 11, 26, 3, 50, 0, tzinfo=timezone.utc).timestamp()


# --- parse_duration_s ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("120ms", 0.12),
        ("20ms", 0.02),
        ("11ms", 0.011),
        ("1.5s", 1.5),
        ("2h3m4.5s", 7384.5),
        ("500us", 0.0005),
        ("500\u00b5s", 0.0005),  # micro sign
        ("500\u03bcs", 0.0005),  # Greek mu
        ("250ns", 2.5e-7),
        ("0s", 0.0),
        ("0", 0.0),
        ("33", 33.0),
        ("1.5", 1.5),
        (" 7s ", 7.0),
        ("+5s", 5.0),
        ("1m30ms", 60.03),
        ("1h0m0s", 3600.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration_examples(text: str, expected: float) -> None:
    result = parse_duration_s(text)
    assert result is not None
    assert result == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_parse_duration_exact_for_common_openai_values() -> None:
    # The governor compares these; "120ms" must be 0.12 exactly, not 0.12000000000000001.
    assert parse_duration_s("120ms") == 0.12
    assert parse_duration_s("11ms") == 0.011


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "s",
        "ms",
        ".s",
        "-1s",
        "-1",
        "-0.5",
        "1x",
        "1.2.3s",
        "abc",
        "1 minute",
        "nan",
        "inf",
        "infs",
        "NaNs",
        "1e400",
        "5m-3s",
        "1_0s",
        "\u0661s",  # Arabic-Indic digit one: float() reads it, Go does not
        "Thu, 26 Nov 2026 03:51:00 GMT",
    ],
)
def test_parse_duration_rejects_garbage(text: str) -> None:
    assert parse_duration_s(text) is None


@pytest.mark.parametrize("digits", [400, 5000])
def test_parse_duration_huge_numbers_are_none_not_errors(digits: int) -> None:
    huge = "9" * digits
    for text in (f"{huge}h0m0s", f"{huge}m1s", f"{huge}s", f"{huge}ms", f"{huge}us", huge):
        assert parse_duration_s(text) is None
    assert parse_rate_limit_headers({"x-ratelimit-limit-requests": huge}, now_wall_s=0) is not None


def go_duration(ns: int) -> str:
    """time.Duration.String() from Go's standard library, for non-negative durations."""

    def frac(value: int, precision: int) -> str:
        whole, part = divmod(value, 10**precision)
        digits = f"{part:0{precision}d}".rstrip("0")
        return f"{whole}.{digits}" if digits else str(whole)

    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return frac(ns, 3) + "\u00b5s"
    if ns < 1_000_000_000:
        return frac(ns, 6) + "ms"
    text = frac(ns % 60_000_000_000, 9) + "s"
    minutes = ns // 60_000_000_000
    if minutes:
        text = f"{minutes % 60}m" + text
        if minutes >= 60:
            text = f"{minutes // 60}h" + text
    return text


def test_go_duration_matches_go() -> None:
    # Spot checks of the reference formatter against strings Go prints.
    assert go_duration(360 * 10**9) == "6m0s"
    assert go_duration(120 * 10**6) == "120ms"
    assert go_duration(1_500_000_000) == "1.5s"
    assert go_duration(7_384_500_000_000) == "2h3m4.5s"
    assert go_duration(500_000) == "500\u00b5s"
    assert go_duration(3_600 * 10**9) == "1h0m0s"


@given(st.integers(min_value=0, max_value=10**9 * 3600 * 24 * 400))
def test_parse_duration_round_trips_go_format(ns: int) -> None:
    parsed = parse_duration_s(go_duration(ns))
    assert parsed is not None
    assert parsed == pytest.approx(ns / 1e9, rel=1e-12, abs=1e-12)


@given(st.text(max_size=30))
def test_parse_duration_never_raises(text: str) -> None:
    result = parse_duration_s(text)
    assert result is None or (math.isfinite(result) and result >= 0)


@given(st.floats(min_value=0, max_value=1e8, allow_nan=False))
def test_parse_duration_reads_plain_seconds(seconds: float) -> None:
    assert parse_duration_s(repr(seconds)) == seconds


# --- parse_retry_after_s -------------------------------------------------------------------


def test_retry_after_ms_wins() -> None:
    headers = {"retry-after-ms": "1500", "retry-after": "360"}
    assert parse_retry_after_s(headers, now_wall_s=NOW) == 1.5


def test_retry_after_ms_garbage_falls_back_to_retry_after() -> None:
    headers = {"retry-after-ms": "soon", "retry-after": "7"}
    assert parse_retry_after_s(headers, now_wall_s=NOW) == 7.0


@pytest.mark.parametrize(("value", "expected"), [("33", 33.0), ("1.25", 1.25), (" 0 ", 0.0)])
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after_s({"Retry-After": value}, now_wall_s=NOW) == expected


def test_retry_after_http_date() -> None:
    when = datetime(2026, 11, 26, 3, 51, 0, tzinfo=timezone.utc)
    headers = {"retry-after": format_datetime(when, usegmt=True)}
    assert headers["retry-after"] == "Thu, 26 Nov 2026 03:51:00 GMT"
    assert parse_retry_after_s(headers, now_wall_s=NOW) == 60.0
    # A date in the past means "now", never a negative wait.
    assert parse_retry_after_s(headers, now_wall_s=NOW + 3600) == 0.0


@pytest.mark.parametrize(
    "value", ["", "soon", "-5", "nan", "inf", "Thu, 99 Foo 2026 99:99:99 GMT", "\x00"]
)
def test_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after_s({"retry-after": value}, now_wall_s=NOW) is None


def test_retry_after_absent_is_none() -> None:
    assert parse_retry_after_s({}, now_wall_s=NOW) is None
    assert parse_retry_after_s({"content-type": "text/plain"}, now_wall_s=NOW) is None


def test_retry_after_with_httpx_headers() -> None:
    headers = httpx2.Headers({"Retry-After-Ms": "250"})
    assert parse_retry_after_s(headers, now_wall_s=NOW) == 0.25


# --- parse_rate_limit_headers --------------------------------------------------------------


def test_openai_snapshot() -> None:
    snap = parse_rate_limit_headers(BY_NAME["openai_tpm_429"]["headers"], now_wall_s=NOW)
    assert snap == RateLimitSnapshot(
        limit_requests=10000,
        remaining_requests=9998,
        reset_requests_s=0.011,
        limit_tokens=200000,
        remaining_tokens=0,
        reset_tokens_s=360.0,
    )
    assert not snap.is_empty


def test_azure_snapshot_plain_seconds() -> None:
    snap = parse_rate_limit_headers(
        BY_NAME["azure_openai_429_integer_seconds"]["headers"], now_wall_s=NOW
    )
    assert snap is not None
    assert snap.remaining_requests == 0
    assert snap.remaining_tokens == 0
    assert snap.reset_tokens_s == 33.0
    assert snap.reset_requests_s is None


def test_anthropic_snapshot_timestamps_from_now() -> None:
    snap = parse_rate_limit_headers(BY_NAME["anthropic_rate_limit"]["headers"], now_wall_s=NOW)
    assert snap == RateLimitSnapshot(
        limit_requests=50,
        remaining_requests=0,
        reset_requests_s=12.0,
        limit_input_tokens=50000,
        remaining_input_tokens=0,
        reset_input_tokens_s=12.0,
        limit_output_tokens=10000,
        remaining_output_tokens=9000,
        reset_output_tokens_s=1.0,
        resets_to_the_second=True,
    )


def test_anthropic_tokens_map_onto_tokens_fields() -> None:
    headers = {
        "anthropic-ratelimit-tokens-limit": "80000",
        "anthropic-ratelimit-tokens-remaining": "100",
        "anthropic-ratelimit-tokens-reset": "2026-11-26T03:50:30.5Z",
    }
    snap = parse_rate_limit_headers(headers, now_wall_s=NOW)
    assert snap is not None
    assert (snap.limit_tokens, snap.remaining_tokens, snap.reset_tokens_s) == (80000, 100, 30.5)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2026-11-26T03:50:12Z", 12.0),
        ("2026-11-26T03:50:12.25Z", 12.25),
        ("2026-11-26T03:50:12.123456789Z", 12.123456),  # nanoseconds, cut to micro
        ("2026-11-26T04:50:12+01:00", 12.0),
        ("2026-11-26T03:50:12", 12.0),  # no zone: UTC
        ("2026-11-26T03:40:00Z", 0.0),  # already past
    ],
)
def test_anthropic_reset_formats(stamp: str, expected: float) -> None:
    snap = parse_rate_limit_headers({"anthropic-ratelimit-requests-reset": stamp}, now_wall_s=NOW)
    assert snap is not None
    assert snap.reset_requests_s == pytest.approx(expected, abs=1e-6)


def test_epoch_reset_from_a_gateway_is_a_time_not_a_wait() -> None:
    snap = parse_rate_limit_headers(
        {"x-ratelimit-reset-requests": str(int(NOW) + 20)}, now_wall_s=NOW
    )
    assert snap is not None
    assert snap.reset_requests_s == pytest.approx(20.0, abs=1.0)


def test_an_epoch_reset_in_milliseconds_is_a_time_not_a_wait() -> None:
    # OpenRouter's X-RateLimit-Reset: milliseconds since the epoch (read as seconds, a wait
    # of 54,000 years)
    snap = parse_rate_limit_headers(
        {"x-ratelimit-reset-requests": str(int(NOW * 1000) + 20_000)}, now_wall_s=NOW
    )
    assert snap is not None
    assert snap.reset_requests_s == pytest.approx(20.0, abs=0.01)


def test_absent_is_none_and_garbage_is_empty() -> None:
    assert parse_rate_limit_headers({"content-type": "application/json"}, now_wall_s=NOW) is None
    assert parse_rate_limit_headers({"retry-after": "3"}, now_wall_s=NOW) is None
    snap = parse_rate_limit_headers(
        {"x-ratelimit-limit-requests": "lots", "x-ratelimit-reset-tokens": "later"},
        now_wall_s=NOW,
    )
    assert snap is not None
    assert snap.is_empty
    assert RateLimitSnapshot().is_empty


def test_negative_remaining_is_zero_and_negative_limit_is_none() -> None:
    snap = parse_rate_limit_headers(
        {"x-ratelimit-remaining-tokens": "-120", "x-ratelimit-limit-tokens": "-1"}, now_wall_s=NOW
    )
    assert snap is not None
    assert snap.remaining_tokens == 0
    assert snap.limit_tokens is None


def test_header_names_are_case_insensitive_and_httpx_headers_work() -> None:
    plain = {"X-RateLimit-Limit-Requests": "500", "X-RATELIMIT-REMAINING-REQUESTS": "7"}
    for headers in (plain, httpx2.Headers(plain)):
        snap = parse_rate_limit_headers(headers, now_wall_s=NOW)
        assert snap is not None
        assert (snap.limit_requests, snap.remaining_requests) == (500, 7)


def test_openai_names_win_over_anthropic_when_both_sent() -> None:
    headers = {"anthropic-ratelimit-requests-limit": "50", "x-ratelimit-limit-requests": "500"}
    snap = parse_rate_limit_headers(headers, now_wall_s=NOW)
    assert snap is not None
    assert snap.limit_requests == 500


_NAMES = st.sampled_from(
    [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "x-ratelimit-reset-requests",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "content-type",
    ]
)


@given(st.dictionaries(_NAMES | st.text(max_size=10), st.text(max_size=40), max_size=12))
def test_parsers_never_raise(headers: dict[str, str]) -> None:
    snap = parse_rate_limit_headers(headers, now_wall_s=NOW)
    hint = retry_hint_s(headers, now_wall_s=NOW, snapshot=snap)
    after = parse_retry_after_s(headers, now_wall_s=NOW)
    for value in (hint, after):
        assert value is None or (math.isfinite(value) and value >= 0)


# --- retry_hint_s --------------------------------------------------------------------------


@pytest.mark.parametrize("response", RESPONSES, ids=[r["name"] for r in RESPONSES])
def test_retry_hint_matches_fixture(response: dict[str, Any]) -> None:
    hint = retry_hint_s(response["headers"], now_wall_s=NOW)
    expected = response["expect"].get("wait_s")
    if expected is not None:
        assert hint == pytest.approx(expected)
    elif response["name"] == "http_date_retry_after":
        assert hint == 60.0  # Thu, 26 Nov 2026 03:51:00 GMT, one minute after NOW
    else:
        assert hint is None


def test_retry_hint_takes_the_longest_exhausted_reset() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert retry_hint_s(headers, now_wall_s=NOW) == 360.0


def test_retry_hint_ignores_budgets_that_are_not_exhausted() -> None:
    headers = {"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_hint_s(headers, now_wall_s=NOW) is None


def test_retry_hint_uses_a_given_snapshot() -> None:
    snap = RateLimitSnapshot(remaining_output_tokens=0, reset_output_tokens_s=4.0)
    assert retry_hint_s({}, now_wall_s=NOW, snapshot=snap) == 4.0
    assert retry_hint_s({"retry-after": "2"}, now_wall_s=NOW, snapshot=snap) == 2.0


def test_resets_sent_as_times_of_day_are_marked_as_whole_seconds() -> None:
    durations = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "120ms"},
        now_wall_s=NOW,
    )
    epoch = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": str(int(NOW) + 3)},
        now_wall_s=NOW,
    )
    assert durations is not None
    assert not durations.resets_to_the_second
    assert epoch is not None
    assert epoch.resets_to_the_second
    assert not durations.is_empty


def test_a_snapshot_says_how_precise_its_coarsest_reset_is() -> None:
    # A depth read from a reset is bracketed by the reset's precision: OpenAI's durations
    # count ms, a time of day whole seconds. The coarsest reset of a snapshot sets it.
    def grain(headers: dict[str, str]) -> float:
        snap = parse_rate_limit_headers(headers, now_wall_s=0.0)
        assert snap is not None
        return snap.reset_grain_s

    assert grain({"x-ratelimit-reset-requests": "49ms"}) == pytest.approx(0.001)
    assert grain({"x-ratelimit-reset-requests": "1.25s"}) == pytest.approx(0.01)
    both = {"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "6m0s"}
    assert grain(both) == pytest.approx(1.0)
    assert grain({"anthropic-ratelimit-requests-reset": "1970-01-01T00:00:03Z"}) == 1.0
    assert grain({"x-ratelimit-limit-requests": "100"}) == 1.0  # no reset: as before


# --- unsuffixed X-RateLimit-* (gateways) ------------------------------------------------------


@pytest.mark.parametrize(
    ("reset", "expected_s"),
    [
        ("4", 4.0),  # seconds
        ("1.5s", 1.5),  # a duration
        (str(int(NOW) + 7), 7.0),  # a Unix time in seconds
        (str(int(NOW * 1000) + 8250), 8.25),  # in milliseconds (OpenRouter)
    ],
)
def test_unsuffixed_gateway_headers_are_a_request_budget_of_unstated_window(
    reset: str, expected_s: float
) -> None:
    snap = parse_rate_limit_headers(
        {"X-RateLimit-Limit": "150", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
        now_wall_s=NOW,
    )
    assert snap is not None
    assert (snap.limit_requests, snap.remaining_requests) == (150, 0)
    assert snap.reset_requests_s == pytest.approx(expected_s, abs=1e-3)
    assert snap.requests_window_unknown  # 150 per a window nobody stated, not per minute
    assert snap.exhausted_reset_s() == pytest.approx(expected_s, abs=1e-3)  # the hint


@pytest.mark.parametrize(
    "limit",
    [
        "6",  # Kong's RateLimit-Limit
        "6, 6;w=60",  # the IETF draft's quota policy after the number (Envoy)
        '6, 6;w=60;comment="sliding window", 1000;w=3600',
    ],
)
def test_the_ietf_drafts_ratelimit_headers_are_a_request_budget_of_unstated_window(
    limit: str,
) -> None:
    # Kong's rate-limiting plugin, Envoy and other API gateways in front of a model:
    # RateLimit-Limit / -Remaining / -Reset (seconds to the window's end), unsuffixed.
    snap = parse_rate_limit_headers(
        {"RateLimit-Limit": limit, "RateLimit-Remaining": "4", "RateLimit-Reset": "47"},
        now_wall_s=NOW,
    )
    assert snap is not None
    assert (snap.limit_requests, snap.remaining_requests) == (6, 4)
    assert snap.reset_requests_s == 47.0
    assert snap.requests_window_unknown


def test_the_ietf_drafts_structured_ratelimit_is_the_named_policys_request_budget() -> None:
    # draft-ietf-httpapi-ratelimit-headers from -07 (Cloudflare's API): RateLimit names the
    # policy nearest its limit, RateLimit-Policy states each one's quota and window.
    minute = parse_rate_limit_headers(
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"burst";r=50;t=30',
        },
        now_wall_s=NOW,
    )
    assert minute is not None
    assert (minute.limit_requests, minute.remaining_requests) == (100, 50)
    assert minute.reset_requests_s == 30.0
    assert not minute.requests_window_unknown  # a window of 60 s: a minute's, as OpenAI's
    spent = parse_rate_limit_headers(
        {
            # a quota of bytes is no request budget; the one of requests is spent
            "RateLimit-Policy": '"bytes";q=9000;w=10;qu="content-bytes", "req";q=20;w=10',
            "RateLimit": '"bytes";r=50;t=3, "req";r=0;t=4',
        },
        now_wall_s=NOW,
    )
    assert spent is not None
    assert (spent.limit_requests, spent.remaining_requests) == (20, 0)
    assert spent.requests_window_unknown  # 20 per 10 s: its window is inferred
    assert spent.exhausted_reset_s() == 4.0  # the hint
    # The older names win when a server sends both.
    both = parse_rate_limit_headers(
        {"RateLimit-Remaining": "7", "RateLimit": '"x";r=5;t=1'}, now_wall_s=NOW
    )
    assert both is not None
    assert both.remaining_requests == 7


def test_litellms_max_parallel_requests_is_the_least_stated_in_flight_limit() -> None:
    # LiteLLM's proxy, one statement per descriptor of the key (its v3 limiter).
    snap = parse_rate_limit_headers(
        {
            "x-ratelimit-api_key-limit-max_parallel_requests": "10",
            "x-ratelimit-api_key-remaining-max_parallel_requests": "7",
            "x-ratelimit-team-limit-max_parallel_requests": "8",
            "x-ratelimit-team-remaining-max_parallel_requests": "5",
        },
        now_wall_s=NOW,
    )
    assert snap is not None
    assert snap.limit_in_flight == 8  # the team's is the tighter
    assert snap.limit_requests is None  # no rate stated
    alone = parse_rate_limit_headers(
        {"X-RateLimit-Team-Limit-Max_Parallel_Requests": "0"}, now_wall_s=NOW
    )
    assert alone is not None
    assert alone.limit_in_flight is None  # 0 in flight is no limit to pace at


def test_litellms_per_key_rates_are_the_tightest_of_its_descriptors() -> None:
    # A key's rpm_limit and its team's: the pace is held to the slower, the headroom to the
    # emptier. Per minute, as LiteLLM's rpm_limit and tpm_limit are.
    snap = parse_rate_limit_headers(
        {
            "x-ratelimit-api_key-limit-requests": "100",
            "x-ratelimit-api_key-remaining-requests": "40",
            "x-ratelimit-team-limit-requests": "1000",
            "x-ratelimit-team-remaining-requests": "20",
            "x-ratelimit-api_key-limit-tokens": "50000",
        },
        now_wall_s=NOW,
    )
    assert snap is not None
    assert (snap.limit_requests, snap.remaining_requests) == (100, 20)
    assert (snap.limit_tokens, snap.remaining_tokens) == (50_000, None)
    assert not snap.requests_window_unknown
    # OpenAI's own names, where sent (LiteLLM passes the upstream's on), come first.
    both = parse_rate_limit_headers(
        {
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-api_key-limit-requests": "100",
            "x-ratelimit-api_key-remaining-requests": "3",
        },
        now_wall_s=NOW,
    )
    assert both is not None
    assert (both.limit_requests, both.remaining_requests) == (None, 499)


def test_the_minute_named_in_the_header_is_read_as_openais_minute() -> None:
    # Mistral (no reset sent) and Cerebras (float seconds to the refill).
    mistral = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-req-minute": "720",
            "x-ratelimit-remaining-req-minute": "717",
            "x-ratelimit-limit-tokens-minute": "5000000",
            "x-ratelimit-remaining-tokens-minute": "4999911",
            "x-ratelimit-tokens-query-cost": "52",
        },
        now_wall_s=NOW,
    )
    assert mistral is not None
    assert (mistral.limit_requests, mistral.remaining_requests) == (720, 717)
    assert (mistral.limit_tokens, mistral.remaining_tokens) == (5_000_000, 4_999_911)
    assert not mistral.requests_window_unknown
    cerebras = parse_rate_limit_headers(
        {
            # a day's budget is no pace: not read as a minute's
            "x-ratelimit-limit-requests-day": "14400",
            "x-ratelimit-remaining-requests-day": "14399",
            "x-ratelimit-reset-requests-day": "33011.382867097855",
            "x-ratelimit-limit-tokens-minute": "60000",
            "x-ratelimit-remaining-tokens-minute": "59000",
            "x-ratelimit-reset-tokens-minute": "11.382867097854614",
        },
        now_wall_s=NOW,
    )
    assert cerebras is not None
    assert (cerebras.limit_requests, cerebras.remaining_requests) == (None, None)
    assert (cerebras.limit_tokens, cerebras.remaining_tokens) == (60_000, 59_000)
    assert cerebras.reset_tokens_s == pytest.approx(11.383, abs=1e-3)


def test_a_limit_and_remaining_of_minus_one_say_nothing() -> None:
    # Azure OpenAI's Responses API: -1 for both, "not known"; a negative remaining under a
    # real limit is over budget.
    unknown = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-tokens": "-1",
            "x-ratelimit-remaining-tokens": "-1",
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "-2",
        },
        now_wall_s=NOW,
    )
    assert unknown is not None
    assert (unknown.limit_tokens, unknown.remaining_tokens) == (None, None)
    assert (unknown.limit_requests, unknown.remaining_requests) == (100, 0)


def test_suffixed_request_headers_win_over_unsuffixed_ones() -> None:
    snap = parse_rate_limit_headers(
        {
            "x-ratelimit-limit": "10",
            "x-ratelimit-remaining": "1",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
        },
        now_wall_s=NOW,
    )
    assert snap is not None
    assert (snap.limit_requests, snap.remaining_requests) == (500, 499)
    assert not snap.requests_window_unknown
    tokens_only = parse_rate_limit_headers(
        {"x-ratelimit-limit": "10", "x-ratelimit-limit-tokens": "9000"}, now_wall_s=NOW
    )
    assert tokens_only is not None
    assert (tokens_only.limit_requests, tokens_only.limit_tokens) == (10, 9000)
    assert tokens_only.requests_window_unknown
