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
  what any window of real traffic shows. A window is 16 requests in the order they were sent,
  judged once its median is known (a request still unanswered takes at least its age), not the
  last 16 answers back: early in a run those are the short ones of what was sent, and an
  unloaded latency read from them runs low (ordinary answers then read as a queue). Slow
  start's first window, sent at loads 1 to 16, is itself queued by a server smaller than
  that (Ollama serves one at a time): its latencies grow with the load each was sent at, and
  the unloaded latency is read as a FIFO server of the capacity that fits would have
  answered them unqueued (:func:`_unqueued_median`).

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

import bisect
import math
from collections import deque
from collections.abc import Collection
from itertools import islice

__all__ = ["LatencyTracker"]

_MEAN_ALPHA = 0.05
_MEAN_SETTLES = 20  # answers after which the mean weighs each new one by _MEAN_ALPHA (1 / 20)
_JUDGE_EVERY = 4  # windows start this many sends apart, tried every this many answers
_SAME_LOAD = 1.25  # windows with up to this many times the lowest load in flight
_UNLOADED = 1.15  # a window median within this of the unloaded latency: no queue at its load
_UNSETTLED = 1.3  # while the base is unsettled, window medians up to this much above it join it
_CONFIRMING = 3  # judgments (8 sends apart end to end) that settle a base or confirm a queue
_HELD_OPEN = 8  # windows' worth of answers kept while a window waits for its requests
_REFUTING = 4  # windows at no more than the capacity a cut implied, that judge it
_STILL_SWOLLEN = 1.2  # their mean ratio from which no queue explains them
_READ_UNLOADED = 1.05  # a window this close to the base showed no queue at its load
_SPREAD = 2  # a window sent at loads this far apart may show a queue by load alone
_RISES_WITH_LOAD = 1.2  # a base window whose higher-load half answers this much slower queued
_READ_HIGH = 0.87  # windows this much faster than the base, at no less load: it was read high
_FITS_A_QUEUE = 0.7  # ... if a queue's latencies explain its spread this much better

_Order = tuple[float, float]
"""Where a request stands in send order: its send time, then the order its answer came in
(an unanswered request sorts after the answered ones sent at the same time)."""
_UNANSWERED = -1  # in place of the number in flight at send: not known for unanswered requests


class LatencyTracker:
    """Mean latency of successful answers, and the median of a recent window against its lowest."""

    __slots__ = (
        "_answered",
        "_base_windows",
        "_below_n",
        "_below_sum",
        "_cut",
        "_cut_once",
        "_judged_ratios",
        "_last_answer_at",
        "_n",
        "_next_window_at",
        "_size",
        "_unloaded_top",
        "base_in_flight",
        "base_s",
        "in_flight",
        "mean_s",
        "median_s",
        "refuted_load",
    )

    def __init__(self, *, window: int = 16) -> None:
        self._size = window
        self._answered: list[tuple[_Order, float, int]] = []
        """(send order, latency, in flight at send) of the answers to requests sent since the
        next window's first, in send order."""
        self._next_window_at = -math.inf
        """When the first request of the next window to judge was sent."""
        self._last_answer_at = 0.0
        self._n = 0
        self.in_flight = 0
        """The median number in flight when the last window's requests were sent."""
        self.mean_s = 0.0
        self.median_s = math.nan
        """The median of the last window (NaN until a window is judged)."""
        self.base_s = math.inf
        """The latency of the unloaded upstream: the mean window median at the lowest load."""
        self.base_in_flight = 0
        """The median number in flight of the windows that set :attr:`base_s`."""
        self._base_windows = 0
        self._below_n = 0
        """How many of the latest judgments in a row read well under the base (at no less
        load than it was read at), and the sum of their medians."""
        self._below_sum = 0.0
        self._judged_ratios: deque[float] = deque(maxlen=_CONFIRMING)
        """The last few judged ratios (a swelling against an unsettled base must hold in
        all of them)."""
        self._cut: tuple[float, int, float, int] | None = None
        """Of a series of cuts on swollen answers: the most capacity any implied, the highest
        load that swelled, and the sum and number of ratios judged since at no more in
        flight than that capacity."""
        self._unloaded_top = 0
        """The highest load of a window that read unloaded against the current base before
        the first cut: no queue there, so later windows at no more in flight that still read
        swollen refute a cut too. Not after a cut: the load then sits near the capacity,
        where one window in a real queue reads unloaded by chance now and then (1.04 at 22-23
        on a server of 18), and the cut was refuted."""
        self._cut_once = False
        """Swollen answers cut the window once already: the load now sits near the
        capacity, where one window's noise reads as a swelling."""
        self.refuted_load: int | None = None
        """The load of a swelling that later answers refuted (the unloaded latency was read
        again): no queue there after all. The caller takes it back and clears this."""

    def observe(
        self,
        latency_s: float,
        in_flight: int = 0,
        sent_at: float | None = None,
        unanswered_sent_at: Collection[float] = (),
        judged: bool = True,
    ) -> None:
        """One successful answer, how many were in flight when its request was sent, and when
        (without ``sent_at``: just after the previous answer came). ``unanswered_sent_at``:
        when each request still unanswered was sent, in send order (requests that failed are
        not in it; this one may be); a window is judged only once they cannot change its
        median. ``judged`` False: it counts in the mean only (it was sent under a load that is
        gone)."""
        self._n += 1
        weight = 1.0 / self._n if self._n < _MEAN_SETTLES else _MEAN_ALPHA  # no call: hot path
        self.mean_s += weight * (latency_s - self.mean_s)
        if sent_at is None:
            sent_at = self._last_answer_at
        now = sent_at + latency_s
        self._last_answer_at = now if now > self._last_answer_at else self._last_answer_at
        if not judged or sent_at < self._next_window_at:
            return
        answered = self._answered
        entry = ((sent_at, self._n), latency_s, in_flight)
        # Most answers come back after those sent before them: one comparison, not a bisection
        # of nested tuples.
        if not answered or answered[-1] < entry:
            answered.append(entry)
        else:
            bisect.insort(answered, entry)
        if self._n % _JUDGE_EVERY:
            return  # a window is tried every few answers: each try sorts one
        if len(answered) > _HELD_OPEN * self._size:
            # Requests that never answer (hung, with no timeout) hold a window open: judge on
            # from the latest answers rather than keep every answer since.
            self._next_window_at = answered[-self._size][0][0]
            del answered[: -self._size]
        # Another window only while a window's worth has answered past the last one: a try
        # that fails costs a dozen calls, on every few answers.
        while (
            self._judge_next_window(unanswered_sent_at, sent_at, now)
            and len(answered) >= self._size
        ):
            pass

    def _judge_next_window(
        self, unanswered_sent_at: Collection[float], sent_at: float, now: float
    ) -> bool:
        """Judge the window of requests sent from :attr:`_next_window_at` on, if its median is
        known: every window in send order, each once, when enough of it has answered. Windows
        of the first answers back would be biased: early in a run those are the short ones of
        what was sent, and the unloaded latency would read low (ordinary windows then read as
        queueing)."""
        size = self._size
        answered = self._answered
        if len(answered) <= size // 2:
            return False  # more than half of any window is still unanswered
        first_at = self._next_window_at
        # Comprehensions and C iterators, not generators: this runs on every few answers, and
        # the per-request budget of calls (tests/transports/test_cost_budget.py) counts each
        # generator step.
        pending = list(islice(filter(first_at.__le__, unanswered_sent_at), size + 1))
        if sent_at in pending:  # the request just answered, if the caller still counts it
            pending.remove(sent_at)
        if len(answered) + len(pending) < size:
            return False
        answered_in, pending_in, step = _window_split(answered, pending, size)
        window = answered[:answered_in]
        known = sorted([latency_s for _, latency_s, _ in window])
        middle = size // 2
        if answered_in <= middle:
            return False
        median_s = known[middle]
        # An unanswered request takes at least its age: once the youngest is older than the
        # median of the answered, the median of them all is that one.
        if pending_in and median_s > now - pending[pending_in - 1]:
            return False
        loads = sorted([n for _, _, n in window])
        load = loads[answered_in // 2]
        if loads[-1] >= _SPREAD * loads[0] and (
            self.base_s == math.inf or load < self.base_in_flight / _SAME_LOAD
        ):  # `known` and the like are calls, on every judgment
            answers = [(n, s) for _, s, n in window]
            self._judge_base_window(answers, median_s, load)
        else:
            self._judge(median_s, load)
        # The next window starts a few sends on, and at a later send time than this one's
        # first (requests sent at one instant are judged together).
        self._next_window_at = max(step, math.nextafter(first_at, math.inf))
        start = ((self._next_window_at, -math.inf), -math.inf, 0)  # before any sent then
        del answered[: bisect.bisect_left(answered, start)]
        return True

    def _judge_base_window(
        self, answers: list[tuple[int, float]], median_s: float, load: int
    ) -> None:
        """Judge a window that sets the unloaded latency and was sent at loads that differ
        (slow start's first: 1 to 16), from ``(in flight at send, latency)`` of its answers."""
        base_s, unqueued = _unqueued_median(answers, median_s)
        self._judge(base_s, load)
        if base_s < median_s:
            # Latency rose with load as a queue's does: the queue is as plain as against a
            # settled base (judged at once, the lane need not wait three more judgments, a
            # round trip of the whole queue on a small server), and only loads up to the
            # capacity that fit are unloaded (not the window's median load: taken as read
            # unloaded, 7 on a server of 3 refuted the start's cut and held 10 in flight).
            self.base_in_flight = self._unloaded_top = unqueued
            self._base_windows = _CONFIRMING
            self.median_s = median_s
            self._judged_ratios.clear()
            self._judged_ratios.append(self.ratio)

    def _judge(self, median_s: float, load: int) -> None:
        """One window's median latency and the median in flight its requests were sent at."""
        self.median_s = median_s
        self.in_flight = load
        # The unloaded latency is the mean of the window medians at the lowest load seen.
        # While it rests on a single reading, windows at higher loads that show no queue
        # (up to 1.3 times slower) settle it too: one window's median can run a fifth low,
        # and every ordinary window would then read as queueing. Once settled, only the
        # lowest load moves it: a controller that holds a few requests past a server's
        # capacity gets answers ~10% slower window after window, and counting those as
        # unloaded lifted the base (30% in a minute), so that a longer queue was tolerated
        # still.
        if not self.known or load < self.base_in_flight / _SAME_LOAD:
            self.base_s, self.base_in_flight, self._base_windows = median_s, load, 1
            self._unloaded_top = load
        elif load <= self._same_load_top() or (
            not self._base_settled and median_s <= _UNSETTLED * self.base_s
        ):
            self.base_in_flight = min(self.base_in_flight, load)
            self._base_windows += 1
            self.base_s += (median_s - self.base_s) / self._base_windows
        ratio = self.ratio
        if ratio <= _READ_UNLOADED and load > self._unloaded_top and not self._cut_once:
            self._unloaded_top = load
        cut = self._cut
        # Checked too at no more in flight than a load that read unloaded: after slow start's
        # cut the window sits above the capacity the cut implied (at 1.1 times it and growing),
        # and a base read a fifth low held servers of 18 and 15 that never queued at 15-16 and
        # 9-11, where the check never looked.
        if cut is not None and load <= max(cut[0], self._unloaded_top):
            self._cut = cut = (cut[0], cut[1], cut[2] + ratio, cut[3] + 1)
            if cut[3] >= _REFUTING:
                self._cut = None
                if cut[2] / cut[3] >= _STILL_SWOLLEN:
                    # Answers still swollen with no more in flight than the capacity the
                    # swelling implied: no queue explains them, so the unloaded latency was
                    # read low (the first windows' medians can run a fifth low; ordinary
                    # answers then read as a queue, and cut after cut held a server at half
                    # its capacity). Read it again here; the loads that swelled were no queue.
                    self.refuted_load = cut[1]
                    self.base_s, self.base_in_flight, self._base_windows = median_s, load, 1
                    self._unloaded_top = load
                    self._judged_ratios.clear()
                    ratio = self.ratio
        # A queue only adds latency: windows answered well under the base with no fewer in
        # flight than it was read at show it was read high (its first windows drawn long:
        # 2.37 s where answers took 1.84, so a queue read 1.3 only once 1.7 times slower, and
        # slow start ran on to 1.65 times a server's capacity before the first cut). Read it
        # again from them, as the refuted cut above does for a base read low.
        # Counted in two numbers, not a list: no call on a judgment (the per-request budget of
        # calls counts them).
        if ratio < _READ_HIGH and load >= self.base_in_flight:
            self._below_n += 1
            self._below_sum += median_s
            if self._below_n >= _CONFIRMING:
                self.base_s = self._below_sum / self._below_n
                self._base_windows = max(self._base_windows, _CONFIRMING)
                self._below_n, self._below_sum = 0, 0.0
                self._judged_ratios.clear()
                ratio = self.ratio
        else:
            self._below_n, self._below_sum = 0, 0.0
        self._judged_ratios.append(ratio)

    def restart_window(self, *, cut: bool = False) -> None:
        """Judge the next window from requests sent from now on (the time of the latest
        answer). ``cut``: the swelling last judged cut the window. With n in flight and
        answers r times slower, a queue means a capacity of about n / r: windows sent with
        no more in flight than that (the most any of a series of cuts implied), or than a
        load that read unloaded before the first cut, must show no queue, and when they still
        do, :attr:`refuted_load` is the highest load of the series."""
        self._cut_once = self._cut_once or cut
        if cut and self.known and self.in_flight:
            capacity = self.in_flight / self.ratio
            old = self._cut
            if old is None:
                self._cut = (capacity, self.in_flight, 0.0, 0)
            else:
                self._cut = (max(old[0], capacity), max(old[1], self.in_flight), old[2], old[3])
        self._next_window_at = self._last_answer_at
        self._answered.clear()
        self._judged_ratios.clear()
        self._below_n, self._below_sum = 0, 0.0
        self.median_s = math.nan
        self.in_flight = 0

    def capacity(self) -> float:
        """How many requests the upstream serves at once, if it queues the rest: with n in
        flight and answers ``ratio`` times slower than unloaded, about n / ratio (Little's law
        on a server that works through its queue at a constant rate). Inf until swollen."""
        ratio = self.ratio
        return self.in_flight / ratio if ratio > 1.0 and self.in_flight else math.inf

    @property
    def mean_known(self) -> bool:
        """Whether :attr:`mean_s` rests on a window's worth of answers (the unloaded latency
        comes later: its window must have answered in full)."""
        return self._n >= self._size

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
        serving 21). So too after a first cut: the load then sits near the capacity, where
        one window's median runs 1.3 times a base read a seventh low now and then (cut on
        each such reading, servers of 18 and 11 were held at 13.1 and 8.7; the first cut,
        slow start's queue, still comes at once)."""
        if not self.known or self.in_flight <= self._same_load_top():
            return False
        ratios = self._judged_ratios
        if self._base_settled and not self._cut_once:
            return self.ratio > tolerance
        return len(ratios) == ratios.maxlen and min(ratios) > tolerance

    @property
    def _base_settled(self) -> bool:
        """Whether the base rests on more than one window's reading (judgments come every
        few answers, so consecutive ones share most of their answers)."""
        return self._base_windows >= _CONFIRMING

    def loaded(self, in_flight: int) -> bool:
        """Whether ``in_flight`` is past the load the unloaded latency was read at."""
        return self.known and in_flight > self._same_load_top()

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


def _window_split(
    answered: list[tuple[_Order, float, int]], pending: list[float], size: int
) -> tuple[int, int, float]:
    """The window: the first ``size`` requests in send order of the ``answered`` (in send
    order) and the unanswered sent at ``pending`` (sorted here), an unanswered one after
    the answered sent at the same time. Returns how many of each it holds (the first of
    each list) and when its request number ``_JUDGE_EVERY`` was sent (where the next window
    starts). A merge of the two sorted lists: sorting them together compared nested tuples,
    about a hundred times per window, the larger part of the latency tracker's work."""
    pending.sort()
    answered_in = pending_in = 0
    step_index = min(_JUDGE_EVERY, size - 1)
    step = math.nan
    left, answers = len(pending), len(answered)
    for index in range(size):
        if pending_in < left and (
            answered_in == answers or pending[pending_in] < answered[answered_in][0][0]
        ):
            at = pending[pending_in]
            pending_in += 1
        else:
            at = answered[answered_in][0][0]
            answered_in += 1
        if index == step_index:
            step = at
    return answered_in, pending_in, step


def _unqueued_median(answers: list[tuple[int, float]], plain: float) -> tuple[float, int]:
    """The median latency of a window's answers, ``(in flight at send, latency)`` (``plain``:
    as they came, its requests still unanswered counted as the slowest), as a server
    that queues past its capacity would have answered them unqueued, and the most in flight
    it holds for. Slow start's first window is sent at loads 1, 2, ... 16: a server smaller
    than that queues most of it, and its plain median, read as the unloaded latency, held
    servers of 1, 2 and 4 at 10-37, 4.5-8 and 2-3.4 times their capacity (every later cut
    scales with the misreading, and the load never falls low enough to read it again).
    A FIFO server of capacity c answers a request sent at load n > c about n / c times
    slower, and one sent at n <= c unqueued (the one sent alone, at load 1, is never queued
    behind our own). When the higher-load half of the window answers much slower than the
    lower half, latency rises with load: each answer is scaled by min(1, c / n) for the c
    that fits best (least absolute log deviation from the scaled median). Latency that does
    not rise with load is left as it is: no queue, or one this window cannot show."""
    loads = sorted([n for n, _ in answers])
    pivot = loads[len(loads) // 2]  # the halves: sent at fewer, and at more, in flight
    low = sorted([s for n, s in answers if n < pivot])
    high = sorted([s for n, s in answers if n > pivot])
    if not low or not high or high[len(high) // 2] <= _RISES_WITH_LOAD * low[len(low) // 2]:
        return plain, loads[-1]
    logs = [(math.log(n), math.log(s)) for n, s in answers if s > 0]
    fits = []  # (misfit, median, capacity), from the largest capacity down
    for capacity in sorted({n for n, _ in answers}, reverse=True):
        top = math.log(capacity)
        scaled = sorted([s - max(0.0, n - top) for n, s in logs])
        middle = scaled[len(scaled) // 2]
        fits.append((sum([abs(s - middle) for s in scaled]), math.exp(middle), capacity))
    least = min(fits)[0]
    if least > _FITS_A_QUEUE * fits[0][0]:  # fits[0] scales nothing: the plain median
        return plain, loads[-1]  # lengths that vary, not a queue
    # The largest capacity that fits best: below the true one, the queued answers all scale
    # alike and the fit worsens only slowly (a base read low cuts a server short).
    best = next(fit for fit in fits if fit[0] <= least)
    return best[1], best[2]
