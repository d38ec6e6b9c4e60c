"""Invariants of the pure limiters, checked over arbitrary sequences (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.core.bucket import TokenBucket
from pacekeeper.core.budget import RetryBudget
from pacekeeper.core.concurrency import AimdLimit, FixedLimit, Signal
from pacekeeper.core.config import AdaptiveConcurrency, Limits, RetryPolicy
from pacekeeper.core.cooldown import CooldownGate
from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.rate import PacedRate

rates = st.floats(min_value=0.1, max_value=1000.0)
bursts = st.floats(min_value=1.0, max_value=100.0)
gaps = st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=200)
costs = st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=200)


@given(rate=rates, burst=bursts, gaps=gaps, costs=costs)
def test_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: float, gaps: list[float], costs: list[int]
) -> None:
    """Spending only when wait_s says 0, total spent within [0, t] <= burst + rate*t + one
    oversize spend (allowed from a full bucket)."""
    bucket = TokenBucket(rate_per_s=rate, burst=burst)
    now, spent, biggest = 0.0, 0.0, 0.0
    for gap, cost in zip(gaps, costs, strict=False):
        now += gap
        wait = bucket.wait_s(now=now, cost=cost)
        assert wait >= 0.0
        now += wait  # the caller sleeps exactly the wait it was given, then spends
        assert bucket.wait_s(now=now, cost=cost) == pytest.approx(0.0, abs=1e-9)
        bucket.spend(now=now, cost=cost)
        spent += cost
        biggest = max(biggest, cost)
        assert spent <= max(burst, biggest) + rate * now + 1e-6 * max(1.0, spent)


@given(rate=rates, burst=bursts, cost=st.integers(min_value=1, max_value=10_000))
def test_an_oversize_spend_never_waits_forever(rate: float, burst: float, cost: int) -> None:
    bucket = TokenBucket(rate_per_s=rate, burst=burst)
    bucket.spend(now=0.0, cost=burst)  # empty it
    wait = bucket.wait_s(now=0.0, cost=cost)
    assert math.isfinite(wait)
    assert wait <= burst / rate + 1e-6  # at most the time to refill completely


def test_oversize_spend_is_admitted_from_a_full_bucket_and_repaid() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=5.0)
    assert bucket.wait_s(now=0.0, cost=50) == 0.0
    bucket.spend(now=0.0, cost=50)
    # 50 units at 10/s: the next unit fits once the debt is back within the burst
    assert bucket.wait_s(now=0.0, cost=1) == pytest.approx(4.6)


def test_bucket_rate_change_keeps_the_debt_in_units() -> None:
    bucket = TokenBucket(rate_per_s=10.0, burst=10.0)
    bucket.spend(now=0.0, cost=20)  # debt 20 units
    bucket.set_rate(rate_per_s=20.0, burst=10.0, now=0.0)
    assert bucket.debt(0.0) == pytest.approx(20.0)
    assert bucket.wait_s(now=0.0, cost=1) == pytest.approx(11 / 20)


def test_adjust_gives_back_but_never_beyond_full() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=10.0)
    bucket.spend(now=0.0, cost=5)
    bucket.adjust(now=0.0, delta=-100)
    assert bucket.level(0.0) == pytest.approx(10.0)


def test_drain_to_lowers_but_never_raises() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=10.0)
    bucket.drain_to(now=0.0, level=2.0)
    assert bucket.level(0.0) == pytest.approx(2.0)
    bucket.drain_to(now=0.0, level=8.0)
    assert bucket.level(0.0) == pytest.approx(2.0)


@given(
    closes=st.lists(
        st.tuples(st.floats(0, 100), st.floats(0, 100)),
        max_size=50,
    ),
    probe=st.floats(0, 300),
)
def test_nothing_passes_the_gate_before_the_latest_hint(
    closes: list[tuple[float, float]], probe: float
) -> None:
    gate = CooldownGate()
    latest = 0.0
    for at, hint in closes:
        gate.close_until(at + hint)
        latest = max(latest, at + hint)
    remaining = gate.remaining_s(now=probe)
    assert remaining == pytest.approx(max(0.0, latest - probe))


events = st.lists(st.sampled_from(["acquire", "success", "backpressure", "neutral"]), max_size=300)


@given(
    events=events,
    initial=st.integers(1, 20),
    low=st.integers(1, 5),
    high=st.integers(20, 64),
)
@settings(max_examples=200)
def test_aimd_stays_within_bounds_and_never_admits_past_its_limit(
    events: list[str], initial: int, low: int, high: int
) -> None:
    low = min(low, initial)
    settings_ = AdaptiveConcurrency(initial=max(initial, low), min=low, max=max(high, initial))
    aimd = AimdLimit(settings_)
    in_flight: list[tuple[float, int]] = []
    now = 0.0
    for event in events:
        now += 0.01
        if event == "acquire":
            if aimd.has_room():
                in_flight.append((now, aimd.acquire(now=now)))
        elif in_flight:
            sent_at, at_send = in_flight.pop(0)
            signal = {
                "success": Signal.SUCCESS,
                "backpressure": Signal.BACKPRESSURE,
                "neutral": Signal.NEUTRAL,
            }[event]
            aimd.release(now=now, sent_at=sent_at, in_flight_at_send=at_send, signal=signal)
        assert settings_.min <= aimd.limit <= settings_.max
        assert aimd.in_flight == len(in_flight)
        assert aimd.peak_in_flight <= settings_.max


def test_aimd_cuts_at_most_once_per_round_trip() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=20, max=64))
    sends = [aimd.acquire(now=0.0) for _ in range(10)]
    for at_send in sends:  # ten 429s for requests all sent before the first cut
        aimd.release(now=1.0, sent_at=0.0, in_flight_at_send=at_send, signal=Signal.BACKPRESSURE)
    assert aimd.decreases == 1
    assert aimd.limit == 14
    # a request sent after the cut may cut again
    at_send = aimd.acquire(now=1.5)
    aimd.release(now=2.0, sent_at=1.5, in_flight_at_send=at_send, signal=Signal.BACKPRESSURE)
    assert aimd.decreases == 2


def test_slow_start_doubles_per_round_trip_when_answers_come_back_in_clumps() -> None:
    """A round trip's answers arrive together: after the first, the freed slots are not
    taken yet (the waiters are being woken), so only that first one sees requests waiting
    for a slot. The window was full while they were all in flight: each grows it by one.
    (It grew by two per clump: 4 -> 6 -> 9.)"""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    sent_at = 0.0
    for expected in (8, 16, 32):
        sends = [aimd.acquire(now=sent_at) for _ in range(aimd.limit)]
        for k, at_send in enumerate(sends):
            aimd.release(
                now=sent_at + 1.0,
                sent_at=sent_at,
                in_flight_at_send=at_send,
                signal=Signal.SUCCESS,
                backlog=k == 0,
            )
        sent_at += 1.0
        assert aimd.limit == expected


def test_a_refuted_queueing_cut_gives_the_window_back_to_the_load_that_swelled() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=17, max=256))
    assert aimd.queueing(capacity=10.5, now=5.0)  # swollen answers at 17: down to 11
    assert aimd.limit == 11
    aimd.undo_queueing(17)  # as slow at 11: no queue at 17 after all
    assert aimd.limit == 17
    assert not aimd.slow_start  # it grows on from there one slot per round trip
    aimd.undo_queueing(12)  # never lowers it
    assert aimd.limit == 17


def test_aimd_does_not_grow_when_the_limit_is_not_used() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=10))
    for _ in range(100):
        at_send = aimd.acquire(now=0.0)  # only ever one in flight
        aimd.release(now=0.1, sent_at=0.0, in_flight_at_send=at_send, signal=Signal.SUCCESS)
    assert aimd.limit == 10


def test_fixed_limit_cap() -> None:
    slots = FixedLimit(50)
    slots.cap(8)
    assert slots.limit == 8


@given(
    ops=st.lists(st.sampled_from(["deposit", "spend"]), max_size=500),
    ratio=st.floats(0, 1),
    initial=st.floats(0, 20),
)
def test_retry_budget_never_goes_below_zero_and_never_exceeds_its_share(
    ops: list[str], ratio: float, initial: float
) -> None:
    budget = RetryBudget(ratio=ratio, initial=initial, maximum=max(initial, 50.0))
    deposits = 0
    for op in ops:
        if op == "deposit":
            budget.deposit()
            deposits += 1
        else:
            budget.try_spend()
        assert budget.balance >= 0.0
        assert budget.spent <= initial + ratio * deposits + 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rpm": -1},
        {"tpm": 0},
        {"concurrency": 0},
        {"concurrency": "lots"},
        {"burst_s": 0},
        {"utilisation": 1.5},
    ],
)
def test_bad_limits_fail_where_they_are_written(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_bad_retry_policy_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError, match="retry_budget_ratio"):
        RetryPolicy(retry_budget_ratio=2)


def test_aimd_probes_slowly_past_the_window_of_the_last_loss() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=10, max=100))
    at_send = aimd.acquire(now=0.0)
    aimd.release(now=0.1, sent_at=0.0, in_flight_at_send=at_send, signal=Signal.BACKPRESSURE)
    assert aimd.window == pytest.approx(7.0)  # cut from 10, the window of the loss

    def round_trip() -> None:  # one round trip's worth of successes at full use
        for _ in range(aimd.limit):
            aimd.release(now=1.0, sent_at=1.0, in_flight_at_send=aimd.limit, signal=Signal.SUCCESS)
            aimd.in_flight += 1  # keep the count balanced: these slots were never taken

    round_trip()
    round_trip()
    assert aimd.window == pytest.approx(9.0, abs=0.3)  # +1 per round trip below the loss
    for _ in range(4):
        round_trip()
    assert aimd.window < 10.0  # then a slow probe: not +4 in four round trips


def test_the_floor_a_rate_needs_survives_cuts() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    aimd.set_floor(200)  # 20/s at 10 s per answer
    assert aimd.limit == 200
    at_send = aimd.acquire(now=0.0)
    aimd.release(now=1.0, sent_at=0.0, in_flight_at_send=at_send, signal=Signal.BACKPRESSURE)
    assert aimd.limit == 200


def _succeed_at_the_cap_until_probed(
    aimd: AimdLimit, *, step_s: float, start: float = 0.0, until: float = 60.0
) -> float:
    """Answers at a cap of 8 with a backlog, one every ``step_s`` from ``start``, until the
    limit moves (a probe); returns when (``until`` at most)."""
    t = start
    while aimd.limit == 8 and t < until:
        t += step_s
        aimd.in_flight += 1
        aimd.release(
            now=t, sent_at=t - 0.5, in_flight_at_send=8, signal=Signal.SUCCESS, backlog=True
        )
    return t


def test_a_learned_cap_bounds_the_floor_and_is_probed_ever_less_often() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    aimd.set_floor(20)
    aimd.learn_cap(in_flight_at_send=9, now=0.0)
    assert aimd.limit == 8
    # a backlog at the cap: after a while, one more slot is tried (20 answers a second: the
    # time binds, not the answers' count)
    first_probe = _succeed_at_the_cap_until_probed(aimd, step_s=0.05)
    assert aimd.limit == 9
    assert first_probe == pytest.approx(AimdLimit.first_probe_after_s, abs=0.1)
    aimd.learn_cap(in_flight_at_send=9, now=first_probe)  # refused: the cap was right
    assert aimd.limit == 8
    t = _succeed_at_the_cap_until_probed(aimd, step_s=0.05, start=first_probe, until=120.0)
    assert t - first_probe >= 2 * first_probe - 1


def test_a_confirmed_cap_is_probed_only_after_enough_answers_at_it() -> None:
    """Each probe past a real cap is a 429: a cap answered 5 times a second is probed after
    200 answers at it (40 s), not after 10 s (a 10-s run of a cap of 9 then drew 2 429s in
    118 requests: the refusal that taught the cap, and the probe)."""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    aimd.set_floor(20)
    aimd.learn_cap(in_flight_at_send=9, now=0.0)
    t = _succeed_at_the_cap_until_probed(aimd, step_s=0.2, until=120.0)
    assert aimd.limit == 9
    answers = round(t / 0.2)
    assert answers == AimdLimit.first_probe_after_answers
    aimd.learn_cap(in_flight_at_send=9, now=t)  # refused: the next waits twice as many
    second = _succeed_at_the_cap_until_probed(aimd, step_s=0.2, start=t, until=t + 200.0)
    assert round((second - t) / 0.2) == 2 * AimdLimit.first_probe_after_answers


def test_before_any_answer_a_paced_ramp_then_silence_grows_the_window_one_slot_at_a_time() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    for _ in range(4):
        aimd.acquire(now=0.0)
    wait = aimd.waiting_for_slot(0.0)
    assert wait == pytest.approx(0.6)  # the ramp: from half a second on (was 1-2 s)
    aimd.waiting_for_slot(0.6)
    assert aimd.limit == 5
    aimd.waiting_for_slot(0.75)
    assert aimd.limit == 6  # a slot a tenth of a second
    aimd.waiting_for_slot(0.95)
    assert aimd.limit == 8  # up to 8, one at a time
    wait = aimd.waiting_for_slot(1.0)
    assert aimd.limit == 8
    assert 1.0 < wait < 1.5  # then silence: the window doubles from 4 in the third second
    aimd.waiting_for_slot(2.0)
    assert aimd.limit == 8
    aimd.waiting_for_slot(2.5)
    assert 8 < aimd.limit < 16  # growing smoothly, not in a jump
    aimd.release(now=2.6, sent_at=0.0, in_flight_at_send=4, signal=Signal.SUCCESS)
    assert aimd.waiting_for_slot(5.0) == math.inf  # an answer came: only outcomes move it now


def _ramp_woken_late(aimd: AimdLimit, *, start: float, until: float, late_s: float) -> int:
    """Calls ``waiting_for_slot`` when it says the next slot opens, ``late_s`` after (an event
    loop wakes a sleeper a little late); returns how many calls came back sooner than 5 ms."""
    now, spins = start, 0
    while now < until:
        while aimd.in_flight < aimd.limit:
            aimd.acquire(now=now)
        wait = aimd.waiting_for_slot(now)
        if wait == math.inf:
            break
        spins += wait < 0.005
        now += wait + late_s
    return spins


@pytest.mark.parametrize("late_s", [0.0, 0.001, 0.004, 0.013])
def test_the_ramp_reaches_its_top_when_woken_late(late_s: float) -> None:
    """The start's ramp grew the window to the (fractional) slot count the clock gave, then
    asked for a whole slot more: woken a few ms late at each step, the lateness piled up,
    the last step to 8 (the top) never came, and it asked again every millisecond until the
    first answer (traced on a model of the `selfhosted` row: 7 in flight from 0.8 s to the
    first answer). After the first answer the ramp goes on to a slot under its top, a
    fraction past it (as measured), without asking every millisecond either."""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    spins = _ramp_woken_late(aimd, start=0.0, until=1.0, late_s=late_s)
    assert aimd.limit == 8
    assert spins <= 2  # a rounding of the clock's arithmetic, not a wait every millisecond
    for _ in range(3):  # answers that state nothing: the ramp goes on
        aimd.release(now=1.0, sent_at=0.0, in_flight_at_send=4, signal=Signal.SUCCESS)
    spins = _ramp_woken_late(aimd, start=1.0, until=3.0, late_s=late_s)
    assert aimd.limit >= AimdLimit.ramp_answered_max - 1
    assert spins <= 2


def test_an_in_flight_refusal_in_the_ramp_stops_it_at_the_cap() -> None:
    """A cap of 4 refuses the ramp's first request past it in milliseconds, before the next
    slot opens: one refusal, and the window stays at the cap."""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    for _ in range(4):
        aimd.acquire(now=0.0)
    aimd.waiting_for_slot(0.0)
    aimd.waiting_for_slot(0.6)
    assert aimd.has_room()
    aimd.acquire(now=0.6)
    assert not aimd.has_room()
    aimd.learn_cap(in_flight_at_send=5, now=0.65)
    aimd.release(now=0.65, sent_at=0.6, in_flight_at_send=5, signal=Signal.NEUTRAL)
    assert aimd.waiting_for_slot(1.0) == math.inf
    assert aimd.limit == 4


def test_any_refusal_before_an_answer_ends_the_ramp_but_not_the_silence() -> None:
    """A 429 read as a rate (a code or headers a cap shares) teaches no cap: the ramp must
    still stop, or it goes on sending into the cap a slot a tenth of a second."""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    for _ in range(4):
        aimd.acquire(now=0.0)
    aimd.waiting_for_slot(0.0)
    aimd.waiting_for_slot(0.6)
    aimd.acquire(now=0.6)
    aimd.release(now=0.65, sent_at=0.6, in_flight_at_send=5, signal=Signal.NEUTRAL)
    aimd.waiting_for_slot(0.95)
    assert aimd.limit == 5  # no more ramp
    aimd.waiting_for_slot(2.5)
    assert aimd.limit > 8  # silence still doubles the window


def test_slow_start_runs_at_most_half_again_past_what_the_upstream_served() -> None:
    """Little's law on the answers: a server that queues serves its capacity however many are
    sent, so slow start stops at 1.5 times that plus one, not at the 2.5-3 times that the
    round trip its queue takes to show in answers let it reach."""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    t = 0.0
    while aimd.window < 40:
        aimd.acquire(now=t)
        aimd.release(now=t, sent_at=t, in_flight_at_send=aimd.limit, signal=Signal.SUCCESS)
        t += 0.01
    assert aimd.slow_start
    aimd.served(12.0)
    assert (aimd.window, aimd.limit) == (19.0, 19)
    aimd.served(30.0)
    assert aimd.window == 19.0  # a bound, not growth
    aimd.served(2.0)
    assert aimd.window == 8.0  # never under the ramp before any answer
    aimd.release(now=t, sent_at=t, in_flight_at_send=8, signal=Signal.BACKPRESSURE)
    aimd.acquire(now=t)
    window = aimd.window
    aimd.served(1.0)
    assert aimd.window == window  # past slow start, cuts and growth move it, not this


rate_steps = st.lists(
    st.tuples(
        st.sampled_from(["success", "idle_success", "429", "hinted_429", "adopt", "state"]),
        st.floats(min_value=0.0, max_value=5.0),  # seconds since the previous step
        st.floats(min_value=1.0, max_value=100_000.0),  # a rate to adopt or state
    ),
    max_size=300,
)


@settings(max_examples=300)
@given(steps=rate_steps, discovers=st.booleans())
def test_a_paced_rate_stays_finite_positive_and_under_its_ceiling(
    steps: list[tuple[str, float, float]], discovers: bool
) -> None:
    """Whatever order successes, cuts, fleet adoptions and statements come in, the rate in
    force is a finite positive number within the stated ceiling (a rate adopted from a fleet
    once probed to infinity: nothing had ever cut it, so its probe had run since -inf)."""
    rate, now = PacedRate(discovers=discovers), 0.0
    for kind, gap_s, value in steps:
        now += gap_s
        if kind in ("success", "idle_success"):
            rate.succeeded(now=now, backlog=kind == "success")
        elif kind in ("429", "hinted_429"):
            rate.throttled(sent_at=now - gap_s / 2, now=now, hinted=kind == "hinted_429")
        elif kind == "adopt":
            rate.adopt(value, now=now)
        else:
            rate.state_ceiling(value)
        if rate.rpm is not None:
            assert math.isfinite(rate.rpm)
            assert rate.rpm > 0
            if rate.ceiling is not None:
                assert rate.rpm <= rate.ceiling * (1 + 1e-9)


def test_a_discovered_rate_resumes_under_what_the_server_sustained() -> None:
    """Without a stated limit, the acceptances since the previous cut measure the server's
    rate; a rate that sees only part of them (a process of a fleet) cuts by a fixed share."""
    for measure in (True, False):
        rate, now = PacedRate(), 0.0
        for _ in range(40):  # 4 accepted per second for 10 s
            now += 0.25
            rate.succeeded(now=now, backlog=True)
        assert rate.throttled(sent_at=now, now=now)  # discovery: 0.9 of the one-second peak
        assert rate.rpm == pytest.approx(0.9 * 240)
        rate.adopt(1000.0, now=now)  # paced faster than the server takes (as a fleet may)
        for _ in range(12):  # 3 s more at 4 accepted per second
            now += 0.25
            rate.succeeded(now=now, backlog=True)
        before = rate.rpm
        assert before is not None
        assert rate.throttled(sent_at=now, now=now, measure=measure)
        expected = 0.97 * 240 if measure else 0.85 * before
        assert rate.rpm == pytest.approx(expected, rel=0.05)


def test_a_rate_discovered_during_a_ramp_up_climbs_to_what_the_server_took() -> None:
    """The first bare 429 comes during slow start, when few answers are in: the pace starts
    under what was accepted, then climbs within seconds to just under what the server took
    in the second before it refused (those sent, less those refused: a 429 comes back at
    once, an answer a latency later)."""
    rate, now = PacedRate(), 0.0
    for _ in range(8):  # 4 answers a second so far
        now += 0.25
        rate.succeeded(now=now, backlog=True)
    assert rate.throttled(sent_at=now, now=now, sent_in_second=25)  # 24 taken, this refused
    assert rate.rpm == pytest.approx(0.9 * 240)
    for _ in range(30):  # 3 s of successes with a backlog
        now += 0.1
        rate.succeeded(now=now, backlog=True)
    assert rate.rpm is not None
    assert 0.9 * 1440 <= rate.rpm <= 0.95 * 1440


def test_a_discovered_rate_holds_near_the_second_it_measured() -> None:
    """The second before the first bare 429 bounds the server's rate from above (its burst
    or a window's tail at most on top): once the pace has climbed to just under it, it
    probes as gently as after a measured cut, not ever faster from the discovery. (A lane
    that had measured a 960/min window exactly passed it 2 s after reaching it, 1.5 times
    it 8 s on, and every probe past a real limit is a 429.)"""
    rate, now = PacedRate(), 0.0
    for _ in range(8):  # 4 answers a second so far
        now += 0.25
        rate.succeeded(now=now, backlog=True)
    assert rate.throttled(sent_at=now, now=now, sent_in_second=17)  # 16 taken: 960/min
    highest = 0.0
    for _ in range(16 * 8):  # 8 s of successes at the server's 16 a second
        now += 1.0 / 16
        rate.succeeded(now=now, backlog=True)
        assert rate.rpm is not None
        highest = max(highest, rate.rpm)
    assert 0.9 * 960 <= highest <= 960


def test_a_later_cut_resumes_under_the_last_second_not_under_our_climb() -> None:
    """A cut measures the server from what it accepted in the second before the refusal: the
    mean of the answers since the previous cut counts our own climb towards its rate (here
    15 a second for 2 s, then 24), and a lane resumed under it held far below the limit."""
    rate, now = PacedRate(), 0.0
    for _ in range(20):
        now += 0.25
        rate.succeeded(now=now, backlog=True)
    assert rate.throttled(sent_at=now, now=now, sent_in_second=5)
    rate.adopt(1600.0, now=now)  # the pace has climbed past the server's 1440
    for per_s in (15, 15, 24):
        for _ in range(per_s):
            now += 1.0 / per_s
            rate.succeeded(now=now, backlog=True)
    assert rate.throttled(sent_at=now, now=now, sent_in_second=25)
    assert rate.rpm == pytest.approx(0.92 * 1440)


def test_a_second_in_which_the_server_took_nothing_is_not_its_rate() -> None:
    """A fixed window that ran dry refuses everything until it ends: the second before a
    refusal then took nothing, which measures the window, not the rate (the pace fell to the
    6/min floor, and a 10-s window's gateway took a minute to finish 10 s of work)."""
    rate, now = PacedRate(), 0.0
    for _ in range(20):
        now += 0.25
        rate.succeeded(now=now, backlog=True)
    assert rate.throttled(sent_at=now, now=now, sent_in_second=5)
    discovered = rate.rpm
    assert discovered is not None
    for _ in range(40):
        now += 0.1
        rate.succeeded(now=now, backlog=True)
    assert rate.throttled(sent_at=now, now=now, sent_in_second=1)  # refused, alone
    assert rate.rpm is not None
    assert rate.rpm >= 0.5 * discovered


def test_a_probe_goes_on_through_the_fleets_higher_rates() -> None:
    """A fleet's processes adopt each other's probes several times a second: a higher rate
    adopted keeps the probe's pace (a probe restarted at each adoption stayed at +2% a
    second, and a rate discovered at a fifth of the limit took a minute to climb back);
    a lower one (a cut elsewhere) starts it gently again."""
    rate, now = PacedRate(), 0.0
    for _ in range(20):
        now += 0.25
        rate.succeeded(now=now, backlog=True)
    assert rate.throttled(sent_at=now, now=now)
    cut_at = now
    while now - cut_at < 10.0:  # ten seconds: our successes, and a peer's rate every 0.3 s
        now += 0.1
        rate.succeeded(now=now, backlog=True)
        if round((now - cut_at) * 10) % 3 == 0:
            assert rate.rpm is not None
            rate.adopt(rate.rpm * 1.001, now=now)
    assert rate.rpm is not None
    climbed = rate.rpm
    assert climbed > 2.0 * 0.9 * 240  # the convex probe: more than doubled in ten seconds
    rate.adopt(0.5 * climbed, now=now)  # a cut elsewhere
    before = rate.rpm
    now += 1.0
    rate.succeeded(now=now, backlog=True)
    assert before is not None
    assert rate.rpm is not None
    assert rate.rpm < before * 1.04  # gently again: about +3% over that second


def test_a_provisional_cap_is_tried_after_a_round_trip_and_a_refused_try_confirms_it() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    aimd.set_floor(20)
    aimd.learn_cap(in_flight_at_send=9, now=0.0, provisional=True, probe_after_s=0.5)
    assert (aimd.limit, aimd.cap_provisional) == (8, True)
    t = _succeed_at_the_cap_until_probed(aimd, step_s=0.1)
    assert t == pytest.approx(0.5, abs=0.05)  # one round trip, not the 10 s a confirmed cap waits
    assert aimd.limit == 9
    assert aimd.probing
    aimd.learn_cap(in_flight_at_send=9, now=t, provisional=True)  # the try refused
    assert (aimd.limit, aimd.cap_provisional) == (8, False)
    confirmed_at = t
    while aimd.limit == 8 and t < 60:
        t += 0.05
        aimd.in_flight += 1
        aimd.release(
            now=t, sent_at=t - 0.5, in_flight_at_send=8, signal=Signal.SUCCESS, backlog=True
        )
    # Confirmed by a refused try one above it: that was a probe, refused, so the next one
    # waits twice the first (it was 10 s, and each probe past a real cap is a 429).
    assert t - confirmed_at == pytest.approx(2 * AimdLimit.first_probe_after_s, abs=0.15)
    # A success past a confirmed cap does not refute it (our count may run ahead).
    assert not aimd.refuted_by(in_flight_at_send=10, sent_at=t)


def test_a_provisional_cap_confirmed_otherwise_is_not_probed_every_round_trip() -> None:
    """A provisional cap tried after a round trip, then confirmed before its try by a refusal
    that names its scope (or, in a fleet, by another process's test): it is a cap like any
    other, probed after 10 s. It kept the round trip its test was due in as the time between
    probes, and each probe past a real cap is a 429: one every 0.5 s, then 1, 2, 4 s."""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    aimd.set_floor(20)
    aimd.learn_cap(in_flight_at_send=9, now=0.0, provisional=True, probe_after_s=0.5)
    aimd.learn_cap(in_flight_at_send=9, now=0.1)  # confirmed: scope stated, or the fleet's test
    assert (aimd.learned_cap, aimd.cap_provisional) == (8, False)
    t = _succeed_at_the_cap_until_probed(aimd, step_s=0.1, start=0.1)
    assert t - 0.1 >= AimdLimit.first_probe_after_s - 0.15


def test_a_provisional_cap_retested_stays_provisional_and_its_test_waits_while_held() -> None:
    """A refused test that told nothing (the lane's ``_Refused.UNTOLD``): back at the cap,
    still provisional, tried again a round trip on, but not while its owner holds the test
    (a second too busy for it to tell); a success past it still refutes the cap."""
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    aimd.set_floor(20)
    aimd.learn_cap(in_flight_at_send=9, now=0.0, provisional=True, probe_after_s=0.5)
    t = _succeed_at_the_cap_until_probed(aimd, step_s=0.1)
    assert (aimd.limit, aimd.probing) == (9, True)
    aimd.retest_cap(now=t, after_s=0.5)
    assert (aimd.limit, aimd.learned_cap, aimd.cap_provisional, aimd.probing) == (
        8,
        8,
        True,
        False,
    )
    aimd.hold_test = True
    held = _succeed_at_the_cap_until_probed(aimd, step_s=0.1, start=t, until=t + 2.0)
    assert held == pytest.approx(t + 2.0, abs=0.15)  # held: no test
    assert aimd.limit == 8
    aimd.hold_test = False
    tried = _succeed_at_the_cap_until_probed(aimd, step_s=0.1, start=held)
    assert tried == pytest.approx(held + 0.1, abs=0.05)  # due long since: at the next answer
    assert aimd.probing
    assert aimd.refuted_by(in_flight_at_send=9, sent_at=tried)
    assert (aimd.learned_cap, aimd.cap_provisional) == (None, False)


def test_a_success_past_a_provisional_cap_refutes_it_but_not_one_sent_before_it() -> None:
    aimd = AimdLimit(AdaptiveConcurrency(initial=4, max=256))
    aimd.learn_cap(in_flight_at_send=9, now=1.0, provisional=True, probe_after_s=0.5)
    # Sent in the burst that taught the cap: says nothing about it.
    assert not aimd.refuted_by(in_flight_at_send=12, sent_at=0.9)
    assert not aimd.refuted_by(in_flight_at_send=8, sent_at=1.2)  # at the cap: no test
    assert aimd.refuted_by(in_flight_at_send=9, sent_at=1.6)
    assert (aimd.learned_cap, aimd.cap_provisional) == (None, False)


def test_a_rate_change_that_keeps_the_level_takes_a_lost_burst_out_of_the_debt() -> None:
    bucket = TokenBucket(rate_per_s=20.0, burst=10.0)
    bucket.spend(now=0.0, cost=10)  # empty
    bucket.set_rate(rate_per_s=10.0, burst=5.0, now=0.0, keep_level=True)
    assert bucket.level(0.0) == pytest.approx(0.0)  # still empty, not 5 in debt
    assert bucket.wait_s(now=0.0, cost=1) == pytest.approx(0.1)
    # A debt beyond the burst (an oversize spend) is kept.
    bucket = TokenBucket(rate_per_s=20.0, burst=10.0)
    bucket.spend(now=0.0, cost=30)
    bucket.set_rate(rate_per_s=10.0, burst=5.0, now=0.0, keep_level=True)
    assert bucket.level(0.0) == pytest.approx(-20.0)
    # Without keep_level (a burst halved by a 429), the debt in units is kept.
    bucket = TokenBucket(rate_per_s=20.0, burst=10.0)
    bucket.spend(now=0.0, cost=10)
    bucket.set_rate(rate_per_s=10.0, burst=5.0, now=0.0)
    assert bucket.level(0.0) == pytest.approx(-5.0)


def test_a_cut_from_a_few_sends_keeps_the_bound_of_a_doubling_after_noise() -> None:
    """After a busy 429 taken as noise, a discovered rate doubles past its loss only up to
    what the server was seen to take (here 700/min). A cut from a second of a few sends (as
    after a hinted gate) re-arms the doubling: with its bound, not without (a lane ran to
    31,555/min in six seconds)."""
    rate = PacedRate()
    rate.throttled(sent_at=1.0, now=1.02, sent_in_second=12)  # discovered: 11 taken
    t = 1.1
    for _ in range(30):
        rate.succeeded(t, True)
        t += 0.1
    rate.unproven(700.0)
    t += 2.0
    assert rate.throttled(sent_at=t, now=t + 0.02, sent_in_second=3)
    for _ in range(20):  # two seconds: doubling from the cut reaches the bound, not past it
        t += 0.1
        rate.succeeded(t, True)
    assert rate.rpm is not None
    assert rate.rpm <= 700.0
    for _ in range(40):
        t += 0.1
        rate.succeeded(t, True)
    assert rate.rpm < 2 * 700.0
