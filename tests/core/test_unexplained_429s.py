"""429s that the client's rate does not cause: a provider whose shared capacity is busy.

OpenAI answers "overloaded" in a 429, a gateway passes on an upstream's, llmock's
``--error-rate 429`` sends them with ``retry-after: 1`` and no rate-limit headers. A steady few
percent of them, whatever the pace, are noise: taken as the rate (a 15% cut and a halved burst
each), 5% of them held a lane at 0.2-0.5 of its stated limit. Driven on a simulated clock
against a one-second bucket that states its limit, with such 429s drawn at random, so that
hypothesis can draw hundreds of providers in seconds: the pace holds the stated limit, and a
real limit below the stated one (the statement wrong, another client on the key) is still
found from its 429s, which grow with the pace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane, Permit, _ThreadWaiter

from .simclock import Answers, ProviderWindow, SimClock, admitted, steps

_STEP_S = 0.01
_RUN_S = 25.0
_JUDGED_FROM_S = 5.0


@dataclass
class _Run:
    sent: list[float]
    limit_refusals: list[float]
    busy_refusals: list[float]
    lane: Lane

    def sent_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.sent if start <= t < end)

    def refused_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.limit_refusals if start <= t < end)


def _run(
    *,
    stated_rpm: float,
    true_rpm: float,
    busy_share: float,
    busy_retry_after: str | None,
    busy_headers: bool,
    limit_headers: bool,
    latency_s: float,
    seed: int,
) -> _Run:
    """A lane with a backlog against a bucket of ``true_rpm`` whose answers state
    ``stated_rpm`` (and what is left); ``busy_share`` of the requests that reach it are refused
    at random however busy it is (with ``busy_retry_after``, and with its rate-limit headers
    when ``busy_headers``). The bucket's own 429s carry its headers only if ``limit_headers``
    (else they are bare: no headers, no hint)."""
    rng = random.Random(seed)
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())  # a backlog: the lane always has work waiting
    bucket = ProviderWindow(true_rpm, 1.0, fixed=False)
    answers: Answers[tuple[Permit, int, str]] = Answers()
    run = _Run(sent=[], limit_refusals=[], busy_refusals=[], lane=lane)
    stated = {"x-ratelimit-limit-requests": str(int(stated_rpm))}
    for now in steps(clock, until_s=_RUN_S, step_s=_STEP_S):
        for permit, remaining, outcome in answers.due(now):
            headers = {**stated, "x-ratelimit-remaining-requests": str(remaining)}
            if outcome == "busy":
                run.busy_refusals.append(permit.sent_at)
                if not busy_headers:
                    headers = {}
                if busy_retry_after is not None:
                    headers["retry-after"] = busy_retry_after
            elif outcome == "limit":
                run.limit_refusals.append(permit.sent_at)
                if not limit_headers:
                    headers = {}
            status = 200 if outcome == "ok" else 429
            verdict = classify_response(status, headers, None, now_wall_s=0.0)
            # gate=False: a hint closes no gate here (the retries are not modelled: the
            # backlog never runs dry); what is measured is what the lane learns.
            lane.settle(permit, verdict, now=now, max_hint_s=600.0, retry=False, gate=False)
        for permit in admitted(lane, now):
            run.sent.append(now)
            # Busy once an answer stated the limit: a 429 to the first request, with nothing
            # stated, is the nothing-stated case (a rate is discovered from it, as before).
            if lane.request_rate.ceiling is not None and rng.random() < busy_share:
                outcome = "busy"
            else:
                outcome = "ok" if bucket.take(now) else "limit"
            answer_at = now + (latency_s if outcome == "ok" else _STEP_S)
            answers.add(answer_at, (permit, bucket.remaining(now), outcome))
    return run


@given(
    rpm=st.sampled_from([300.0, 600.0, 1200.0, 2400.0]),
    busy_share=st.floats(0.02, 0.08),
    busy_retry_after=st.sampled_from([None, "1", "2"]),
    busy_headers=st.booleans(),
    latency_s=st.floats(0.1, 1.5),
    seed=st.integers(0, 1000),
)
@settings(max_examples=40, deadline=None)
def test_a_busy_providers_random_429s_leave_the_stated_limit_in_force(
    rpm: float,
    busy_share: float,
    busy_retry_after: str | None,
    busy_headers: bool,
    latency_s: float,
    seed: int,
) -> None:
    """2-8% of 429s at random, bare or with the headers showing room, with or without a
    hint: the lane sends at least 0.8 of the stated limit. On 40 random draws, the worst
    0.98 and the median 1.0, where main's were 0.08 and 0.76; near 8%, a run of them now and
    then reads as a limit's (one cut: 0.85). A steadier share than 10% is taken as a
    limit's (core/congestion.py RefusalShare). Answers of up to 1.5 s: with 2-s answers at
    2400/min, busy 429s to requests sent at more in flight than any answer yet back can
    teach a cap on requests in flight that later ones confirm (0.34 of the limit: a known
    gap, docs/CONTROLLER.md)."""
    run = _run(
        stated_rpm=rpm,
        true_rpm=rpm,
        busy_share=busy_share,
        busy_retry_after=busy_retry_after,
        busy_headers=busy_headers,
        limit_headers=True,
        latency_s=latency_s,
        seed=seed,
    )
    span_s = _RUN_S - _JUDGED_FROM_S
    sent = run.sent_between(_JUDGED_FROM_S, _RUN_S)
    assert sent >= 0.8 * rpm / 60.0 * span_s, (
        f"{sent} sent in [{_JUDGED_FROM_S:g}, {_RUN_S:g}) s, below 0.8 of {rpm:g}/min "
        f"({len(run.busy_refusals)} busy 429s, pace {run.lane.rpm})"
    )


@given(
    rpm=st.sampled_from([600.0, 1200.0, 2400.0]),
    true_share=st.sampled_from([0.5, 0.8]),
    busy_share=st.sampled_from([0.0, 0.03]),
    latency_s=st.floats(0.1, 2.0),
    seed=st.integers(0, 1000),
)
@settings(max_examples=30, deadline=None)
def test_a_real_limit_below_the_stated_one_is_still_found(
    rpm: float, true_share: float, busy_share: float, latency_s: float, seed: int
) -> None:
    """The server states ``rpm`` and enforces ``true_share`` of it with bare 429s (no
    headers, no hint: nothing in them tells them from noise), with or without a busy
    background: the refusals grow with the pace, and the lane finds the true limit. Taken as
    noise, they would refuse ``1 - true_share`` of what is sent all along; found, at most 0.6
    of that (the pace climbs back towards the stated limit after each cut, and is refused
    again: at half the stated limit, 600/min, answers of 1 s, main refused 14-21% of what it
    sent in 10 draws, this 17-28%; a fifth under it, 0-4% and 2-8%)."""
    true_rpm = rpm * true_share
    run = _run(
        stated_rpm=rpm,
        true_rpm=true_rpm,
        busy_share=busy_share,
        busy_retry_after=None,
        busy_headers=False,
        limit_headers=False,
        latency_s=latency_s,
        seed=seed,
    )
    sent = run.sent_between(_JUDGED_FROM_S, _RUN_S)
    refused = run.refused_between(_JUDGED_FROM_S, _RUN_S)
    assert refused <= 0.6 * (1.0 - true_share) * sent, (
        f"{refused} of {sent} sent in [{_JUDGED_FROM_S:g}, {_RUN_S:g}) s refused by a limit "
        f"of {true_rpm:g}/min stated as {rpm:g} (pace {run.lane.rpm})"
    )
