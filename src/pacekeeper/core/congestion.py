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
goes past it. Only the second says anything about the rate (``Lane._unexplained`` in
:mod:`pacekeeper.core.lane`).

>>> share = RefusalShare()
>>> def send(seq, refused):
...     share.sent(seq)
...     if not refused:
...         return False
...     load = share.refused(seq)
...     share.judged(seq, noise=not load)
...     return load
>>> [send(seq, seq % 20 == 0) for seq in range(1, 1001)].count(True)  # 5% at random
0
>>> any(send(seq, seq % 3 == 0) for seq in range(1001, 1041))  # then a third refused: load
True
>>> share
<RefusalShare 13/64 sends refused, baseline 0.05>
"""

from __future__ import annotations

from collections import deque

__all__ = ["CongestionDetector", "RefusalShare"]

_MOST_NOISE = 0.1
"""The most of a lane's requests a busy provider's 429s are taken to be: a higher share that
stays is a limit's (one a fifth under the pace refuses a fifth), however steady it is."""
_UNREFUSED, _REFUSED, _NOISE = 0, 1, 2


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


class RefusalShare:
    """The share of the last ``window`` requests sent that were refused (429), against the
    long-run share of those taken as noise (the baseline): :meth:`refused` says when a 429
    comes with that share risen above the baseline (capped at 10%) by ``margin``.

    Counted by the order the requests were sent, not the order their answers came: a 429
    comes back at once and a success a latency later, so among the answers, refusals run
    ahead while the pace rises (at the start, all of the first second's answers with 1.5-s
    latencies: 12 of 45 busy 429s read as load at 8%). Unanswered sends count as refusing
    nothing until they are. Only the 429s taken as noise join the baseline
    (:meth:`judged`): counted there, a limit that refused half of a lane's pace raised the
    baseline to a third within seconds, and its refusals then read as noise. Two at least:
    one 429 alone is never load. The baseline starts as a window of sends with no 429
    (``prior``)."""

    __slots__ = ("_baseline", "_first_seq", "_flags", "_margin", "_min_events", "_refused")

    def __init__(
        self,
        *,
        window: int = 64,
        min_events: int = 2,
        margin: float = 0.1,
        baseline_alpha: float = 1 / 256,
        prior: int = 64,
    ) -> None:
        self._flags: deque[int] = deque(maxlen=window)
        self._first_seq = 0
        """The admission number of the oldest send in :attr:`_flags`."""
        self._refused = 0
        self._min_events = min_events
        self._margin = margin
        self._baseline = _Ewma(baseline_alpha, prior)

    @property
    def baseline(self) -> float:
        """The long-run share of sends refused as noise."""
        return self._baseline.value

    def sent(self, seq: int) -> None:
        """A request admitted as number ``seq`` (one more than the last)."""
        flags = self._flags
        if not flags:
            self._first_seq = seq
        elif len(flags) == flags.maxlen:
            oldest = flags[0]  # pushed out by the append below
            self._first_seq += 1
            if oldest:
                self._refused -= 1
            self._baseline.add(1.0 if oldest == _NOISE else 0.0)
        flags.append(_UNREFUSED)

    def refused(self, seq: int) -> bool:
        """A 429 to the request admitted as ``seq``: True when the share of refusals among the
        last sends has risen above the baseline (load, not noise)."""
        flags = self._flags
        i = seq - self._first_seq
        if 0 <= i < len(flags) and flags[i] == _UNREFUSED:
            flags[i] = _REFUSED
            self._refused += 1
        if self._refused < self._min_events or flags.maxlen is None:
            return False
        # The window's own noise counts as soon as it is judged (the long-run share learns
        # it only as its sends leave the window: 7 busy 429s in 64 sends read as load at 8%
        # while the baseline still read 0).
        noise = sum(1 for flag in flags if flag == _NOISE) / flags.maxlen
        baseline = min(max(self._baseline.value, noise), _MOST_NOISE)
        # Above the baseline by the margin, not twice it (as overload answers): a limit a
        # fifth under the pace refuses a steady fifth, which twice a floor of 10% let through.
        return self._refused / flags.maxlen > baseline + self._margin

    def judged(self, seq: int, *, noise: bool) -> None:
        """What the 429 to ``seq`` was taken as: noise joins the baseline as the send leaves
        the window; a limit's refusal counts there as a send refused by no noise."""
        i = seq - self._first_seq
        if noise and 0 <= i < len(self._flags) and self._flags[i] == _REFUSED:
            self._flags[i] = _NOISE

    def __repr__(self) -> str:
        return (
            f"<RefusalShare {self._refused}/{len(self._flags)} sends refused, "
            f"baseline {self.baseline:.2f}>"
        )


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
