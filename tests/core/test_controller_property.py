"""A property of the controller: with a backlog and no 429, a lane holds the stated limit.

Whatever window the provider counts ``remaining`` in (a minute-capacity bucket as OpenAI, one
second as some gateways, fixed 10-second windows as Azure), however long its answers take, and
whatever the stated limit, a lane with work waiting and no 429 never sits below 0.8 of the
stated limit for more than 5 s. Driven on a simulated clock against a model of each window, so
it runs in milliseconds and hypothesis can draw hundreds of providers.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane, Permit, _ThreadWaiter

from .simclock import Answers, ProviderWindow, SimClock, admitted, steps

_STEP_S = 0.01
_RUN_S = 25.0


@given(
    rpm=st.sampled_from([300.0, 1200.0, 6000.0]),
    window=st.sampled_from(
        [("minute", 60.0, False), ("second", 1.0, False), ("azure", 10.0, True)]
    ),
    latency_s=st.floats(0.05, 8.0),
)
@settings(max_examples=60, deadline=None)
def test_with_a_backlog_and_no_429_the_stated_limit_is_reached(
    rpm: float, window: tuple[str, float, bool], latency_s: float
) -> None:
    _run_against_a_window(rpm, window, latency_s, stated=True)


@given(
    rpm=st.sampled_from([300.0, 600.0, 1200.0, 2400.0]),
    fixed=st.booleans(),
    latency_s=st.floats(0.05, 0.6),
)
# A bucket refusing and taking by turns around one instant read as fixed windows of 1 (the
# brackets of one stretch counted as chance alignments): held at a request a second.
@example(rpm=600.0, fixed=False, latency_s=0.1125)
@example(rpm=300.0, fixed=False, latency_s=0.3875)
@example(rpm=1200.0, fixed=False, latency_s=0.55)
# A clump of 8 refused at one instant, the count since it started at the last of them and
# all 8 subtracted: measured 1846/min for 2400, held at 0.75 of it for 19 s.
@example(rpm=2400.0, fixed=False, latency_s=0.4)
@settings(max_examples=40, deadline=None)
def test_hintless_429s_lead_to_the_true_limit_within_seconds(
    rpm: float, fixed: bool, latency_s: float
) -> None:
    """No rate-limit headers, bare 429s, a one-second bucket or fixed one-second windows:
    the rate found from the first 429 (during slow start, when few answers are in) climbs
    back within seconds to what the server accepted in the second before it refused, and a
    later cut resumes under what it accepted then, not under the mean of our own climb."""
    _run_against_a_window(rpm, ("second", 1.0, fixed), latency_s, stated=False)


def test_hintless_429s_with_slow_answers_reach_the_true_limit() -> None:
    """A gateway with no rate-limit headers and bare 429s, 300/min in a one-second bucket,
    answers in 2 s: the first 429 cannot tell a rate from a cap on requests in flight (7 slots
    at 2 s an answer are 3.5/s of 5/s). The cap it suggests is tried one higher within a round
    trip, and the success there makes it the rate."""
    _run_against_a_window(300.0, ("second", 1.0, False), 2.0, stated=False)


@given(
    rpm=st.sampled_from([300.0, 600.0]),
    fixed=st.booleans(),
    latency_s=st.floats(1.0, 3.0),
)
# Read as a cap because a request after a second as busy within two was taken (a one-second
# bucket or fixed window of 10/s takes 9-13 in a second, refills included): 39 of 40 sent.
@example(rpm=600.0, fixed=False, latency_s=1.625)
@example(rpm=600.0, fixed=True, latency_s=1.45)
# Fixed windows of 5 a second, answers of 1.3125 s: the cap of 5 that the start's sixth
# suggested was refused its test by a window already holding four answers' replacements, and
# confirmed from a pace over the round trip that counted the start's burst (the ramp's fifth
# and the refused sixth, sent before any answer): held at 3.8/s of 5 for the rest of the run
# (19 sent in [4.6, 9.6) s for 20). A cap of 5 sends the same up to that test (below).
@example(rpm=300.0, fixed=True, latency_s=1.3125)
@settings(max_examples=20, deadline=None)
def test_hintless_429s_with_answers_of_seconds_reach_the_true_limit(
    rpm: float, fixed: bool, latency_s: float
) -> None:
    """The same for answers of 1-3 s, where the first bare 429 comes at a peak in flight of a
    few requests: the cap it suggests is a hypothesis, tested, not a limit held for 10 s."""
    _run_against_a_window(rpm, ("second", 1.0, fixed), latency_s, stated=False)


def _run_against_a_window(
    rpm: float, window: tuple[str, float, bool], latency_s: float, *, stated: bool
) -> None:
    """``stated`` False: no rate-limit headers and bare 429s (no retry-after); the limit is
    then found from the 429s, and every 5 s window that no 429 explains must still hold 0.8
    of it."""
    _, window_s, fixed = window
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())  # a backlog: the lane always has work waiting
    provider = ProviderWindow(rpm, window_s, fixed)
    in_flight: Answers[tuple[Permit, int, bool]] = Answers()
    sends: list[float] = []
    refusals: list[float] = []
    headers_base = {"x-ratelimit-limit-requests": str(int(rpm))}
    for now in steps(clock, until_s=_RUN_S, step_s=_STEP_S):
        for permit, remaining, accepted in in_flight.due(now):
            headers = {**headers_base, "x-ratelimit-remaining-requests": str(remaining)}
            if not accepted:
                headers["retry-after-ms"] = str(round(1000 / provider.rate_per_s))
                refusals.append(now)
            if not stated:
                headers = {}
            verdict = classify_response(200 if accepted else 429, headers, None, now_wall_s=0.0)
            lane.settle(permit, verdict, now=now, max_hint_s=600.0, retry=False)
        for permit in admitted(lane, now):
            # Counted on arrival; the answer reports what was left then. A refusal comes back
            # at once, an answer after the latency.
            accepted = provider.take(now)
            sends.append(now)
            answer_at = now + (latency_s if accepted else _STEP_S)
            in_flight.add(answer_at, (permit, provider.remaining(now), accepted))
    # Every 5 s window that no 429 explains (none in it, nor within a round trip before it)
    # holds at least 0.8 of what the stated limit allows in 5 s, once the first answers are in
    # and what was sent before them (blind: nothing is known until then) is answered.
    need = 0.8 * rpm / 60.0 * 5.0
    t = 2.0 * latency_s + 1.0
    while t + 5.0 <= _RUN_S:
        explained = any(t - latency_s - 1.0 <= r < t + 5.0 for r in refusals)
        sent = sum(1 for s in sends if t <= s < t + 5.0)
        if explained:
            t += 1.0
            continue
        assert sent >= math.floor(need), (
            f"{sent} sent in [{t:.1f}, {t + 5:.1f}) s, below 0.8 of {rpm:g}/min"
        )
        t += 1.0


class _QueueingServer:
    """A self-hosted server (vLLM-like) with no 429s: ``capacity`` requests at once, the rest
    wait in a FIFO queue, and each starts ``1 + slowdown * min(1, waiting / capacity)`` times
    slower while others wait (batching under memory pressure)."""

    def __init__(self, capacity: int, slowdown: float, service_s: float, seed: int) -> None:
        self.capacity = capacity
        self.slowdown = slowdown
        self.service_s = service_s
        self.rng = random.Random(seed)
        self.processing: list[tuple[float, Permit]] = []
        self.waiting: list[Permit] = []

    def arrive(self, permit: Permit, now: float) -> None:
        self.waiting.append(permit)
        self._start(now)

    def _start(self, now: float) -> None:
        while self.waiting and len(self.processing) < self.capacity:
            permit = self.waiting.pop(0)
            factor = 1.0 + self.slowdown * min(1.0, len(self.waiting) / self.capacity)
            took_s = self.service_s * self.rng.lognormvariate(0.0, 0.3) * factor
            self.processing.append((now + took_s, permit))

    def done(self, now: float) -> list[Permit]:
        finished = [p for at, p in self.processing if at <= now]
        self.processing = [(at, p) for at, p in self.processing if at > now]
        self._start(now)
        return finished


@given(
    capacity=st.integers(8, 24),
    slowdown=st.floats(0.1, 0.4),
    service_s=st.floats(0.3, 2.0),
    seed=st.integers(0, 1000),
)
# Derandomized: a draw it fails (below, as a strict xfail) must not turn CI red at random.
@settings(max_examples=30, deadline=None, derandomize=True)
# The first answers back are the short ones of what was sent: an unloaded latency read from
# them ran low, and ordinary answers read as a queue (held at 15.2 of 20; 10.4 of 13). Settling
# it on more windows of the first answers back fixed those and held this server's first queue
# too long (capacity 8, answers of 2 s).
@example(capacity=20, slowdown=0.25, service_s=1.5, seed=742)
@example(capacity=13, slowdown=0.25, service_s=1.0, seed=200)
@example(capacity=8, slowdown=0.125, service_s=1.95, seed=4)
# A cut checked on the first window after it (14 in flight, 1.35 times slower) was refuted
# while slow start's queue still drained, and the window went back to 34 on a capacity of 12.
@example(capacity=12, slowdown=0.109375, service_s=0.75, seed=583)
# After slow start's cut, single windows near the capacity read 1.3 times a base read a
# little low (a seventh), and each cut again: held at 13.1 of 18, 8.7 of 11.
@example(capacity=18, slowdown=0.25, service_s=0.3125, seed=382)
@example(capacity=11, slowdown=0.25, service_s=0.5, seed=335)
# Slow start's first window fit a queue past 7 on a server of 8, 32% slower under it: the
# cut read from the slowed answers went to 6.5 (a capacity of 5.9), under the load that
# window had shown unqueued, and the window held 0.67 of the capacity for 5 s. And with the
# ramp going on after the first answer, 8 at 37% slower answering in 1.75-2 s (the two below).
@example(capacity=8, slowdown=0.32, service_s=1.84, seed=105)
@example(capacity=8, slowdown=0.375, service_s=2.0, seed=186)
@example(capacity=8, slowdown=0.390625, service_s=1.75, seed=744)
def test_a_queueing_server_without_429s_is_held_near_its_capacity(
    capacity: int, slowdown: float, service_s: float, seed: int
) -> None:
    """The true limit of a server that never answers 429 is its capacity: with a backlog, no
    5 s window (once the first answers are in) holds fewer than 0.8 of it in flight on
    average, and once slow start's overshoot has drained, none holds more than about twice as
    many (past that, requests only queue)."""
    _check_held_near_capacity(capacity, slowdown, service_s, seed)


# Found by hypothesis (session 37, on a helper's run): answers of 2 s, a quarter slower under
# a queue: 4.8 of 8 in flight on average over [11, 16) s. Left for the controller's work.
@pytest.mark.xfail(strict=True, reason="issue #10: held at 4.8 of a capacity of 8 for 5 s")
def test_a_slow_small_queueing_server_found_by_hypothesis_is_held_near_its_capacity() -> None:
    _check_held_near_capacity(8, 0.25, 2.0, 343)


def _check_held_near_capacity(capacity: int, slowdown: float, service_s: float, seed: int) -> None:
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, slowdown, service_s, seed)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    run_s = 20.0 + 10.0 * service_s
    in_flight: list[tuple[float, int]] = []
    while clock.now < run_s:
        now = clock.now
        for permit in server.done(now):
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False)
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        in_flight.append((now, lane.slots.in_flight))
        clock.now = round(now + _STEP_S, 6)
    t = 4.0 * service_s + 3.0  # past slow start, its overshoot and the queue it left
    while t + 5.0 <= run_s:
        counts = [n for at, n in in_flight if t <= at < t + 5.0]
        mean = sum(counts) / len(counts)
        assert mean >= 0.8 * capacity, (
            f"{mean:.1f} in flight on average in [{t:.1f}, {t + 5:.1f}) s, capacity {capacity}"
        )
        if t >= 10.0 * service_s:  # slow start's overshoot has drained by then
            # 2.2, not 2: with the start's ramp going on to 16 after the first answer, a server
            # of 8 answering in 1.65-2 s (a spread of 0.3) gets 16 in its first window, whose
            # 12 answers back cannot tell its queue from that spread, and the base read 1.3x
            # high holds 2.03-2.1 times it (1.75-1.82 before) for 0.01-0.02 of the reference
            # on the robustness row (see docs/CONTROLLER.md, session 26).
            assert mean <= 2.2 * capacity, f"{mean:.1f} in flight in [{t:.1f}, {t + 5:.1f}) s"
        t += 1.0


@given(
    capacity=st.integers(1, 8),
    slowdown=st.floats(0.1, 0.4),
    service_s=st.floats(0.3, 2.0),
    seed=st.integers(0, 1000),
)
@settings(max_examples=30, deadline=None)
# A first answer drawn long (4.5 s of 1.96): 37 went out before it, and slow start then grew
# by one slot per answer for the 16 answers (35 s) a window of them took, to 47.
@example(capacity=1, slowdown=0.3435184182954335, service_s=1.9636133114077405, seed=697)
# The start's window fit a queue past 3 at a median load of 7: that load, taken as read
# unloaded, refuted the start's cut (answers at 5 in flight 1.3-1.5 times slower) and held 10.
@example(capacity=3, slowdown=0.351760216594737, service_s=1.2850290290241708, seed=960)
def test_a_server_smaller_than_slow_starts_first_window_is_held_near_its_capacity(
    capacity: int, slowdown: float, service_s: float, seed: int
) -> None:
    """Ollama serves one request at a time by default, small vLLM/TGI deployments a few. Slow
    start's first window (sent at loads 1 to 16) then queues, and its median, read as the
    unloaded latency, held servers of 1, 2 and 4 at 9-37, 4.5-8 and 2-3.4 times their
    capacity for good. Once the start has drained (after 40 unloaded latencies), the lane
    holds at most about twice the capacity, plus a few (one slot is all of a server of 1), and
    keeps the server busy.

    Once the start has drained, and not before: what went out before the first answer came
    back (silence doubles the window: no answer yet is no evidence of load) is queued at the
    server whatever the lane does next, and a server of 1 whose first answer took 4.5 s
    (1.96 s, drawn long) held 37 that it served at one per 2.6 s, 96 s in all."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, slowdown, service_s, seed)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    at_first_answer: int | None = None
    # How long the server takes to work through a backlog of one request per slot, at worst
    # (slowed by its queue, a long draw of its lognormal service time).
    per_request_s = service_s * (1.0 + slowdown) * 1.35 / capacity
    start_s = 40.0 * service_s
    in_flight: list[int] = []
    busy: list[int] = []
    peak = 0
    while clock.now < start_s + 40.0 * service_s:
        now = clock.now
        for permit in server.done(now):
            if at_first_answer is None:
                at_first_answer = lane.slots.in_flight
                start_s = max(start_s, now + at_first_answer * per_request_s)
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False)
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        peak = max(peak, lane.slots.in_flight)
        if now >= start_s:
            in_flight.append(lane.slots.in_flight)
            busy.append(len(server.processing))
        clock.now = round(now + 2 * _STEP_S, 6)
    # After the first answer, with two windows' worth in flight (32: fewer is a rate's ramp,
    # whose answers come at the ramp's pace), the window grows only by what the server was
    # seen to serve. Below that, slow start still grows by one per answer until a window is
    # judged (12 -> 23 against a server of 1 answering in 2 s).
    assert at_first_answer is not None
    assert peak <= max(32, at_first_answer) + 2 * capacity + 4, f"{at_first_answer} -> {peak}"
    mean = sum(in_flight) / len(in_flight)
    assert mean <= 2.0 * capacity + 4.0, f"{mean:.1f} in flight on average, capacity {capacity}"
    assert sum(busy) / len(busy) >= 0.7 * capacity, f"{sum(busy) / len(busy):.1f} served"


def _slow_start_against_a_queueing_server(
    capacity: int, service_s: float, seed: int
) -> tuple[int, int]:
    """A lane with a backlog against the queueing server for 12 s: how many were in flight
    when the first answer came, and the most ever in flight."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, 0.3, service_s, seed)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    first: int | None = None
    peak = 0
    while clock.now < 12.0:
        now = clock.now
        for permit in server.done(now):
            first = lane.slots.in_flight if first is None else first
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False)
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        peak = max(peak, lane.slots.in_flight)
        clock.now = round(now + _STEP_S, 6)
    assert first is not None
    return first, peak


def test_a_queueing_server_is_filled_within_a_round_trip_without_running_to_3x_its_capacity() -> (
    None
):
    """The robustness row is lost at the start: a first window of 4 left a server of
    capacity 12-24 a third to a sixth full for a round trip, then doubling ran the window to
    2.0-2.9 times the capacity in the round trip before the queue showed in answers (a 10-s
    run: 0.74 of a pacer told the capacity at worst). Now answers of 1.2 s find 7 in flight
    (a paced ramp from half a second on; 4 before) and slow start stops at 1.5 times what
    the server served at once."""
    runs = [
        (
            capacity,
            service_s,
            seed,
            *_slow_start_against_a_queueing_server(capacity, service_s, seed),
        )
        for capacity in (12, 16, 20, 24)
        for service_s in (0.6, 1.2, 2.0)
        for seed in (1, 2)
    ]
    assert all(first >= 7 for _, service_s, _, first, _ in runs if service_s >= 1.2), runs
    overshoots = [
        (c, s, seed, round(peak / c, 2)) for c, s, seed, _, peak in runs if peak > 2.2 * c
    ]
    assert not overshoots, f"ran past 2.2 x the capacity: {overshoots}"


def _time_to_fill(capacity: int, service_s: float, seed: int, target: int) -> tuple[float, float]:
    """A lane with a backlog against the queueing server: when the first answer came, and
    when ``target`` were first in flight."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, 0.25, service_s, seed)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    first = math.inf
    while clock.now < 20.0 and lane.slots.in_flight < target:
        now = clock.now
        for permit in server.done(now):
            first = min(first, now)
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False)
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        clock.now = round(now + _STEP_S, 6)
    return first, clock.now


def test_a_slow_queueing_server_is_filled_within_a_second_of_its_first_answer() -> None:
    """With answers of 1.5-2 s, slow start's first round trip brings back only the 8 the
    start sent, and doubling on them took 1.4-1.9 s after the first answer to reach 16 in
    flight (a server of 22 answering in 1.6 s was filled 4 s into a 14-s run). The start's
    paced ramp now goes on to 16 after an answer that states no limit: 0.4-0.6 s."""
    late = {}
    for capacity in (16, 24):
        for service_s in (1.5, 2.0):
            for seed in (1, 2):
                first, filled = _time_to_fill(capacity, service_s, seed, 16)
                if filled - first > 1.0:
                    late[(capacity, service_s, seed)] = round(filled - first, 2)
    assert not late, f"16 in flight more than 1 s after the first answer: {late}"


def test_a_queueing_server_is_not_cut_below_its_capacity_on_a_noisy_unloaded_latency() -> None:
    """A server serving 21 at once, 1.2 s an answer (lognormal spread): the first window's
    median, the unloaded latency, reads a fifth low, and one later reading passes 1.3 x that
    by chance. Once the lane has reached the capacity, its limit stays near it (it was cut
    from 20 to 9 and took 12 s to climb back)."""
    capacity = 21
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, 0.33, 1.2, seed=14)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    reached = False
    lowest = math.inf
    while clock.now < 20.0:
        now = clock.now
        for permit in server.done(now):
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False)
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        reached = reached or lane.slots.limit >= capacity
        if reached:
            lowest = min(lowest, lane.slots.limit)
        clock.now = round(now + _STEP_S, 6)
    assert reached
    assert lowest >= 0.8 * capacity, f"cut to {lowest} on a server that serves {capacity}"


@pytest.mark.parametrize(
    ("capacity", "slowdown", "service_s", "seed"),
    [
        (18, 0.2833, 1.8521, 989),
        (15, 0.1454, 0.3617, 352),
        # Not yet: the same short first answers, but slow start's windows read unloaded only
        # up to 13 and 10, and after the cut the window sits at 14-17 and 11-13, answers
        # 1.2-1.3 times the base: a queue of 11-12 and 9-10 fits them too (0.80 and 0.73
        # busy, as on main). The slope of latency against load would tell, but loads span
        # 1.2x at most there, and windows of 16 answers vary 10%.
        pytest.param(20, 0.1095, 1.5589, 352, marks=pytest.mark.xfail(strict=True)),
        pytest.param(16, 0.1111, 0.7701, 352, marks=pytest.mark.xfail(strict=True)),
        # Draws that fail the property above, on main as here, of the same kind: a base read
        # 16-20% low, the last load read unloaded (9 on a server of 19) far under the load
        # the window is cut back to (0.82, 0.78, 0.80 busy).
        pytest.param(19, 0.25, 1.0, 489, marks=pytest.mark.xfail(strict=True)),
        pytest.param(23, 0.1389, 1.7498, 335, marks=pytest.mark.xfail(strict=True)),
        pytest.param(20, 0.2941, 0.5745, 953, marks=pytest.mark.xfail(strict=True)),
        # Found by the property test above in a local run (17.0 in flight for 5 s where 17.6
        # is 0.8 of it): a base read at 0.69 of answers taking 0.75 s cut slow start's 23 on a
        # server of 22 that never queued down to 10.9, whence it grows one a round trip.
        pytest.param(22, 0.25, 0.75, 159, marks=pytest.mark.xfail(strict=True)),
    ],
)
def test_a_server_that_never_queues_is_not_held_under_its_capacity_on_a_base_read_low(
    capacity: int, slowdown: float, service_s: float, seed: int
) -> None:
    """The first ~24 answers of these draws come short, and the unloaded latency reads a
    fifth low (1.50 s where answers take 1.85; 0.29 where they take 0.36): ordinary answers
    then read 1.25-1.35 times it, and after slow start's cut the lane held a server of 18 at
    15-16 (0.86 of it busy) and one of 15 at 9-11 for 8 s (0.83), above the capacity the cut
    implied, where the check of a cut never looked. Loads that read unloaded before are no
    queue either: the cut is refuted there. The share of the capacity kept busy, past slow
    start, is at least 0.9 (0.98 and 0.95 now)."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    server = _QueueingServer(capacity, slowdown, service_s, seed)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    run_s = 10.0 + 12.0 * service_s
    start_s = 3.0 * service_s + 3.0  # past slow start and its overshoot
    busy: list[int] = []
    while clock.now < run_s:
        now = clock.now
        for permit in server.done(now):
            lane.settle(permit, ok, now=now, max_hint_s=600.0, retry=False)
        while lane._try_admit(now, 0) == 0.0:
            server.arrive(lane._grant(now, 0, now), now)
        if now >= start_s:
            busy.append(min(lane.slots.in_flight, capacity))
        clock.now = round(now + _STEP_S, 6)
    share = sum(busy) / len(busy) / capacity
    assert share >= 0.9, f"{share:.3f} of a capacity of {capacity} busy past slow start"


def _held_under_an_in_flight_cap(
    cap: int, service_s: float, seed: int, *, spread: float = 0.3
) -> float:
    """A server whose only limit is ``cap`` requests in flight, answered with a bare 429 (no
    headers, no code) in 10 ms, answers of ``service_s`` (lognormal spread, sigma ``spread``;
    0: all alike); a lane with a backlog. Returns the lowest mean in flight over a 5 s window,
    as a share of the cap, once slow start and the cap's test are behind (3 answers and 2 s
    in)."""
    rng = random.Random(seed)
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    bare = classify_response(429, {}, None, now_wall_s=0.0)
    answers: Answers[tuple[Permit, bool]] = Answers()
    held = 0
    samples: list[tuple[float, int]] = []
    run_s = 20.0
    for now in steps(clock, until_s=run_s, step_s=_STEP_S):
        for permit, accepted in answers.due(now):
            held -= 1 if accepted else 0
            lane.settle(permit, ok if accepted else bare, now=now, max_hint_s=600.0, retry=False)
        for permit in admitted(lane, now):
            accepted = held < cap
            held += 1 if accepted else 0
            took_s = service_s * rng.lognormvariate(0.0, spread) if accepted else 0.01
            answers.add(now + took_s, (permit, accepted))
        samples.append((now, held))
    lowest = math.inf
    t = 3.0 * service_s + 2.0
    while t + 5.0 <= run_s:
        counts = [n for at, n in samples if t <= at < t + 5.0]
        lowest = min(lowest, sum(counts) / len(counts) / cap)
        t += 1.0
    return lowest


def test_an_in_flight_cap_answered_with_bare_429s_is_held() -> None:
    """No headers at all and a bare 429 past ``cap`` in flight: the first refusal (at a new
    peak) may be a cap or a rate, and the cap it suggests is tested a round trip later. Held
    under the cap, a lane sends as much a second as it did before the refusal (the cap is
    what limited it), so a refused test after "a second as busy" is not the rate when a
    second as busy was taken since. Read as the rate, the lane paced at 0.45-0.8 of what
    the cap allows (31 of these 36 servers held a 5 s window under 0.8 of the cap; 2 do
    now)."""
    under = [
        (cap, service_s, seed, round(share, 2))
        for cap in (4, 8, 12, 16)
        for service_s in (0.3, 0.6, 1.0)
        for seed in (1, 2, 3)
        if (share := _held_under_an_in_flight_cap(cap, service_s, seed)) < 0.8
    ]
    assert len(under) <= 3, f"held under 0.8 of the cap in flight: {under}"


def test_a_small_in_flight_cap_with_slow_answers_is_held() -> None:
    """A cap of 5 or 6 answered in 0.8-1.2 s: its test is refused a round trip after the
    first refusal, with 4-6 answers in. Whether the lane's pace under the cap was as busy as
    the refused second was unknown until 16 answers had made the mean latency "known", so
    the refused test read as the rate, and the lane paced at 0.45-0.7 of what the cap
    allowed (14 of these 36 servers held a 5 s window under 0.8 of the cap). The mean of
    the answers so far says it after 4: 3 did then. The paced start before the first answer
    brought 10 back: the second before the first refusal held the start's burst (7-9 sends,
    nearly all still in flight), which a second under the cap always matched within two.
    Such a second is now judged without the margin, and against the pace less the refused
    test: 2 of 36."""
    under = [
        (cap, service_s, seed, round(share, 2))
        for cap in (5, 6)
        for service_s in (0.8, 1.0, 1.2)
        for seed in range(1, 7)
        if (share := _held_under_an_in_flight_cap(cap, service_s, seed)) < 0.8
    ]
    assert len(under) <= 3, f"held under 0.8 of the cap in flight: {under}"


def test_a_cap_met_by_the_paced_start_is_held_at_the_cap() -> None:
    """Caps the paced start ran into before (or right after) the first answer: 6 in flight
    with answers of 1 s (seeds 1 and 4), 3 with answers of 1.2 s (seed 1: the first window
    of 4 is already past it). The refused second held the start's burst; a second under the
    cap was "as busy" within two, and the refused test read as the rate (0.35-0.48 of the
    cap: the in-flight refusals that followed cut the discovered rate again)."""
    for cap, service_s, seed in ((6, 1.0, 1), (6, 1.0, 4), (3, 1.2, 1)):
        share = _held_under_an_in_flight_cap(cap, service_s, seed)
        assert share >= 0.8, f"cap {cap}, answers of {service_s} s, seed {seed}: {share:.2f}"


def test_a_cap_indistinguishable_from_a_rate_at_its_test_is_held() -> None:
    """A cap of 5 answered in a constant 1.3125 s: up to the refusal of its test at 1.95 s the
    lane sends the very same requests at the very same times as against fixed windows of 5 a
    second (the example of the 1-3-s hintless property), and both refuse the test. Judged on
    the pace without the start's burst alone, the cap read as the rate and was held at 0.73;
    tested once more after a quieter second, it is refused there (a rate had room) and held."""
    assert _held_under_an_in_flight_cap(5, 1.3125, 1, spread=0.0) >= 0.95


def _refusals_after_the_discovery(rpm: float, fixed: bool, latency_s: float) -> int:
    """The 429s that come back more than 2 s after the first, over 12 s of a lane with a
    backlog against a one-second bucket or fixed one-second windows (no headers, bare 429s
    in 10 ms): what the discovery and the probe after it cost, beyond the first burst."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    provider = ProviderWindow(rpm, 1.0, fixed)
    bare = classify_response(429, {}, None, now_wall_s=0.0)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    in_flight: Answers[tuple[Permit, bool]] = Answers()
    refusals: list[float] = []
    for now in steps(clock, until_s=12.0, step_s=_STEP_S):
        for permit, accepted in in_flight.due(now):
            if not accepted:
                refusals.append(now)
            lane.settle(permit, ok if accepted else bare, now=now, max_hint_s=600.0, retry=False)
        for permit in admitted(lane, now):
            accepted = provider.take(now)
            in_flight.add(now + (latency_s if accepted else _STEP_S), (permit, accepted))
    return sum(1 for r in refusals if r > refusals[0] + 2.0) if refusals else 0


def test_a_discovered_rate_is_not_probed_past_the_second_it_measured() -> None:
    """Beyond the first burst, what a hintless discovery costs: the second before the first
    429 bounds the server's rate from above, and near it the pace probes gently (+0.5%/s)
    for 10 s, as after a measured cut. Probed ever faster from the discovery instead, a lane
    that had measured a window exactly passed it within seconds: on this grid of 30 servers
    (one-second buckets and fixed windows of 300-1440/min, answers of 0.2-0.7 s), 33 429s
    more than 2 s after the first before, 3 at most on one server (300/min windows answered
    in 0.2 s), and 960/min windows answered in 0.2-0.35 s drew 2 each (none now); 23 now,
    2 at most. With the careful entry past the most in flight ever sent (one more request per
    answer), merged after: 32 without the rule, 3 at most on one server; 30 with it, 2."""
    late = {
        (rpm, fixed, latency_s): _refusals_after_the_discovery(rpm, fixed, latency_s)
        for rpm in (300.0, 600.0, 960.0, 1200.0, 1440.0)
        for fixed in (True, False)
        for latency_s in (0.2, 0.35, 0.7)
    }
    assert max(late.values()) <= 2, late
    assert sum(late.values()) <= 30, late


def _losses_after_the_discovery(
    rpm: float, latency_s: float, *, hinted: bool = False
) -> list[float]:
    """What a lane with a backlog took as the server's rate (the loss its pace climbs back
    to) after each 429 more than half a second after the first, over 10 s against a
    one-second bucket (no headers, 429s back in 10 ms: bare, or ``hinted`` as Groq's, with
    the wait in whole seconds and OpenAI's body)."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    provider = ProviderWindow(rpm, 1.0, fixed=False)
    body = b'{"error": {"type": "requests", "code": "rate_limit_exceeded", "message": ""}}'
    bare = (
        classify_response(429, {"retry-after": "1"}, body, now_wall_s=0.0)
        if hinted
        else classify_response(429, {}, None, now_wall_s=0.0)
    )
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    in_flight: Answers[tuple[Permit, bool]] = Answers()
    first: float | None = None
    losses: list[float] = []
    for now in steps(clock, until_s=10.0, step_s=_STEP_S):
        for permit, accepted in in_flight.due(now):
            lane.settle(permit, ok if accepted else bare, now=now, max_hint_s=600.0, retry=False)
            if accepted:
                continue
            first = now if first is None else first
            loss = lane.request_rate.loss_rpm
            if now > first + 0.5 and loss is not None:
                losses.append(loss)
        for permit in admitted(lane, now):
            accepted = provider.take(now)
            in_flight.add(now + (latency_s if accepted else _STEP_S), (permit, accepted))
    return losses


def test_a_bucket_is_measured_net_of_its_burst_after_the_discovery() -> None:
    """The second before the first hintless 429 holds a one-second bucket's stored burst as
    well as its rate (slow start sends under the rate until then): up to twice the rate, and
    the pace climbs towards it. A 429 up to a second after an earlier one measures what the
    server took since that one, when it had nothing left, as it has nothing left now: its
    rate, net of any burst. Measured over the second before it instead, a lane climbing from
    the discovery took 1380/min for a 1140/min bucket (it had refilled while the lane waited
    out the first burst). On this grid of 24 buckets (600-1500/min, answers of 0.2-0.8 s),
    the 429s more than half a second after the first fell from 72 to 51, and those at which
    the lane took the server's rate for more than 1.1 times it from 50 to 24."""
    late = over = 0
    for rpm in (600.0, 780.0, 960.0, 1140.0, 1320.0, 1500.0):
        for latency_s in (0.2, 0.4, 0.6, 0.8):
            losses = _losses_after_the_discovery(rpm, latency_s)
            late += len(losses)
            over += sum(1 for loss in losses if loss > 1.1 * rpm)
    assert late <= 56, late
    assert over <= 30, over


def test_a_bucket_whose_429s_say_wait_a_second_is_measured_net_of_its_burst() -> None:
    """Groq answers a 429 of its unstated rpm with a retry-after in whole seconds (1 s for a
    wait of a tenth), and the lane waits it out: meanwhile the server's one-second bucket
    refills, and the second before the next 429 holds some of that store as well as the rate
    (600/min for 434: the pace resumed at 552 and was refused again 3 s later). Measured from
    the earlier refusal (up to 6 s back when it was hinted), it is the rate: on this grid of
    12 buckets (400-700/min, answers of 0.2-0.6 s), the 429s more than half a second after
    the first fell from 34 to 19, and those at which the lane took the server's rate for
    more than 1.1 times it from 32 to 9."""
    late = over = 0
    for rpm in (400.0, 450.0, 550.0, 700.0):
        for latency_s in (0.2, 0.4, 0.6):
            losses = _losses_after_the_discovery(rpm, latency_s, hinted=True)
            late += len(losses)
            over += sum(1 for loss in losses if loss > 1.1 * rpm)
    assert late <= 24, late
    assert over <= 14, over
