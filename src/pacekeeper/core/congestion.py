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

:class:`RefusalShare` does the same for 429s: a provider whose shared capacity is busy answers
a steady few percent of 429s whatever the client's pace (OpenAI's "overloaded" 429s, llmock's
``--error-rate 429``), while a limit the pace outruns refuses more of it the further the pace
goes past it. Only the second says anything about the rate (:meth:`Lane._unexplained
<pacekeeper.core.lane.Lane._unexplained>`).

>>> share = RefusalShare()
>>> [share.observe(refused=(i % 20 == 0)) for i in range(400)].count(True)  # 5% at random
0
>>> any(share.observe(refused=(i % 3 == 0)) for i in range(24))  # a third refused: load
True
"""

from __future__ import annotations

from collections import deque

__all__ = ["CongestionDetector", "RefusalShare"]


class _ShareOverBaseline:
    """The share of one kind of outcome among the last ``window``, against its long-run
    baseline: :meth:`_observe` says when the recent share rises above what this upstream
    always sends (at least ``min_events`` of them, above twice the baseline plus ``margin``)."""

    __slots__ = ("_baseline", "_margin", "_min_events", "_recent", "_recent_events")

    def __init__(
        self,
        *,
        window: int,
        min_events: int,
        margin: float,
        baseline_alpha: float,
        prior: int = 0,
    ) -> None:
        self._recent: deque[bool] = deque(maxlen=window)
        self._recent_events = 0
        self._min_events = min_events
        self._margin = margin
        self._baseline = _Ewma(baseline_alpha, prior)

    @property
    def baseline(self) -> float:
        """The long-run share of these outcomes (the noise floor)."""
        return self._baseline.value

    @property
    def recent_share(self) -> float:
        """Their share of the last ``window`` outcomes (0.0 before any)."""
        return self._recent_events / len(self._recent) if self._recent else 0.0

    def _observe(self, event: bool) -> bool:
        recent = self._recent
        if len(recent) == recent.maxlen and recent[0]:
            self._recent_events -= 1
        recent.append(event)
        if event:
            self._recent_events += 1
        # The baseline is judged before this outcome joins it, so a burst is measured against
        # the noise that came before it, not against itself.
        baseline = self._baseline.value
        self._baseline.add(1.0 if event else 0.0)
        if not event or self._recent_events < self._min_events:
            return False
        return self._recent_events / len(recent) > 2.0 * baseline + self._margin

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} recent {self._recent_events}/{len(self._recent)} "
            f"baseline {self.baseline:.2f}>"
        )


class CongestionDetector(_ShareOverBaseline):
    """Counts overload outcomes; says when their recent share rises above the baseline."""

    __slots__ = ()

    def __init__(
        self,
        *,
        window: int = 32,
        min_events: int = 4,
        margin: float = 0.1,
        baseline_alpha: float = 1 / 256,
    ) -> None:
        super().__init__(
            window=window, min_events=min_events, margin=margin, baseline_alpha=baseline_alpha
        )

    def observe(self, *, overload: bool) -> bool:
        """Record one outcome; True when the recent window now says *load*."""
        return self._observe(overload)


class RefusalShare(_ShareOverBaseline):
    """Counts 429s among all outcomes; says when their recent share rises above the
    baseline: refusals that grow with the pace, not a busy provider's steady background.
    Two at least: one 429 alone is never load by its share (the first of a run reads as a
    share of one in however few answers came before it). The baseline starts as a window of
    outcomes with no 429 (``prior``): as a plain mean, a 429 among the first answers set it
    at a third or a half, and the refusals of a limit outrun at the start read as noise."""

    __slots__ = ()

    def __init__(
        self,
        *,
        window: int = 32,
        min_events: int = 2,
        margin: float = 0.1,
        baseline_alpha: float = 1 / 256,
        prior: int = 32,
    ) -> None:
        super().__init__(
            window=window,
            min_events=min_events,
            margin=margin,
            baseline_alpha=baseline_alpha,
            prior=prior,
        )

    def observe(self, *, refused: bool) -> bool:
        """Record one outcome (``refused``: a 429); True when this 429 comes with the recent
        share risen above the baseline."""
        return self._observe(refused)


class _Ewma:
    """An exponentially weighted mean that starts as a plain mean (no bias towards zero), or
    as one of ``prior`` zeros and what came since."""

    __slots__ = ("_alpha", "_n", "value")

    def __init__(self, alpha: float, prior: int = 0) -> None:
        self._alpha = alpha
        self._n = prior
        self.value = 0.0

    def add(self, x: float) -> None:
        self._n += 1
        weight = max(self._alpha, 1.0 / self._n)
        self.value += weight * (x - self.value)
