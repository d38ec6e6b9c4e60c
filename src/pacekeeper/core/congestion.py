"""Telling load from noise: is the share of overload answers above what this upstream always sends?

A single 503 or 529 says little: upstreams fail at random (a few percent of 500/502/503/529 is
ordinary for LLM providers and gateways), and cutting the concurrency limit on each one walks an
adaptive limit down to nothing (x0.7 per round trip, with 8% random errors, ends at 2). Evidence
of load is a *rise* in the share of overload outcomes (503, 529, timeouts) above the baseline
this upstream shows anyway.

:class:`CongestionDetector` keeps two views of the same stream of outcomes: the last ``window``
outcomes, and a slow moving average (the baseline). It reports congestion when the recent window
holds at least ``min_events`` overload outcomes and their share exceeds twice the baseline plus
``margin``. With 8% random overload the threshold sits near 26%, which 32 outcomes pass by
chance about once in 300 windows; a real overload (half the answers 503) passes it at once.

>>> detector = CongestionDetector()
>>> [detector.observe(overload=(i % 12 == 0)) for i in range(300)].count(True)  # 8% random
0
>>> any(detector.observe(overload=True) for _ in range(10))  # a burst of overload: load
True
>>> detector
<CongestionDetector recent 11/32 baseline 0.12>
"""

from __future__ import annotations

from collections import deque

__all__ = ["CongestionDetector"]


class CongestionDetector:
    """Counts overload outcomes; says when their recent share rises above the baseline."""

    __slots__ = ("_baseline", "_margin", "_min_events", "_recent", "_recent_overload")

    def __init__(
        self,
        *,
        window: int = 32,
        min_events: int = 4,
        margin: float = 0.1,
        baseline_alpha: float = 1 / 256,
    ) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self._recent_overload = 0
        self._min_events = min_events
        self._margin = margin
        self._baseline = _Ewma(baseline_alpha)

    @property
    def baseline(self) -> float:
        """The long-run share of overload outcomes (the noise floor)."""
        return self._baseline.value

    def observe(self, *, overload: bool) -> bool:
        """Record one outcome; True when the recent window now says *load*."""
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self._recent_overload -= 1
        recent.append(overload)
        if overload:
            self._recent_overload += 1
        # The baseline is judged before this outcome joins it, so a burst is measured against
        # the noise that came before it, not against itself.
        baseline = self._baseline.value
        self._baseline.add(1.0 if overload else 0.0)
        if not overload or self._recent_overload < self._min_events:
            return False
        return self._recent_overload / len(recent) > 2.0 * baseline + self._margin

    def __repr__(self) -> str:
        return (
            f"<CongestionDetector recent {self._recent_overload}/{len(self._recent)} "
            f"baseline {self.baseline:.2f}>"
        )


class _Ewma:
    """An exponentially weighted mean that starts as a plain mean (no bias towards zero)."""

    __slots__ = ("_alpha", "_n", "value")

    def __init__(self, alpha: float) -> None:
        self._alpha = alpha
        self._n = 0
        self.value = 0.0

    def add(self, x: float) -> None:
        self._n += 1
        weight = max(self._alpha, 1.0 / self._n)
        self.value += weight * (x - self.value)
