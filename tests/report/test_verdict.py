"""The verdict on crafted runs: the right limit named, and the numbers in the sentences are
the ones the records imply."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from pacekeeper.core.records import AttemptRecord
from pacekeeper.report import Finding, findings
from pacekeeper.report._load import aggregate
from pacekeeper.report._verdict import binding

from .crafted import Provider, Record, Run, seeded, simulate, spread

SERVER_500 = ("server_error", 500, "HTTP 500 server_error: The server had an error")
OVERLOADED = ("overloaded", 503, "HTTP 503: The engine is currently overloaded")
TIMEOUT = ("timeout", None, "ReadTimeout: no answer after 60s")
BAD_REQUEST = ("client_error", 400, "HTTP 400 invalid_request_error: max_tokens is too large")


def verdict(records: list[Record]) -> list[Finding]:
    return findings(aggregate(records).finish())


def of_kind(found: list[Finding], kind: str) -> list[Finding]:
    return [f for f in found if f.kind == kind]


def one(found: list[Finding], kind: str) -> Finding:
    (finding,) = of_kind(found, kind)
    return finding


def pct(share: float) -> str:
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def test_tpm_bound_with_oversized_max_tokens_names_the_reserve_the_p99_and_the_gain() -> None:
    completions = [200 + (i * 37) % 400 for i in range(300)]
    run = Run(
        requests=300,
        provider=Provider(rpm=10_000, tpm=200_000),
        concurrency=64,
        prompt_tokens=150,
        max_tokens=4096,
        completion_tokens=lambda i: completions[i],
        latency_s=lambda i, a: spread(2.0, i, a),
    )
    found = verdict(simulate(run))
    limit = found[0]
    assert limit.kind == "limit"
    assert limit.numbers["share_tpm"] >= 0.95
    assert "limited by tokens per minute (200,000 tpm)" in limit.text
    assert f"for {pct(limit.numbers['share'])} of the run" in limit.text
    # about 200,000 / 4,246 = 47 requests per minute while bound
    assert limit.numbers["achieved_rpm"] == pytest.approx(200_000 / 4246, rel=0.03)
    assert "charged about 4,246 tokens" in limit.text

    reserve = one(found, "max_tokens")
    p99 = sorted(completions)[math.ceil(0.99 * len(completions)) - 1]
    gain = (150 + 4096) / (150 + p99)
    assert reserve.numbers["max_tokens"] == 4096
    assert reserve.numbers["completion_p99"] == p99
    assert reserve.numbers["gain"] == pytest.approx(gain)
    assert (
        f"lowering max_tokens from 4,096 to what replies actually used (p99 {p99}) would "
        f"allow about {gain:.1f}x the throughput" in reserve.text
    )
    assert reserve.severity == "warning"
    assert found.index(reserve) == 1  # right after the limit it is about


def test_the_max_tokens_gain_stops_at_the_rpm_limit() -> None:
    run = Run(
        requests=200,
        provider=Provider(rpm=100, tpm=100_000),
        concurrency=64,
        prompt_tokens=100,
        max_tokens=2000,
        completion_tokens=lambda i: 50,
    )
    reserve = one(verdict(simulate(run)), "max_tokens")
    # now: 100,000 / 2,100 = 47.6/min; with max_tokens 50: 667/min, capped at 100 rpm
    assert reserve.numbers["gain"] == pytest.approx(100 / (100_000 / 2100))
    assert "(up to the 100 rpm limit)" in reserve.text


def test_no_max_tokens_advice_when_replies_use_their_reserve() -> None:
    run = Run(
        requests=100,
        provider=Provider(tpm=50_000),
        concurrency=64,
        prompt_tokens=100,
        max_tokens=400,
        completion_tokens=lambda i: 380 + i % 20,
    )
    found = verdict(simulate(run))
    assert found[0].numbers["share_tpm"] > 0.9
    assert not of_kind(found, "max_tokens")


def test_rpm_bound() -> None:
    run = Run(
        requests=600,
        provider=Provider(rpm=600, tpm=1_000_000),
        known_rpm=600,  # configured: no 429s while learning it
        concurrency=32,
        latency_s=lambda i, a: spread(0.8, i, a),
    )
    found = verdict(simulate(run))
    limit = found[0]
    assert limit.numbers["share_rpm"] >= 0.95
    assert "limited by requests per minute (600 rpm)" in limit.text
    assert limit.numbers["achieved_rpm"] == pytest.approx(600, rel=0.02)
    assert "Only a higher limit" in limit.text
    assert not of_kind(found, "max_tokens")
    assert [f.kind for f in found] == ["limit", "queueing", "clean"]
    queueing = one(found, "queueing")
    assert queueing.numbers["queued_share"] > 0.9
    assert "backlog of work held to the provider's limits" in queueing.text


def test_upstream_errors_rates_and_what_retries_cost() -> None:
    records = simulate(
        Run(
            requests=400,
            provider=Provider(rpm=1200),
            concurrency=16,
            fault=seeded(0.1, [SERVER_500, OVERLOADED, TIMEOUT], seed=3),
        )
    )
    attempts = [r for r in records if isinstance(r, AttemptRecord)]
    statuses = Counter(r.status for r in attempts)
    n5xx = statuses[500] + statuses[503]
    timeouts = sum(1 for r in attempts if r.outcome == "timeout")
    retries = sum(1 for r in attempts if r.attempt > 1)
    # the crafted run has all three
    assert n5xx
    assert timeouts
    assert retries

    up = one(verdict(records), "upstream")
    assert up.numbers["rate_5xx"] == pytest.approx(n5xx / len(attempts))
    assert up.numbers["extra_requests"] == pytest.approx(retries / 400)
    assert (
        f"5xx rate {pct(n5xx / len(attempts))} ({n5xx} of {len(attempts)} attempts: "
        f"{statuses[500]}\u00d7500, {statuses[503]}\u00d7503)" in up.text
    )
    assert f"timeouts {pct(timeouts / len(attempts))}" in up.text
    assert f"retries cost {pct(retries / 400)} extra requests ({retries} retries" in up.text
    assert "The provider was degraded" in up.text
    assert up.severity in ("warning", "problem")


def test_429s_without_a_known_limit_say_to_configure_the_limits() -> None:
    records = simulate(
        Run(
            requests=300,
            provider=Provider(rpm=300, send_headers=False),
            concurrency=16,
            latency_s=lambda i, a: 0.3,
        )
    )
    attempts = sum(1 for r in records if isinstance(r, AttemptRecord))
    n429 = sum(1 for r in records if isinstance(r, AttemptRecord) and r.outcome == "rate_limited")
    found = verdict(records)
    assert found[0].numbers["share_429"] > 0.9
    assert "held back by 429 answers" in found[0].text
    rl = one(found, "rate_limits")
    assert rl.numbers["count"] == n429
    assert rl.numbers["unknown"] == n429
    assert f"{n429} of {attempts} attempts ({pct(n429 / attempts)}) got 429" in rl.text
    assert f"{n429} came while no limit was known (the API sent no rate-limit headers)" in rl.text
    assert "set rpm and tpm" in rl.text
    assert rl.severity == "warning"


def test_429s_before_the_limits_were_learned_are_told_apart() -> None:
    # The 429 that teaches the limit carries it in its record, but was sent without it.
    records = simulate(Run(requests=100, provider=Provider(rpm=600, tpm=1_000_000), concurrency=16))
    rl = one(verdict(records), "rate_limits")
    assert rl.numbers["unknown"] == rl.numbers["count"] > 0
    assert "came before its limits were learned from the headers" in rl.text


def test_429s_from_another_client_sharing_the_key() -> None:
    records = simulate(
        Run(
            requests=300,
            provider=Provider(rpm=600, other_rpm=300),
            known_rpm=600,
            concurrency=16,
            latency_s=lambda i, a: 0.3,
        )
    )
    found = verdict(records)
    rl = one(found, "rate_limits")
    assert rl.numbers["shared"] > 3 * rl.numbers["at_limit"]
    assert rl.numbers["shared_use"] == pytest.approx(0.5, abs=0.1)
    assert "something else is spending the same key's limits" in rl.text
    assert f"Limits(utilisation={rl.numbers['suggested_utilisation']:g})" in rl.text


def test_429s_while_pacing_at_a_limit_the_provider_does_not_honour() -> None:
    # told 600 rpm, the provider allows 540 (and states nothing)
    records = simulate(
        Run(
            requests=400,
            provider=Provider(rpm=540, send_headers=False),
            known_rpm=600,
            concurrency=16,
            latency_s=lambda i, a: 0.3,
        )
    )
    rl = one(verdict(records), "rate_limits")
    assert rl.numbers["at_limit"] > rl.numbers["shared"]
    assert "came while pacing at the limit" in rl.text
    assert "lower Limits(utilisation) to 0.9" in rl.text


def test_a_clean_run_says_so_and_raises_nothing() -> None:
    run = Run(requests=100, provider=Provider(rpm=300), known_rpm=300, concurrency=8)
    found = verdict(simulate(run))
    assert {f.kind for f in found} == {"limit", "queueing", "clean"}
    assert all(f.severity in ("ok", "info") for f in found)
    assert one(found, "clean").text == (
        "Clean run: all 100 requests succeeded on the first attempt, with no 429s and no "
        "upstream errors."
    )


def test_a_fixed_concurrency_limit_and_what_it_allows() -> None:
    run = Run(
        requests=200,
        provider=Provider(rpm=3000),
        concurrency=4,
        latency_s=lambda i, a: 2.0,
    )
    limit = verdict(simulate(run))[0]
    assert limit.numbers["share_concurrency"] > 0.95
    assert limit.numbers["suggested_concurrency"] == math.ceil(3000 * 2.0 / 60 * 1.2)
    share = pct(limit.numbers["share"])
    assert (
        f"limited by the concurrency limit (4 in flight) for {share} of the run: with answers "
        "taking 2.00 s on average, 4 in flight allow about 120 requests/min, below the 3,000 "
        "rpm limit; raise concurrency to about 120" in limit.text
    )


def test_nothing_waiting_means_not_limited() -> None:
    run = Run(requests=40, arrival_every_s=1.0, provider=Provider(rpm=600), concurrency=8)
    limit = verdict(simulate(run))[0]
    assert "never held back by a limit" in limit.text
    assert limit.numbers["share_demand"] > 0.9


def test_failures_by_reason_with_advice_and_an_example() -> None:
    def fault(i: int, attempt: int) -> tuple[str, int | None, str] | None:
        if i % 10 == 0:
            return BAD_REQUEST
        if i % 25 == 1:
            return SERVER_500  # every attempt: gives up
        return None

    records = simulate(Run(requests=100, fault=fault, max_attempts=3, backoff_s=0.1))
    failures = one(verdict(records), "failures")
    assert failures.numbers["failed"] == 14
    assert failures.numbers["client_error/NonRetryableError"] == 10
    assert failures.numbers["server_error/RetriesExhausted"] == 4
    assert failures.text.startswith("14 of 100 requests failed (14%): 10 client error")
    assert "fix these requests" in failures.text
    assert "4 server error (RetriesExhausted): gave up after the last attempt" in failures.text
    assert 'For example: "/v1/chat/completions model=gpt-4o-mini: HTTP 400' in failures.text
    assert failures.severity == "problem"


def test_the_model_that_finished_last_comes_first() -> None:
    quick = simulate(Run(requests=50, model="fast-model", provider=Provider(rpm=3000)))
    slow = simulate(Run(requests=100, model="slow-model", provider=Provider(rpm=300)))
    found = verdict(quick + slow)
    limits = of_kind(found, "limit")
    assert [f.lane[1] if f.lane else None for f in limits] == ["slow-model", "fast-model"]
    assert limits[0].text.startswith("slow-model finished last, ")
    assert "limited by requests per minute (300 rpm)" in limits[0].text


def test_no_records_no_verdict_but_a_sentence() -> None:
    (only,) = verdict([])
    assert only.kind == "no_data"


def test_binding_shares_cover_the_whole_run() -> None:
    run = aggregate(simulate(Run(requests=200, provider=Provider(rpm=600)))).finish()
    b = binding(run, run.lanes[0])
    assert sum(b.shares.values()) == pytest.approx(1.0)
    assert len(b.kinds) == len(b.starts) == len(b.covered)
