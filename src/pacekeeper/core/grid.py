"""Fixed windows told from a bucket by bare 429s alone: where refusals end, and how many fit.

A server that sends no rate-limit headers counts requests either in a bucket that refills all
along or in fixed windows that refill all at once at a boundary. Both refuse when empty, and
the second before a refusal measures neither exactly: it holds a bucket's stored burst, or the
previous window's tail. What tells them apart is where refusals give way to acceptances. In
send order, a refused request followed by an accepted one brackets a refill: anywhere for a
bucket, a window's boundary for fixed windows. Two refusals in a row, or an acceptance and then
a refusal, bracket no boundary (a fresh window would have taken the second). Fixed windows of
length ``L`` put every such boundary on one grid ``phase + k L``, which a bucket's refills, at
no particular phase, soon contradict. On that grid, every window in which something was refused
took exactly its budget: the same count each time, whatever our pace was.

Once the grid and the count are shown, the lane spreads each window's whole count over it, one
request in the middle of each of ``N`` slots kept clear of the boundaries
(``TokenBucket.set_slots``): a window takes its budget and never more, where a pace alone puts
``N`` in a window only at ``N`` less its burst. Any later 429 ends the hold. Misread (a bucket
refused once a second at one phase by a pace just over its rate), the slots hold about the
bucket's rate, and its next 429 ends them.

>>> grid = FixedGrid()
>>> shown = None
>>> for w in range(3):  # windows of 10 from k + 0.3; 20 sent a second, the last 10 refused
...     for i in range(20):
...         t = w + 0.3 + 0.05 * i
...         shown = grid.note(seq=20 * w + i, sent_at=t, accepted=i < 10, now=t) or shown
>>> shown.length_s, shown.budget, round(shown.origin, 2)  # a boundary between 1.25 and 1.3
(1.0, 10, 0.27)

One refusal a second proves nothing: a bucket refills 4 a second as well as windows of 4.

>>> grid = FixedGrid()
>>> for w in range(4):
...     for i in range(5):
...         t = w + 0.32 + 0.15 * i
...         shown = grid.note(seq=5 * w + i, sent_at=t, accepted=i < 4, now=t)
>>> shown is None
True
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

__all__ = ["FixedGrid", "Windows"]


class Windows(NamedTuple):
    """Fixed windows shown by bare 429s."""

    length_s: float
    budget: int
    """What each window takes."""
    origin: float
    """A boundary, on the lane's clock as it sends (the trip to the provider included)."""
    spread_s: float
    """How far from ``origin`` the boundary may be, either way."""


_LENGTHS_S = (1.0,)
"""The window lengths tried: a second, the grain of gateways' and servers' request windows
(longer ones show too seldom in a run to be told from their 429s alone)."""
_SLACK_S = 0.02
"""How far a request's arrival at the provider may drift from when it was sent."""
_KEEP_S = 8.0
_MOST_KEPT = 2048
_MIN_BOUNDARIES = 2
"""Refusal runs that ended (a refused request, then an accepted one) in distinct windows."""
_JUDGED_AFTER_S = 2.0
_CHANCE = 0.01
"""Windows are shown by where refusal runs end alone when a bucket's would end so only
this seldom."""
_FEW_TAKEN = 2
_NO_BUCKET_MARGIN = 1.5
"""How far the rates two pairs of refusals allow a bucket must be apart to rule one out."""
_MIN_SATURATED = 1
"""Windows wholly seen, each with a refusal, that took the same count."""


class FixedGrid:
    """The outcomes of a lane's requests in send order (by admission number) while it
    discovers its rate from bare 429s, and the fixed windows they show, if any."""

    __slots__ = ("_judge_until", "_outcomes", "active", "held_at", "windows")

    def __init__(self) -> None:
        self._outcomes: dict[int, tuple[float, bool]] = {}
        """Admission number -> (when sent, accepted): the last few seconds' outcomes."""
        self._judge_until = -math.inf
        """Until when successes are judged too: the answers that complete the picture of
        the last refusals (sent before them, answered a latency later)."""
        self.active = False
        """Whether a bare 429 came: outcomes are noted from then on."""
        self.windows: Windows | None = None
        """The windows the lane holds its pace to (None: none)."""
        self.held_at: float | None = None
        """When the lane last held its pace to the windows shown (None: not since
        :meth:`forget`)."""

    def note(self, *, seq: int, sent_at: float, accepted: bool, now: float) -> Windows | None:
        """Record request ``seq``'s outcome (accepted, or refused by a bare 429); the windows
        shown, or None. Judged at a refusal, and at the answers
        that come back for a couple of seconds after one (the rest shows nothing new); not
        while the lane holds its pace to windows shown."""
        self.active = True
        outcomes = self._outcomes
        outcomes[seq] = (sent_at, accepted)
        if len(outcomes) > _MOST_KEPT:
            # Held for long (nothing judged, so nothing pruned): the oldest half goes.
            for stale in list(itertools.islice(outcomes, _MOST_KEPT // 2)):
                del outcomes[stale]
        if self.held_at is not None:
            return None
        if not accepted:
            self._judge_until = now + _JUDGED_AFTER_S
        elif now > self._judge_until:
            return None
        for stale in [s for s, (t, _) in outcomes.items() if t < now - _KEEP_S]:
            del outcomes[stale]
        return self.shown()

    def forget(self) -> None:
        """A refusal at the pace the windows set: what was shown no longer holds."""
        self._outcomes.clear()
        self.held_at = None
        self.windows = None

    def shown(self) -> Windows | None:
        """The fixed windows the outcomes show; None if none."""
        outcomes = self._outcomes
        seqs = sorted(outcomes)
        allowed: list[tuple[float, float]] = []
        forbidden: list[tuple[float, float]] = []
        for a, b in itertools.pairwise(seqs):
            if b != a + 1:
                continue
            sent_a, ok_a = outcomes[a]
            sent_b, ok_b = outcomes[b]
            if not ok_a and ok_b:
                allowed.append((sent_a - _SLACK_S, sent_b + _SLACK_S))
            elif not ok_b:
                forbidden.append((sent_a + _SLACK_S, sent_b - _SLACK_S))
        if len(allowed) < _MIN_BOUNDARIES:
            return None
        no_bucket = _no_bucket(outcomes, seqs)
        for length_s in _LENGTHS_S:
            found = _common_phase(allowed, forbidden, length_s)
            if found is None:
                continue
            phase, spread_s = found
            boundaries = {int((hi - phase) // length_s) for _, hi in allowed}
            if len(boundaries) < _MIN_BOUNDARIES:
                continue
            if not no_bucket and _by_chance(allowed, length_s, phase) > _CHANCE:
                # Single refusals fit a bucket as well (a pace just over its rate): only
                # their ends falling on one grid, as a bucket's refills would not, shows
                # windows.
                continue
            count = _window_count(outcomes, seqs, length_s, phase, spread_s)
            if count is not None:
                return Windows(length_s, count, phase, spread_s)
        return None


def _by_chance(allowed: list[tuple[float, float]], length_s: float, phase: float) -> float:
    """How likely refusal runs ending at no particular phase (a bucket's) would end on
    one grid as these do: each boundary's spans after the first boundary's hold a boundary
    of its grid by chance as often as they reach across a window. The spans at one
    boundary count once, over all they reach: a bucket paced just over its rate refuses
    and takes by turns, a request apart, and those brackets fall together because they
    are one stretch, not by chance (a 2018/min bucket's three, 20-55 ms wide, and one at
    the next second read as chance 0.0007: windows of 1 shown, held at 60/min)."""
    reach: dict[int, tuple[float, float]] = {}
    for lo, hi in allowed:
        k = math.floor((hi - phase) / length_s)
        a, b = reach.get(k, (lo, hi))
        reach[k] = (min(a, lo), max(b, hi))
    widths = sorted(min(1.0, (hi - lo) / length_s) for lo, hi in reach.values())
    return math.prod(widths[:-1])


def _no_bucket(outcomes: dict[int, tuple[float, bool]], seqs: list[int]) -> bool:
    """Whether no bucket refilling all along could have answered so (this lane's requests
    alone counted). The provider was short of a request at each refusal: with ``a`` taken
    between two refusals ``d`` apart, a bucket's rate is below ``(a + 1) / d`` and above
    ``(a - 1) / d`` (for few taken: nothing was lost to a full bucket). A second-long
    refusal run followed by a second's worth taken fits no single rate."""
    refusals: list[tuple[float, int, int]] = []  # (sent at, taken before it, segment)
    taken = segment = 0
    last = None
    for seq in seqs:
        if last is not None and seq != last + 1:
            segment += 1  # an outcome unknown: nothing is counted across it
        last = seq
        sent_at, accepted = outcomes[seq]
        if accepted:
            taken += 1
        else:
            refusals.append((sent_at, taken, segment))
    most = math.inf
    least = 0.0
    for i, (t_i, a_i, segment_i) in enumerate(refusals):
        for t_j, a_j, segment_j in refusals[i + 1 :]:
            if segment_j != segment_i:
                break
            between = a_j - a_i
            span = t_j - t_i
            if between <= _FEW_TAKEN and span > 2 * _SLACK_S:
                most = min(most, (between + 1) / (span - 2 * _SLACK_S))
            least = max(least, (between - 1) / (span + 2 * _SLACK_S))
    return least > _NO_BUCKET_MARGIN * most


def _common_phase(
    allowed: list[tuple[float, float]], forbidden: list[tuple[float, float]], length_s: float
) -> tuple[float, float] | None:
    """A phase in ``[0, length_s)`` such that every ``allowed`` span holds a boundary
    ``phase + k length_s`` and no ``forbidden`` one does, and how far either way the
    phases possible reach (the middle of the widest range); None if there is none."""
    # The phases still possible, as sorted disjoint [lo, hi) pieces of [0, length_s).
    pieces = [(0.0, length_s)]
    for lo, hi in allowed:
        if hi - lo >= length_s:
            continue
        pieces = _intersect(pieces, _arc(lo, hi, length_s))
        if not pieces:
            return None
    for lo, hi in forbidden:
        if hi <= lo:
            continue
        if hi - lo >= length_s:
            return None
        pieces = _subtract(pieces, _arc(lo, hi, length_s))
        if not pieces:
            return None
    lo, hi = max(pieces, key=lambda piece: piece[1] - piece[0])
    return (lo + hi) / 2.0, (hi - lo) / 2.0


def _arc(lo: float, hi: float, length_s: float) -> list[tuple[float, float]]:
    """The span ``[lo, hi)`` (shorter than ``length_s``) folded onto ``[0, length_s)``."""
    a = lo % length_s
    b = a + (hi - lo)
    if b <= length_s:
        return [(a, b)]
    return [(0.0, b - length_s), (a, length_s)]


def _intersect(
    pieces: list[tuple[float, float]], arc: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    out = []
    for lo, hi in pieces:
        for a, b in arc:
            start, end = max(lo, a), min(hi, b)
            if end > start:
                out.append((start, end))
    return sorted(out)


def _subtract(
    pieces: list[tuple[float, float]], arc: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    for a, b in arc:
        out = []
        for lo, hi in pieces:
            if b <= lo or a >= hi:
                out.append((lo, hi))
                continue
            if lo < a:
                out.append((lo, a))
            if b < hi:
                out.append((b, hi))
        pieces = out
    return pieces


def _window_count(
    outcomes: dict[int, tuple[float, bool]],
    seqs: list[int],
    length_s: float,
    phase: float,
    spread_s: float,
) -> int | None:
    """What every window pinned at both ends took, when they agree (else None). A refused
    request followed by an accepted one puts a boundary between them; the accepted ones
    from there up to the next refusal, sent before the next boundary can be (the boundaries
    are ``phase`` give or take ``spread_s``), are all of that window's (after a refusal it takes
    nothing more): its whole budget, wherever exactly the boundary is."""
    certain: set[int] = set()
    likely: set[int] = set()
    for i, seq in enumerate(seqs[:-1]):
        if outcomes[seq][1] or seqs[i + 1] != seq + 1 or not outcomes[seq + 1][1]:
            continue
        refused_at = outcomes[seq][0]
        after = seq + 1
        while after in outcomes and outcomes[after][1]:
            after += 1
        if after not in outcomes:
            continue  # not yet answered, or not yet sent
        # The boundary after the refusal, and the next one, at the earliest it may be: a
        # refusal sent before it is in the window. One sent later may be in the next (the
        # count is then more than a window's, the next one's whole budget and some): taken
        # when it is before the likeliest boundary and nothing certain says otherwise (a
        # misread budget is refused within a window, which ends the lane's hold).
        ends_at = phase + (math.ceil((refused_at - _SLACK_S - phase) / length_s) + 1) * length_s
        next_sent_at = outcomes[after][0]
        if next_sent_at < ends_at - spread_s - _SLACK_S:
            certain.add(after - seq - 1)
        elif next_sent_at < ends_at - _SLACK_S:
            likely.add(after - seq - 1)
    certain |= _refused_window_counts(outcomes, seqs, length_s, phase, spread_s + _SLACK_S)
    if not certain and not likely:
        # Counted on the likeliest boundaries, and on either end of where they may be: the
        # same count all three ways (else a request is misplaced: 11 read for 10 on the
        # middle of boundaries known to 0.19 s, the true ones at its end).
        ways = [
            _refused_window_counts(outcomes, seqs, length_s, at, 0.0)
            for at in (phase - 0.99 * spread_s, phase, phase + 0.99 * spread_s)
        ]
        if all(len(way) == 1 for way in ways) and ways[0] == ways[1] == ways[2]:
            likely = ways[1]
    counts = certain or likely
    if len(counts) != 1:
        return None
    count = counts.pop()
    return count if count >= 1 else None


def _refused_window_counts(
    outcomes: dict[int, tuple[float, bool]],
    seqs: list[int],
    length_s: float,
    phase: float,
    near_s: float,
) -> set[int]:
    """What each window with a refusal took, counted between its boundaries (``phase``
    give or take ``near_s``): each window wholly seen (every request sent in it
    answered, and one on either side) with no request sent where a boundary may be. A
    window that refused took its whole budget, however late it refused."""
    windows: dict[int, list[int]] = {}
    for seq in seqs:
        windows.setdefault(math.floor((outcomes[seq][0] - phase) / length_s), []).append(seq)
    counts: set[int] = set()
    near = near_s
    for index, members in windows.items():
        first, last = members[0], members[-1]
        if (
            last - first + 1 != len(members)
            or first - 1 not in outcomes
            or last + 1 not in outcomes
            or all(outcomes[seq][1] for seq in members)
        ):
            continue
        starts_at = phase + index * length_s
        ends_at = starts_at + length_s
        if any(
            abs(outcomes[seq][0] - starts_at) < near or abs(outcomes[seq][0] - ends_at) < near
            for seq in (first - 1, first, last, last + 1)
        ):
            continue
        counts.add(sum(1 for seq in members if outcomes[seq][1]))
    return counts
