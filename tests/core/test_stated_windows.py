"""Budgets whose window nobody states: a gateway's unsuffixed X-RateLimit-* (N requests per a
window it does not name) and a day's quota under a minute's names that refills all day (Groq),
read by a lane on a clock of its own (``now=``)."""

from __future__ import annotations

import pytest

from pacekeeper.core.classify import Verdict, classify_response
from pacekeeper.core.concurrency import AimdLimit
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.depth import RefillingQuota, StatedWindow
from pacekeeper.core.lane import Lane

from .simclock import SimClock

WALL0 = 1_800_000_000.0  # the lane's clock 0 on the wall clock


def _lane() -> tuple[Lane, SimClock]:
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    return lane, clock


def _answer(
    lane: Lane, clock: SimClock, status: int, headers: dict[str, str], *, sent: float, at: float
) -> Verdict:
    clock.now = sent
    permit = lane._grant(sent, 0, sent)
    clock.now = at
    verdict = classify_response(status, headers, None, now_wall_s=WALL0 + at)
    lane.settle(permit, verdict, now=at, max_hint_s=600.0, retry=False)
    return verdict


def _gateway(limit: int, remaining: int, window_end: float) -> dict[str, str]:
    reset_ms = round((WALL0 + window_end) * 1000)
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset_ms),
    }


def test_a_gateway_budget_per_unstated_window_is_paced_over_the_window_its_resets_bound() -> None:
    # 150 requests per fixed 10-s window, reset a Unix time in ms: 900/min, not 150/min.
    lane, clock = _lane()
    _answer(lane, clock, 200, _gateway(150, 148, 10.0), sent=0.25, at=0.5)
    # 2 of 150 used, whole again in 9.5 s: a window just begun, or a day's slow refill.
    assert lane.learned_rpm is None
    _answer(lane, clock, 200, _gateway(150, 140, 10.0), sent=1.0, at=1.25)
    # The same end with more used: a window, as long as its longest reset (9.5 s + 0.25 s
    # on the wire, 10 s in whole seconds).
    assert lane.learned_rpm == pytest.approx(900.0)
    _answer(lane, clock, 200, _gateway(150, 100, 10.0), sent=4.0, at=4.25)
    assert lane.learned_rpm == pytest.approx(900.0)  # later in the window: still 10 s
    requests = lane.requests
    assert requests is not None
    assert requests.keeps_windows
    # What is left of this window is all it holds until it ends (nothing refills before):
    # 100 counted at 4 s, less the one sent since.
    assert requests.level(4.25) <= 100
    # The next window's whole budget is there from its start, as the provider allows, not a
    # half-second burst paced through the window.
    assert requests.level(10.1) == pytest.approx(150.0)
    assert lane.rpm == pytest.approx(900.0)


def test_a_gateway_window_in_epoch_ms_is_shown_by_answers_one_request_apart() -> None:
    """A reset stated as a Unix time in ms is compared to the ms between two readings (the
    clocks' difference, a second at most, is the same in both). Read at a whole second's
    grain plus a second for the clocks, two ends had to be 4 s apart to be told apart: the
    answers of a 10-s window's first requests, one apart, never showed the window, the bucket
    refilled continuously through it, and its last requests went past the budget (1-2 429s a
    run of the `gateway` profile, in the first window)."""
    lane, clock = _lane()
    for k, remaining in enumerate((149, 148, 147)):
        sent = 0.2 + 0.05 * k
        _answer(lane, clock, 200, _gateway(150, remaining, 10.0), sent=sent, at=sent + 0.3)
    requests = lane.requests
    assert requests is not None
    assert requests.keeps_windows
    _answer(lane, clock, 200, _gateway(150, 3, 10.0), sent=6.0, at=6.3)
    # Three left: nothing refills before the window ends.
    assert requests.level(9.5) <= 3.0


def test_a_gateway_429_with_the_budget_spent_waits_its_reset_and_is_the_rate() -> None:
    lane, clock = _lane()
    _answer(lane, clock, 200, _gateway(150, 100, 10.0), sent=0.25, at=0.5)
    verdict = _answer(lane, clock, 429, _gateway(150, 0, 10.0), sent=6.0, at=6.02)
    assert verdict.hint_s == pytest.approx(3.98)  # the exhausted budget's reset
    assert lane.cooldown.until == pytest.approx(10.0)  # nobody goes before the window ends
    slots = lane.slots
    assert isinstance(slots, AimdLimit)
    assert slots.learned_cap is None  # the rate, not a cap on requests in flight


def test_the_window_after_a_spent_one_holds_the_stated_budget() -> None:
    """OpenRouter states its window (150 requests, reset a Unix time in ms) only in a 429's
    body: nothing else shows what a window holds. The next window holds the 150 the refusal
    states, counted from the admissions after it; paced at a rate read from the hint (a bound
    below the window), a lane spent each window before it ended, and every request sent
    until a refusal came back was refused too."""
    clock = SimClock()
    lane = Lane(
        ("/v1/chat/completions", "m"),
        limits=Limits(concurrency=1000),
        retry=RetryPolicy(),
        clock=clock,
    )
    for k in range(20):
        _answer(lane, clock, 200, {}, sent=0.3 * k, at=0.3 * k + 0.2)
    _answer(lane, clock, 429, _gateway(150, 0, 10.0), sent=6.0, at=6.02)
    assert lane.cooldown.until == pytest.approx(10.0)
    in_flight, now = [], 10.0
    while now < 19.5:  # nothing answered (the slots are many)
        clock.now = now
        while lane._try_admit(now, 0) == 0.0:
            in_flight.append(lane._grant(now, 0, now))
        now = round(now + 0.01, 6)
    assert len(in_flight) == 150


def _groq(remaining: int, reset: str) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "100000",
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": "5900",
        "x-ratelimit-reset-tokens": "1.25s",
    }


def test_a_day_budget_refilling_all_day_is_never_a_ceiling_nor_room() -> None:
    # 100,000 a day refilling continuously: 0.864 s regained per request, so the reset reads
    # under a second after one request and a minute's rule (a reset past 90 s) never fires.
    lane, clock = _lane()
    _answer(lane, clock, 200, _groq(99_999, "864ms"), sent=0.0, at=0.2)
    assert lane.learned_rpm is None  # not 100,000 a minute, even before it is proven a day
    assert lane.learned_tpm == 6000
    _answer(lane, clock, 200, _groq(99_997, "2.592s"), sent=0.1, at=0.3)
    _answer(lane, clock, 200, _groq(99_994, "5.184s"), sent=0.2, at=0.4)
    assert lane._quota_refills["requests"].proven
    # A refusal of the rpm it states nowhere, with room in tokens: the rate, not a cap.
    _answer(lane, clock, 429, {**_groq(99_994, "5.1s"), "retry-after": "1"}, sent=0.45, at=0.46)
    slots = lane.slots
    assert isinstance(slots, AimdLimit)
    assert slots.learned_cap is None
    assert lane.learned_rpm is None


def _minute(remaining: int, reset: str) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
    }


def test_a_fixed_minute_window_just_begun_is_a_minute_once_a_second_reading_shares_its_end() -> (
    None
):
    lane, clock = _lane()
    _answer(lane, clock, 200, _minute(499, "59.5s"), sent=0.0, at=0.5)
    # 1 of 500 used, whole in 59.5 s: a day's refill or a window just begun; neither yet.
    assert lane.learned_rpm is None
    _answer(lane, clock, 200, _minute(495, "59s"), sent=0.5, at=0.7)  # the same end
    assert lane._quota_refills["requests"].windowed
    assert lane.learned_rpm == 500


@pytest.mark.parametrize("grain_s", [0.001, 1.0])
def test_refilling_quota_tells_a_day_from_a_fixed_window(grain_s: float) -> None:
    day, window = RefillingQuota(), RefillingQuota()
    limit, refill_s = 14_400, 86_400.0
    for k in range(4):
        used = 1 + 3 * k
        sent = 0.1 * k
        day.observe(
            limit=limit,
            remaining=limit - used,
            reset_s=used * refill_s / limit,
            end_at=sent + used * refill_s / limit,
            grain_s=grain_s,
        )
        window.observe(
            limit=limit, remaining=limit - used, reset_s=60.0 - sent, end_at=60.0, grain_s=grain_s
        )
    assert (day.proven, day.windowed) == (True, False)
    assert (window.proven, window.windowed, window.suspect) == (False, True, False)


def test_stated_window_counts_a_time_of_day_from_the_request() -> None:
    window = StatedWindow()
    window.observe(reset_s=9.6, age_s=0.3)
    assert window.length_s == 10.0  # within 5% of whole seconds
    assert window.per_minute(150) == pytest.approx(900.0)
