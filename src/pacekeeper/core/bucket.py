"""Even pacing of a per-minute budget: a token bucket kept as one number (GCRA).

The Generic Cell Rate Algorithm stores only the *theoretical arrival time* (``tat``): the moment
at which the bucket would be full again if nothing more were spent. Spending ``cost`` units
pushes it ``cost / rate`` seconds further; a spend is allowed when it would leave the bucket
holding no more debt than ``burst`` units. One float, no timers, no refill loop.
"""

from __future__ import annotations

import math

from pacekeeper.core.errors import ConfigurationError

__all__ = ["TokenBucket"]


class TokenBucket:
    """A continuously refilling budget of ``rate_per_s`` units per second, ``burst`` deep.

    All methods take ``now`` (seconds on a monotonic clock) so that the bucket is pure and can be
    tested with any clock.

    The oversize rule: a single spend larger than ``burst`` can never fit, so it is allowed when
    the bucket is full (no debt at all) and then leaves a debt larger than the burst, which
    later spends wait out. It therefore never waits forever, and the long-run rate still holds.

    >>> b = TokenBucket(rate_per_s=2.0, burst=2.0)
    >>> b.wait_s(now=0.0, cost=2)      # full: two go at once
    0.0
    >>> b.spend(now=0.0, cost=2)
    >>> b.wait_s(now=0.0, cost=1)      # empty: the next unit comes after 1/rate seconds
    0.5
    >>> b.wait_s(now=0.5, cost=1)
    0.0
    >>> b
    <TokenBucket 2/s burst=2 full at t=1.000>
    """

    __slots__ = (
        "_asked_burst",
        "_burst",
        "_guard_s",
        "_interval_s",
        "_rate_per_s",
        "_slot_grid",
        "_slot_used",
        "_spent",
        "_spent_in",
        "_tat",
        "_window_budget_per_s",
        "_window_closed_at",
        "_window_s",
        "_window_start",
        "keeps_windows",
    )

    def __init__(self, *, rate_per_s: float, burst: float) -> None:
        self._rate_per_s = 0.0
        self._interval_s = 0.0
        self._burst = 0.0
        self._asked_burst = 0.0
        self._tat = -math.inf
        self._window_s: float | None = None
        self._window_start = 0.0
        self._window_closed_at = -math.inf
        self._guard_s = 0.0
        self._window_budget_per_s: float | None = None
        self._spent = 0.0
        self._spent_in = -math.inf
        """Once the windows' length is known: what went into the window that starts at
        ``_spent_in`` (more than the window holds: a debt that later windows repay)."""
        self.keeps_windows = False
        """Whether it keeps to a provider's fixed windows (:meth:`set_windows`)."""
        self._slot_grid: tuple[float, float, int, float] | None = None
        """Fixed windows' slots spends are spread over (:meth:`set_slots`): a boundary,
        the windows' length, the count a window takes, the margin kept at either end."""
        self._slot_used = -math.inf
        """The last slot spent in (numbered from the boundary)."""
        self.set_rate(rate_per_s=rate_per_s, burst=burst, now=0.0)

    @property
    def rate_per_s(self) -> float:
        return self._rate_per_s

    @property
    def burst(self) -> float:
        return self._burst

    @property
    def window_s(self) -> float | None:
        """The length of the provider's fixed windows this bucket keeps to (None: none, or
        only one window's start is known)."""
        return self._window_s

    def set_windows(
        self,
        *,
        start_s: float,
        length_s: float | None,
        now: float,
        guard_s: float = 0.0,
        budget_per_s: float | None = None,
    ) -> None:
        """Keep to a provider that counts in fixed windows, one of which starts at ``start_s``
        (on this bucket's clock), each ``length_s`` long (None: not known, only that start):
        nothing refills before a window ends, and what a window left unspent is gone when it
        ends. So at each window's start the bucket keeps no more than empty, and a window gets
        no more than the rate's share of it. A bucket that refills continuously carries a
        window's leftover into the next one (a request's worth on top of a full window: a
        429); this one sends into a window, before any answer from it is back, what it knows
        it sent there (its own charges), never more than the window holds.

        Without a length (one window's end is known, not where the next ones fall), the
        bucket still refills continuously within a window, from empty at its start. With a
        length, it keeps to the windows as the provider does: each window's whole budget (the
        rate's share of it, the burst) is there from its start, nothing refills before the
        next, and what is left at the end is gone. Paced from empty instead, a window's last
        request waited for its last share of the refill, the window's very end, and fell into
        the next one (with whole requests, about one in twenty). No spend goes in the first
        ``guard_s`` of a window: ``start_s`` is the earliest a window may end (see
        :meth:`pacekeeper.core.depth.FixedWindows.grid`), and a request sent then may be
        counted in either. A window holds ``budget_per_s`` (the provider's stated rate, when
        it states one) times its length, not the pace: a pace 2% under a limit of 15 a
        window, kept for a minute after a 429, is 14.7 a window, and 14 whole requests. A
        spend larger than a whole window goes first in a window (as a provider admits it
        into a full one), and later windows repay what it took beyond it.
        A give-back (:meth:`adjust`) is not taken: the provider counted the spend in a window
        that may be gone.

        >>> b = TokenBucket(rate_per_s=1000.0, burst=500.0)
        >>> b.set_windows(start_s=0.0, length_s=None, now=0.0)
        >>> b.spend(now=0.1, cost=100)  # the window from 0 starts empty: 100 refilled
        >>> round(b.level(0.3))  # 300 refilled by now, 100 spent
        200
        >>> b.set_windows(start_s=0.0, length_s=1.0, now=0.3)  # now the length is known
        >>> round(b.level(0.3))  # as the bucket would refill by the window's end: 200 + 700
        900
        >>> round(b.level(1.01))  # the next window: the 200 left is gone, 1000 from its start
        1000
        >>> b.wait_s(now=1.01, cost=2500)  # more than a window: nothing went in this one yet
        0.0
        >>> b.spend(now=1.01, cost=2500)
        >>> b.wait_s(now=1.5, cost=100)  # 1500 past the window: the one from 2 s repays it
        1.5
        """
        if not math.isfinite(start_s) or (
            length_s is not None and not (math.isfinite(length_s) and length_s > 0)
        ):
            raise ConfigurationError(
                f"fixed windows need a finite start and a positive length, got "
                f"start_s={start_s!r}, length_s={length_s!r}"
            )
        if length_s is None and self._window_s is not None:
            self.clear_windows(now=now)  # the length is not known after all
        if length_s is not None:
            self._window_budget_per_s = budget_per_s
            self._keep_length(start_s=start_s, length_s=length_s, now=now, guard_s=guard_s)
            return
        self._window_start = start_s
        self._window_s = length_s
        self.keeps_windows = True
        self._set_burst(self._asked_burst, now=now)

    def _keep_length(self, *, start_s: float, length_s: float, now: float, guard_s: float) -> None:
        """Windows of a known length (see :meth:`set_windows`). On the switch, what the
        window holding ``now`` has taken is not known: it gets what the bucket refilling
        continuously would have let through until it ends, no more (taken as full, it lost
        the rest of its window: 0.4 s of a 1-s window's requests)."""
        known = self._window_s is not None
        level = self.level(now) if not known else 0.0
        self._window_start = start_s
        self._window_s = length_s
        self._guard_s = min(max(0.0, guard_s), length_s / 2)
        self.keeps_windows = True
        self._burst = self._window_budget(length_s)
        self._tat = -math.inf
        started_at = self._window_started_at(now)
        if not known:
            ends_at = started_at + length_s if math.isfinite(started_at) else start_s
            allowed = max(0.0, level) + self._rate_per_s * max(0.0, ends_at - now)
            self._spent = self._burst - min(self._burst, allowed)
            self._spent_in = started_at
        elif abs(started_at - self._spent_in) < length_s / 2:
            self._spent_in = started_at  # the same window, its start seen a little apart

    def _window_budget(self, length_s: float) -> float:
        return (self._window_budget_per_s or self._rate_per_s) * length_s

    def _roll(self, now: float) -> None:
        """Move what was spent on to the window holding ``now``: the windows between repay
        a debt, and what a window left unspent is gone."""
        started_at = self._window_started_at(now)
        if started_at <= self._spent_in or self._window_s is None:
            return
        if math.isfinite(self._spent_in):
            passed = round((started_at - self._spent_in) / self._window_s)
            self._spent = max(0.0, self._spent - passed * self._burst)
        else:
            self._spent = 0.0
        self._spent_in = started_at

    def _windowed_wait_s(self, now: float, cost: float) -> float:
        """:meth:`wait_s` for windows of a known length."""
        self._roll(now)
        assert self._window_s is not None  # (only with a length)
        started_at = self._window_started_at(now)
        next_start = (
            started_at + self._window_s if math.isfinite(started_at) else self._window_start
        )
        if now < started_at + self._guard_s:
            return started_at + self._guard_s - now
        room = self._burst - self._spent
        if cost <= room + 1e-9 or (cost > self._burst and self._spent <= 1e-9):
            return 0.0
        # The first window in which this fits: debt beyond a window is repaid a window each.
        owed = self._spent - (0.0 if cost > self._burst else self._burst - cost)
        windows = max(1, math.ceil(owed / self._burst - 1e-9))
        return next_start + (windows - 1) * self._window_s + self._guard_s - now

    def clear_windows(self, *, now: float) -> None:
        """Refill continuously again (the windows were not shown after all)."""
        if self.keeps_windows:
            if self._window_s is not None:
                self._roll(now)
                left = self._burst - self._spent
                self._window_s = None
                self._burst = self._asked_burst
                debt = self._burst - left
                self._tat = now + debt * self._interval_s if debt > 0 else -math.inf
            self.keeps_windows = False
            self._window_s = None
            self._set_burst(self._asked_burst, now=now)

    def window_grid(self, now: float) -> tuple[float, float, float, float] | None:
        """Where the fixed windows this bucket keeps to fall, for a store that keeps them for
        several processes: (seconds from ``now`` until the window holding it ends, the
        windows' length, a window's budget, the guard at a window's start); None unless it
        keeps windows of a known length.

        >>> b = TokenBucket(rate_per_s=10.0, burst=10.0)
        >>> b.window_grid(now=0.0) is None
        True
        >>> b.set_windows(start_s=2.0, length_s=10.0, now=4.5, guard_s=0.05)
        >>> b.window_grid(now=4.5)
        (7.5, 10.0, 100.0, 0.05)
        """
        length_s = self._window_s
        if length_s is None:
            return None
        started_at = self._window_started_at(now)
        ends_at = started_at + length_s if math.isfinite(started_at) else self._window_start
        return (ends_at - now, length_s, self._burst, self._guard_s)

    def _window_started_at(self, now: float) -> float:
        """When the window holding ``now`` started (-inf: before the first known start)."""
        start, length_s = self._window_start, self._window_s
        if now < start:
            return -math.inf
        if length_s is None:
            return start
        return start + math.floor((now - start) / length_s) * length_s

    def _close_window(self, now: float) -> None:
        """At the first look in a new window, drop what the last one left."""
        if not self.keeps_windows or self._window_s is not None:
            return
        started_at = self._window_started_at(now)
        if started_at <= self._window_closed_at:
            return
        self._window_closed_at = started_at
        self._tat = max(self._tat, started_at + self._burst * self._interval_s)

    def _set_burst(self, burst: float, *, now: float) -> None:
        self._asked_burst = burst
        if self._window_s is not None:
            self._roll(now)
            self._burst = self._window_budget(self._window_s)
            return
        if burst != self._burst:
            # As full as it was: a deeper burst is room for later, not a refill now.
            level = self._burst - max(0.0, self._tat - now) * self._rate_per_s
            self._burst = burst
            debt = burst - level
            self._tat = now + debt * self._interval_s if debt > 0 else -math.inf
        if self.keeps_windows:
            self._close_window(now)

    def set_rate(
        self, *, rate_per_s: float, burst: float, now: float, keep_level: bool = False
    ) -> None:
        """Change the rate, keeping the current debt in units (not in seconds).

        With ``keep_level``, a burst that shrinks takes its loss out of the debt first: a
        bucket as empty as it was stays empty, not in debt by the burst it lost. For a new
        statement of the provider's, whose own bucket shrank with its limit: a limit that
        halved stalled a lane for half a second that the provider's bucket did not. (A burst
        halved by a 429 keeps the debt: the window that refused is empty for a while yet.)

        >>> b = TokenBucket(rate_per_s=20.0, burst=16.0)
        >>> b.spend(now=0.0, cost=15.0)
        >>> b.set_rate(rate_per_s=10.0, burst=8.0, now=0.0, keep_level=True)
        >>> round(b.level(0.0), 6)  # 1 left of 16: 1 left of 8, not 7 owed
        1.0
        """
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ConfigurationError(f"rate must be a positive number, got {rate_per_s!r}")
        if not (math.isfinite(burst) and burst > 0):
            raise ConfigurationError(f"burst must be a positive number, got {burst!r}")
        if self._window_s is not None:
            self._roll(now)
            self._rate_per_s = rate_per_s
            self._interval_s = 1.0 / rate_per_s
            self._burst = self._window_budget(self._window_s)
            self._asked_burst = burst
            return
        if self.keeps_windows:
            self._close_window(now)
        asked = burst
        debt = self.debt(now) if self._interval_s else 0.0
        if keep_level and burst < self._burst:
            debt = max(0.0, debt - (self._burst - burst))
        self._rate_per_s = rate_per_s
        self._interval_s = 1.0 / rate_per_s
        self._burst = burst
        self._asked_burst = asked
        self._tat = now + debt * self._interval_s if debt > 0 else -math.inf

    def debt(self, now: float) -> float:
        """Units spent and not yet refilled (0 when the bucket is full)."""
        if self._window_s is not None:
            self._roll(now)
            return self._spent
        if self.keeps_windows:
            self._close_window(now)
        return max(0.0, self._tat - now) * self._rate_per_s

    def level(self, now: float) -> float:
        """Units that could be spent right now (negative while a large spend is repaid)."""
        return self._burst - self.debt(now)

    def set_slots(
        self,
        *,
        origin: float,
        length_s: float,
        count: int,
        margin_s: float,
        now: float = -math.inf,
        spent: int = 0,
    ) -> None:
        """Spread single spends evenly over fixed windows, ``count`` a window, each in the
        middle of its own slot: the windows (``length_s`` long, one starting at ``origin``)
        are cut into ``count`` slots between margins of ``margin_s`` at either end, and one
        spend goes in each slot, no earlier than its middle. A window thus takes its whole
        count and never more, and nothing goes near a boundary: a send that reaches the
        provider a little late or early still counts in its window. (A bucket alone puts
        ``count`` in a window only at ``count`` less its burst a window: a second-long
        window of 24 paced at 23.) On top of the rate and burst, which still apply.
        ``spent``: what already went into the window ``now`` is in (its first slots).

        >>> b = TokenBucket(rate_per_s=10.0, burst=2.0)
        >>> b.set_slots(origin=0.3, length_s=1.0, count=4, margin_s=0.1)
        >>> [round(b.wait_s(now=t, cost=1), 3) for t in (0.35, 0.5)]  # slot 0 is [0.4, 0.6)
        [0.15, 0.0]
        >>> b.spend(now=0.5, cost=1)
        >>> round(b.wait_s(now=0.5, cost=1), 3)  # the next slot's middle: 0.7
        0.2
        """
        self._slot_grid = (origin, length_s, count, margin_s)
        self._slot_used = -math.inf
        if spent > 0 and math.isfinite(now):
            window = math.floor((now - origin) / length_s)
            self._slot_used = float(window * count + spent - 1)

    @property
    def slotted(self) -> bool:
        """Whether spends are spread over fixed windows' slots (:meth:`set_slots`)."""
        return self._slot_grid is not None

    def clear_slots(self) -> None:
        """No longer spread spends over fixed windows' slots (:meth:`set_slots`)."""
        self._slot_grid = None

    def _slot(self, now: float) -> tuple[float, float]:
        """The slot a single spend at ``now`` goes in, and when (its middle, at the
        earliest): the slot ``now`` falls in, or the next one free."""
        grid = self._slot_grid
        assert grid is not None
        origin, length_s, count, margin_s = grid
        width_s = (length_s - 2.0 * margin_s) / count
        window = math.floor((now - origin) / length_s)
        into_s = now - origin - window * length_s - margin_s
        index = float(window * count + min(count, max(0, math.floor(into_s / width_s))))
        if index <= self._slot_used:
            index = self._slot_used + 1.0
        window, index_in = divmod(int(index), count)
        at = origin + window * length_s + margin_s + (index_in + 0.5) * width_s
        return float(index), at

    def wait_s(self, now: float, cost: float) -> float:
        """Seconds until ``cost`` units may be spent (0.0: now)."""
        # Inline, not a helper's call: this runs on every admission.
        slot_s = 0.0
        if self._slot_grid is not None and cost <= 1.0:
            slot_s = self._slot(now)[1] - now
        if self._window_s is not None:
            wait = self._windowed_wait_s(now, cost)
            return wait if wait >= slot_s else slot_s
        if self.keeps_windows:
            self._close_window(now)
        tat = self._tat if self._tat > now else now
        # Oversize spends are allowed only from a full bucket.
        ready = tat if cost > self._burst else tat + (cost - self._burst) * self._interval_s
        wait = ready - now if ready > now else 0.0
        return wait if wait >= slot_s else slot_s

    def spend(self, now: float, cost: float) -> None:
        """Record a spend of ``cost`` units (call after ``wait_s`` returned 0)."""
        if self._slot_grid is not None:
            self._slot_used = self._slot(now)[0]
        if self._window_s is not None:
            self._roll(now)
            self._spent += cost
            return
        if self.keeps_windows:
            self._close_window(now)
        tat = self._tat if self._tat > now else now
        self._tat = tat + cost * self._interval_s

    def adjust(self, now: float, delta: float) -> None:
        """Charge (``delta`` > 0) or give back (< 0) units after the fact, e.g. once the real
        token usage is known. Giving back never makes the bucket fuller than full."""
        if delta < 0 and self.keeps_windows:
            return
        if self._window_s is not None:
            self._roll(now)
            self._spent += delta
            return
        if self.keeps_windows:
            self._close_window(now)
        tat = self._tat if self._tat > now else now
        self._tat = tat + delta * self._interval_s
        if self._tat < now:
            self._tat = -math.inf

    def drain_to(self, *, now: float, level: float) -> None:
        """Lower the level to ``level`` units if it is higher; never raise it.

        Used when the provider's headers say its bucket is emptier than ours (another client on
        the same key spends from it too): we then wait as it would make us wait.
        """
        if self.level(now) <= level:  # (level() closed a window that ended)
            return
        if self._window_s is not None:
            self._spent = self._burst - level
            return
        self._tat = now + (self._burst - level) * self._interval_s

    def drain_window_to(self, *, now: float, level: float, ends_at: float) -> None:
        """:meth:`drain_to`, from what was left of a provider's window that ends at
        ``ends_at``: only when that is the window this bucket is in now. Our windows start a
        guard before the latest end seen, so an answer about the window before may still
        be about an open one at the provider's: applied to the next, it held a whole window
        of a `tpm` run (4716 of its 4717 tokens taken as spent)."""
        started_at = self._window_started_at(now)
        length_s = self._window_s
        if (
            length_s is not None
            and math.isfinite(started_at)
            and ends_at < started_at + length_s / 2
        ):
            return
        self.drain_to(now=now, level=level)

    def __repr__(self) -> str:
        full = f"full at t={self._tat:.3f}" if math.isfinite(self._tat) else "full"
        if self._window_s is not None:
            full = f"{self._spent:g} spent in the window from t={self._spent_in:.3f}"
        windows = ""
        if self.keeps_windows:
            windows = f" windows from t={self._window_start:.3f}"
            if self._window_s is not None:
                windows += f" every {self._window_s:g} s"
        return f"<TokenBucket {self._rate_per_s:g}/s burst={self._burst:g} {full}{windows}>"
