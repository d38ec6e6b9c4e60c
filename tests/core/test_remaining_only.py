"""A budget whose limit is not stated: Azure's ``remaining`` of a fixed 10-second window.

Azure OpenAI states ``x-ratelimit-remaining-requests`` and ``-tokens`` and nothing else: no
limit to pace at, no reset. A lane then knows no rate until a 429, and before this rule it sent
on through an exhausted window: every request in flight when the window ran out came back 429
(4-7 a window at 30-50 in flight). Now what an answer says is left, less what the lane sent
after it, is all that goes; with none left, one request at a time (its 429's retry-after says
when the window ends). Driven on a simulated clock, as tests/core/test_controller_property.py.
"""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane, Permit, _ThreadWaiter

from .simclock import Answers, SimClock, steps

_STEP_S = 0.01


class _AzureWindows:
    """Requests and tokens counted in fixed windows of ``window_s`` from ``origin_s``."""

    def __init__(self, *, requests: int, tokens: int, window_s: float, origin_s: float) -> None:
        self.capacity = (requests, tokens)
        self.window_s = window_s
        self.origin_s = origin_s
        self.window = -1
        self.used = [0, 0]

    def index(self, now: float) -> int:
        return math.floor((now - self.origin_s) / self.window_s)

    def take(self, now: float, tokens: int) -> tuple[bool, dict[str, str]]:
        """Count a request arriving at ``now``: (accepted, the answer's headers)."""
        window = self.index(now)
        if window != self.window:
            self.window, self.used = window, [0, 0]
        requests_cap, tokens_cap = self.capacity
        accepted = self.used[0] + 1 <= requests_cap and self.used[1] + tokens <= tokens_cap
        if accepted:
            self.used[0] += 1
            self.used[1] += tokens
        headers = {
            "x-ratelimit-remaining-requests": str(requests_cap - self.used[0]),
            "x-ratelimit-remaining-tokens": str(tokens_cap - self.used[1]),
        }
        if not accepted:
            ends_at = self.origin_s + (window + 1) * self.window_s
            headers["retry-after"] = str(math.ceil(ends_at - now))  # whole seconds, as Azure
        return accepted, headers


def _run(
    *,
    requests: int,
    tokens_per_window: int,
    latency_s: float,
    origin_s: float,
    seed: int,
    run_s: float = 35.0,
) -> tuple[dict[int, int], dict[int, int]]:
    """A lane with a backlog against the windows: (429s per window, requests accepted per
    window), windows numbered from the first."""
    rng = random.Random(seed)
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    provider = _AzureWindows(
        requests=requests, tokens=tokens_per_window, window_s=10.0, origin_s=origin_s
    )
    answers: Answers[tuple[Permit, dict[str, str], bool]] = Answers()
    refused: dict[int, int] = {}
    accepted_in: dict[int, int] = {}
    cost = rng.randint(300, 1200)
    for now in steps(clock, until_s=run_s, step_s=_STEP_S):
        for permit, headers, accepted in answers.due(now):
            verdict = classify_response(200 if accepted else 429, headers, None, now_wall_s=0.0)
            lane.settle(permit, verdict, now=now, max_hint_s=600.0, retry=False)
        while lane._try_admit(now, cost) == 0.0:
            permit = lane._grant(now, cost, now)
            arrives_at = now + rng.uniform(0.002, 0.02)
            accepted, headers = provider.take(arrives_at, cost)
            window = provider.index(arrives_at)
            if accepted:
                accepted_in[window] = accepted_in.get(window, 0) + 1
                answers.add(arrives_at + latency_s * rng.uniform(0.8, 1.2), (permit, headers, True))
            else:
                refused[window] = refused.get(window, 0) + 1
                answers.add(arrives_at + 0.002, (permit, headers, False))
            cost = rng.randint(300, 1200)
    return refused, accepted_in


@given(
    requests=st.integers(60, 200),
    latency_s=st.floats(0.2, 2.0),
    origin_s=st.floats(-9.9, 0.0),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=10, deadline=None)
def test_a_window_stated_by_remaining_alone_is_refused_at_most_once(
    requests: int, latency_s: float, origin_s: float, seed: int
) -> None:
    """Requests bind: each window draws at most one 429 (the request that finds its end),
    and each window the lane had a backlog for is used to at least 0.9 of its budget after
    the first 429 told the lane when windows end. Before this rule: every request in flight
    at the window's end, 2-40 a window."""
    refused, accepted_in = _run(
        requests=requests,
        tokens_per_window=10**9,
        latency_s=latency_s,
        origin_s=origin_s,
        seed=seed,
    )
    assert all(n <= 1 for n in refused.values()), f"429s per window: {refused}"
    for window in sorted(accepted_in)[2:-1]:  # whole windows after the first 429
        assert accepted_in[window] >= 0.9 * requests, f"window {window}: {accepted_in}"


@given(
    tokens_per_window=st.integers(40_000, 120_000),
    latency_s=st.floats(0.2, 2.0),
    origin_s=st.floats(-9.9, 0.0),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=10, deadline=None)
def test_a_token_window_stated_by_remaining_alone_is_refused_at_most_once(
    tokens_per_window: int, latency_s: float, origin_s: float, seed: int
) -> None:
    """The same when tokens bind (Azure's TPM, with its RPM far above): the estimate charged
    is what the provider counts here, so no window is refused more than once."""
    refused, _ = _run(
        requests=10_000,
        tokens_per_window=tokens_per_window,
        latency_s=latency_s,
        origin_s=origin_s,
        seed=seed,
    )
    assert all(n <= 1 for n in refused.values()), f"429s per window: {refused}"


def test_a_budget_whose_statements_stop_does_not_hold_the_lane_to_one_request() -> None:
    """A server that stated ``remaining`` and then stops (a gateway that strips headers
    after a while): once nothing is left by the last statement, one request goes; accepted
    with nothing said, it shows the budget is not the provider's, and the lane sends on."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    assert lane._try_admit(0.0, 100) == 0.0
    first = lane._grant(0.0, 100, 0.0)
    stated = classify_response(200, {"x-ratelimit-remaining-requests": "2"}, None, now_wall_s=0.0)
    lane.settle(first, stated, now=0.2, max_hint_s=600.0, retry=False)
    held = []
    for _ in range(2):
        assert lane._try_admit(0.2, 100) == 0.0
        held.append(lane._grant(0.2, 100, 0.2))
    # two sent of two left: the rest wait
    assert all(lane._try_admit(0.2 + k * 0.01, 100) > 0.0 for k in range(20))
    bare = classify_response(200, {}, None, now_wall_s=0.0)
    for permit in held:
        lane.settle(permit, bare, now=0.4, max_hint_s=600.0, retry=False)
    assert lane._try_admit(0.4, 100) == 0.0  # nothing in flight: one goes
    probe = lane._grant(0.4, 100, 0.4)
    assert all(lane._try_admit(0.4 + k * 0.01, 100) > 0.0 for k in range(20))
    lane.settle(probe, bare, now=0.6, max_hint_s=600.0, retry=False)
    sent = []  # held: a dropped permit frees its slot
    for _ in range(2):  # accepted, stating nothing: the lane sends on
        assert lane._try_admit(0.6, 100) == 0.0
        sent.append(lane._grant(0.6, 100, 0.6))
