"""Fixed windows told from a bucket by bare 429s alone, and kept to once shown.

A lane with a backlog against a server that counts requests in fixed one-second windows and
answers bare 429s (no headers, no hint), driven on a simulated clock. Where its refusal runs
end shows the windows' boundaries; what a window that refused took is its budget. Once both
are shown, the lane spreads each window's whole budget over it, clear of the boundaries:
no 429 after that, and every window full.
"""

from __future__ import annotations

import math

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.grid import FixedGrid
from pacekeeper.core.lane import Lane, Permit, _ThreadWaiter

from .simclock import Answers, SimClock, admitted, steps

_STEP_S = 0.01


class _FixedWindows:
    """``rpm`` counted in fixed one-second windows whose boundaries are at ``phase`` + k."""

    def __init__(self, rpm: float, phase: float) -> None:
        self.budget = round(rpm / 60.0)
        self.phase = phase
        self.window = -1
        self.taken = 0

    def take(self, now: float) -> bool:
        window = math.floor(now - self.phase)
        if window != self.window:
            self.window, self.taken = window, 0
        if self.taken >= self.budget:
            return False
        self.taken += 1
        return True


class _Bucket:
    """``rpm`` in a bucket one second deep that refills all along."""

    def __init__(self, rpm: float) -> None:
        self.rate_per_s = rpm / 60.0
        self.level = self.rate_per_s
        self.updated = 0.0

    def take(self, now: float) -> bool:
        self.level = min(self.rate_per_s, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


def _run(
    provider: _FixedWindows | _Bucket, latency_s: float, run_s: float
) -> tuple[Lane, list[tuple[float, bool]]]:
    """A lane with a backlog against ``provider`` for ``run_s``: the lane, and each send's
    time and whether it was taken. Answers take ``latency_s`` (a tenth either way, in a
    fixed pattern), 429s come back in 20 ms."""
    clock = SimClock()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=RetryPolicy(), clock=clock)
    lane.queue.join(_ThreadWaiter())
    bare = classify_response(429, {}, None, now_wall_s=0.0)
    ok = classify_response(200, {}, None, now_wall_s=0.0)
    in_flight: Answers[tuple[Permit, bool]] = Answers()
    sends: list[tuple[float, bool]] = []
    for now in steps(clock, until_s=run_s, step_s=_STEP_S):
        for permit, taken in in_flight.due(now):
            lane.settle(permit, ok if taken else bare, now=now, max_hint_s=600.0, retry=False)
        for permit in admitted(lane, now):
            taken = provider.take(now)
            sends.append((now, taken))
            spread = 0.1 * latency_s * ((len(sends) % 7) - 3) / 3
            in_flight.add(now + (latency_s + spread if taken else 0.02), (permit, taken))
    return lane, sends


def test_fixed_windows_shown_by_bare_429s_are_filled_without_a_429() -> None:
    """On this grid of 12 servers (fixed one-second windows of 600-1500/min at four phases,
    answers of 0.3-0.5 s), a lane that saw where its refusal runs ended holds each window's
    budget: from 2 s after the windows were shown, every window took its whole budget and
    nothing more was refused (6 of the 12 show them by 8 s). Over the windows from 7 to 13 s
    the grid's lanes took 0.90-1.0 of the budgets (mean 0.977). Before, the discovered pace
    resumed 8% under each measure and probed at +0.5%/s: 0.80-0.99 (mean 0.922)."""
    shown = 0
    fills: list[float] = []
    for rpm, phase, latency_s in (
        (600.0, 0.13, 0.3),
        (600.0, 0.55, 0.5),
        (780.0, 0.96, 0.3),
        (780.0, 0.37, 0.5),
        (960.0, 0.13, 0.5),
        (960.0, 0.55, 0.3),
        (1140.0, 0.96, 0.5),
        (1140.0, 0.37, 0.3),
        (1320.0, 0.13, 0.3),
        (1320.0, 0.55, 0.5),
        (1500.0, 0.96, 0.3),
        (1500.0, 0.37, 0.5),
    ):
        provider = _FixedWindows(rpm, phase)
        lane, sends = _run(provider, latency_s, 14.0)
        window_taken = sum(1 for t, ok in sends if ok and phase + 7.0 <= t < phase + 13.0)
        fills.append(window_taken / (6 * provider.budget))
        grid = lane._grid
        held_at = None if grid is None else grid.held_at
        if held_at is None or held_at > 8.0:
            continue
        shown += 1
        case = f"{rpm:g}/min from {phase:g}, answers in {latency_s:g} s, shown at {held_at:.2f} s"
        assert all(taken for t, taken in sends if t > held_at + 0.1), case
        first = math.ceil(held_at + 2.0 - phase) + phase
        for start in (first + k for k in range(int(14.0 - first))):
            taken = sum(1 for t, ok in sends if ok and start <= t < start + 1.0)
            assert taken == provider.budget, f"{case}: {taken} in the window from {start:.2f}"
    assert shown >= 5, shown
    assert sum(fills) / len(fills) >= 0.95, fills


def test_a_bucket_is_not_taken_for_fixed_windows() -> None:
    """A one-second bucket refuses wherever its refills fall short, at no one phase, and
    the second before a refusal holds its burst: nothing shows windows, and the lane
    discovers the rate as before (a hold at a misread budget would draw a 429 a window)."""
    for rpm in (600.0, 960.0, 1320.0):
        for latency_s in (0.3, 0.5):
            lane, _ = _run(_Bucket(rpm), latency_s, 10.0)
            grid = lane._grid
            assert grid is None or grid.windows is None, (rpm, latency_s)


def test_a_refusal_run_longer_than_any_bucket_allows_rules_out_a_bucket() -> None:
    """Two refusals a quarter second apart with nothing taken between bound a bucket's rate
    under 4.5 a second; 20 taken in the 0.8 s after them bound it over 23: no bucket."""
    grid = FixedGrid()
    sent = [(0.0 + 0.05 * i, i < 20) for i in range(20)]  # a window's 20
    sent += [(1.0, False), (1.25, False)]  # refused to its end
    sent += [(1.3 + 0.04 * i, True) for i in range(20)]  # the next window's 20
    sent += [(2.1, False), (2.2, False), (2.35, True)]
    shown = None
    for seq, (t, taken) in enumerate(sent):
        shown = grid.note(seq=seq, sent_at=t, accepted=taken, now=t) or shown
    assert shown is not None
    assert (shown.length_s, shown.budget) == (1.0, 20)


def test_what_is_kept_stays_bounded_while_held() -> None:
    """Held to windows shown, outcomes are noted and never judged: the oldest go, not
    kept for the rest of a run of a million requests."""
    grid = FixedGrid()
    grid.held_at = 0.0
    for seq in range(10_000):
        grid.note(seq=seq, sent_at=seq / 25, accepted=True, now=seq / 25)
    assert len(grid._outcomes) <= 2048


def test_a_bucket_refusing_and_taking_by_turns_shows_one_boundary_not_four() -> None:
    """A bucket paced just over its rate refuses and takes by turns, a request apart: the
    brackets of one such stretch fall together because they are one stretch, not by chance.
    Counted one by one, three of them (20-55 ms wide) and one a second later read as windows
    with chance 0.0007, of a budget of 1 (a refusal, one taken, a refusal): a 2018/min
    bucket was held at 60/min. Counted once per boundary, they are two spans of 0.02-0.3 of
    a window, which a bucket's refills fit often enough."""
    sent = [(6.0 + 0.03 * i, True) for i in range(31)]
    sent += [(6.965, False), (6.98, True), (6.995, False), (6.995, True), (7.0, False)]
    sent += [(7.26 + 0.03 * i, True) for i in range(23)]
    sent += [(7.975, False), (8.23, True), (8.26, True), (8.295, True)]
    grid = FixedGrid()
    shown = None
    for seq, (t, taken) in enumerate(sent):
        shown = grid.note(seq=seq, sent_at=t, accepted=taken, now=t) or shown
    assert shown is None, shown
