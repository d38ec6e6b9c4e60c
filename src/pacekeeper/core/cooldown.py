"""The cooldown gate: after a 429 that says when to come back, nobody goes before then.

Without it every queued request discovers the 429 for itself, each one spending a request of
the provider's budget to learn what the first one already knew.
"""

from __future__ import annotations

__all__ = ["CooldownGate"]


class CooldownGate:
    """Holds requests back until a moment on the monotonic clock.

    >>> gate = CooldownGate()
    >>> gate.remaining_s(now=10.0)
    0.0
    >>> gate.close_until(12.5)
    >>> gate.close_until(11.0)         # a shorter hint never shortens the wait
    >>> gate.remaining_s(now=10.0)
    2.5
    >>> gate
    <CooldownGate closed until t=12.500 (2 so far)>
    """

    __slots__ = ("_times_closed", "_until")

    def __init__(self) -> None:
        self._until = 0.0
        self._times_closed = 0

    @property
    def until(self) -> float:
        """The monotonic time the gate opens (in the past when open)."""
        return self._until

    @property
    def times_closed(self) -> int:
        return self._times_closed

    def close_until(self, until: float) -> None:
        """Close the gate until ``until``; an earlier time than the current one changes nothing."""
        self._times_closed += 1
        self._until = max(self._until, until)

    def remaining_s(self, *, now: float) -> float:
        """Seconds until the gate opens (0.0 when open)."""
        return self._until - now if self._until > now else 0.0

    def __repr__(self) -> str:
        return f"<CooldownGate closed until t={self._until:.3f} ({self._times_closed} so far)>"
