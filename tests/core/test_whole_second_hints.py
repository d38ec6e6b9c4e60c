"""A request rate stated nowhere, refused with a wait hint in whole seconds (Groq: its
per-minute request limit is in no header, and its 429s carry ``retry-after`` rounded up to
the second), driven on a simulated clock.

The hint of a one-second bucket short of one request is a tenth of a second, told as a whole
second. Once a rate is discovered the lane paces it from empty after each 429, so only the
hint less a second is certain (as for a token budget nothing states): waited whole, each
measured cut held the lane idle for most of a second, a tenth of a 10-s run.
"""

from __future__ import annotations

import math

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane, Permit, _ThreadWaiter

from .simclock import Answers, SimClock, admitted, steps

_STEP_S = 0.01


class _Bucket:
    """``rpm`` in a bucket one second deep, full at the start, refilling all along; a refusal
    says how long until one request fits."""

    def __init__(self, rpm: float) -> None:
        self.rate_per_s = rpm / 60.0
        self.level = self.rate_per_s
        self.updated = 0.0

    def take(self, now: float) -> float | None:
        """None when taken, else the wait until a request fits."""
        self.level = min(self.rate_per_s, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.level < 1.0:
            return (1.0 - self.level) / self.rate_per_s
        self.level -= 1.0
        return None


def _run(rpm: float, latency_s: float, run_s: float) -> tuple[Lane, list[tuple[float, bool]]]:
    """A lane with a backlog against a `_Bucket` of ``rpm``: 429s carry ``retry-after`` in
    whole seconds (rounded up) and come back in 20 ms; answers take ``latency_s`` (a tenth
    either way, in a fixed pattern). The lane, and each send's time and whether it was taken."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    provider = _Bucket(rpm)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    in_flight: Answers[tuple[Permit, float | None]] = Answers()
    sends: list[tuple[float, bool]] = []
    for now in steps(clock, until_s=run_s, step_s=_STEP_S):
        for permit, wait_s in in_flight.due(now):
            verdict = ok
            if wait_s is not None:
                hint = str(max(1, math.ceil(wait_s - 1e-9)))
                verdict = classify_response(429, {"retry-after": hint}, None, now_wall_s=0.0)
            lane.settle(permit, verdict, now=now, max_hint_s=600.0, retry=False)
        for permit in admitted(lane, now):
            wait_s = provider.take(now)
            sends.append((now, wait_s is None))
            spread = 0.1 * latency_s * ((len(sends) % 7) - 3) / 3
            due = now + (latency_s + spread if wait_s is None else 0.02)
            in_flight.add(due, (permit, wait_s))
    return lane, sends


def test_a_discovered_rate_waits_only_the_certain_part_of_a_whole_second_hint() -> None:
    """On a grid of 12 such buckets (300-700/min, answers of 0.2-0.8 s, 10 s of work) the
    lane took 0.913 of what the bucket allows on average, 0.881 at worst (0.875 and 0.848
    with every request hint waited whole), at the same 429s: 57 in all, 51 of them in the
    first 3 s (the discovery's burst)."""
    fills: list[float] = []
    refused = 0
    for rpm in (300.0, 380.0, 460.0, 540.0, 620.0, 700.0):
        for latency_s in (0.2, 0.8):
            lane, sends = _run(rpm, latency_s, 10.0)
            taken = sum(1 for _, ok in sends if ok)
            fills.append(taken / (rpm / 60.0 * 11.0))  # 10 s of its rate, and the full bucket
            refused += sum(1 for _, ok in sends if not ok)
            assert lane.request_rate.discovered, (rpm, latency_s)
    assert sum(fills) / len(fills) >= 0.9, fills
    assert refused <= 60, refused


def test_the_discovery_waits_its_hint_whole_and_a_later_cut_only_the_certain_part() -> None:
    """The first 429 of a rate nothing states: its pace is a first guess, and the server's
    store is unknown; the whole hint is waited, as before. A later one, with the rate paced
    from empty: the hint less its second."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    hinted = classify_response(429, {"retry-after": "1"}, None, now_wall_s=0.0)

    def answer(sent: float, at: float, verdict: object) -> None:
        clock.now = sent
        permit = lane._grant(sent, 0, sent)
        clock.now = at
        lane.settle(permit, verdict, now=at, max_hint_s=600.0, retry=False)  # type: ignore[arg-type]

    for k in range(12):  # 12 answers in a second, one in flight at a time
        answer(0.08 * k, 0.08 * k + 0.05, ok)
    answer(1.0, 1.02, hinted)
    assert lane.request_rate.discovered
    assert lane.cooldown.until == 2.02  # the discovery: the whole hint
    for k in range(20):
        answer(2.1 + 0.08 * k, 2.15 + 0.08 * k, ok)
    answer(4.0, 4.02, hinted)
    assert lane.cooldown.until == 2.02  # a discovered rate, cut: nothing certain in "1"


def test_a_hint_of_seconds_on_a_discovered_request_rate_is_waited_whole() -> None:
    """A hint of 2 s or more on a request rate says more than one request's refill (a rate
    of a request a second rounds up to 1 s): a window that runs until then. Waited short,
    16 fixed 10-s windows with whole-second hints (600-1500/min, answers of 0.2-0.8 s, 20 s
    of work, a simulated clock) drew 313 429s where 153 were drawn waiting them whole: the
    second before each window's end went into a dry window at the discovered pace."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    ok = classify_response(200, {}, None, now_wall_s=0.0)

    def answer(sent: float, at: float, hint: str | None) -> None:
        clock.now = sent
        permit = lane._grant(sent, 0, sent)
        clock.now = at
        verdict = ok
        if hint is not None:
            verdict = classify_response(429, {"retry-after": hint}, None, now_wall_s=0.0)
        lane.settle(permit, verdict, now=at, max_hint_s=600.0, retry=False)

    for k in range(12):
        answer(0.08 * k, 0.08 * k + 0.05, None)
    answer(1.0, 1.02, "1")
    assert lane.request_rate.discovered
    for k in range(20):
        answer(2.1 + 0.08 * k, 2.15 + 0.08 * k, None)
    answer(4.0, 4.02, "6")
    assert lane.cooldown.until == 10.02
