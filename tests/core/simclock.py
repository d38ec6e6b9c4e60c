"""The clock the simulated-time tests drive: set ``clock.now``, and the lane reads it."""

from __future__ import annotations


class SimClock:
    """A clock that stands still until the test moves it.

    >>> clock = SimClock()
    >>> clock.now = 2.5
    >>> clock()
    2.5
    """

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
