"""What a lane's answers take: the mean (for how many slots a rate needs) and whether they swell.

Two questions, two numbers:

* **How many requests must be in flight to keep a rate?** Little's law: rate x mean latency.
  :attr:`LatencyTracker.mean_s` is an exponentially weighted mean of successful answers.
* **Is the upstream queueing our requests?** A self-hosted server (vLLM, TGI, Ollama) never
  answers 429: past its capacity, requests wait in its queue and every answer takes longer.
  :attr:`LatencyTracker.base_s` is the median of a window of answers at the lowest load seen
  (the latency of an unloaded server) and :meth:`LatencyTracker.swollen` says whether the latest
  window's median is well above it. Medians of windows, not single answers: an LLM's latency
  swings with the length of each answer, and the minimum of single answers would be far below
  what any window of real traffic shows.

>>> tracker = LatencyTracker()
>>> for _ in range(32):
...     tracker.observe(1.0, in_flight=10)
>>> tracker.mean_s, tracker.base_s, tracker.swollen(1.5)
(1.0, 1.0, False)
>>> for _ in range(16):
...     tracker.observe(2.0, in_flight=20)
>>> tracker.swollen(1.5), tracker.ratio
(True, 2.0)

With 40 in flight and answers twice as slow, the server serves about 20 at once:

>>> for _ in range(16):
...     tracker.observe(2.0, in_flight=40)
>>> tracker.capacity()
20.0
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["LatencyTracker"]

_MEAN_ALPHA = 0.05
_JUDGE_EVERY = 4  # recompute the window's median every this many answers
_SAME_LOAD = 1.25  # windows with up to this many times the lowest load in flight
_UNLOADED = 1.15  # a window median within this of the unloaded latency: no queue at its load
_UNSETTLED = 1.3  # while the base is unsettled, window medians up to this much above it join it
_CONFIRMING = 3  # judgments (8 answers apart end to end) that settle a base or confirm a queue


class LatencyTracker:
    """Mean latency of successful answers, and the median of a recent window against its lowest."""

    __slots__ = (
        "_base_windows",
        "_in_flight",
        "_judged_ratios",
        "_n",
        "_recent",
        "base_in_flight",
        "base_s",
        "in_flight",
        "mean_s",
        "median_s",
    )

    def __init__(self, *, window: int = 16) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self._in_flight: deque[int] = deque(maxlen=window)
        self._n = 0
        self.in_flight = 0
        """The median number in flight when the last window's requests were sent."""
        self.mean_s = 0.0
        self.median_s = math.nan
        """The median of the last window (NaN until a window is full)."""
        self.base_s = math.inf
        """The latency of the unloaded upstream: the mean window median at the lowest load."""
        self.base_in_flight = 0
        self._base_windows = 0
        """The median number in flight of the window that set :attr:`base_s`."""
        self._judged_ratios: deque[float] = deque(maxlen=_CONFIRMING)
        """The last few judged ratios (a swelling against an unsettled base must hold in
        all of them)."""

    def observe(self, latency_s: float, in_flight: int = 0, *, judged: bool = True) -> None:
        """One successful answer, and how many were in flight when its request was sent.
        ``judged`` False: it counts in the mean only (it was sent under a load that is gone)."""
        self._n += 1
        self.mean_s += max(_MEAN_ALPHA, 1.0 / self._n) * (latency_s - self.mean_s)
        if not judged:
            return
        recent = self._recent
        recent.append(latency_s)
        self._in_flight.append(in_flight)
        if len(recent) == recent.maxlen and self._n % _JUDGE_EVERY == 0:
            ordered = sorted(recent)
            self.median_s = ordered[len(ordered) // 2]
            self.in_flight = sorted(self._in_flight)[len(ordered) // 2]
            # The unloaded latency is the mean of the window medians at the lowest load seen.
            # While it rests on a single reading, windows at higher loads that show no queue
            # (up to 1.3 times slower) settle it too: one window's median can run a fifth low,
            # and every ordinary window would then read as queueing. Once settled, only the
            # lowest load moves it: a controller that holds a few requests past a server's
            # capacity gets answers ~10% slower window after window, and counting those as
            # unloaded lifted the base (30% in a minute), so that a longer queue was tolerated
            # still.
            load = self.in_flight
            if not self.known or load < self.base_in_flight / _SAME_LOAD:
                self.base_s, self.base_in_flight, self._base_windows = self.median_s, load, 1
            elif load <= self._same_load_top() or (
                not self._base_settled and self.median_s <= _UNSETTLED * self.base_s
            ):
                self.base_in_flight = min(self.base_in_flight, load)
                self._base_windows += 1
                self.base_s += (self.median_s - self.base_s) / self._base_windows
            self._judged_ratios.append(self.ratio)

    def restart_window(self) -> None:
        """Judge the next window from answers that come from now on."""
        self._recent.clear()
        self._in_flight.clear()
        self._judged_ratios.clear()
        self.median_s = math.nan
        self.in_flight = 0

    def capacity(self) -> float:
        """How many requests the upstream serves at once, if it queues the rest: with n in
        flight and answers ``ratio`` times slower than unloaded, about n / ratio (Little's law
        on a server that works through its queue at a constant rate). Inf until swollen."""
        ratio = self.ratio
        return self.in_flight / ratio if ratio > 1.0 and self.in_flight else math.inf

    @property
    def known(self) -> bool:
        """Whether at least one window of answers has been judged."""
        return self.base_s != math.inf

    def swollen(self, tolerance: float) -> bool:
        """Whether the recent median exceeds ``tolerance`` times the unloaded latency, with
        more in flight than when that was measured. Queueing makes answers slower as more are
        in flight; answers that are slower with no more in flight are noise (their lengths
        vary), and the lowest of many noisy medians runs below the typical one. Against a base
        not yet settled, the swelling must hold over the last few judgments: one reading can
        be a few long answers (believed at once, it cut a window from 20 to 9 on a server
        serving 21)."""
        if not self.known or self.in_flight <= self._same_load_top():
            return False
        ratios = self._judged_ratios
        if self._base_settled:
            return self.ratio > tolerance
        return len(ratios) == ratios.maxlen and min(ratios) > tolerance

    @property
    def _base_settled(self) -> bool:
        """Whether the base rests on more than one window's reading (judgments come every
        few answers, so consecutive ones share most of their answers)."""
        return self._base_windows >= _CONFIRMING

    def _same_load_top(self) -> float:
        return max(_SAME_LOAD * self.base_in_flight, self.base_in_flight + 1.0)

    @property
    def ratio(self) -> float:
        """The recent median over the unloaded latency (1.0 until known)."""
        return self.median_s / self.base_s if self.known and self.base_s > 0 else 1.0

    def __repr__(self) -> str:
        return (
            f"<LatencyTracker mean {self.mean_s:.3f}s median {self.median_s:.3f}s "
            f"base {self.base_s:.3f}s>"
        )
