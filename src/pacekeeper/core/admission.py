"""Admission policies: where a lane's head is judged, and where the limits' state lives.

A :class:`~pacekeeper.core.lane.Lane` keeps one waiting queue, one acquire loop and what its
controller learns. What the head of its queue is judged against is an :class:`AdmissionPolicy`:

* :class:`LocalAdmissionPolicy` keeps everything in this process: the cooldown gate, the request,
  token and output buckets, and the concurrency slots. Its decision is made under the lane's
  lock, in one call (:meth:`LocalAdmissionPolicy.try_admit`): the hot path of every request.
* A backend that shares limits across processes (``pacekeeper.backends.RedisAdmissionPolicy``)
  implements the same interface around its store, composing a ``LocalAdmissionPolicy`` (the buckets
  the lane's controller shapes, and the decision while the store is unreachable). Its decision
  is a round trip, made outside the lane's lock: :meth:`AdmissionPolicy.ask` hands the lane an
  :class:`Ask` to send, and :meth:`AdmissionPolicy.answer` reads the reply.

The core knows no backend: a backend reaches the lane only through its public methods, and
the lane reaches the backend only through this interface.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pacekeeper.core.bucket import TokenBucket
from pacekeeper.core.concurrency import AimdLimit, FixedLimit
from pacekeeper.core.cooldown import CooldownGate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pacekeeper.core.concurrency import Signal
    from pacekeeper.core.lane import Permit
    from pacekeeper.core.latency import LatencyTracker
    from pacekeeper.core.priority import Priority

__all__ = ["AdmissionPolicy", "Ask", "Granted", "LocalAdmissionPolicy", "Deferred"]

_NEW_TERRITORY_SPACING_S = 0.005  # before any answer, sends to a new most in flight: 200 a second
_NEW_TERRITORY_DOUBLING_S = 1.0
"""With answers coming back, a new most in flight goes after an answer (slow start's pace),
or else the most in flight doubles in a mean answer's time, or in this long where answers take
longer (the pace of the floor and of silence, which slow answers need: 5-15 s answers want
hundreds in flight within seconds)."""
_STALE_LATENCIES = 4.0  # a slot unanswered for this many mean latencies stops blocking others
_STALE_MIN_S = 2.0


class Granted(NamedTuple):
    """A store's yes: what the permit records of it."""

    in_flight: int
    """Requests in flight on the store's count, this one included."""
    limit: int
    """The concurrency limit the store admitted under."""
    lease: object
    """The store's handle on the slot (handed back to :meth:`AdmissionPolicy.release`)."""


class Deferred(NamedTuple):
    """A store's no: how long to sleep before asking again."""

    sleep_s: float
    """Ask again after this long (a store is polled: releases elsewhere cannot wake us)."""
    wait_s: float
    """How long the limits say it will be (inf: until a slot frees), judged by a deadline."""


class Ask(Protocol):
    """One admission request to a store, sent outside the lane's lock. A failure to reach the
    store is returned, not raised: :meth:`AdmissionPolicy.answer` reads it (and falls back)."""

    def send(self) -> Awaitable[object]: ...

    def send_sync(self) -> object: ...


class AdmissionPolicy(Protocol):
    """What a lane needs from where admission is decided (see the module docstring)."""

    @property
    def local(self) -> LocalAdmissionPolicy:
        """The state in this process: the gate, the buckets and the slots the lane's
        controller shapes (the admission itself, for a :class:`LocalAdmissionPolicy`)."""
        ...

    @property
    def sees_every_acceptance(self) -> bool:
        """Whether this process sees all that the provider accepts on its key (a process of
        a fleet sees only its own share)."""
        ...

    @property
    def sees_token_level(self) -> bool:
        """Whether this process can read how full the token bucket is (a shared one is in
        the store: then every request charged against a token limit is counted exactly)."""
        ...

    def ask(self, *, tokens: int, output_tokens: int, priority: Priority) -> Ask | None:
        """The head's request to the store, or None: judge it locally (in memory, or while
        the store is unreachable). Called with the lane's lock held."""
        ...

    def answer(self, reply: object) -> Granted | Deferred | None:
        """Read :meth:`Ask.send`'s reply: granted, refused, or None when the store failed
        (from now on admission falls back to the local state: look again at once). Called
        with the lane's lock held."""
        ...

    def release(self, permit: Permit, signal: Signal, *, now: float, backlog: bool) -> None:
        """Give back the slot of a permit this admission granted (its ``lease`` set), with
        the outcome's signal. Called with the lane's lock held."""
        ...

    def charge_tokens(self, delta: float) -> None:
        """Charge (or give back, negative) tokens after the fact: usage said what was spent."""
        ...

    def charge_output(self, delta: float) -> None:
        """:meth:`charge_tokens` for output tokens, where the provider limits them apart."""
        ...

    def close_gate(self, until: float, wait_s: float, *, tokens: bool = False) -> None:
        """Nobody goes before ``until`` (``wait_s`` from now): a hinted 429 (``tokens``: one
        about tokens, whose budget is empty until then)."""
        ...

    def key_sent_in_second_before(self, sent_at: float) -> int | None:
        """How many requests every client of the key sent in the second up to ``sent_at``;
        None: this lane is the only one (it counts its own)."""
        ...

    def key_sent_at_most(self, sent_at: float) -> tuple[float, float] | None:
        """At most how many requests, and tokens charged, every client of the key sent in
        the second up to ``sent_at`` (a count that may run high, never low: inf where it
        cannot be told); None: this lane is the only one (it counts its own). What a 429
        is judged noise against: a fleet that outran the stated rate must never read as
        one that kept to it."""
        ...

    def stated(self, rpm: float | None, tpm: float | None) -> None:
        """The provider's headers stated new limits (the lane's ``learned_rpm``/``tpm``)."""
        ...

    def budget_left(
        self, permit: Permit, *, requests_left: float | None, tokens_left: float | None
    ) -> None:
        """What the answer to ``permit`` says is left of a budget the provider counts down
        with no limit stated (None: not stated; inf in either: forget the budget). A local
        admission's budget is the lane's (:attr:`LocalAdmissionPolicy.stated_left`); a shared
        one counts it for every process of the key."""
        ...

    def settled(self, now: float) -> None:
        """An outcome was learned from: share what the lane's controller decided."""
        ...


class LocalAdmissionPolicy:
    """Admission in this process: the cooldown gate, the buckets, the slots.

    The buckets are made, resized and drained by the lane's controller (from stated limits,
    429s and headroom); this object decides with them. Slots held far past the lane's normal
    latency (hung requests, ``outstanding``) stop counting against an adaptive limit."""

    __slots__ = (
        "_clock",
        "answered",
        "cooldown",
        "input_only",
        "latency",
        "new_territory_answered",
        "new_territory_at",
        "output_tokens",
        "outstanding",
        "requests",
        "sent_peak",
        "slots",
        "stated_left",
        "stated_tokens_left",
        "tokens",
    )

    def __init__(
        self, *, slots: FixedLimit, latency: LatencyTracker, clock: Callable[[], float]
    ) -> None:
        self._clock = clock
        self.slots = slots
        self.latency = latency
        self.cooldown = CooldownGate()
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        """Tokens per minute: all of a request's tokens, or its input alone where the
        provider limits output apart (then :attr:`output_tokens` holds the output)."""
        self.output_tokens: TokenBucket | None = None
        self.input_only = False
        """Whether :attr:`tokens` holds a request's input alone though output is not limited
        apart: the provider's token quota counts the prompt alone, as a 429 naming an
        input-token quota said (Gemini's). Set by the lane."""
        self.new_territory_at = -math.inf
        """When a request last raised :attr:`sent_peak`."""
        self.sent_peak = 0
        """The most in flight a request was ever sent at and not refused for it (an in-flight
        refusal lowers it): past it, an in-flight cap may refuse, and a cap answers at once,
        before a burst into it could be held back. Below it, the way back is free."""
        self.answered = False
        """Whether any answer came back yet (before one, the start's ramp paces itself)."""
        self.new_territory_answered = True
        """Whether an answer came back since :attr:`sent_peak` was last raised."""
        self.stated_left = math.inf
        """Requests a provider's ``remaining`` says are left where it states no limit to pace
        at (Azure: a window of unknown length): at none, one request at a time goes (its
        answer says whether a window began; a 429 says when one does). Set by the lane."""
        self.stated_tokens_left = math.inf
        """The same for tokens (the request's whole estimate, or its input where output is
        limited apart), with a request's worth kept in hand."""
        # id(permit) -> sent_at of admitted attempts with no answer yet, oldest first. Ids, not
        # the permits: a permit dropped without release must still be collected (and release).
        self.outstanding: dict[int, float] = {}

    @property
    def local(self) -> LocalAdmissionPolicy:
        return self

    @property
    def sees_every_acceptance(self) -> bool:
        return True

    @property
    def sees_token_level(self) -> bool:
        return True

    def try_admit(self, now: float, tokens: int, output_tokens: int) -> float:
        """0.0 when admitted (buckets charged; the caller takes the slot); else seconds to
        wait (inf: until a slot frees).

        ``tokens`` is the whole cost; ``output_tokens`` the part reserved for the answer, which
        goes to the output bucket where the provider limits output apart."""
        output = self.output_tokens
        input_tokens = tokens - output_tokens if output is not None or self.input_only else tokens
        wait = self.cooldown.remaining_s(now)
        requests = self.requests
        # Comparisons, not max(), and arguments passed positionally: this runs on every
        # admission and every queued look.
        if requests is not None:
            paced_s = requests.wait_s(now, 1)
            wait = paced_s if paced_s > wait else wait
        token_bucket = self.tokens
        if token_bucket is not None and input_tokens:
            paced_s = token_bucket.wait_s(now, input_tokens)
            wait = paced_s if paced_s > wait else wait
        if output is not None and output_tokens:
            paced_s = output.wait_s(now, output_tokens)
            wait = paced_s if paced_s > wait else wait
        if wait > 0.0:
            return wait
        slots = self.slots
        if slots.__class__ is FixedLimit:  # slot_wait's first case, inlined
            if slots.in_flight >= slots.limit:
                return math.inf
        else:
            slot_wait = self.slot_wait(now)
            if slot_wait > 0.0:
                return slot_wait
        # Tokens keep a request's worth in hand: what we charge is an estimate, and over a
        # window of estimates the provider's count runs a request ahead of ours now and then.
        if (
            self.stated_left < 1.0 or self.stated_tokens_left < 2 * input_tokens
        ) and slots.in_flight:
            return math.inf
        self.stated_left -= 1.0
        self.stated_tokens_left -= input_tokens
        if requests is not None:
            requests.spend(now, 1)
        if token_bucket is not None and input_tokens:
            token_bucket.spend(now, input_tokens)
        if output is not None and output_tokens:
            output.spend(now, output_tokens)
        return 0.0

    def slot_wait(self, now: float) -> float:
        """0.0 when a slot is free; else how long until one may be (inf: until a release).

        Slots held far past the lane's normal latency (hung requests) stop counting against
        an adaptive limit, and before any answer the adaptive window grows with silence."""
        slots = self.slots
        if not isinstance(slots, AimdLimit):
            return 0.0 if slots.in_flight < slots.limit else math.inf
        if slots.in_flight < slots.limit:
            if slots.in_flight >= self.sent_peak:
                return self._new_territory_wait(now, slots.in_flight)
            return 0.0
        wait = slots.waiting_for_slot(now)
        if slots.in_flight < slots.limit:
            return 0.0
        stale_after_s = self.stale_after_s()
        if stale_after_s is not None and self.outstanding:
            stale = 0
            for sent_at in self.outstanding.values():
                age = now - sent_at
                if age < stale_after_s:
                    wait = min(wait, stale_after_s - age)
                    break
                stale += 1
            if slots.in_flight - stale < slots.limit:
                return 0.0
        return wait

    def _new_territory_wait(self, now: float, in_flight: int) -> float:
        """How long before a request may raise :attr:`sent_peak` (0.0: now).

        One more at a time, each after an answer came back since the last: an in-flight cap
        refuses the first request past it within a network round trip, and a window that
        jumped (a floor read from a stated rate doubles what is in flight) sent its new slots'
        requests 5 ms apart, six of them past a cap of 7 before its refusal was back. Without
        an answer, the most in flight still doubles in a mean answer's time (at most
        :data:`_NEW_TERRITORY_DOUBLING_S`): the first answers are few, and one more per answer
        alone cost `openai` seed 3 0.03 of the reference in its climb. Before the first
        answer, 5 ms apart (the start's ramp and silence pace themselves)."""
        if not self.answered:
            spacing_s = _NEW_TERRITORY_SPACING_S
        elif self.new_territory_answered:
            return 0.0
        else:
            doubling_s = _NEW_TERRITORY_DOUBLING_S
            mean_s = self.latency.mean_s  # of the successes so far (0.0: none yet)
            if 0.0 < mean_s < doubling_s:
                doubling_s = mean_s
            spacing_s = doubling_s / max(1, in_flight)
        wait = self.new_territory_at + spacing_s - now
        return wait if wait > 0.0 else 0.0

    def stale_after_s(self) -> float | None:
        """How long a slot may go unanswered before it stops blocking others (None: no
        latency known yet)."""
        if not self.latency.mean_known:
            return None
        return max(_STALE_MIN_S, _STALE_LATENCIES * self.latency.mean_s)

    def paced_now(self, now: float) -> bool:
        """Whether neither the cooldown nor the request pacing holds a request back now."""
        if self.cooldown.remaining_s(now=now) > 0:
            return False
        requests = self.requests
        return requests is None or requests.wait_s(now=now, cost=1) == 0.0

    def ask(self, *, tokens: int, output_tokens: int, priority: Priority) -> Ask | None:
        return None

    def answer(self, reply: object) -> Granted | Deferred | None:
        raise TypeError(f"a local admission sends no request to answer (got {reply!r})")

    def release(self, permit: Permit, signal: Signal, *, now: float, backlog: bool) -> None:
        """Free ``permit``'s slot (the lane releases local slots inline: this is for
        callers that hold a permit of this admission outside a lane)."""
        self.outstanding.pop(id(permit), None)
        self.slots.release(
            now=now,
            sent_at=permit.sent_at,
            in_flight_at_send=permit.in_flight_at_send,
            signal=signal,
            backlog=backlog,
        )

    def charge_tokens(self, delta: float) -> None:
        tokens = self.tokens
        if tokens is not None:
            tokens.adjust(self._clock(), delta)  # positionally: every answer with usage

    def charge_output(self, delta: float) -> None:
        if self.output_tokens is not None:
            self.output_tokens.adjust(now=self._clock(), delta=delta)

    def close_gate(self, until: float, wait_s: float, *, tokens: bool = False) -> None:
        self.cooldown.close_until(until)

    def key_sent_in_second_before(self, sent_at: float) -> int | None:
        return None

    def key_sent_at_most(self, sent_at: float) -> tuple[float, float] | None:
        return None

    def stated(self, rpm: float | None, tpm: float | None) -> None:
        return None

    def budget_left(
        self, permit: Permit, *, requests_left: float | None, tokens_left: float | None
    ) -> None:
        return None  # the lane sets stated_left and stated_tokens_left itself

    def settled(self, now: float) -> None:
        return None

    def __repr__(self) -> str:
        return f"<LocalAdmissionPolicy {self.slots!r} {self.cooldown!r}>"
