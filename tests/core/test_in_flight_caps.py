"""An in-flight cap met from a start with nothing configured: how many requests it refuses.

A server that states a generous rate and refuses past ``cap`` requests in flight, with a code
that says so, at once (a network round trip of 10-100 ms), while its answers take 0.2-2 s. The
first refusal is the only way to learn the cap; every request sent past it before that refusal
is back is one more 429. Driven on a simulated clock, so a run of seconds takes milliseconds.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane, Permit, _ThreadWaiter

from .simclock import Answers, SimClock, admitted, steps

_STEP_S = 0.002
_RUN_S = 9.0  # before the learned cap's first probe (10 s at it)
_REFUSAL = json.dumps(
    {"error": {"message": "Too many concurrent requests.", "code": "concurrency_limit_exceeded"}}
).encode()
_STATED = {
    # A rate far above what the cap lets through: the floor it implies doubles what is in
    # flight, and the cap alone holds the lane.
    "x-ratelimit-limit-requests": "100000",
    "x-ratelimit-remaining-requests": "99000",
    "x-ratelimit-reset-requests": "1s",
}


@dataclass
class _Run:
    refusals: int
    reached_s: float | None
    """When the server first held ``cap`` requests (None: never)."""
    held_share: float
    """The mean the server held after three round trips, as a share of the cap."""


def _against_a_cap(cap: int, latency_s: float, refusal_s: float, seed: int) -> _Run:
    rng = random.Random(seed)
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())  # a backlog all along
    ok = classify_response(200, _STATED, None, now_wall_s=0.0)
    refused = classify_response(429, {}, _REFUSAL, now_wall_s=0.0)
    answers: Answers[tuple[Permit, bool]] = Answers()
    held = refusals = 0
    reached_s: float | None = None
    late: list[int] = []
    for now in steps(clock, until_s=_RUN_S, step_s=_STEP_S):
        for permit, accepted in answers.due(now):
            held -= 1 if accepted else 0
            verdict = ok if accepted else refused
            lane.settle(permit, verdict, now=now, max_hint_s=600.0, retry=False)
        for permit in admitted(lane, now):
            accepted = held < cap
            held += 1 if accepted else 0
            refusals += 0 if accepted else 1
            took_s = latency_s * rng.lognormvariate(0.0, 0.3) if accepted else refusal_s
            answers.add(now + took_s, (permit, accepted))
        if reached_s is None and held >= cap:
            reached_s = now
        if now >= 3 * latency_s:
            late.append(held)
    return _Run(refusals, reached_s, sum(late) / len(late) / cap)


def _draws(count: int) -> list[tuple[int, float, float, int]]:
    rng = random.Random(11)
    return [
        (rng.randint(3, 20), rng.uniform(0.2, 2.0), rng.uniform(0.01, 0.1), seed)
        for seed in range(count)
    ]


def test_an_in_flight_cap_refuses_few_before_it_is_learned() -> None:
    """Past the most in flight ever sent, one more request at a time, each after an answer
    (or at a doubling per mean answer): the cap refuses the first past it, and few follow
    before that refusal is back. Sent 5 ms apart there, the requests a floor read from the
    stated rate opened (it doubles what is in flight) drew 3.4 refusals a run on average, up
    to 9, more than 3 in 19 runs of 40; now 1.7, up to 5, more than 3 in 4."""
    runs = [(draw, _against_a_cap(*draw)) for draw in _draws(40)]
    refusals = [run.refusals for _, run in runs]
    many = [(draw, run.refusals) for draw, run in runs if run.refusals > 3]
    assert sum(refusals) / len(refusals) <= 2.0, f"refusals per run: {refusals}"
    assert len(many) <= 5, f"more than 3 refusals: {many}"
    assert max(refusals) <= 6, f"refusals per run: {refusals}"


def test_the_cap_is_reached_within_a_few_round_trips_and_held() -> None:
    """Entered carefully, the cap is still reached quickly: slow start's pace is one more per
    answer, and that is the pace past the most in flight ever sent."""
    for draw in _draws(20):
        cap, latency_s, refusal_s, _ = draw
        run = _against_a_cap(*draw)
        where = f"cap {cap}, answers of {latency_s:.2f} s, refusals in {refusal_s:.3f} s"
        assert run.reached_s is not None, where
        assert run.reached_s <= 2.5 * latency_s + 0.5, f"{where}: reached at {run.reached_s}"
        assert run.held_share >= 0.95, f"{where}: held {run.held_share:.2f} of the cap"
