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

Once the grid and the count are shown, the lane paces the count evenly, half a request short of
it, with no burst: evenly spaced sends at ``(N - 0.5) / L`` put at most ``N`` in any span of
``L``, whatever the windows' phase. Misread (a bucket refused once a second at one phase by a
pace just over its rate), that is the bucket's rate less half a request a second: no harm.

>>> grid = FixedGrid()
>>> shown = None
>>> for w in range(3):  # windows of 10 from k + 0.3; 20 sent a second, the last 10 refused
...     for i in range(20):
...         t = w + 0.3 + 0.05 * i
...         shown = grid.note(seq=20 * w + i, sent_at=t, accepted=i < 10, now=t) or shown
>>> shown
(1.0, 10)

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

__all__ = ["FixedGrid"]

_LENGTHS_S = (1.0,)
"""The window lengths tried: a second, the grain of gateways' and servers' request windows
(longer ones show too seldom in a run to be told from their 429s alone)."""
_SLACK_S = 0.02
"""How far a request's arrival at the provider may drift from when it was sent."""
_KEEP_S = 8.0
_MIN_BOUNDARIES = 2
"""Refusal runs that ended (a refused request, then an accepted one) in distinct windows."""
_JUDGED_AFTER_S = 2.0
_FEW_TAKEN = 2
_NO_BUCKET_MARGIN = 1.5
"""How far the rates two pairs of refusals allow a bucket must be apart to rule one out."""
_MIN_SATURATED = 1
"""Windows wholly seen, each with a refusal, that took the same count."""


class FixedGrid:
    """The outcomes of a lane's requests in send order (by admission number) while it
    discovers its rate from bare 429s, and the fixed windows they show, if any."""

    __slots__ = ("_judge_until", "_outcomes", "active", "held_at")

    def __init__(self) -> None:
        self._outcomes: dict[int, tuple[float, bool]] = {}
        """Admission number -> (when sent, accepted): the last few seconds' outcomes."""
        self._judge_until = -math.inf
        """Until when successes are judged too: the answers that complete the picture of
        the last refusals (sent before them, answered a latency later)."""
        self.active = False
        """Whether a bare 429 came: outcomes are noted from then on."""
        self.held_at: float | None = None
        """When the lane last held its pace to the windows shown (None: not since
        :meth:`forget`)."""

    def note(
        self, *, seq: int, sent_at: float, accepted: bool, now: float
    ) -> tuple[float, int] | None:
        """Record request ``seq``'s outcome (accepted, or refused by a bare 429); the windows
        shown, as ``(length_s, count)``, or None. Judged at a refusal, and at the answers
        that come back for a couple of seconds after one (the rest shows nothing new); not
        while the lane holds its pace to windows shown."""
        self.active = True
        outcomes = self._outcomes
        outcomes[seq] = (sent_at, accepted)
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

    def shown(self) -> tuple[float, int] | None:
        """The fixed windows the outcomes show, ``(length_s, count)``; None if none."""
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
        if len(allowed) < _MIN_BOUNDARIES or not _no_bucket(outcomes, seqs):
            return None
        for length_s in _LENGTHS_S:
            phase = _common_phase(allowed, forbidden, length_s)
            if phase is None:
                continue
            boundaries = {int((hi - phase) // length_s) for _, hi in allowed}
            if len(boundaries) < _MIN_BOUNDARIES:
                continue
            count = _window_count(outcomes, seqs, phase, length_s)
            if count is not None:
                return length_s, count
        return None


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
) -> float | None:
    """A phase in ``[0, length_s)`` such that every ``allowed`` span holds a boundary
    ``phase + k length_s`` and no ``forbidden`` one does; None if there is none."""
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
    return (lo + hi) / 2.0


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
    outcomes: dict[int, tuple[float, bool]], seqs: list[int], phase: float, length_s: float
) -> int | None:
    """The count every wholly seen window with a refusal took (at least
    ``_MIN_SATURATED`` of them), when they agree and no window took more; else None."""
    windows: dict[int, list[int]] = {}
    for seq in seqs:
        sent_at, _ = outcomes[seq]
        windows.setdefault(int((sent_at - phase) // length_s), []).append(seq)
    counts: list[int] = []
    most = 0
    for members in windows.values():
        first, last = members[0], members[-1]
        # Wholly seen: every request sent in it is known, and so are its neighbours.
        whole = last - first + 1 == len(members) and first - 1 in outcomes and last + 1 in outcomes
        taken = sum(1 for seq in members if outcomes[seq][1])
        most = max(most, taken)
        if whole and taken < len(members):
            counts.append(taken)
    if len(counts) < _MIN_SATURATED or min(counts) != max(counts) or most > counts[0]:
        return None
    return counts[0] if counts[0] >= 1 else None
