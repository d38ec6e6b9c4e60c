"""The rate a lane paces at: a stated limit is the ceiling, 429s are the evidence below it.

A stated limit (configured, or ``x-ratelimit-limit-*`` / ``anthropic-ratelimit-*-limit``) is the
ceiling to aim at, and with a backlog and no 429 the lane paces right at it. A 429 about the rate
is evidence that the ceiling is not what the server enforces just now (it halved, another client
shares the key, the statement was wrong): the rate is cut to 85%, at most once per round trip
(answers to requests sent before the cut say nothing new) and per second. A 429 that says when to
come back is waited out by the cooldown gate; under a stated ceiling it cuts only when it repeats
(a fixed window that ran dry at its end is no evidence against the ceiling). Successes while
requests wait bring it back: quickly (+10% of the ceiling per second) to just under the rate of
the last 429, slowly beyond it (+2% per second at first, faster the longer no 429 comes), never
above the ceiling, and 2% below it for every cut in the last minute (10% at most): pacing exactly
at the provider's rate keeps its bucket as empty as a burst left it, and every jitter in our
estimates is then a 429. So a stray 429 costs about two seconds at a little less than the
limit, and a halved limit settles just under its new value.

With no stated limit, nothing paces until a 429 without a hint arrives; the rate is then
*discovered*: first 90% of the highest rate accepted over one second lately, climbing within
seconds to just under what the server took in the second before it refused (answers lag what
was sent, so during a ramp-up the first is a fraction of the server's rate), then the same cuts
and recovery, with no ceiling; each cut resumes just under what the server took in the second
before that refusal, or since an earlier refusal shortly before it (the server was empty at
both: a bucket's rate net of the burst it had stored, which the second before holds too).

A rate of tokens is discovered the same way when a 429 says structurally that tokens ran out
(OpenAI's ``type: tokens``, Google's QuotaFailure naming an input-token quota) and no token
limit is stated: each success counts what it was charged
(``amount``), and the second before a refusal is measured in tokens sent less tokens refused.
Paced in requests instead, a token limit is never learned: prompts that vary tenfold make a
request rate wrong tenfold.

All methods take ``now`` and are pure arithmetic on it.

>>> rate = PacedRate()
>>> rate.state_ceiling(1200.0)
>>> rate.rpm
1200.0
>>> rate.throttled(sent_at=0.0, now=1.0)
True
>>> rate.rpm
1020.0
>>> rate.throttled(sent_at=0.5, now=1.1)  # sent before the cut: nothing new
False
>>> rate.throttled(sent_at=1.2, now=1.3, hinted=True)  # one hinted 429: the gate waits it out
False
>>> for i in range(40):  # four seconds of successes with a backlog
...     _ = rate.succeeded(now=1.1 + 0.1 * i, backlog=True)
>>> rate.rpm  # 2% below the ceiling for a minute after a cut
1176.0
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["PacedRate", "succeeded_together"]

_CUT = 0.85
_DISCOVERY_SEED = 0.9
_FAST_PER_S = 0.10  # share of the reference rate regained per second, up to the last loss
_SLOW_PER_S = 0.02  # share of the current rate gained per second beyond it
_NEAR_LOSS = 0.95
_PROBE_DOUBLES_S = 1.5  # the probe beyond the last loss speeds up by +2%/s every this long
_PLATEAU_S = 10.0  # a discovered rate probes at only _PLATEAU_PER_S for this long after a cut
_PLATEAU_PER_S = 0.005
_FEW_SENDS = 8
_FEW_SENDS_CUT = 5  # nor a cut from fewer, while the pace still doubles from such a discovery
_FAST_PROBE_PER_S = 1.0  # a discovered rate's loss shown to be noise: the probe doubles in ~1 s
_SUSTAINED_SHARE = 0.97  # a discovered rate resumes this far below what was sustained
_LAST_SECOND_SHARE = 0.92  # or this far below what was accepted in the second before a 429
_APPROACH_PER_S = 1.0  # share of the gap to just under the last loss closed per second
_MIN_RPM = 6.0
_ACCEPTED_WINDOW_S = 5.0
_MAX_STEP_S = 1.0
_MIN_CUT_SPACING_S = 1.0
_CUT_MEMORY_S = 60.0
_MARGIN_PER_CUT = 0.02
_MAX_MARGIN = 0.1
_REPEAT_S = 10.0  # a pause in successes is not time the rate was proven at
_CLIMB_MEASURED_AFTER_S = 0.25  # a refusal sent this long after a discovery measures the climb
_NET_SPAN_S = (0.4, 1.0)  # a refusal this long before another one starts its measure
_NET_HINTED_S = 6.0  # or this long if it said when to come back (the lane stopped till then)
_HELD_S = 30.0  # a pace held to fixed windows' count does not probe beyond it this long


class PacedRate:
    """The requests (or tokens) per minute a lane paces at; None while nothing is known."""

    __slots__ = (
        "_accepted",
        "_accepted_amounts",
        "_at_loss",
        "_climb_from",
        "_cut_at",
        "_cuts",
        "_discovers",
        "_fast_probe",
        "_fast_to",
        "_held",
        "_hinted_at",
        "_last_refusal_hinted",
        "_last_refused_at",
        "_last_success_at",
        "_measured_cut",
        "_probe_from",
        "_refused_sent",
        "_weighed",
        "ceiling",
        "rpm",
    )

    def __init__(self, *, discovers: bool = True) -> None:
        self._discovers = discovers
        """Whether a 429 with no stated limit discovers a rate from what was accepted: the
        requests, or the tokens (each success's ``amount``)."""
        self.ceiling: float | None = None
        """The stated limit: configured or from headers (None: not stated)."""
        self.rpm: float | None = None
        """The rate in force (per minute): at most the ceiling; None: no pacing."""
        self._at_loss = math.inf
        self._cut_at = -math.inf
        self._measured_cut = False
        self._fast_probe = False
        """Whether the probe beyond the last loss doubles about every second: a discovered
        rate whose last loss was a busy upstream's noise (:meth:`unproven`)."""
        self._fast_to = math.inf
        """Up to where it doubles."""
        self._probe_from: float | None = None
        """When the probe beyond the last loss began: the last cut or adoption."""
        self._hinted_at = -math.inf
        self._climb_from: float | None = None
        """When the request a discovery was made from was sent, while the pace climbs from
        that discovery and nothing has cut it since (None: no such climb)."""
        self._cuts: deque[float] = deque()
        self._last_success_at: float | None = None
        self._accepted: deque[float] = deque()
        self._accepted_amounts: deque[float] = deque()
        """What each of :attr:`_accepted` counted (1 a request, or its tokens)."""
        self._weighed = False
        """Whether a success counted other than 1 (the peak then sums amounts)."""
        self._refused_sent: deque[tuple[float, float]] = deque()
        """When the requests refused lately (429s about the rate) were sent, and what each
        would have counted."""
        self._last_refused_at = -math.inf
        """When the latest request refused about this rate was sent."""
        self._last_refusal_hinted = False
        """Whether that refusal said when to come back."""
        self._held: tuple[float, float] | None = None
        """A pace held to fixed windows' count (:meth:`hold`), and until when."""

    @property
    def discovered(self) -> bool:
        """Whether the rate was found from 429s alone (no ceiling was ever stated)."""
        return self.ceiling is None and self.rpm is not None

    def state_ceiling(self, ceiling: float | None) -> None:
        """A (new) stated limit; None forgets it and the rate it set. A raised ceiling is
        reached at once: the statement is newer than the 429s that lowered the rate."""
        old = self.ceiling
        self.ceiling = ceiling
        if ceiling is None:
            if old is not None:
                # The statement was withdrawn (it turned out to be a daily quota): the rate it
                # set says nothing, and one is discovered afresh from 429s.
                self.rpm = None
                self._at_loss = math.inf
            return
        if self.rpm is None or old is None or ceiling > old or self.rpm > ceiling:
            self.rpm = ceiling
            self._at_loss = math.inf

    def throttled(
        self,
        *,
        sent_at: float,
        now: float,
        hinted: bool = False,
        measure: bool = True,
        sent_in_second: float | None = None,
        sent_since_refusal: float | None = None,
        amount: float = 1.0,
        since: float | None = None,
        sent_since: float | None = None,
        least_measure: float = 0.0,
    ) -> bool:
        """A 429 about the rate: cut, at most once per round trip and per second (a window
        that ran dry refuses everything until it refills, however much we slow down).

        A ``hinted`` 429 under a stated ceiling cuts only when it repeats: the cooldown gate
        already waits out the hint, and one refusal at a window's end (fixed windows, a burst)
        says nothing against the ceiling. One sent after an earlier hinted 429 came back does.
        ``measure`` False when this rate sees only part of what the provider accepts on its
        key (a process of a fleet): it then cuts by a fixed share rather than measure the
        server's rate from its own acceptances. ``sent_in_second``: how many requests this
        rate's lane sent in the second up to ``sent_at``, this one included (see
        :meth:`_accepted_in_second_rpm`), in the units of ``amount``: what the refused
        request would have counted (1 a request, or its tokens). ``sent_since``: the same
        counted from ``since`` (:meth:`measured_since`). ``sent_since_refusal``: what it sent
        from :meth:`refused_before` up to ``sent_at`` (a measure net of any burst,
        :meth:`_accepted_since_refusal_rpm`). ``least_measure``: a discovered rate's
        measures under it are not taken (the server took more than that lately). True when
        the rate changed.

        A rate of tokens with nothing stated is discovered from tokens accepted:

        >>> rate = PacedRate()
        >>> for i in range(10):  # 10 answers in a second, 300 tokens each: 180,000/min
        ...     _ = rate.succeeded(now=0.1 * i, backlog=True, amount=300.0)
        >>> rate.throttled(sent_at=1.0, now=1.05, sent_in_second=3600.0, amount=400.0)
        True
        >>> round(rate.rpm)  # 90% of the best second accepted (the last one measured 192,000)
        162000
        """
        # Under a stated ceiling, 429s cut by a share: a measure would override the statement.
        net = (
            self._accepted_since_refusal_rpm(sent_at, sent_since_refusal, amount)
            if self.ceiling is None
            else None
        )
        last_second = self._accepted_in_second_rpm(sent_at, sent_in_second, now, amount)
        if self._last_refused_at == sent_at:
            self._last_refusal_hinted = hinted
        if self.ceiling is None and self.rpm is not None:
            # Under what the server was shown to take lately, a measure counts our own pace
            # (a gate waited out, an idle spell, a busy upstream's 429): it measures nothing.
            if net is not None and net < least_measure:
                net = None
            if last_second is not None and last_second < least_measure:
                last_second = None
        if net is not None and last_second is not None:
            last_second = min(last_second, net)
        # The least it paces at: six requests a minute, in the units of ``amount`` (six
        # tokens a minute held an Azure lane still for minutes).
        least = _MIN_RPM * amount
        if self._weighed and not last_second:
            # Tokens of which nothing was taken in that second: a window run dry (Azure's
            # 10-s windows) measures nothing of the rate, and 0 is no pace.
            last_second = None
        if hinted and self.ceiling is not None:
            earlier, self._hinted_at = self._hinted_at, now
            if not (sent_at > earlier and now - earlier < _REPEAT_S):
                return False
        if sent_at < self._cut_at:
            return False
        self._held = None  # refused at the pace the windows set: they no longer hold
        if now - self._cut_at < _MIN_CUT_SPACING_S:
            taken_since = self._accepted_since_rpm(sent_at, since, sent_since)
            if self._cut_on_the_climb(now, last_second, taken_since, least):
                return True
            if not (net is not None and self.rpm is not None and net < self.rpm):
                return False
            # Measured from an earlier refusal, a second 429 soon after a cut says how much
            # the server took since it was empty: below the pace, the last measure was high
            # (a bucket's burst in the second before the discovery: 2040/min for 1140).
        self._climb_from = None
        unproven, self._fast_probe = self._fast_probe, False
        if self.rpm is None and not self._discovers:
            return False
        if self.rpm is None:
            peak = self.accepted_peak_rpm()
            # The pace starts under what was accepted (answers lag what was sent, so during a
            # ramp-up that is little); it climbs back quickly to what the server took in the
            # second before it refused, which bounds its rate from above.
            self._at_loss = max(peak, last_second or 0.0)
            seed = _DISCOVERY_SEED * peak
            if last_second:
                # Nor above just under what it took in that second: after a while at a pace
                # held by something else (a cap on requests in flight that turned out not to
                # be one), the answers come in bunches, and the best second holds a burst.
                seed = min(seed, _LAST_SECOND_SHARE * last_second)
            self.rpm = max(least, seed)
            # What the server took in that second bounds its rate from above (a bucket's
            # burst or a window's tail at most on top): near it, probe as gently as after a
            # measured cut. Probed ever faster from the discovery, a lane that had found a
            # 960/min window's rate exactly passed it 4 s later (1009/min) and was refused.
            self._measured_cut = bool(last_second)
            self._climb_from = sent_at
            few = sent_in_second is not None and sent_in_second < _FEW_SENDS
            if few and not self._weighed and sent_in_second is not None:
                # A second of a few sends measures our start, not the server: a busy
                # upstream's 429 to the start's third request discovered 120/min against
                # 1489, held near it for ten seconds. Past it, the pace doubles about every
                # second until a cut (a limit there refuses it at once: one 429).
                self._fast_probe = True
                self._fast_to = math.inf
                self._measured_cut = False
                # From just under what was sent then, not from the floor: with nothing
                # accepted yet, a 429 to the first request paced a lane at 6/min, and the
                # doubling (per answer) took 25 s to reach its 1411/min.
                self.rpm = max(self.rpm, _LAST_SECOND_SHARE * 60.0 * sent_in_second)
                # Nor is the server known to have been empty then: no later refusal is
                # measured net from this one (:meth:`refused_before`).
                self._last_refused_at = -math.inf
        else:
            sustained = self.sustained_rpm(now) if self.ceiling is None and measure else None
            if sustained is not None and sustained < least_measure:
                sustained = None
            share = _SUSTAINED_SHARE
            if (sustained is not None or net is not None) and last_second:
                # What the server accepted in the second before it refused, counted by when
                # the requests were sent, is its rate as it was just now. The mean since the
                # last cut counts answers, which lag the sending by a latency: while the pace
                # climbs towards the server's rate it measures our own climb (918 to 1545/min
                # against 1440 measured 1188, and the lane held there). A second in which it
                # took nothing measures a window that ran dry, not a rate: read as one, the
                # pace fell to the 6/min floor and took a minute to climb back (a gateway's
                # 10-s windows, found by the `gateway` profile).
                sustained, share = last_second, _LAST_SECOND_SHARE
            self._measured_cut = sustained is not None and sustained < self.rpm
            if sustained is not None and sustained < self.rpm:
                # Without a stated limit, what the server accepted while we sent faster than it
                # allowed is its rate, measured: resume just under it, rather than cutting a
                # fixed share from a pace the server never sustained (and climbing back to it).
                self._at_loss = sustained
                self.rpm = max(least, share * sustained)
            else:
                self._at_loss = self.rpm
                # never above a stated ceiling, even one below the floor (a 1-rpm free tier)
                floor = least if self.ceiling is None else min(least, self.ceiling)
                self.rpm = max(floor, _CUT * self.rpm)
            few = sent_in_second is not None and sent_in_second < _FEW_SENDS_CUT
            if unproven and few and self.ceiling is None and not self._weighed:
                # Nor does a cut from a second of a few sends while the pace still doubles
                # from such a discovery (a busy 429 there held a lane at a quarter of its limit
                # for 30 s). Fewer than from a discovery: 300/min windows' cuts from 5-7 sends
                # doubled past them and drew 2-4 429s more. Up to the bound the doubling
                # had (none from a discovery; a noise 429's from :meth:`unproven`): re-armed
                # without it, a lane doubling up to 700/min after noise ran to 31,555.
                self._fast_probe = True
                self._measured_cut = False
        self._cut_at = self._probe_from = now
        self._cuts.append(now)
        return True

    def unproven(self, up_to: float = math.inf) -> None:
        """A 429 to this discovered rate was a busy upstream's noise, not a limit's: the
        loss it climbs back to may have been noise too (a refusal to the start's third
        request discovered 120/min against 1489). Beyond it, the pace doubles about every
        second until the next cut, rather than hold near it for ten seconds and probe at
        +2% a second (from 0.1 of the limit, 25 s to reach it). A limit past it then refuses
        a rising share, which the lane reads as load (a cut, measured, ends the doubling).

        >>> def climb(rate):  # four seconds of successes with a backlog
        ...     for i in range(40):
        ...         _ = rate.succeeded(now=1.1 + 0.1 * i, backlog=True)
        ...     return round(rate.rpm)
        >>> rate = PacedRate()
        >>> _ = rate.throttled(sent_at=1.0, now=1.02, sent_in_second=12)  # 11 taken: 660/min
        >>> climb(rate)  # just under it in three seconds, then held near it
        629
        >>> rate = PacedRate()
        >>> _ = rate.throttled(sent_at=1.0, now=1.02, sent_in_second=12)
        >>> rate.unproven()  # that 429 was noise
        >>> climb(rate)  # past it, doubling
        1222
        """
        if self.ceiling is None and self.rpm is not None:
            if not self._fast_probe or up_to > self._fast_to:
                self._fast_to = up_to
            self._fast_probe = True
            if math.isinf(up_to):
                self._measured_cut = False

    def hold(self, rpm: float, *, loss: float, now: float) -> None:
        """Pace at ``rpm`` and probe no further for a while: fixed windows were shown to
        take ``loss`` (their count, per minute) exactly (:class:`~pacekeeper.core.grid.
        FixedGrid`). Probed past it, each window ends with a refusal or two. A refusal of a
        request sent from now on ends the hold (the windows changed, or were misread).

        >>> rate = PacedRate()
        >>> rate.hold(1170.0, loss=1200.0, now=5.0)
        >>> rate.held(6.0), rate.succeeded(now=6.0, backlog=True), rate.rpm
        (True, False, 1170.0)
        """
        self.rpm = rpm
        self._at_loss = loss
        self._held = (rpm, now + _HELD_S)
        self._measured_cut = True
        self._climb_from = None
        self._cut_at = self._probe_from = now

    def held(self, now: float) -> bool:
        """Whether the pace is held to fixed windows' count (:meth:`hold`) at ``now``."""
        held = self._held
        return held is not None and now < held[1]

    def measured_since(self, sent_at: float) -> float | None:
        """When a request sent at ``sent_at`` and refused is also measured from, besides the
        second before it (None: not): the discovery this rate climbs from, refused at least
        a quarter of a second earlier (:meth:`_cut_on_the_climb`).

        >>> rate = PacedRate()
        >>> for i in range(10):  # 10 answers in a second, 300 tokens each
        ...     _ = rate.succeeded(now=0.1 * i, backlog=True, amount=300.0)
        >>> _ = rate.throttled(sent_at=1.0, now=1.01, sent_in_second=3600.0, amount=400.0)
        >>> rate.measured_since(1.1) is None, rate.measured_since(1.8)
        (True, 1.0)
        """
        climb_from = self._climb_from
        if climb_from is None or sent_at - climb_from < _CLIMB_MEASURED_AFTER_S:
            return None
        # Tokens only: a request rate may be kept in fixed windows (gateways, `bare`), which
        # refill at their end, not all along, and a window run dry at the discovery refuses
        # what is sent until it ends (read as a rate, 1200/min windows answered in 50 ms
        # held the pace at 455/min). Token limits discovered from 429s are buckets.
        return climb_from if self._weighed else None

    def _cut_on_the_climb(
        self, now: float, last_second: float | None, taken_since: float | None, least: float
    ) -> bool:
        """A refusal within a second of a discovery, of a request sent after it came back,
        at the pace climbing from it: new evidence all the same. The second that
        discovery measured held what the server had stored on top of its rate (a bucket full
        at the start: one second's worth for a 1-s bucket, five for a 5-s one), and the climb
        towards it overshoots. Waited out as a refusal of the same round trip, the climb went
        on and drew another 429 before the cut (a trace of `gemini`: 4 429s a run, the last
        two 0.3-0.5 s apart). The server was empty when it refused the discovery, so what it
        took since (``taken_since``) is its rate, give or take a request at either end, with
        nothing stored in it; the second before this refusal is the bound it always is. The
        pace resumes under the lower of the two, as after a measured cut. Nothing moves
        without both (a fixed window run dry took nothing since). True when it moved."""
        if self._climb_from is None or not last_second or not taken_since or self.rpm is None:
            return False
        # Taken since an empty server, the mean is the rate (as sustained, after a cut);
        # the second before may hold a window's start or a bucket's last burst.
        share = _SUSTAINED_SHARE if taken_since < last_second else _LAST_SECOND_SHARE
        taken = min(last_second, taken_since)
        if share * taken >= self.rpm:
            return False
        self._climb_from = None
        self._at_loss = taken
        self.rpm = max(least, share * taken)
        self._measured_cut = True
        self._cut_at = self._probe_from = now
        self._cuts.append(now)
        self._fast_probe = False
        return True

    def refused_earlier(self, *, sent_at: float, sent_in_second: int, now: float) -> bool:
        """A 429 judged to be about the rate only at ``now``, well after it came back (it was
        taken for a cap on requests in flight until a request past that cap succeeded). What
        the server took in the second before it (:meth:`_accepted_in_second_rpm`) measured
        its rate then; the pace resumes just under that, as after a measured cut. Not under
        the best second accepted since, as at a first 429: held under the supposed cap, the
        answers came in bunches that a bucket's burst lets through (418/min for a 300/min
        bucket answered in 2 s). True when the rate changed.

        >>> rate = PacedRate()
        >>> rate.refused_earlier(sent_at=3.0, sent_in_second=6, now=8.0)
        True
        >>> round(rate.rpm)  # 5 of the 6 sent in that second were taken: 300/min, less 8%
        276
        """
        if not self._discovers or self.ceiling is not None:
            return self.throttled(sent_at=sent_at, now=now, sent_in_second=sent_in_second)
        if self._fast_probe:
            # The pace still doubles from a discovery that measured nothing: a second from
            # before it measures nothing either (the start's climb: 420/min of 1080).
            return False
        # Counted as of then: the refusals known by the time it came back, itself included.
        taken = self._accepted_in_second_rpm(sent_at, sent_in_second, sent_at, 1.0)
        if not taken:
            return False
        rpm = _LAST_SECOND_SHARE * taken
        if self.rpm is not None and self.rpm <= rpm:
            return False
        if self.rpm is not None and (self.sustained_rpm(now) or 0.0) >= taken:
            # The server has taken as much since, sustained: that second measured no limit
            # (a busy upstream's 429 to the start, read as a cap and refuted, cut a lane
            # that had climbed to 755/min back to 342).
            return False
        self._at_loss = taken
        self.rpm = max(_MIN_RPM, rpm)
        self._measured_cut = True
        self._cut_at = self._probe_from = now
        self._cuts.append(now)
        self._fast_probe = False
        return True

    def _top(self, now: float) -> float:
        """How close to the ceiling the rate recovers: each cut within the last minute keeps it
        2% further below (10% at most). Pacing exactly at a bucket's rate keeps the bucket at
        whatever level it fell to; if that is empty, every jitter in our estimates is a 429."""
        if self.ceiling is None:
            return math.inf
        cuts = self._cuts
        while cuts and now - cuts[0] > _CUT_MEMORY_S:
            cuts.popleft()
        return self.ceiling * (1.0 - min(_MAX_MARGIN, _MARGIN_PER_CUT * len(cuts)))

    def succeeded(self, now: float, backlog: bool, amount: float = 1.0) -> bool:
        """An accepted request, which counted ``amount`` (1 a request, or its tokens). While
        requests wait, a cut rate recovers; True when it moved."""
        if self._discovers:
            _accepted(self, now, amount)
        last, self._last_success_at = self._last_success_at, now
        if self.rpm is None or last is None or not backlog:
            return False
        return self._recover(now, last)

    def _recover(self, now: float, last: float) -> bool:
        """:meth:`succeeded`'s recovery of a cut rate (requests wait, the rate is set and a
        success came before, at ``last``): True when it moved."""
        rpm = self.rpm
        assert rpm is not None  # the caller checked
        held = self._held
        if held is not None and now < held[1] and rpm >= held[0]:
            return False
        top = self._top(now)
        if rpm >= top:
            return False
        step_s = min(_MAX_STEP_S, max(0.0, now - last))
        if rpm < _NEAR_LOSS * self._at_loss:
            reference = self.ceiling if self.ceiling is not None else self._at_loss
            # Linear near the loss; far below it (a rate discovered during a ramp-up, at a
            # fraction of the server's), half the gap closes in well under a second.
            gap = _NEAR_LOSS * self._at_loss - rpm
            rpm += max(_FAST_PER_S * reference, _APPROACH_PER_S * gap) * step_s
            rpm = min(rpm, _NEAR_LOSS * self._at_loss) if rpm < top else rpm
        else:
            # Beyond the last loss, probe gently at first, then faster the longer no 429 says
            # no (CUBIC's convex probe): a rate seeded low, during a ramp-up, is not stuck.
            # Timed from the last cut or adoption (never from -inf: a rate adopted from a
            # fleet, with no cut of its own, would otherwise probe to infinity at once).
            start = self._probe_from if self._probe_from is not None else now
            quiet_s = max(0.0, now - start)
            if self._fast_probe and rpm < self._fast_to:
                rpm = min(self._fast_to, rpm + _FAST_PROBE_PER_S * rpm * step_s)
            elif self._measured_cut:
                # A discovered rate was measured at its last cut: hold near it a while (each
                # probe past a real limit costs a 429), then search again, ever faster.
                if quiet_s < _PLATEAU_S:
                    rpm += _PLATEAU_PER_S * rpm * step_s
                else:
                    quiet_s -= _PLATEAU_S
                    rpm += _SLOW_PER_S * (1.0 + quiet_s / _PROBE_DOUBLES_S) * rpm * step_s
            else:
                rpm += _SLOW_PER_S * (1.0 + quiet_s / _PROBE_DOUBLES_S) * rpm * step_s
        self.rpm = min(top, rpm)
        return True

    def adopt(self, rpm: float, *, now: float) -> None:
        """Pace at ``rpm``, decided elsewhere (another process of a shared fleet), within the
        ceiling; without one, it is also the rate recovery climbs back to. A lower rate (a
        cut elsewhere) starts the probe beyond it gently again from ``now``; a higher one is
        another process's probe, which goes on at the pace it had reached: restarting it at
        every adoption (several a second in a fleet) held a fleet's probe at +2% a second,
        and a rate discovered low took a minute to climb back (tests/backends/test_fleet.py)."""
        old = self.rpm
        self.rpm = rpm if self.ceiling is None else min(rpm, self.ceiling)
        if self._probe_from is None or old is None or self.rpm < old:
            self._probe_from = now
        if self.ceiling is None:
            self._at_loss = self.rpm

    def rescale(self, factor: float) -> None:
        """The units of ``amount`` changed: each is now ``factor`` times what it was (a lane
        that learns its provider counts input tokens alone, not prompt and answer). What was
        accepted and refused lately, and a rate discovered in the old units, are rescaled; a
        stated ceiling is in the provider's own units already, and stays.

        >>> rate = PacedRate()
        >>> for i in range(10):
        ...     _ = rate.succeeded(now=0.1 * i, backlog=True, amount=300.0)
        >>> rate.rescale(0.5)
        >>> round(rate.accepted_peak_rpm())
        90000
        """
        amounts = self._accepted_amounts
        for i, amount in enumerate(amounts):
            amounts[i] = amount * factor
        self._refused_sent = deque((t, a * factor) for t, a in self._refused_sent)
        if self.ceiling is None and self.rpm is not None:
            self.rpm = max(_MIN_RPM, self.rpm * factor)
            if not math.isinf(self._at_loss):
                self._at_loss *= factor

    @property
    def refused_sent_at(self) -> float | None:
        """When the latest 429 this rate measured was sent (None: none in the last two
        seconds): the second before it is what a discovery or a measured cut counts, which a
        fleet measures again on its key (``backends._redis``).

        >>> rate = PacedRate()
        >>> rate.refused_sent_at is None
        True
        >>> _ = rate.throttled(sent_at=2.5, now=2.6, sent_in_second=10)
        >>> rate.refused_sent_at
        2.5
        """
        refused = self._refused_sent
        return refused[-1][0] if refused else None

    @property
    def measured(self) -> bool:
        """Whether the last cut was measured from what the server took (not a share)."""
        return self._measured_cut

    @property
    def loss_rpm(self) -> float | None:
        """The rate recovery climbs back to (just under it): what the server took when it
        last refused, or the pace at the last cut; None when no loss is known."""
        return None if math.isinf(self._at_loss) else self._at_loss

    def aim(self, loss_rpm: float) -> None:
        """Climb towards just under ``loss_rpm``, evidence gathered elsewhere (what a fleet's
        key was measured to take when it refused), as after a loss measured here. Only a
        discovered rate has no other aim: under a stated ceiling, nothing changes.

        >>> def climb(rate):  # three seconds of successes with a backlog
        ...     for i in range(31):
        ...         _ = rate.succeeded(now=0.1 * i, backlog=True)
        ...     return round(rate.rpm)
        >>> rate = PacedRate()
        >>> rate.adopt(250.0, now=0.0)  # another process's discovery, seeded low
        >>> climb(rate)  # the adopted rate is its aim: it only probes beyond it
        282
        >>> rate = PacedRate()
        >>> rate.adopt(250.0, now=0.0)
        >>> rate.aim(960.0)  # the key refused at 960/min
        >>> climb(rate)  # just under it within three seconds, then probing
        917
        """
        if self.ceiling is None and self.rpm is not None:
            self._at_loss = max(loss_rpm, self.rpm)

    def accepted_between(self, start: float, end: float) -> int:
        """How many successes came back after ``start`` up to ``end`` (within the last five
        seconds).

        >>> rate = PacedRate()
        >>> for t in (1.0, 1.01, 1.02, 1.5):
        ...     _ = rate.succeeded(now=t, backlog=False)
        >>> rate.accepted_between(1.0, 1.02)
        2
        """
        count = 0
        for t in reversed(self._accepted):
            if t <= start:
                break
            count += 1 if t <= end else 0
        return count

    def accepted_mean_rpm(self, now: float, span_s: float = _ACCEPTED_WINDOW_S) -> float:
        """The rate (per minute) accepted over the ``span_s`` (at most five) seconds up to
        ``now``, whatever cut them (a bucket's store lifts it by its depth over the span at
        most)."""
        total = 0.0
        for t, amount in zip(
            reversed(self._accepted), reversed(self._accepted_amounts), strict=True
        ):
            if now - t > span_s:
                break
            total += amount
        return 60.0 * total / span_s

    def sustained_rpm(self, now: float) -> float | None:
        """The rate (per minute) accepted since the last cut, over at most the last five
        seconds; None with too little to go by (under a second, or under five requests).
        The mean, not the best second: a second can hold a bucket's burst or the start of a
        fixed window, which the server does not sustain (resuming under it cost more 429s
        than the slower climb from the mean)."""
        since = max(self._cut_at, now - _ACCEPTED_WINDOW_S)
        span_s = now - since
        if span_s < 1.0:
            return None
        count, total = 0, 0.0
        pairs = zip(reversed(self._accepted), reversed(self._accepted_amounts), strict=True)
        for t, amount in pairs:
            if t <= since:
                break
            count += 1
            total += amount
        return 60.0 * total / span_s if count >= 5 else None

    def _accepted_in_second_rpm(
        self, sent_at: float, sent_in_second: float | None, now: float, amount: float
    ) -> float | None:
        """What the server accepted (per minute) of the requests sent in the second before
        the refused one (sent at ``sent_at``, counting ``amount``): those sent, less those
        refused. A 429 comes back at once, an answer a latency later: by the time a refusal
        is back, the requests sent before it that were refused are known, and the others
        were accepted. None without a count of what was sent, or when this rate does not
        discover."""
        if not self._discovers or sent_in_second is None:
            return None
        self._last_refused_at = max(self._last_refused_at, sent_at)
        refused = self._refused_sent
        refused.append((sent_at, amount))
        while refused and now - refused[0][0] > 2.0:
            refused.popleft()
        refusals = sum(a for t, a in refused if sent_at - 1.0 <= t <= sent_at)
        return 60.0 * max(0.0, sent_in_second - refusals)

    def _accepted_since_rpm(
        self, sent_at: float, since: float | None, sent_since: float | None
    ) -> float | None:
        """What the server accepted (per minute) of the requests sent from ``since`` up to
        the refused one (``sent_since``, in the units of its ``amount``): those sent, less
        those refused. None without a span or a count."""
        if since is None or sent_since is None or sent_at <= since:
            return None
        refusals = sum(a for t, a in self._refused_sent if since <= t <= sent_at)
        return 60.0 * max(0.0, sent_since - refusals) / (sent_at - since)

    def refused_before(self, sent_at: float) -> float | None:
        """When the latest refusal about this rate before a request sent at ``sent_at`` was
        sent, if it was 0.4 s to a second before it (6 s if it said when to come back):
        the server had nothing left then (nor at ``sent_at``), so what a bucket took in
        between is its rate, net of any burst it had stored. Not from further back without
        a hint: fixed windows take nothing from the refusal to their end, and a span of 1.2 s
        holding one window's budget read 1219/min for 1500. None otherwise (the second
        before ``sent_at`` is measured instead).

        >>> rate = PacedRate()
        >>> _ = rate.throttled(sent_at=2.0, now=2.05, sent_in_second=40)
        >>> rate.refused_before(3.0)
        2.0
        >>> rate.refused_before(2.2) is None  # too close to measure a rate
        True
        """
        if not self._discovers:
            return None
        least_s, most_s = _NET_SPAN_S
        if self._last_refusal_hinted:
            # The lane waited the hint out: the server's bucket refilled meanwhile, and the
            # second before the next refusal, when the pace has used that store up seconds
            # later, holds some of it (Groq's whole-second retry-after: 600/min measured for
            # 434, and a lane paced at 520/min for 434-451 to the end of its run).
            most_s = _NET_HINTED_S
        before = self._last_refused_at
        return before if least_s <= sent_at - before <= most_s else None

    def _accepted_since_refusal_rpm(
        self, sent_at: float, sent: float | None, amount: float
    ) -> float | None:
        """The most the server can have taken (per minute) between the refusal
        :meth:`refused_before` names and the one sent at ``sent_at`` (counting ``amount``),
        given the ``sent`` requests (or tokens) sent from the first up to the second, both
        included: those less the refusals among them, plus one request's worth (what each
        refusal may have left short of a whole request). Empty at both ends, a bucket took
        its rate in between, whatever it had stored before; the second before a refusal holds
        that store as well (up to twice a 1-s bucket's rate, at a discovery). None without
        such a refusal.

        >>> rate = PacedRate()
        >>> _ = rate.throttled(sent_at=2.0, now=2.05, sent_in_second=40)
        >>> round(rate._accepted_since_refusal_rpm(2.8, 17.0, 1.0))  # 15 taken in 0.8 s, +1
        1200
        """
        since = self.refused_before(sent_at)
        if sent is None or since is None:
            return None
        refusals = amount + sum(a for t, a in self._refused_sent if since <= t <= sent_at)
        taken = sent - refusals
        return 60.0 * (taken + amount) / (sent_at - since) if taken > 0 else None

    def accepted_in_second_rpm(self, sent_at: float, sent_in_second: float) -> float:
        """What the server took (per minute) of the ``sent_in_second`` requests sent in the
        second up to ``sent_at``: those less the ones refused (as known now), less the one
        sent at ``sent_at`` if it was not counted yet."""
        refused = self._refused_sent
        refusals = sum(a for t, a in refused if sent_at - 1.0 <= t <= sent_at)
        if not any(t == sent_at for t, _ in refused):
            refusals += 1.0
        return 60.0 * max(0.0, sent_in_second - refusals)

    def accepted_peak_rpm(self, span_s: float = 1.0) -> float:
        """The highest rate (per minute) accepted over ``span_s`` in the last five seconds,
        in the units of the successes' ``amount``."""
        amounts = self._accepted_amounts if self._weighed else None
        return 60.0 * _peak_per_second(self._accepted, span_s, amounts)

    def __repr__(self) -> str:
        rpm = "none" if self.rpm is None else f"{self.rpm:.0f}"
        ceiling = "none" if self.ceiling is None else f"{self.ceiling:.0f}"
        return f"<PacedRate {rpm}/min ceiling {ceiling}>"


def succeeded_together(  # noqa: PLR0917  # positional: every answer
    requests: PacedRate,
    tokens: PacedRate,
    output: PacedRate,
    now: float,
    backlog: bool,
    charged: float,
) -> bool:
    """:meth:`PacedRate.succeeded` of a lane's three rates in one call, unrolled: ``requests``
    and ``output`` counted 1, ``tokens`` the ``charged`` tokens; True when any moved. The
    same work in the same order as the three calls a success made on every answer (their
    frames cost more than the bookkeeping); the recovery (:meth:`PacedRate._recover`) runs
    only when requests wait under a rate already set."""
    moved = False
    # _accepted, inlined for the two rates that discover (every lane's): every answer
    if requests._discovers:
        accepted = requests._accepted
        accepted.append(now)
        amounts = requests._accepted_amounts
        amounts.append(1.0)
        while now - accepted[0] > _ACCEPTED_WINDOW_S:
            accepted.popleft()
            amounts.popleft()
    last = requests._last_success_at
    requests._last_success_at = now
    if backlog and last is not None and requests.rpm is not None:
        moved = requests._recover(now, last)
    if tokens._discovers:
        accepted = tokens._accepted
        accepted.append(now)
        amounts = tokens._accepted_amounts
        amounts.append(charged)
        if charged != 1.0:
            tokens._weighed = True
        while now - accepted[0] > _ACCEPTED_WINDOW_S:
            accepted.popleft()
            amounts.popleft()
    last = tokens._last_success_at
    tokens._last_success_at = now
    if backlog and last is not None and tokens.rpm is not None and tokens._recover(now, last):
        moved = True
    if output._discovers:
        _accepted(output, now, 1.0)
    last = output._last_success_at
    output._last_success_at = now
    if backlog and last is not None and output.rpm is not None and output._recover(now, last):
        moved = True
    return moved


def _accepted(rate: PacedRate, now: float, amount: float) -> None:
    """A success counted in ``rate``'s accepted window (:meth:`PacedRate.succeeded`'s
    first part)."""
    accepted = rate._accepted
    accepted.append(now)
    amounts = rate._accepted_amounts
    amounts.append(amount)
    if amount != 1.0:
        rate._weighed = True
    while now - accepted[0] > _ACCEPTED_WINDOW_S:
        accepted.popleft()
        amounts.popleft()


def _peak_per_second(
    times: deque[float], span_s: float = 1.0, amounts: deque[float] | None = None
) -> float:
    """The most events (or the most of their ``amounts``) in any window of ``span_s`` of
    ``times`` (sorted), per second."""
    ts = list(times)  # a deque indexes in O(n)
    if amounts is not None:
        weights = list(amounts)
        best, total, first = 0.0, 0.0, 0
        for end, t in enumerate(ts):
            total += weights[end]
            while t - ts[first] >= span_s:
                total -= weights[first]
                first += 1
            best = total if total > best else best
        return best / span_s
    peak, start = 0, 0
    for end, t in enumerate(ts):
        while t - ts[start] >= span_s:  # the window [t - span, t], half-open at the old end
            start += 1
        count = end - start + 1
        peak = count if count > peak else peak  # not max(): a C call per event, thousands
    return peak / span_s
