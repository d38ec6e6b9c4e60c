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
...     if not refused:
...         return False
...     load = share.refused(seq, latest=seq)
...     share.judged(seq, noise=not load)
...     return load
>>> [send(seq, seq % 20 == 0) for seq in range(1, 1001)].count(True)  # 5% at random
0
>>> any(send(seq, seq % 3 == 0) for seq in range(1001, 1041))  # then a third refused: load
True
>>> share
<RefusalShare 13 of the last 64 sent refused, baseline 0.09>
"""

from __future__ import annotations

from collections import deque

__all__ = ["CongestionDetector", "RefusalShare"]

_MOST_NOISE = 0.1
"""The most of a lane's requests a busy provider's 429s are taken to be: a higher share that
stays is a limit's (one a fifth under the pace refuses a fifth), however steady it is."""


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

    def observe(self, overload: bool) -> bool:
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
    share of the last ``long`` sent that were refused as noise (the baseline): :meth:`refused`
    says when a 429 comes with that share risen above the baseline (at most 10%) by
    ``margin``.

    Counted by the order the requests were sent (their admission numbers), not the order
    their answers came: a 429 comes back at once and a success a latency later, so among the
    answers, refusals run ahead while the pace rises (at the start, with 1.5-s answers, 12 of
    the first 45 answers were busy 429s at 8%). Unanswered sends count as refusing nothing
    until they are. Only the 429s taken as noise make the baseline (:meth:`judged`): counted
    there, a limit that refused half of a lane's pace raised the baseline to a third within
    seconds, and its refusals then read as noise. The window's own noise counts at once (a
    baseline that learned it only as its sends left the window read 7 busy 429s in 64 sends,
    8%, as load). Two at least: one 429 alone is never load. Until ``long`` requests are sent,
    the baseline is over ``prior`` at least. Nothing is counted per request sent: the
    admission numbers say how many went between refusals."""

    __slots__ = (
        "_judged",
        "_latest",
        "_long",
        "_margin",
        "_min_events",
        "_prior",
        "_window",
    )

    def __init__(
        self,
        *,
        window: int = 64,
        long: int = 256,
        min_events: int = 2,
        margin: float = 0.1,
        prior: int = 64,
    ) -> None:
        self._judged: deque[tuple[int, bool]] = deque()
        """The 429s to the last ``long`` requests sent: (admission number, noise)."""
        self._latest = 0
        self._window = window
        self._long = long
        self._min_events = min_events
        self._margin = margin
        self._prior = prior

    @property
    def baseline(self) -> float:
        """The share of the last ``long`` requests sent that were refused as noise."""
        since = self._latest - self._long
        noise = sum(1 for seq, is_noise in self._judged if is_noise and seq > since)
        return noise / max(min(self._latest, self._long), self._prior)

    def refused(self, seq: int, *, latest: int, after: int = 0) -> bool:
        """A 429 to the request admitted as number ``seq``, the latest admitted being number
        ``latest``: True when the share of refusals among the last ``window`` sent has risen
        above the baseline (load, not noise). Refusals of requests numbered ``after`` or
        before are not counted in that share (a cut answered them)."""
        self._latest = latest
        judged = self._judged
        while judged and judged[0][0] <= latest - self._long:
            judged.popleft()
        since = max(latest - self._window, after)
        refused = noise = 0
        for judged_seq, is_noise in judged:
            if judged_seq > since:
                refused += 1
                noise += is_noise
        if seq > since:
            refused += 1
        if refused < self._min_events:
            return False
        baseline = min(max(self.baseline, noise / self._window), _MOST_NOISE)
        # Above the baseline by the margin, not twice it (as overload answers): a limit a
        # fifth under the pace refuses a steady fifth, which twice a floor of 10% let through.
        return refused / self._window > baseline + self._margin

    def judged(self, seq: int, *, noise: bool) -> None:
        """What the 429 to ``seq`` was taken as: noise makes the baseline; a limit's refusal
        counts in the window's share alone."""
        self._judged.append((seq, noise))

    def noise_after_all(self, seq: int) -> None:
        """The 429 to ``seq``, judged a limit's, was noise after all (what was learned from it
        later was refuted): it makes the baseline."""
        judged = self._judged
        for i, (judged_seq, _) in enumerate(judged):
            if judged_seq == seq:
                judged[i] = (seq, True)
                return

    def __repr__(self) -> str:
        since = self._latest - self._window
        refused = sum(1 for seq, _ in self._judged if seq > since)
        return (
            f"<RefusalShare {refused} of the last {self._window} sent refused, "
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
