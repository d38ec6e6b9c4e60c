"""How many requests may be in flight: a fixed number, or an AIMD limit that finds it.

Both kinds count slots the same way; they differ only in what an outcome does to the limit.
Outcomes are reported as a :class:`Signal`: a success, back-pressure (429, 503, 529) or
neutral (an error that says nothing about load, or a cancellation).
"""

from __future__ import annotations

import enum
import math

from pacekeeper.core.config import AdaptiveConcurrency

__all__ = ["AimdLimit", "FixedLimit", "Signal", "SlotLimit"]


_PROBE = 0.125
"""Growth near the last loss: one slot per eight round trips."""


class Signal(enum.Enum):
    SUCCESS = "success"
    BACKPRESSURE = "backpressure"
    NEUTRAL = "neutral"


class FixedLimit:
    """At most ``limit`` requests in flight.

    >>> slots = FixedLimit(2)
    >>> slots.acquire(now=0.0), slots.acquire(now=0.0), slots.has_room()
    (1, 2, False)
    >>> slots.release(now=1.0, sent_at=0.0, in_flight_at_send=2, signal=Signal.SUCCESS)
    >>> slots
    <FixedLimit 1/2 in flight>
    """

    __slots__ = ("_limit", "in_flight", "peak_in_flight")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.in_flight = 0
        self.peak_in_flight = 0

    @property
    def limit(self) -> int:
        return self._limit

    def has_room(self) -> bool:
        return self.in_flight < self._limit

    def acquire(self, *, now: float) -> int:
        """Take a slot; returns the number in flight including this one."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return self.in_flight

    def release(
        self,
        *,
        now: float,
        sent_at: float,
        in_flight_at_send: int,
        signal: Signal,
        backlog: bool = False,
    ) -> None:
        self.in_flight -= 1

    def cap(self, ceiling: int) -> None:
        """Never allow more than ``ceiling`` (e.g. the HTTP client's connection pool size)."""
        self._limit = min(self._limit, ceiling)

    def __repr__(self) -> str:
        return f"<FixedLimit {self.in_flight}/{self._limit} in flight>"


class AimdLimit(FixedLimit):
    """An adaptive, loss-based limit (additive increase, multiplicative decrease).

    >>> aimd = AimdLimit(AdaptiveConcurrency(initial=4))
    >>> sent = [aimd.acquire(now=0.0) for _ in range(4)]
    >>> aimd.release(now=1.0, sent_at=0.0, in_flight_at_send=4, signal=Signal.SUCCESS)
    >>> aimd.limit  # slow start: one more slot per success while the limit is in use
    5
    >>> aimd.release(now=1.0, sent_at=0.0, in_flight_at_send=4, signal=Signal.BACKPRESSURE)
    >>> aimd  # cut to 70%
    <AimdLimit 2/3 in flight (3.50, decreases 1)>
    """

    __slots__ = (
        "_last_decrease_at",
        "_loss_window",
        "_settings",
        "_ssthresh",
        "_window",
        "decreases",
    )

    def __init__(self, settings: AdaptiveConcurrency) -> None:
        super().__init__(settings.initial)
        self._settings = settings
        self._window = float(settings.initial)
        self._ssthresh = math.inf
        self._loss_window = math.inf
        self._last_decrease_at = -math.inf
        self.decreases = 0

    @property
    def window(self) -> float:
        """The exact (fractional) limit; ``limit`` is its integer part."""
        return self._window

    def release(
        self,
        *,
        now: float,
        sent_at: float,
        in_flight_at_send: int,
        signal: Signal,
        backlog: bool = False,
    ) -> None:
        self.in_flight -= 1
        s = self._settings
        if signal is Signal.BACKPRESSURE:
            # Once per round trip: an answer to a request sent before the last cut describes the
            # load as it was before that cut, so it must not cut again.
            if sent_at >= self._last_decrease_at:
                self._loss_window = self._window
                self._window = max(float(s.min), self._window * s.decrease_factor)
                self._ssthresh = self._window
                self._last_decrease_at = now
                self.decreases += 1
        elif signal is Signal.SUCCESS and (
            backlog or in_flight_at_send >= s.utilisation_to_grow * self._limit
        ):
            # Slow start (one slot per success) until the first cut, then one per round trip.
            # Then, like CUBIC's plateau, approach the window of the last loss quickly and
            # probe beyond it slowly: each probe past a real ceiling costs one 429.
            if self._window < self._ssthresh:
                step = 1.0
            elif self._window + 1.0 < self._loss_window:
                step = 1.0 / self._window
            else:
                step = _PROBE / self._window
            self._window = min(float(s.max), self._window + step)
        self._limit = max(s.min, int(self._window))

    def open_to(self, limit: float) -> None:
        """Raise the window to ``limit`` while no loss has been seen (still in slow start).

        When a rate limit is known, the slots a paced stream needs are rate x latency; growing
        to that one success at a time would leave the first round trips below the rate.
        """
        if self._ssthresh == math.inf and limit > self._window:
            self._window = min(float(self._settings.max), limit)
            self._limit = max(self._settings.min, int(self._window))

    def cap(self, ceiling: int) -> None:
        self._settings = AdaptiveConcurrency(
            initial=min(self._settings.initial, ceiling),
            min=min(self._settings.min, ceiling),
            max=min(self._settings.max, ceiling),
            decrease_factor=self._settings.decrease_factor,
            utilisation_to_grow=self._settings.utilisation_to_grow,
        )
        self._window = min(self._window, float(ceiling))
        self._limit = max(self._settings.min, int(self._window))

    def __repr__(self) -> str:
        return (
            f"<AimdLimit {self.in_flight}/{self._limit} in flight "
            f"({self._window:.2f}, decreases {self.decreases})>"
        )


SlotLimit = FixedLimit
"""Either kind (the adaptive one is a FixedLimit whose limit moves)."""
