"""Outcome decisions of the governor, without HTTP: verdicts in, decisions and records out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import pacekeeper
from pacekeeper import (
    Governor,
    Limits,
    NonRetryableError,
    RecordCollector,
    RequestTooLarge,
    RetriesExhausted,
    RetryBudgetExhausted,
    RetryPolicy,
    RetryWaitTooLong,
)
from pacekeeper.core.attempts import Attempts
from pacekeeper.core.classify import OutcomeKind, classify_response, verdict_for_failure
from pacekeeper.core.errors import DeadlineExceeded
from pacekeeper.core.tokens import CHARS, estimate_request_chars, estimate_request_tokens


def verdict(status: int, headers: dict[str, str] | None = None, body: bytes | None = None) -> Any:
    return classify_response(status, headers or {}, body, now_wall_s=time.time())


async def test_a_non_retryable_answer_ends_the_request_after_one_attempt() -> None:
    hooks = RecordCollector()
    gov = Governor(hooks=[hooks])
    call = gov.call(route="/v1/chat/completions", model="m", tokens=10)
    permit = await call.admit()
    body = b'{"error": {"message": "bad max_tokens", "type": "invalid_request_error"}}'
    decision = call.settle(permit, verdict(400, body=body))
    assert not decision.retry
    assert isinstance(decision.error, NonRetryableError)
    assert "bad max_tokens" in str(decision.error)
    assert decision.record is not None
    assert decision.record.attempts == 1
    assert [r.status for r in hooks.attempts] == [400]
    assert hooks.requests[0].error_type == "NonRetryableError"


async def test_insufficient_quota_is_not_retried() -> None:
    gov = Governor()
    call = gov.call(route="/v1/chat/completions", model="m", tokens=10)
    permit = await call.admit()
    body = (
        b'{"error": {"code": "insufficient_quota", "type": "insufficient_quota", "message": "q"}}'
    )
    decision = call.settle(permit, verdict(429, body=body))
    assert not decision.retry
    assert isinstance(decision.error, NonRetryableError)
    assert gov.lane("/v1/chat/completions", "m").cooldown.times_closed == 0


async def test_a_hinted_429_waits_the_hint_and_closes_the_gate() -> None:
    gov = Governor(seed=1)
    call = gov.call(route="/v1/chat/completions", model="m", tokens=10)
    permit = await call.admit()
    decision = call.settle(permit, verdict(429, {"retry-after-ms": "1500"}))
    assert decision.retry
    assert 1.5 <= decision.delay_s <= 1.5 + 0.05 + 0.075
    lane = gov.lane("/v1/chat/completions", "m")
    assert lane.cooldown.remaining_s(now=time.monotonic()) == pytest.approx(1.5, abs=0.05)


async def test_a_hint_beyond_the_ceiling_fails_at_once_naming_the_wait() -> None:
    gov = Governor(retry=RetryPolicy(max_hint_s=60))
    call = gov.call(route="/v1/chat/completions", model="m", tokens=10)
    permit = await call.admit()
    decision = call.settle(permit, verdict(429, {"retry-after": "360"}))
    assert isinstance(decision.error, RetryWaitTooLong)
    assert "360" in str(decision.error)


async def test_backoff_is_capped_full_jitter() -> None:
    gov = Governor(retry=RetryPolicy(backoff_base_s=1, backoff_cap_s=4), seed=3)
    delays = [gov.delay_for(verdict(503), attempt) for attempt in range(1, 12) for _ in range(20)]
    assert all(0 <= d <= 4 for d in delays)
    assert max(delays) > 3  # the cap is reached, not a constant


async def test_retries_stop_at_max_attempts() -> None:
    pacekeeper.set_testing(True)
    try:
        gov = Governor(retry=RetryPolicy(max_attempts=3))
        attempts = Attempts(gov.call(route="/r", model=None, tokens=0))
        decisions = [attempts.answered(verdict(502)) async for _ in attempts]
        assert len(decisions) == 3
        assert isinstance(decisions[-1].error, RetriesExhausted)
        assert "3 attempts" in str(decisions[-1].error)
    finally:
        pacekeeper.set_testing(False)


async def test_the_retry_budget_stops_a_storm(request: pytest.FixtureRequest) -> None:
    pacekeeper.set_testing(True)
    request.addfinalizer(lambda: pacekeeper.set_testing(False))
    gov = Governor(
        retry=RetryPolicy(max_attempts=10, retry_budget_ratio=0.1, retry_budget_initial=5)
    )
    requests, retries, budget_failures = 200, 0, 0
    for _ in range(requests):
        attempts = Attempts(gov.call(route="/r", model=None, tokens=0))
        async for _ in attempts:  # the pauses are skipped: testing mode
            retries += attempts.answered(verdict(503)).retry
        assert attempts.decision is not None
        budget_failures += isinstance(attempts.decision.error, RetryBudgetExhausted)
    # every request fails (the upstream is down), but retries stay near 10% of requests
    assert retries <= 5 + 0.1 * requests + 1
    assert budget_failures > 150
    snapshot = gov.stats()[0]
    assert snapshot.retries == retries
    assert snapshot.failed == requests


async def test_429s_do_not_spend_the_retry_budget() -> None:
    pacekeeper.set_testing(True)
    try:
        gov = Governor(retry=RetryPolicy(retry_budget_initial=0, retry_budget_ratio=0))
        call = gov.call(route="/r", model=None, tokens=0)
        permit = await call.admit()
        assert call.settle(permit, verdict(429)).retry
        permit = await call.admit()
        assert not call.settle(permit, verdict(500)).retry
    finally:
        pacekeeper.set_testing(False)


async def test_a_retry_past_the_deadline_fails_at_once() -> None:
    gov = Governor(retry=RetryPolicy(deadline_s=1.0))
    call = gov.call(route="/r", model=None, tokens=0)
    permit = await call.admit()
    decision = call.settle(permit, verdict(503, {"retry-after": "5"}))
    assert isinstance(decision.error, DeadlineExceeded)


async def test_a_request_larger_than_the_whole_minute_fails_at_once() -> None:
    gov = Governor(limits=Limits(tpm=1000))
    call = gov.call(route="/r", model="m", tokens=5000)
    with pytest.raises(RequestTooLarge, match="5000 tokens"):
        await call.admit()


async def test_usage_reconciles_the_estimate() -> None:
    gov = Governor(limits=Limits(tpm=600_000))
    for _ in range(30):
        call = gov.call(route="/r", model="m", tokens=100)
        permit = await call.admit()
        call.settle(permit, verdict(200), prompt_tokens=200, completion_tokens=5)
    lane = gov.lane("/r", "m")
    assert lane.prompt_scale > 1.5  # learned that our estimates run low
    assert lane.cost_of(100, 0) > 150


async def test_learned_limits_come_from_headers() -> None:
    gov = Governor()
    call = gov.call(route="/r", model="m", tokens=10)
    permit = await call.admit()
    headers = {
        "x-ratelimit-limit-requests": "1200",
        "x-ratelimit-remaining-requests": "1199",
        "x-ratelimit-reset-requests": "50ms",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "89000",
        "x-ratelimit-reset-tokens": "1s",
    }
    call.settle(permit, verdict(200, headers))
    lane = gov.lane("/r", "m")
    assert lane.rpm == 1200
    assert lane.tpm == 90000
    assert lane.requests is not None
    assert lane.requests.rate_per_s == pytest.approx(20)


async def test_configured_limits_are_not_raised_by_headers() -> None:
    gov = Governor(limits=Limits(rpm=100))
    call = gov.call(route="/r", model="m", tokens=10)
    permit = await call.admit()
    call.settle(permit, verdict(200, {"x-ratelimit-limit-requests": "10000"}))
    assert gov.lane("/r", "m").rpm == 100


async def test_per_model_limits() -> None:
    gov = Governor(limits=Limits(rpm=100), models={"big": Limits(rpm=10, concurrency=2)})
    assert gov.lane("/r", "big").rpm == 10
    assert gov.lane("/r", "big").slots.limit == 2
    assert gov.lane("/r", "small").rpm == 100


class StatusError(Exception):
    def __init__(self, status_code: int, body: bytes = b"") -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code
        self.response = type("R", (), {"headers": {}, "content": body})()


async def test_run_retries_sdk_style_exceptions_and_returns_the_result() -> None:
    pacekeeper.set_testing(True)
    try:
        gov = Governor()
        calls = 0

        async def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise StatusError(503)
            return "done"

        assert await gov.run(flaky, route="/r", model="m") == "done"
        assert calls == 3

        async def bad() -> str:
            raise StatusError(400, b'{"error": {"message": "no"}}')

        with pytest.raises(NonRetryableError):
            await gov.run(bad, route="/r", model="m")

        async def bug() -> str:
            raise KeyError("x")

        with pytest.raises(KeyError):
            await gov.run(bug, route="/r", model="m")
        assert gov.lane("/r", "m").slots.in_flight == 0
    finally:
        pacekeeper.set_testing(False)


async def test_cancellation_is_never_retried_and_frees_the_slot() -> None:
    gov = Governor(limits=Limits(concurrency=1))
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(gov.run(slow, route="/r", model="m"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    lane = gov.lane("/r", "m")
    assert lane.slots.in_flight == 0
    assert lane.snapshot().by_outcome == {"cancelled": 1}
    assert lane.snapshot().retries == 0


async def test_amap_keeps_input_order_with_a_bounded_window() -> None:
    gov = Governor(limits=Limits(concurrency=8))
    running = peak = 0

    async def work(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (i % 3))
        running -= 1
        return i * i

    results = [r async for r in gov.amap(work, range(100), window=10)]
    assert results == [i * i for i in range(100)]
    assert peak <= 8


async def test_amap_can_return_exceptions_in_place() -> None:
    async def work(i: int) -> int:
        if i == 2:
            raise ValueError("two")
        return i

    out = [r async for r in pacekeeper.amap(work, range(4), return_exceptions=True)]
    assert out[:2] == [0, 1]
    assert isinstance(out[2], ValueError)
    assert out[3] == 3


async def test_final_outcomes_are_logged_at_info_and_attempts_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gov = Governor()
    with caplog.at_level(logging.DEBUG, logger="pacekeeper"):
        call = gov.call(route="/v1/chat/completions", model="m", tokens=3)
        permit = await call.admit()
        call.settle(permit, verdict_for_failure(OutcomeKind.TIMEOUT, "ReadTimeout"))
        permit = await call.admit()
        call.settle(permit, verdict(200), request_id="req_1")
    levels = [(r.levelname, r.getMessage().split()[0]) for r in caplog.records]
    assert levels == [("DEBUG", "attempt"), ("DEBUG", "attempt"), ("INFO", "request")]
    assert "outcome=ok" in caplog.records[-1].getMessage()
    assert "attempts=2" in caplog.records[-1].getMessage()


def test_the_governor_is_usable_from_threads() -> None:
    gov = Governor(limits=Limits(concurrency=2))
    call = gov.call(route="/r", model=None, tokens=0)
    permit = call.admit_sync()
    decision = call.settle(permit, verdict(200))
    assert decision.record is not None
    assert decision.record.ok


async def test_an_in_flight_429_is_told_by_its_headers_not_its_words() -> None:
    gov = Governor()
    lane = gov.lane("/r", "m")
    calls = [gov.call(route="/r", model="m", tokens=0) for _ in range(3)]
    permits = [await call.admit() for call in calls]
    # The message names no limit in any word we could match; the headers say the rate
    # window had room, so the refusal was about requests in flight.
    body = b'{"error": {"message": "Rate limit reached: too many requests in flight (limit 2)"}}'
    headers = {"x-ratelimit-remaining-requests": "57", "retry-after": "1"}
    calls[2].settle(permits[2], verdict(429, headers, body))
    assert lane.discovered_rpm is None  # no rate was taught
    assert lane.cooldown.remaining_s(now=time.monotonic()) == 0  # nobody else waits
    assert isinstance(lane.slots, pacekeeper.core.concurrency.AimdLimit)
    assert lane.slots.learned_cap == 2  # one fewer than were in flight at the refusal
    for call, permit in zip(calls[:2], permits[:2], strict=True):
        call.settle(permit, verdict(200))


async def test_a_refusal_of_the_count_is_retried_on_a_slot_not_after_its_hint() -> None:
    """A 429 that says by its code that requests in flight are counted, with a retry-after
    of 2 s: the retry waits for a slot under the cap it taught (one of ours frees it with its
    answer), not 2 s. Waited out, the hint on the cap's probe held one request past the end
    of the rest of a run (1.7 s of a 13-s run). A 429 that may be the rate keeps its hint."""
    gov = Governor(seed=1)
    lane = gov.lane("/r", "m")
    calls = [gov.call(route="/r", model="m", tokens=0) for _ in range(3)]
    permits = [await call.admit() for call in calls]
    body = b'{"error": {"message": "busy", "code": "concurrency_limit_exceeded"}}'
    decision = calls[2].settle(permits[2], verdict(429, {"retry-after": "2"}, body))
    assert decision.retry
    assert decision.delay_s == 0.0
    assert isinstance(lane.slots, pacekeeper.core.concurrency.AimdLimit)
    assert lane.slots.learned_cap == 2
    assert not lane.slots.has_room()  # the retry waits in the queue for a slot
    calls[0].settle(permits[0], verdict(200))
    assert lane.slots.has_room()
    calls[1].settle(permits[1], verdict(200))
    rate = gov.call(route="/r", model="m", tokens=0)
    body = b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}'
    headers = {"x-ratelimit-remaining-requests": "0", "retry-after": "2"}
    decision = rate.settle(await rate.admit(), verdict(429, headers, body))
    assert decision.delay_s >= 2.0


async def test_a_bare_429_that_filled_the_window_teaches_a_cap_not_a_rate() -> None:
    gov = Governor(limits=Limits(concurrency=pacekeeper.AdaptiveConcurrency(initial=3)))
    lane = gov.lane("/r", "m")
    first = gov.call(route="/r", model="m", tokens=0)
    first.settle(await first.admit(), verdict(200))  # a success with one in flight
    calls = [gov.call(route="/r", model="m", tokens=0) for _ in range(3)]
    permits = [await call.admit() for call in calls]
    calls[2].settle(permits[2], verdict(429, body=b'{"error": {"message": "busy"}}'))
    assert lane.discovered_rpm is None
    assert lane.slots.limit == 2
    # a bare 429 at no more in flight than has succeeded is about the rate
    calls[0].settle(permits[0], verdict(429))
    assert gov.lane("/r", "m").discovered_rpm is not None  # (a new expression for mypy)
    calls[1].settle(permits[1], verdict(200))


async def test_admit_reports_an_outcome_for_code_without_httpx() -> None:
    hooks = RecordCollector()
    gov = Governor(limits=Limits(concurrency=1), hooks=[hooks])
    async with gov.admit(route="/v1/chat/completions", model="m", tokens=100) as attempt:
        assert gov.lane("/v1/chat/completions", "m").slots.in_flight == 1
        decision = attempt.report(
            status=200,
            headers={"x-ratelimit-limit-requests": "600"},
            prompt_tokens=90,
            completion_tokens=10,
        )
    assert decision.record is not None
    assert decision.record.ok
    lane = gov.lane("/v1/chat/completions", "m")
    assert lane.slots.in_flight == 0
    assert lane.rpm == 600  # learned from the reported headers
    assert hooks.requests[0].prompt_tokens == 90


async def test_admit_records_an_escaping_exception_and_frees_the_slot() -> None:
    gov = Governor(limits=Limits(concurrency=1))
    with pytest.raises(KeyError):
        async with gov.admit(route="/r", model="m"):
            raise KeyError("boom")
    lane = gov.lane("/r", "m")
    assert lane.slots.in_flight == 0
    assert lane.snapshot().failed == 1


async def test_admit_reports_a_429_and_closes_the_gate() -> None:
    gov = Governor()
    async with gov.admit(route="/r", model="m") as attempt:
        decision = attempt.report(status=429, headers={"retry-after": "2"})
    assert not decision.retry  # one attempt; use gov.run for retries
    assert "single admission" in str(decision.error)
    assert gov.lane("/r", "m").cooldown.remaining_s(now=time.monotonic()) > 1.5


def test_admit_works_in_threads() -> None:
    gov = Governor()
    with gov.admit(route="/r", model=None) as attempt:
        attempt.report(status=200)
    assert gov.stats()[0].ok == 1


async def test_a_character_estimate_is_counted_exactly_only_where_tokens_bind() -> None:
    """A prompt estimated in characters is counted exactly until usage taught the tokens
    per character, and again when the token bucket runs low; in between it is charged as
    characters times the learned ratio, and never refused as too large on characters."""
    gov = Governor(limits=Limits(tpm=60_000_000, burst_s=1.0, concurrency=1000))
    lane = gov.lane("/v1/chat/completions", "m")
    body = {"max_tokens": 10, "messages": [{"role": "user", "content": "Say hello. " * 30}]}
    chars = estimate_request_chars(body)
    exact = estimate_request_tokens(body, model="m").prompt_tokens  # the heuristic, for "m"
    assert chars.method == CHARS
    assert chars.prompt_tokens > exact

    async def one() -> int:
        call = gov.call(route="/v1/chat/completions", model="m", estimate=chars, body=body)
        permit = await call.admit()
        call.settle(permit, verdict(200), prompt_tokens=exact, completion_tokens=10)
        return permit.tokens

    for _ in range(10):  # nothing learned yet: counted exactly, charged as tokens
        assert await one() == exact + 10
    assert lane.estimate_scale.count == lane.cheap_scale.count == 10  # both ratios learned
    charged = [await one() for _ in range(20)]
    assert lane.estimate_scale.count <= 11  # one exact count in 64 at most: the bucket is full
    assert lane.cheap_scale.count == 30
    assert all(abs(tokens - (exact + 10)) <= 2 for tokens in charged)  # chars x learned ratio
    assert lane.tokens is not None
    lane.tokens.drain_to(now=gov.clock(), level=50 * (exact + 10))  # room for 50 such
    counted = lane.estimate_scale.count
    await one()
    assert lane.estimate_scale.count == counted + 1  # the bucket decides: exact again

    small = Governor(limits=Limits(tpm=exact + 20))  # more characters than the limit: admitted
    small_lane = small.lane("/v1/chat/completions", "m")
    for _ in range(10):  # a token per character learned: the characters alone would not fit
        small_lane.cheap_scale.observe(estimated=1, actual=1)
    call = small.call(route="/v1/chat/completions", model="m", estimate=chars, body=body)
    assert (await call.admit()).tokens == exact + 10
