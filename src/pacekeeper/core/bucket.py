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

    __slots__ = ("_burst", "_interval_s", "_rate_per_s", "_tat")

    def __init__(self, *, rate_per_s: float, burst: float) -> None:
        self._rate_per_s = 0.0
        self._interval_s = 0.0
        self._burst = 0.0
        self._tat = -math.inf
        self.set_rate(rate_per_s=rate_per_s, burst=burst, now=0.0)

    @property
    def rate_per_s(self) -> float:
        return self._rate_per_s

    @property
    def burst(self) -> float:
        return self._burst

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
        debt = self.debt(now) if self._interval_s else 0.0
        if keep_level and burst < self._burst:
            debt = max(0.0, debt - (self._burst - burst))
        self._rate_per_s = rate_per_s
        self._interval_s = 1.0 / rate_per_s
        self._burst = burst
        self._tat = now + debt * self._interval_s if debt > 0 else -math.inf

    def debt(self, now: float) -> float:
        """Units spent and not yet refilled (0 when the bucket is full)."""
        return max(0.0, self._tat - now) * self._rate_per_s

    def level(self, now: float) -> float:
        """Units that could be spent right now (negative while a large spend is repaid)."""
        return self._burst - self.debt(now)

    def wait_s(self, *, now: float, cost: float) -> float:
        """Seconds until ``cost`` units may be spent (0.0: now)."""
        tat = self._tat if self._tat > now else now
        # Oversize spends are allowed only from a full bucket.
        ready = tat if cost > self._burst else tat + (cost - self._burst) * self._interval_s
        return ready - now if ready > now else 0.0

    def spend(self, *, now: float, cost: float) -> None:
        """Record a spend of ``cost`` units (call after ``wait_s`` returned 0)."""
        tat = self._tat if self._tat > now else now
        self._tat = tat + cost * self._interval_s

    def adjust(self, *, now: float, delta: float) -> None:
        """Charge (``delta`` > 0) or give back (< 0) units after the fact, e.g. once the real
        token usage is known. Giving back never makes the bucket fuller than full."""
        tat = self._tat if self._tat > now else now
        self._tat = tat + delta * self._interval_s
        if self._tat < now:
            self._tat = -math.inf

    def drain_to(self, *, now: float, level: float) -> None:
        """Lower the level to ``level`` units if it is higher; never raise it.

        Used when the provider's headers say its bucket is emptier than ours (another client on
        the same key spends from it too): we then wait as it would make us wait.
        """
        if self.level(now) > level:
            self._tat = now + (self._burst - level) * self._interval_s

    def __repr__(self) -> str:
        full = f"full at t={self._tat:.3f}" if math.isfinite(self._tat) else "full"
        return f"<TokenBucket {self._rate_per_s:g}/s burst={self._burst:g} {full}>"
