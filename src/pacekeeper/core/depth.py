"""The shape of a provider's budget, read from its own headers: how deep its bucket is
(:class:`StatedDepth`), and whether it counts in fixed windows (:class:`FixedWindows`).

A per-minute limit says how fast a budget refills, not how much of it may go at once. A
provider whose bucket refills continuously (Anthropic) sends, with each answer, what is left of
the budget as a share of the stated limit and when the bucket will be full again. Together they
give the depth in seconds of the rate: a bucket ``depth_s`` deep that misses a share ``1 - x`` of
its capacity is full again after ``(1 - x) * depth_s``, so ``depth_s = reset / (1 - x)``. A
bucket of a whole minute (OpenAI's and Anthropic's stated buckets, which both say they may be
enforced over shorter intervals) reads as 60 s; a gateway counting per second reads as about a
second.

The reading is bracketed, never trusted as one number. An RFC 3339 reset has whole seconds and
is rounded up (and the two clocks differ a little), so the time to full lies within a second
under the reset sent; ``remaining`` is a whole number rounded down. Each answer gives a lower and
an upper bound; the depth used is the highest lower bound, never above the lowest upper bound.
Depth that may be a minute is not used at all: spending a stated minute at once is what
"enforced over shorter intervals" refuses.

>>> depth = StatedDepth()
>>> depth.observe(limit=1500, remaining=1350, reset_s=1.0)   # 10% missing, full within 1 s
>>> depth.depth_s                                           # at most 10 s, at least 0: unknown
>>> depth.observe(limit=1500, remaining=900, reset_s=3.0)    # 40% missing, full within 2-3 s
>>> depth.depth_s
5.0
>>> depth
<StatedDepth 5 s (5-7.51 s)>
>>> minute = StatedDepth()
>>> minute.observe(limit=1000, remaining=700, reset_s=18.0)  # 30% missing, 17-18 s: a minute
>>> minute.depth_s is None
True
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["FixedWindows", "RefillingQuota", "StatedDepth", "StatedWindow"]

_RESET_GRAIN_S = 1.0
"""How much sooner than its reset a bucket may really be full: an RFC 3339 reset counts whole
seconds, rounded up, and the provider's clock and ours differ."""
_SHORTER_THAN_A_MINUTE_S = 40.0
"""Depth is used only once an answer shows the bucket is at most this deep: a stated minute's
bucket reads as 60 s at least, and a reading up to here cannot be one."""
_LEAST_MISSING = 0.02
"""Readings of a bucket missing less than this share are too coarse to bound anything."""
_SAME_END_S = 0.05
"""Two resets that point at instants this close point at one: the network moves a request's
arrival by a few ms to tens of ms."""
_WINDOW_AGREEMENTS = 2
_GAPS_KEPT = 3
"""Gaps between the ends of successive windows that must agree before they give a length."""
_WHOLE_WITHIN = 0.05
"""A window length measured this close to a whole number of seconds is that number."""
_GUARD_S = 0.02
"""How much later than the quickest a request may reach the provider (see FixedWindows.grid)."""
_AGREEMENT = 1.1
"""Bounds that cross by less than this factor still agree (clocks, the network, rounding)."""
_SPREAD_TO_AGREE = 0.1
_LONGEST_MINUTE_S = 90.0
"""A budget refilled in more than this (a minute's, with room for rounding and skew) is a quota
per hour or day, not a rate."""
_QUOTA_AGREEMENTS = 2
"""Pairs of readings whose ends move as a slow refill says before a budget is read as a quota."""
"""Readings agree on a continuous bucket only when they saw it this differently full (a share
of the limit): readings of one fixed window at about one instant agree with any bucket, and a
window counted apart from a per-minute limit always looks all but empty."""


def _whole(length_s: float) -> float:
    """A window's length as providers set it, a whole number of seconds, when the gaps
    measured are that within 5%: a window's budget is the rate times its length, and a
    length read 0.1% long put one request's worth too many into a window.

    >>> _whole(1.001), _whole(9.93), _whole(0.5), _whole(1.3)
    (1.0, 10.0, 0.5, 1.3)
    """
    whole = float(round(length_s))
    return whole if whole >= 1 and abs(length_s - whole) <= _WHOLE_WITHIN * whole else length_s


class StatedDepth:
    """The depth of one provider budget (requests, input or output tokens) in seconds of its
    rate, from the answers' ``limit``, ``remaining`` and ``reset``."""

    __slots__ = (
        "_highest_lower_s",
        "_lowest_upper_s",
        "_missing_least",
        "_missing_most",
        "continuous",
    )

    def __init__(self) -> None:
        self._highest_lower_s = 0.0
        self._lowest_upper_s = math.inf
        self._missing_least = 1.0
        self._missing_most = 0.0
        """The least and the most of the budget missing that the readings saw."""
        self.continuous = False
        """Whether the answers show a bucket that refills continuously: a proven depth whose
        readings agree, seen differently full. A fixed window's resets do not scale with what
        is missing (a second into a 1-s window, as empty as at its start, is full in 0 s), and
        its bounds cross: it refills nothing before its reset, where a continuous bucket
        refills at its rate all along. (An attribute: a lane reads it with every answer's
        headers it reads.)
        """

    @property
    def depth_s(self) -> float | None:
        """The depth the answers so far prove (None: nothing proven, or maybe a minute)."""
        if self._lowest_upper_s > _SHORTER_THAN_A_MINUTE_S or self._highest_lower_s <= 0:
            return None
        return min(self._highest_lower_s, self._lowest_upper_s)

    def _agrees(self) -> bool:
        """A proven depth whose readings agree (every lower bound under every upper one,
        within a tenth) and saw the budget differently full: see :attr:`continuous`.

        >>> bucket = StatedDepth()
        >>> bucket.observe(limit=1200, remaining=1140, reset_s=0.05, grain_s=0.001)
        >>> bucket.observe(limit=1200, remaining=600, reset_s=0.5, grain_s=0.001)
        >>> bucket.continuous
        True
        >>> window = StatedDepth()  # 1200/min stated, 20 a window of 1 s, counted unscaled
        >>> window.observe(limit=1200, remaining=19, reset_s=0.99, grain_s=0.001)
        >>> window.observe(limit=1200, remaining=10, reset_s=0.4, grain_s=0.001)
        >>> window.continuous
        False
        """
        lower, upper = self._highest_lower_s, self._lowest_upper_s
        return (
            self._missing_most - self._missing_least >= _SPREAD_TO_AGREE
            and 0.0 < lower <= upper * _AGREEMENT
            and upper <= _SHORTER_THAN_A_MINUTE_S
        )

    def observe(
        self,
        *,
        limit: float,
        remaining: float,
        reset_s: float | None,
        age_s: float = 0.0,
        grain_s: float = _RESET_GRAIN_S,
    ) -> None:
        """Take one answer's reading of the budget: its per-minute ``limit``, what is
        ``remaining`` and the seconds until it is full again, counted from the answer (0: full
        by then, or sooner). ``age_s``: how long before the answer the provider counted the
        request the reading describes (the request's time on the wire, at most), which it sets
        the reset from; 0 for a reset sent as a duration, which counts from then already.
        ``grain_s``: how much sooner than ``reset_s`` the bucket may be full (a time of day in
        whole seconds: 1; a duration in ms: its last digit, plus the clocks' drift).

        A duration to the ms proves a bucket of a second (OpenAI's format, a gateway that
        enforces per second): one request of 1222/min missing and full again in 50 ms.

        >>> second = StatedDepth()  # (one reading: not yet shown continuous, see below)
        >>> second.observe(limit=1222, remaining=1162, reset_s=0.050, grain_s=0.002)
        >>> round(second.depth_s, 2)
        0.98
        """
        if reset_s is None or limit <= 0 or not math.isfinite(reset_s) or reset_s < 0:
            return
        left = max(0.0, remaining) / limit
        missing_most = 1.0 - left
        missing_least = 1.0 - min(1.0, (remaining + 1.0) / limit)
        if missing_least < _LEAST_MISSING:
            return
        age_s = max(0.0, age_s)
        self._missing_least = min(self._missing_least, missing_most)
        self._missing_most = max(self._missing_most, missing_most)
        # A time of day is rounded up (full by then at the latest); a finer duration may be
        # rounded either way, by its grain.
        late_s = 0.0 if grain_s >= _RESET_GRAIN_S else grain_s
        upper_s = (reset_s + age_s + late_s) / missing_least
        self._lowest_upper_s = min(self._lowest_upper_s, upper_s)
        if reset_s > 0:  # 0 may stand for a reset already past: no lower bound
            lower_s = (reset_s + age_s - grain_s) / missing_most
            self._highest_lower_s = max(self._highest_lower_s, lower_s)
        self.continuous = self._agrees()

    def __repr__(self) -> str:
        upper = "inf" if math.isinf(self._lowest_upper_s) else f"{self._lowest_upper_s:.3g}"
        depth = self.depth_s
        shown = "unknown" if depth is None else f"{depth:.3g} s"
        return f"<StatedDepth {shown} ({self._highest_lower_s:.3g}-{upper} s)>"


class FixedWindows:
    """Whether a budget is counted in fixed windows, from when its resets say it is whole again.

    A fixed window is whole again at its end, the same instant for every request counted in it;
    a bucket that refills continuously is full again later with every spend. Fixed windows
    refill nothing before that instant, so a lane must not spend more than ``remaining`` until
    then, where a continuous bucket lets the rate through meanwhile. Resets in whole seconds
    (RFC 3339, epoch numbers) share their instants whatever the budget does, and prove nothing.

    >>> windows = FixedWindows()
    >>> for sent_at, reset_s in ((0.10, 0.90), (0.35, 0.65), (0.62, 0.38)):  # all end at 1.0
    ...     windows.observe(sent_at=sent_at, reset_s=reset_s)
    >>> windows.fixed
    True
    >>> windows.observe(sent_at=1.1, reset_s=0.9)  # the next window ends at 2.0
    >>> windows.observe(sent_at=1.3, reset_s=0.9)  # a continuous bucket: full later and later
    >>> windows.observe(sent_at=1.4, reset_s=0.9)
    >>> windows.fixed
    False

    An answer to a request of an earlier window (it took longer than the later ones) is about
    a window already gone, and neither agrees nor disagrees:

    >>> windows = FixedWindows()
    >>> for sent_at, reset_s in ((1.10, 0.90), (1.35, 0.65), (0.30, 0.70), (1.62, 0.38)):
    ...     windows.observe(sent_at=sent_at, reset_s=reset_s)
    >>> windows.fixed
    True
    """

    __slots__ = (
        "_agreements",
        "_confirmed_end",
        "_end",
        "_gaps",
        "_length_s",
        "_longest_reset_s",
        "_seen_twice",
        "first_answer_at",
        "fixed",
    )

    def __init__(self) -> None:
        self._end = -math.inf
        self._agreements = 0
        self._seen_twice = False
        self._confirmed_end = -math.inf
        self._gaps: deque[float] = deque(maxlen=_GAPS_KEPT)
        self._length_s: float | None = None
        self._longest_reset_s = 0.0
        self.first_answer_at = math.inf
        self.fixed = False
        """Whether the resets show fixed windows (set as readings come: read per answer)."""
        """When the first reading of the budget came (the requests sent before it were sent
        blind to its windows)."""

    guard_s = _GUARD_S
    """How much earlier than the latest end seen a window may end (see :meth:`grid`)."""

    @property
    def length_s(self) -> float | None:
        """How long a window lasts: the middle one of the last gaps between the ends of
        windows each seen twice, once three agree (within a tenth), or the first such gap
        when it is shorter than twice the longest reset seen (a window is at least as long
        as any reset it gives, so that gap is one window); None until then. Once known, a
        gap of a few windows (those between were not seen twice) counts as that many gaps
        of one. A length within 5% of a whole number of seconds is that number."""
        return self._length_s

    def _gap(self, gap_s: float) -> None:
        self._take_gap(gap_s)
        if self._length_s is not None:
            self._length_s = _whole(self._length_s)

    def _take_gap(self, gap_s: float) -> None:
        gaps, length_s = self._gaps, self._length_s
        if length_s is None and self._longest_reset_s > gap_s / 2:
            # No window is longer than a reset it gave: a gap between the ends of two windows
            # that is shorter than twice the longest reset is one window, not several.
            gaps.clear()
            gaps.append(gap_s)
            self._length_s = gap_s
            return
        if length_s is not None:
            windows = round(gap_s / length_s)
            if windows >= 1 and abs(gap_s - windows * length_s) <= length_s * (_AGREEMENT - 1):
                gaps.append(gap_s / windows)
                self._length_s = sorted(gaps)[len(gaps) // 2]
                return
            gaps.clear()
            self._length_s = None
        gaps.append(gap_s)
        if len(gaps) == _GAPS_KEPT and max(gaps) <= min(gaps) * _AGREEMENT:
            self._length_s = sorted(gaps)[len(gaps) // 2]

    def grid(self) -> tuple[float, float | None] | None:
        """``(start_s, length_s)``: when the latest window seen ends, on the clock of
        ``sent_at`` (the next one starts then), a guard early, and how long windows last
        (None: not shown yet, only that end is known); None until windows are shown.

        The end seen is the latest of ``sent_at + reset_s`` in a window: each request reaches
        the provider a little after we sent it, so the true end is later by at least the
        quickest trip. The guard covers trips slower than that: a request sent within it may
        be counted in either window, so it is counted in the later one.

        >>> windows = FixedWindows()
        >>> for k in range(5):
        ...     windows.observe(sent_at=k + 0.10, reset_s=0.90)
        ...     windows.observe(sent_at=k + 0.35, reset_s=0.65)
        >>> windows.grid()
        (4.98, 1.0)
        """
        if not self.fixed:
            return None
        return round(self._end - _GUARD_S, 9), self.length_s

    def observe(self, *, sent_at: float, reset_s: float | None) -> None:
        """Take the reset of an answer to a request sent (and counted) at ``sent_at``."""
        if reset_s is None or not math.isfinite(reset_s) or reset_s <= 0:
            return
        end = sent_at + reset_s
        self._longest_reset_s = max(self._longest_reset_s, reset_s)
        if end < self._end - _SAME_END_S:
            # A window before the latest (answers come back out of order): it shows nothing
            # about the latest one.
            return
        counted_in_it = sent_at < self._end - _SAME_END_S  # while the last window was open
        if abs(end - self._end) <= _SAME_END_S:
            if counted_in_it:  # (sent at its very end, it agrees with any bucket)
                self._agreements += 1
                self.fixed = self._agreements >= _WINDOW_AGREEMENTS
                self._seen_twice = True
            # The latest end is the nearest to the true one (see grid).
            self._end = max(self._end, end)
            return
        if counted_in_it:
            self._agreements = 0
            self.fixed = False
            self._gaps.clear()
            self._length_s = None
            self._confirmed_end = -math.inf
        elif self._seen_twice:
            if math.isfinite(self._confirmed_end):
                self._gap(self._end - self._confirmed_end)
            self._confirmed_end = self._end
        self._seen_twice = False
        self._end = self._carried_end(end)

    def _carried_end(self, end: float) -> float:
        """The end of a window first seen at ``end``: with the length known, no earlier than
        the latest end of the window before, a whole number of windows on. Each reading is
        early by its request's trip, and the first of a window may be the slowest (70 ms on a
        loaded machine): a window's budget spent from it went into the window before, which
        was full. The ends are carried only while they agree with the new one (a length a
        little off would drift them on)."""
        length_s = self._length_s
        if length_s is None or not math.isfinite(self._end):
            return end
        windows = round((end - self._end) / length_s)
        carried = self._end + windows * length_s
        if windows >= 1 and end <= carried <= end + length_s * (_AGREEMENT - 1):
            return carried
        return end

    def __repr__(self) -> str:
        return f"<FixedWindows {'fixed' if self.fixed else 'not shown'}>"


class StatedWindow:
    """How long the window is of a budget stated without one: a gateway's unsuffixed
    ``X-RateLimit-Limit`` says N requests, not per what (10 s at some), and no reading may
    assume a minute.

    A budget is whole again within its window: a fixed window ends within its length, a bucket
    is full again within its depth. So the longest time to reset seen, counted from when the
    provider counted the request, bounds the window from below, and reaches it as soon as one
    answer is counted at a window's start or from an empty bucket (a rate read from the bound
    is high until then, and the budget's own ``remaining`` holds the lane meanwhile). A length
    within 5% of a whole number of seconds is that number.

    >>> window = StatedWindow()
    >>> window.per_minute(150) is None     # no reset seen: nothing to say
    True
    >>> window.observe(reset_s=6.2)        # counted 3.8 s into a 10-s window
    >>> window.observe(reset_s=9.71)       # counted just after the next one began
    >>> window.length_s, window.per_minute(150)
    (10.0, 900.0)
    >>> window.per_minute(150, depth_s=12.0)  # a bucket proven 12 s deep: its depth
    750.0
    >>> window.observe(reset_s=9.0, end_at=20.0)
    >>> window.grid()                      # the latest window's end, and the length
    (20.0, 10.0)
    """

    __slots__ = ("_end_at", "_longest_s")

    def __init__(self) -> None:
        self._longest_s = 0.0
        self._end_at = -math.inf

    @property
    def length_s(self) -> float | None:
        """The window the resets so far bound from below (None: no reset yet)."""
        return _whole(self._longest_s) if self._longest_s > 0 else None

    def observe(
        self, *, reset_s: float | None, age_s: float = 0.0, end_at: float | None = None
    ) -> None:
        """Take a reset ``reset_s`` from the answer, counted ``age_s`` before it (a time of
        day turned into a wait from the answer; 0 for a duration, counted from then), that
        ends at ``end_at`` on the reader's clock (when known)."""
        if reset_s is None or not math.isfinite(reset_s) or reset_s <= 0:
            return
        self._longest_s = max(self._longest_s, reset_s + max(0.0, age_s))
        if end_at is not None and math.isfinite(end_at):
            self._end_at = max(self._end_at, end_at)

    def grid(self) -> tuple[float, float] | None:
        """``(end_s, length_s)``: the latest end of a window seen and the length, for a
        budget shown to count in fixed windows (see :meth:`TokenBucket.set_windows`); None
        until both are known."""
        length = self.length_s
        if length is None or not math.isfinite(self._end_at):
            return None
        return self._end_at, length

    def per_minute(self, limit: float, *, depth_s: float | None = None) -> float | None:
        """``limit`` per window as a rate per minute: over ``depth_s`` when the answers proved
        a continuous bucket that deep (:attr:`StatedDepth.continuous`), else over
        :attr:`length_s`; None while neither is known."""
        window_s = depth_s if depth_s is not None else self.length_s
        if window_s is None or window_s <= 0:
            return None
        return limit * 60.0 / window_s

    def __repr__(self) -> str:
        length = self.length_s
        return f"<StatedWindow {'unknown' if length is None else f'>= {length:.3g} s'}>"


class RefillingQuota:
    """Whether a budget is a quota per hour or day that refills continuously (Groq's
    ``x-ratelimit-*-requests``: a day's requests, stated under the names OpenAI uses per
    minute, whose reset is the time to regain what was used: ``6s`` after one of 14,400).

    A continuous bucket that misses ``limit - remaining`` and is full in ``reset`` refills
    ``limit`` in ``reset * limit / (limit - remaining)``: a day there, a minute at most for a
    rate. But a fixed window just begun reads the same (one used of 500, whole again in 59 s:
    "8 hours"), and its quota is a minute's. What tells them apart is where each reading says
    the budget is whole again: in a fixed window, at one instant for every request counted in
    it; in a slowly refilling bucket, later by ``limit / refill`` seconds for every request
    used (6 s each at 14,400 a day). So the budget is a quota once two pairs of successive
    readings (in send order, each using more) both bound the refill beyond 90 s and show
    their ends moving on by at least half what that refill implies, and a window once a pair
    shows its end moving by less than that. Until one or the other, a budget whose latest
    reading bounds its refill beyond 90 s is :attr:`suspect`: neither its limit nor its room
    is a minute's (read as one, Groq's 100,000 a day was a ceiling of 100,000 a minute, and
    every refusal of the rpm it does not state read as a cap on requests in flight).

    >>> day = RefillingQuota()
    >>> for remaining, reset_s, at in ((14399, 6.0, 0.0), (14398, 12.0, 0.1), (14396, 24.0, 0.2)):
    ...     day.observe(limit=14400, remaining=remaining, reset_s=reset_s, end_at=at + reset_s,
    ...                 grain_s=1.0)
    >>> day.proven
    True
    >>> minute = RefillingQuota()  # 500 a fixed minute: every end at 59 s
    >>> for remaining, at in ((499, 0.0), (497, 0.1), (494, 0.2), (490, 0.3)):
    ...     minute.observe(limit=500, remaining=remaining, reset_s=59.0 - at, end_at=59.0,
    ...                    grain_s=1.0)
    >>> minute.proven, minute.windowed, minute.suspect
    (False, True, False)
    """

    __slots__ = ("_agreements", "_last", "proven", "suspect", "windowed")

    def __init__(self) -> None:
        self._agreements = 0
        self._last: tuple[float, float, float] | None = None
        """(remaining, end_at, refill_s) of the last reading, when it bounded the refill
        beyond a minute."""
        self.proven = False
        self.windowed = False
        """Shown to be whole again at one instant while more was used: a window, not a
        slow refill (never suspect again)."""
        self.suspect = False
        """Whether the latest reading bounds the refill beyond a minute and the readings have
        not yet shown a quota (then :attr:`proven`) or a window. (Attributes, not
        properties: a lane reads them with every answer's headers it reads.)"""

    def observe(
        self,
        *,
        limit: float,
        remaining: float,
        reset_s: float | None,
        end_at: float,
        grain_s: float = _RESET_GRAIN_S,
        clocks_apart_s: float = 0.0,
    ) -> None:
        """Take one reading, in send order: ``remaining`` of ``limit``, whole again in
        ``reset_s`` (precise to ``grain_s``, and off by up to ``clocks_apart_s`` for a time
        of day read on a provider's clock), at ``end_at`` on the lane's clock. The clocks'
        difference bounds the refill, but not how far two readings' ends are apart: it is
        the same in both."""
        # (Comparisons, not calls: this runs for every answer's headers a lane reads.)
        if self.proven or self.windowed or reset_s is None or not 0 < limit < math.inf:
            return
        missing = limit - (remaining if remaining > 0 else 0.0)
        off_s = grain_s + clocks_apart_s
        if missing <= 0 or not off_s < reset_s < math.inf:
            return  # full, or a reset too coarse to bound anything
        # remaining is rounded down: the bucket misses at most `missing`, so this is a bound
        # from below on the time it takes to refill `limit`.
        refill_s = (reset_s - off_s) * limit / missing
        last = self._last
        self._last = (remaining, end_at, refill_s) if refill_s > _LONGEST_MINUTE_S else None
        self.suspect = self._last is not None
        if last is None or remaining >= last[0]:
            if self._last is None:
                self._agreements = 0
            return
        # Under a slow refill every request used moves the end on by limit / refill seconds,
        # as much as either reading's bound says at least.
        moved_s = end_at - last[1]
        implied_s = (last[0] - remaining) * (refill_s if refill_s > last[2] else last[2]) / limit
        distinct_s = 2.0 * grain_s + _SAME_END_S  # ends this far apart are not one end
        if self._last is not None and moved_s >= 0.5 * implied_s and moved_s > distinct_s:
            self._agreements += 1
            self.proven = self._agreements >= _QUOTA_AGREEMENTS
            self.suspect = not self.proven
            return
        self._agreements = 0
        if moved_s < 0.5 * implied_s and 0.5 * implied_s > distinct_s:
            self.windowed = True  # a slow refill would have moved its end further
            self.suspect = False

    def __repr__(self) -> str:
        return f"<RefillingQuota {'proven' if self.proven else 'not shown'}>"
