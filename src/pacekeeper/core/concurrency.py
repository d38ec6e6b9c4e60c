"""How many requests may be in flight: a fixed number, or an AIMD limit that finds it.

Both kinds count slots the same way; they differ only in what an outcome does to the limit.
Outcomes are reported as a :class:`Signal`: a success, back-pressure (evidence of load, as the
lane judges it) or neutral (an error that says nothing about load, or a cancellation).
"""

from __future__ import annotations

import enum
import math

from pacekeeper.core.config import AdaptiveConcurrency

__all__ = ["AimdLimit", "FixedLimit", "Signal", "SlotLimit"]


_PROBE = 0.125
"""Growth near the last loss: one slot per eight round trips."""


_PAST_SERVED = 1.5
"""Slow start runs at most this many times past what the upstream served at once."""


_QUEUE_CUT_WORTH = 0.9
"""Swollen answers cut the window only to below this share of it."""


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

    def acquire(self, now: float) -> int:
        """Take a slot; returns the number in flight including this one."""
        in_flight = self.in_flight = self.in_flight + 1
        if in_flight > self.peak_in_flight:  # noqa: PLR1730  # max() is a call, every admission
            self.peak_in_flight = in_flight
        return in_flight

    def release(  # positional from the lane's release: every request
        self,
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
    """An adaptive limit: slow start, then AIMD on evidence of load, under a learned cap.

    Four things move it, each on its own evidence:

    * **growth**: slow start (one slot per success of a request that flew while the window
      was full or requests waited for a slot, so it doubles every round trip) until the
      first sign of load, then one slot per round trip,
      approaching the window of the last cut quickly and probing beyond it slowly (CUBIC's
      plateau). Before any answer has come back, it also doubles every ``silence_double_s``
      of silence (the first after ``silence_first_s``, up to ``silence_max``): no answer yet
      is no evidence of load, and with 10 s answers, one slot per success would take minutes
      to reach the hundreds a rate needs. A rejection comes back fast, so an in-flight cap
      still shows up before the window runs far past it;
    * **a cut** (:attr:`Signal.BACKPRESSURE`, x ``decrease_factor``, at most once per round
      trip): the caller decides what is evidence of load (a rise in overload answers above
      their baseline, answers that swell with queueing), never a single 503;
    * **a floor** (:meth:`set_floor`): what a known rate needs in flight (rate x latency), so
      that noise can never cut the limit below what pacing already keeps safe;
    * **a cap** (:meth:`learn_cap`): a server's in-flight limit, learned from the number in
      flight at a structural in-flight rejection. It is probed (+1) after ``probe_after_s``
      spent at it with a backlog and ``probe_after_answers`` answers there; each probe that
      is refused doubles both.
      A cap read from a bare 429 (no code, no headers: it may as well be the rate) is
      *provisional*: probed after one round trip at it, confirmed when that probe is refused,
      and refuted (:meth:`refuted_by`) when a request past it succeeds.

    >>> aimd = AimdLimit(AdaptiveConcurrency(initial=4))
    >>> sent = [aimd.acquire(now=0.0) for _ in range(4)]
    >>> aimd.release(now=1.0, sent_at=0.0, in_flight_at_send=4, signal=Signal.SUCCESS)
    >>> aimd.limit  # slow start: one more slot per success while the limit is in use
    5
    >>> aimd.release(now=1.0, sent_at=0.0, in_flight_at_send=4, signal=Signal.BACKPRESSURE)
    >>> aimd  # cut to 70%
    <AimdLimit 2/3 in flight (3.50, decreases 1)>
    >>> aimd.learn_cap(in_flight_at_send=3, now=1.0)
    >>> aimd.limit, aimd.learned_cap
    (2, 2)

    A provisional cap, tried one slot higher after a round trip, and refuted by a success there:

    >>> aimd = AimdLimit(AdaptiveConcurrency(initial=8))
    >>> aimd.learn_cap(in_flight_at_send=8, now=0.0, provisional=True, probe_after_s=0.5)
    >>> aimd
    <AimdLimit 0/7 in flight (7.00, decreases 0, cap 7?)>
    >>> for k in range(1, 8):  # a round trip of answers at the cap, with work waiting
    ...     aimd.in_flight = 7
    ...     aimd.release(now=0.1 * k, sent_at=0.0, in_flight_at_send=7, signal=Signal.SUCCESS,
    ...                  backlog=True)
    >>> aimd.limit, aimd.probing  # one more is tried
    (8, True)
    >>> aimd.refuted_by(in_flight_at_send=8, sent_at=0.7), aimd.learned_cap
    (True, None)

    A test taken, but counted at no more than the cap (an answer came back as it went, so
    the server may have held one fewer), neither refutes nor confirms it; each next test goes
    twice as far past it:

    >>> aimd.learn_cap(in_flight_at_send=8, now=1.0, provisional=True, probe_after_s=0.5)
    >>> tried = []
    >>> for k in range(1, 20):
    ...     aimd.in_flight = aimd.limit
    ...     aimd.release(now=1.0 + 0.1 * k, sent_at=1.0, in_flight_at_send=aimd.limit,
    ...                  signal=Signal.SUCCESS, backlog=True)
    ...     if aimd.learned_cap not in tried:
    ...         tried.append(aimd.learned_cap)
    >>> tried  # not 7, 8, 9, 10: one more a round trip
    [7, 8, 9, 11]
    """

    __slots__ = (
        "_answered",
        "_answers_at_cap",
        "_cap_since",
        "_cap_taught",
        "_filled_at",
        "_last_decrease_at",
        "_loss_window",
        "_probe_after_answers",
        "_probe_after_s",
        "_probing",
        "_ramp_ended",
        "_ramp_from",
        "_ramp_lift",
        "_settings",
        "_silence_base",
        "_silence_since",
        "_ssthresh",
        "_window",
        "cap_learned_at",
        "cap_provisional",
        "ceiling",
        "decreases",
        "floor",
        "hold_test",
        "learned_cap",
        "outgrew_served",
        "queue_cut_at",
        "served_top",
    )

    silence_double_s = 1.0
    silence_first_s = 2.0
    """The first doubling comes after this much silence, the next every ``silence_double_s``."""
    """Before any answer, the window doubles every this many seconds of silence."""
    ramp_after_s = 0.5
    ramp_spacing_s = 0.1
    """With no answer ``ramp_after_s`` after the first wait for a slot, the window gains a slot
    every ``ramp_spacing_s``, up to ``ramp_max``: a server that queues answers late, and a
    first window of 4 leaves one of capacity 24 a sixth full for a round trip, while an
    in-flight cap refuses the first request past it within tens of milliseconds, before the
    next slot opens (a first burst of 8 drew 1.7-5% 429s from the `inflight` profile's caps
    of 4-16). Most APIs answer within the first half second, and a limit their first answer
    states then governs: a ramp from the first instant overfilled one-second token windows
    before their first answer (tests/core/test_windows.py)."""
    ramp_max = 8.0
    """The paced ramp before any answer stops here; past it, answers say how far to go (with
    a ramp to 12, 5 of the 36 bare-429 in-flight caps of the property tests held a 5 s window
    under 0.8 of the cap, all of 4 or 8)."""
    ramp_answered_max = 16.0
    """A ramp that began before the first answer goes on at its pace up to here while answers
    state nothing and show no load (:meth:`end_ramp`), within what slow start allows
    (:meth:`served`). Slow start doubles per round trip, and in the first round trip of a
    server answering in 1.5 s only the 8 of the start come back: a server of 22 was reached
    3 s in, a fifth of a 14-s run at half its capacity. A server that queues shows no
    stated limit and no refusal; an API that states a limit ends it with its first answer, and
    a refusal or a queued answer ends it at once."""
    silence_max = 128
    """Silence alone grows the window this far at most: more in flight before a single answer
    is a bet on a server we know nothing about yet."""
    first_probe_after_s = 10.0
    first_probe_after_answers = 200
    """A confirmed cap is probed only after this many answers at it as well: each probe past
    a real cap is a 429, and one in 200 answers is half the 1% of 429s a run may spend. On
    time alone, a 10-s run of a cap of 15 (180 requests) or of 9 (118) paid a probe at 10 s
    beside the refusal that taught the cap: 1.1% and 1.7%. A cap rises only when the
    provider's does (our count never undercounts the server's, so a refusal never teaches one
    too low), which a small cap with slow answers now finds later (4 in flight, 1-s answers:
    after 50 s, not 10)."""

    def __init__(self, settings: AdaptiveConcurrency) -> None:
        super().__init__(settings.initial)
        self._settings = settings
        self._window = float(settings.initial)
        self._ssthresh = math.inf
        self._loss_window = math.inf
        self._last_decrease_at = -math.inf
        self._answered = False
        self._ramp_ended = False
        self._ramp_lift = 0.0
        """What the ramp after the first answer added to the window that successes have not
        caught up with: slow start's growth goes into it first (the window is the larger of
        the two, not their sum: added up, a server of 12 answering in 2 s saw 34 in flight)."""
        self._silence_since: float | None = None
        self._silence_base = float(settings.initial)
        self._ramp_from = -math.inf
        self.decreases = 0
        self.floor = 0
        """Slots a known rate needs (rate x mean latency); cuts never go below it."""
        self.learned_cap: int | None = None
        """The server's in-flight limit, as learned from its rejections (None: none seen)."""
        self.ceiling: int | None = None
        """A hard ceiling from outside (the HTTP client's connection pool)."""
        self.queue_cut_at = -math.inf
        """When swollen answers last cut the window (answers sent before say nothing new)."""
        self.served_top = -math.inf
        """Where :meth:`served` last bounded slow start."""
        self.outgrew_served = False
        """Slow start grew the window past :attr:`served_top`: time for a new reading (one
        under it needs none, and what a server serves at once changes slowly)."""
        self.cap_provisional = False
        """Whether the cap rests on a bare 429 alone (which the rate explains as well)."""
        self.cap_learned_at = -math.inf
        """When the cap was last set from a refusal (requests sent since test it)."""
        self.hold_test = False
        """A provisional cap's test waits while this is set (its owner sets it while the test
        would tell nothing: :meth:`retest_cap`)."""
        self._cap_since = math.inf
        self._cap_taught = 0
        """The cap the last refusal taught (probes raise :attr:`learned_cap` past it)."""
        self._probe_after_s = self.first_probe_after_s
        self._answers_at_cap = 0
        self._probe_after_answers = self.first_probe_after_answers
        self._probing = False
        self._filled_at = -math.inf
        """When an admission last took the window's last slot (the window was in use then)."""

    def acquire(self, now: float) -> int:
        in_flight = self.in_flight = self.in_flight + 1
        if in_flight > self.peak_in_flight:  # noqa: PLR1730  # max() is a call, every admission
            self.peak_in_flight = in_flight
        if in_flight >= self._limit:
            self._filled_at = now
        return in_flight

    @property
    def slow_start(self) -> bool:
        """Whether the window still grows one slot per answer (no sign of load yet)."""
        return self._window < self._ssthresh

    @property
    def window(self) -> float:
        """The exact (fractional) window; ``limit`` also honours the floor and the cap."""
        return self._window

    def release(  # positional from the lane's release: every request
        self,
        now: float,
        sent_at: float,
        in_flight_at_send: int,
        signal: Signal,
        backlog: bool = False,
    ) -> None:
        self.in_flight -= 1
        if signal is not Signal.SUCCESS:
            # Load, a refusal, an error or a queued answer: the ramp bet on none.
            self._ramp_ended = True
        if signal is not Signal.NEUTRAL:
            # A refusal or an error says nothing of how long answers take: silence about the
            # latency ends with the first answer that carries it.
            if not self._answered and now < self._ramp_from:
                # Answered before the ramp began: answers, not time, say how far to go.
                self._ramp_ended = True
            self._answered = True
        elif not self._answered:
            # But a refusal ends the paced ramp: the ramp bets that no cap is in the way, and
            # a refusal read as a rate (with a code or headers a cap shares) let it go on
            # past a cap of 7 (6 of 61 requests refused).
            self._ramp_from = math.inf
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
            # The window was in use while this request was in flight: answers come back in
            # clumps, and after the first of a clump the freed slots are not taken yet (the
            # waiters are only being woken), so "requests wait for a slot" alone grew the
            # window by about two per clump instead of one per answer.
            backlog
            or self._filled_at >= sent_at
            or in_flight_at_send >= s.utilisation_to_grow * self._limit
        ):
            self._grow()
            if backlog:
                self._probe_cap(now)
        self._update()

    def _grow(self) -> None:
        s = self._settings
        # Slow start (one slot per success) until the first cut, then one per round trip.
        # Then, like CUBIC's plateau, approach the window of the last loss quickly and
        # probe beyond it slowly: each probe past a real ceiling costs one 429.
        if self._window < self._ssthresh:
            step = 1.0
            if self._ramp_lift > 0.0:
                self._ramp_lift = max(0.0, self._ramp_lift - step)
                return
        elif self._window + 1.0 < self._loss_window:
            step = 1.0 / self._window
        else:
            step = _PROBE / self._window
        # Growing a window the cap or the floor already overrides only inflates it.
        top = float(s.max)
        if self.learned_cap is not None:
            top = min(top, self.learned_cap + 1.0)
        self._window = min(top, self._window + step)
        if step == 1.0 and self._window > self.served_top:
            self.outgrew_served = True

    def served(self, at_once: float) -> None:
        """The upstream answered ``at_once`` requests per unloaded latency at best lately
        (Little's law: how many it serves at once). In slow start the window stays within
        half again past that, plus one (never under :attr:`ramp_max`): a server that queues
        serves its capacity however many are sent, and its queue shows in answers only a
        round trip after it forms, while doubling ran the window to 2.5-3 times that
        capacity. Below its capacity a server answers what is sent, so the window still
        grows by half or more per round trip.

        >>> aimd = AimdLimit(AdaptiveConcurrency(initial=4))
        >>> aimd.set_floor(40)  # as a rate might
        >>> aimd.served(12.0)
        >>> aimd.window, aimd.limit  # the floor still holds the limit
        (19.0, 40)
        """
        self.outgrew_served = False
        if not self.slow_start:
            return
        top = self.served_top = max(self.ramp_max, _PAST_SERVED * at_once + 1.0)
        if self._window > top:
            self._window = top
            self._ramp_lift = 0.0  # what the ramp added is gone: successes grow the window
            self._update()

    def waiting_for_slot(self, now: float) -> float:
        """The head of the queue waits for a slot: before any answer, silence grows the window.

        From ``ramp_after_s`` after the first wait, one slot every ``ramp_spacing_s`` up to
        ``ramp_max``; after ``silence_first_s``, doubling every ``silence_double_s``. The
        growth is smooth (one slot at a time), not a jump: a jump would send its new slots'
        requests all at once, and a rate limit's refusals would then come back for all of
        them before the first could slow anything down.
        Returns seconds until the next slot opens (inf: none will); call again then."""
        if self._answered or self._ssthresh != math.inf:
            self._silence_since = None
            return self._ramp_on(now)
        top = float(min(self._settings.max, self.silence_max))
        if self._window >= top:
            return math.inf
        if self._silence_since is None:
            if self._ramp_from == -math.inf:  # inf: a refusal ended the ramp already
                self._ramp_from = now + self.ramp_after_s
            # Doubling starts once the first silence_first_s is mostly over: most answers come
            # within it, and then the answers, not the silence, say how far to go.
            self._silence_since = now + self.silence_first_s - self.silence_double_s
            self._silence_base = self._window
        base = self._silence_base
        elapsed_s = now - self._silence_since
        grown = min(self.ramp_max, base + (now - self._ramp_from) / self.ramp_spacing_s)
        if elapsed_s > 0:
            grown = max(grown, base * 2.0 ** (elapsed_s / self.silence_double_s))
        # The next whole slot, not the window plus one: woken a little late (as an event loop
        # wakes a sleeper), the window takes a fraction past the slot, and "one more than
        # that" piled the lateness up until the ramp's top was out of reach (held at 7 until
        # the first answer, asking again every millisecond).
        if grown >= math.floor(self._window) + 1.0 or grown >= top:
            self._window = min(top, grown)
            self._update()
        next_slot = math.floor(self._window) + 1.0
        due = self._silence_since + self.silence_double_s * math.log2(next_slot / base)
        if next_slot <= self.ramp_max:
            due = min(due, self._ramp_from + (next_slot - base) * self.ramp_spacing_s)
        return max(1e-3, due - now)

    def _ramp_on(self, now: float) -> float:
        """After the first answer, the ramp of :meth:`waiting_for_slot` goes on at its pace up
        to :attr:`ramp_answered_max` (within slow start's bound by what was served), until
        :meth:`end_ramp`, a signal other than a success, a cut, a cap or a floor (a known
        rate) ends it. Returns seconds until its next slot (inf: none)."""
        top = self._answered_ramp_top()
        if top is None:
            return math.inf
        base = self._silence_base
        grown = min(top, base + (now - self._ramp_from) / self.ramp_spacing_s)
        if grown >= self._window + 1.0:
            self._ramp_lift += grown - self._window
            self._window = grown
            self._update()
        # A slot more than the window, fraction and all: each step comes a little late (an
        # event loop wakes a sleeper late), so the ramp stops a fraction short of its top,
        # a slot under it. Unlike the start's ramp (above), kept so: the first success then
        # takes it past the top, and reaching the top by time alone held a server of 8
        # answering in 2 s, 37.5% slower under a queue, under 0.8 of its capacity for 5 s
        # (its first cut read 6 from the deeper queue: tests/core/test_controller_property.py).
        # Asked for the next whole slot instead, the wait came back due at once, every
        # millisecond, until a success grew the window.
        step_to = self._window + 1.0
        if step_to > top:
            return math.inf
        due = self._ramp_from + (step_to - base) * self.ramp_spacing_s
        return max(1e-3, due - now)

    def _answered_ramp_top(self) -> float | None:
        """How far the ramp goes on after the first answer (None: it does not)."""
        if (
            self._ramp_ended
            or self._ssthresh != math.inf
            or self.floor
            or self.learned_cap is not None
            or not -math.inf < self._ramp_from < math.inf  # no ramp began, or one ended
        ):
            return None
        top = min(self.ramp_answered_max, float(self._settings.max))
        if self.served_top > 0.0:
            top = min(top, self.served_top)
        return top

    def end_ramp(self) -> None:
        """The answers state a limit: the rate it implies sets the window from now on, and a
        window ramped up by time would only let the start's burst run past it."""
        self._ramp_ended = True

    @property
    def silence_window(self) -> int:
        """The window silence has grown (:meth:`waiting_for_slot`) while no answer came yet;
        0 once one did, or while silence has grown nothing."""
        if self._answered or self._ssthresh != math.inf or self._silence_since is None:
            return 0
        return int(self._window)

    @property
    def ramp_window(self) -> int:
        """The window the start's ramp has grown: :attr:`silence_window` before any answer,
        and while the ramp goes on after answers that state nothing (:meth:`_ramp_on`), the
        window within its top; 0 once it ended. A fleet's shared window is raised to it."""
        silence = self.silence_window
        if silence or not self._answered:
            return silence
        top = self._answered_ramp_top()
        if top is None:
            return 0
        return int(min(self._window, top))

    def queueing(self, *, capacity: float, now: float = 0.0) -> bool:
        """The upstream queues what is past ``capacity`` in flight (estimated from swelling
        answers): the window comes down to it, with a tenth to spare, at once (an absolute
        target, not a factor, so answers that still show the old queue cannot cut twice),
        and grows from there one slot per round trip."""
        target = max(float(self._settings.min), 1.1 * capacity)
        if target >= _QUEUE_CUT_WORTH * self._window:
            # A cut of a few percent is within the noise of the estimate (answers vary in
            # length, and the unloaded latency is itself a noisy median): repeated, such cuts
            # would ratchet the window down on a server that does not queue at all.
            return False
        self.queue_cut_at = now
        self._loss_window = self._window
        self._window = target
        self._ssthresh = target
        self.decreases += 1
        self._update()
        return True

    def undo_queueing(self, load: int) -> None:
        """Swollen answers at ``load`` in flight cut the window, and later answers showed no
        queue there (as slow with far fewer in flight: the unloaded latency had been read
        low): the window goes back to that load at least."""
        if load > self._window:
            self._window = self._ssthresh = self._loss_window = float(load)
            self._update()

    def set_floor(self, slots: int) -> None:
        """What a known rate needs in flight: the limit stays at least this (below the cap)."""
        self.floor = slots
        # The window rises with the floor, so that growth past it starts from there.
        top = self._settings.max if self.learned_cap is None else self.learned_cap
        self._window = max(self._window, float(min(slots, top)))
        self._update()

    def learn_cap(
        self,
        *,
        in_flight_at_send: int,
        now: float,
        provisional: bool = False,
        probe_after_s: float | None = None,
    ) -> None:
        """An in-flight rejection of a request sent with ``in_flight_at_send`` in flight (ours,
        this one included, which is never fewer than the server counts: it freed every slot
        we still hold): at most one fewer fit.

        ``provisional``: the rejection said nothing of its scope (a bare 429 at a new peak in
        flight, which a rate refuses as well). The cap is then tried one higher after
        ``probe_after_s`` (a round trip) at it: held for the usual ``first_probe_after_s``,
        a wrong cap would keep a rate-limited lane under its rate for that long. A refused
        probe confirms it; a structural rejection confirms it at once."""
        cap = max(self._settings.min, in_flight_at_send - 1)
        known = self.learned_cap
        refused_probe = self._probing and known is not None and cap >= known - 1
        if refused_probe:
            if self.cap_provisional:
                # The cap held where the rate had room: a cap, confirmed. The refused test was
                # a probe one above it, refused like any other: the next waits twice the first
                # (it waited the first, and each probe past a real cap is a 429: a 10-s run
                # paid the first refusal, the test, and a probe at 10 s).
                self._probe_after_s = 2.0 * self.first_probe_after_s
                self._probe_after_answers = 2 * self.first_probe_after_answers
            else:
                # the probe found the real cap: probe less often
                self._probe_after_s *= 2.0
                self._probe_after_answers *= 2
        self.hold_test = False
        if self.learned_cap is None:
            self.cap_provisional = provisional
        elif not provisional or refused_probe:
            if self.cap_provisional and not refused_probe:
                # Confirmed before its try (a refusal that names its scope, another process's
                # test): probed as any cap, not every round trip its test was due in.
                self._probe_after_s = self.first_probe_after_s
                self._probe_after_answers = self.first_probe_after_answers
            self.cap_provisional = False
        if self.cap_provisional and probe_after_s is not None:
            self._probe_after_s = probe_after_s
        self._probing = False
        if self.learned_cap is None or cap < self.learned_cap:
            self.learned_cap = cap
        self._ssthresh = min(self._ssthresh, float(self.learned_cap))
        self._window = min(self._window, float(self.learned_cap))
        self._cap_since = now
        self._answers_at_cap = 0
        self.cap_learned_at = now
        self._cap_taught = self.learned_cap
        self._update()

    def refuted_by(self, *, in_flight_at_send: int, sent_at: float) -> bool:
        """A success of a request sent with ``in_flight_at_send`` in flight: past a provisional
        cap, and sent after it was set (so not a survivor of the burst that taught it), it
        shows that the cap was not one. The cap is then forgotten; True when it was. (The
        lane passes the count the server held: ours, less the requests that held no slot
        there, ``Lane._not_held_at``.)"""
        if not self.passed_cap_by(in_flight_at_send, sent_at):
            return False
        self.forget_cap()
        return True

    def passed_cap_by(self, in_flight_at_send: int, sent_at: float) -> int:
        """By how many a success of a request sent with ``in_flight_at_send`` in flight (ours,
        as counted then) went past a provisional cap, sent after it was set; 0 when not (no
        such cap, or within it). Positional: every answer asks."""
        if self.learned_cap is None or not self.cap_provisional or sent_at < self.cap_learned_at:
            return 0
        return max(0, in_flight_at_send - self._cap_taught)

    def retest_cap(self, *, now: float, after_s: float) -> None:
        """A provisional cap's test was refused, but says no more than the refusal that
        taught the cap (a rate refuses it as well): back at the cap, still provisional, and
        tried one higher again after ``after_s`` at it. What was learned when stays."""
        if self.learned_cap is None or not self.cap_provisional:
            return
        self.learned_cap = self._cap_taught
        self._probing = False
        self._probe_after_s = after_s
        self._cap_since = now
        self._answers_at_cap = 0
        self._window = min(self._window, float(self.learned_cap))
        self._update()

    @property
    def probing(self) -> bool:
        """Whether the cap was just raised by one to probe it (a refusal there is expected)."""
        return self._probing

    def forget_cap(self) -> None:
        """The learned cap was wrong (refusals came below it): limit by the window again."""
        self.learned_cap = None
        self.cap_provisional = False
        self.hold_test = False
        self._probing = False
        self._cap_since = math.inf
        self._probe_after_s = self.first_probe_after_s
        self._probe_after_answers = self.first_probe_after_answers
        self._update()

    def _probe_cap(self, now: float) -> None:
        cap = self.learned_cap
        if cap is None or self._limit < cap:
            return
        if self._cap_since == math.inf:
            self._cap_since = now
            self._answers_at_cap = 0
            return
        self._answers_at_cap += 1
        if now - self._cap_since < self._probe_after_s:
            return
        # A provisional cap's try is a test due within a round trip, not growth.
        if not self.cap_provisional and self._answers_at_cap < self._probe_after_answers:
            return
        if self.cap_provisional and self.hold_test:
            return
        if self.cap_provisional and self._probing:
            # The last test was taken, but proved no more than the cap: the answers that came
            # back as it went may have left the server before it arrived. The next goes twice
            # as far past it. One further each time, a busy 429 at 11 in flight held a 1206/min
            # lane that needs 27 at 11-13 for 3 s, one test a round trip.
            self.learned_cap = min(2 * cap - self._cap_taught, self._settings.max)
        else:
            self.learned_cap = cap + 1
        self._probing = True
        self._cap_since = now
        self._answers_at_cap = 0
        if self.cap_provisional:
            # A test, not growth: the requests past the cap go now, not once the window
            # has crept up to them a round trip later.
            self._window = max(self._window, float(self.learned_cap))

    def _update(self) -> None:
        s = self._settings
        limit = max(int(self._window), self.floor)
        if self.learned_cap is not None:
            limit = min(limit, self.learned_cap)
        if self.ceiling is not None:
            limit = min(limit, self.ceiling)
        self._limit = max(min(s.min, self.ceiling or s.min), min(limit, s.max))

    def cap(self, ceiling: int) -> None:
        self.ceiling = ceiling if self.ceiling is None else min(ceiling, self.ceiling)
        self._window = min(self._window, float(ceiling))
        self._update()

    def __repr__(self) -> str:
        extra = ""
        if self.floor:
            extra += f", floor {self.floor}"
        if self.learned_cap is not None:
            extra += f", cap {self.learned_cap}{'?' if self.cap_provisional else ''}"
        return (
            f"<AimdLimit {self.in_flight}/{self._limit} in flight "
            f"({self._window:.2f}, decreases {self.decreases}{extra})>"
        )


SlotLimit = FixedLimit
"""Either kind (the adaptive one is a FixedLimit whose limit moves)."""
