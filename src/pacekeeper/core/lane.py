"""One lane per (route, model): its limits, its state, and the queue of requests waiting for it.

Admission is all-or-nothing at one instant: a request leaves when the cooldown gate is open,
the request and token buckets both have room, and a concurrency slot is free. Only then are the
buckets charged and the slot taken, so a request that waits for a slot does not hold budget.

Who waits and who goes next is the lane's :class:`~pacekeeper.core.queue.WaitQueue`: priority
classes with a minimum share for the lower ones, fair shares across tenants, first come first
served within a tenant, retries at the front. Only the head of the queue evaluates the state;
the rest sleep until they become the head. So a release wakes one waiter, not ten thousand,
and pacing is exact because nobody races the head.

The lane is thread-safe (one lock around the pure state), and its waiters may be asyncio
tasks on any event loop or plain threads: a wake from another thread goes through
``call_soon_threadsafe``. That is what lets the async and sync transports share one governor.

What the lane learns from outcomes (:meth:`Lane.settle`, one lock per attempt) is evidence, each
kind moving one thing:

* a stated limit (configured, ``x-ratelimit-limit-*``) is the ceiling of the pacing rate
  (:mod:`~pacekeeper.core.rate`); a 429 about the rate cuts below it, successes recover;
* ``remaining`` is the provider's headroom when it counted our request, in a window of whatever
  length it uses (a minute at OpenAI, a second at some gateways, 10 s at Azure). Less what we
  sent since and plus what refilled since, it is the headroom now; the request bucket is drained
  to it when it is lower. Never read as a fraction of a minute;
* a 429 about requests in flight (told apart by structure: the answer's own remaining says the
  window had room, or it came at a new peak of requests in flight) teaches the concurrency cap;
* overload answers (503, 529, timeouts) cut the concurrency window only when their recent share
  rises above this upstream's baseline (:mod:`~pacekeeper.core.congestion`); answers that swell
  as requests queue cut it too (:mod:`~pacekeeper.core.latency`), which is all a self-hosted
  server that never answers 429 says;
* a slot held far past the lane's normal latency (a hung request) stops blocking the others.
"""

from __future__ import annotations

import enum
import math
import threading
from asyncio import CancelledError
from collections import Counter, deque
from dataclasses import replace
from typing import TYPE_CHECKING

from pacekeeper.core.admission import AdmissionPolicy, Granted, LocalAdmissionPolicy
from pacekeeper.core.bucket import TokenBucket
from pacekeeper.core.budget import RetryBudget
from pacekeeper.core.classify import OutcomeKind
from pacekeeper.core.concurrency import AimdLimit, FixedLimit, Signal
from pacekeeper.core.congestion import CongestionDetector, RefusalShare
from pacekeeper.core.depth import FixedWindows, RefillingQuota, StatedDepth, StatedWindow
from pacekeeper.core.evidence import (
    budget_exhausted,
    budgets_have_room,
    drain_to_first_window,
    drain_to_headroom,
    outlasts_a_minute,
    output_budget_short,
    spent_budget,
)
from pacekeeper.core.grid import FixedGrid
from pacekeeper.core.headers import RateLimitSnapshot
from pacekeeper.core.latency import LatencyTracker
from pacekeeper.core.priority import Priority
from pacekeeper.core.queue import WaitQueue, bounded_by_deadline
from pacekeeper.core.rate import PacedRate, succeeded_together
from pacekeeper.core.scale import EstimateScale
from pacekeeper.core.stats import KeyStats, StatsSnapshot
from pacekeeper.core.waiting import (
    AsyncWaiter,
    QueueTimeout,
    ThreadWaiter,
    Waiter,
    cancelled_since,
    cancels_requested,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from pacekeeper.core.admission import Ask
    from pacekeeper.core.classify import Verdict
    from pacekeeper.core.config import Limits, RetryPolicy
    from pacekeeper.core.governor import Call

__all__ = ["Lane", "LaneKey", "Permit", "QueueTimeout", "Reconciliation", "UserPermit"]

_ThreadWaiter = ThreadWaiter  # the name tests imported before waiting.py

LaneKey = tuple[str, "str | None"]
"""(route, model): providers limit per model, and routes (chat, embeddings) differ in cost."""

_LIMITS_READ_EVERY_S = 0.1
_FLOOR_HEADROOM = 1.5  # slots a known rate needs: rate x mean latency, and half again (the first
# answers to come back are the fastest, so an early mean runs low)
_SWOLLEN = 1.3  # answers this much slower than unloaded: the upstream queues our requests
_QUEUED_ANSWER = 1.6  # one answer this much slower, past slow start: grows no window
_FLOOR_EVERY_S = 0.25
_SERVED_SPAN_S = 4.0  # completions per second, counted over this long (shorter ones are noisy)
_SERVED_SPAN_MAX_S = 5.0  # the answers a lane keeps the times of
_SERVED_EVERY_S = 0.1
_WINDOW_IN_FLIGHT = 32  # two windows of the latency tracker (16 requests each)
_FLOOR_DOUBLES_S = 1.0  # with answers still to come, the floor doubles this often at most
_SUCCESSES_TO_JUDGE = 10  # before these, the accepted rate says nothing
_MIN_BURST_SCALE = 1 / 16
_SLOT_MARGIN_S = 0.015  # kept clear of fixed windows' boundaries beyond where they may be
_BURST_QUIET_S = 30.0
_PEAK_FADES_S = 2.0
_PEAK_MARGIN = 2  # our count runs ahead of the server's by the answers still on the wire
_AS_BUSY_MARGIN = 2  # sends in a second: as busy as another within this many
_REFUSALS_KEPT = 16  # the latest 429s whose requests held no slot at the server
# While the token budget is slack, one exact count in 64 keeps both scales learned.
_EXACT_EVERY = 64
_CHEAP_LEARNED = 10  # answers before a character-count estimate is trusted
_CHEAP_LOWEST = 0.02
_TIGHT_REQUESTS = 64  # a token bucket with room for fewer such requests decides when they leave
_SENDS_KEPT_S = 2.0
_CLIMB_MEASURED_SENDS = 8
"""A refusal on the climb from a discovery is measured from it only over at least this many
sends: a span holds the server's refill give or take a request at either end (while it
applied to request rates too, 3 sends to a 300/min bucket answered in 1.75 s read 234/min,
and the pace held at 215 for seconds)."""
_LIMIT_REMEMBERED_S = 10.0
_LIMIT_PACE_SHARE = 0.9
_DISCOVERED_HELD = 0.8
"""A 429 to a discovered rate after a second the server took under this share of the most it
took sustained lately is noise (:meth:`Lane._unexplained_discovered`)."""
_SHORT_MEAN_S = 2.0  # and over this span, once the start's burst is this far behind:
_SHORT_MEAN_AFTER_S = 4.0
_HELD_REFUSED = 2  # refused in that second, this one included, at most
_REFUTED_PEAK = 1.3  # a refuted cap's refusal is noise when a second since took this much more
_SUSTAINED_BEST_S = 30.0  # how long that most is remembered
_LOSS_OVER_MEAN = 1.4
_FAST_PAST_BEST = 1.5  # past a noise 429, doubling up to this times the best sustained
_FAST_PROBE_AFTER_LIMIT_S = 30.0  # and only up to that best this long after a limit found by share
_RATE_PLAUSIBLE = 0.8  # sent this share of a second's stated budget in the second before
_OVERLOAD_KINDS = frozenset({OutcomeKind.OVERLOADED, OutcomeKind.TIMEOUT})
_BUCKETS = ("requests", "tokens", "output_tokens")
_DEEP_S = 2.0  # a provider's bucket this deep is spent at once; a shallower one gains little
# Of it, this share: a burst reaches the provider spread over a few ms and token estimates are
# not exact, so a bucket spent to exactly empty refuses the last of the burst.
_DEPTH_SPENT = 0.8
_CLOCKS_APART_S = 1.0  # how far a provider's clock may be from ours (a time-of-day reset)
_Reading = tuple[int | None, int | None, float | None]  # a budget's limit, remaining, reset_s


_FIRST_TRIP_S = 0.1
"""How much later than sent a request sent before any answer may reach the provider: it opens
a connection (TCP and TLS handshakes, a few round trips), where later ones reuse one. Its
answer's reset counts from then, and the window it describes may end that much later than
the reset says, counted from the send."""


_SHORT_REQUEST_WINDOW_S = 10.0
"""A request budget whose remaining and reset add up to at most this many seconds of its
stated rate is a short window's, for its first window (:meth:`Lane._drain_first_request_window`).
OpenAI scales a 1-s bucket's remaining to the minute: a few requests out of it read 35-45 s,
and at the 40 s the token budgets use, the bucket made from the first answer was drained as a
window's (`halving` seed 2: efficiency 0.81, main's 0.91)."""


_TokenReading = tuple[int | None, int | None, int | None, float | None]
"""What an answer says of its token budgets: (tpm, output tpm, remaining, reset_s)."""


def _keep_windows(
    bucket: TokenBucket | None,
    windows: FixedWindows,
    *,
    now: float,
    budget_per_s: float | None,
) -> None:
    """Keep ``bucket`` to the fixed windows its budget's resets show, so what a window left
    is not carried into the next (see :meth:`TokenBucket.set_windows`), or refill it
    continuously again once they are not shown after all: from the first end seen (a
    request is a tenth to a quarter of a window, and a window's leftover carried into the
    next is a 429), whole windows at their start once their length is known. A window holds
    ``budget_per_s`` (the stated limit) times its length, whatever the pace."""
    if bucket is None:
        return
    grid = windows.grid()
    if grid is not None:
        start_s, length_s = grid
        # A window's budget goes at its start: not before the latest end seen, and a guard
        # after it, since a request's trip varies by that much (a burst whose first requests
        # arrive early lands in the window before, which is full).
        guard_s = 2.0 * windows.guard_s
        bucket.set_windows(
            start_s=start_s,
            length_s=length_s,
            now=now,
            guard_s=guard_s,
            budget_per_s=budget_per_s,
        )
    elif bucket.keeps_windows:
        bucket.clear_windows(now=now)


def _input_alone_stated(minute: RateLimitSnapshot) -> bool:
    """Whether the only token limit stated counts input tokens alone (no output limit beside
    it, as Anthropic's, nor a limit of all tokens)."""
    return bool(
        minute.limit_input_tokens
        and minute.limit_output_tokens is None
        and minute.limit_tokens is None
    )


def _token_reading(minute: RateLimitSnapshot) -> _TokenReading:
    """The token budget an answer's per-minute headers describe: Anthropic limits input and
    output apart (its tokens-* headers repeat whichever is the most restrictive): input is
    paced at admission, output reserved from max_tokens and settled from usage."""
    if minute.limit_input_tokens and minute.limit_output_tokens:
        return (
            minute.limit_input_tokens,
            minute.limit_output_tokens,
            minute.remaining_input_tokens,
            minute.reset_input_tokens_s,
        )
    if minute.limit_tokens:
        return minute.limit_tokens, None, minute.remaining_tokens, minute.reset_tokens_s
    return (
        minute.limit_input_tokens,
        None,
        minute.remaining_input_tokens,
        minute.reset_input_tokens_s,
    )


_RETEST_WAITS_RT = 3.0  # a provisional cap's second test waits this many round trips at most
_PACE_KNOWN_AFTER = 4  # answers before their mean round trip says how busy a pace was
# A provisional cap is tried one higher after a round trip, at least this; after only this
# when a stated rate with room ruled the rate out (a window the burst outran needs the round
# trip to pass; noise does not).
_CAP_TEST_MIN_S = 0.2


class _Refused(enum.Enum):
    """What a 429 was about, as its structure and the lane's state tell."""

    RATE = "rate"
    IN_FLIGHT = "in flight"
    EITHER = "either"
    """A bare 429 at a new peak in flight with no stated rate: a cap explains it, and so
    does a rate that the burst reaching that peak outran."""
    UNTOLD = "untold"
    """A provisional cap's test refused where only the start's burst (sent before the first
    answer) made the lane's pace as busy as the refused second: a cap and a rate refuse such
    a test alike. The cap stays provisional and is tested once more, after a second quiet
    enough to tell (:meth:`Lane._retest_untold`)."""


class Reconciliation:
    """An answer's usage against what admission charged (see :meth:`Lane.reconcile`).

    A plain slotted class: one is made for every answer with usage, and a named tuple's
    ``__new__`` adds a call to ``tuple.__new__``; it is read once, under the lane's lock."""

    __slots__ = (
        "chars_estimated",
        "cheap",
        "completion_actual",
        "completion_reserved",
        "prompt_actual",
        "prompt_charged",
        "prompt_estimated",
    )

    def __init__(
        self,
        *,
        prompt_estimated: int,
        prompt_actual: int,
        completion_reserved: int,
        completion_actual: int | None,
        prompt_charged: int | None = None,
        cheap: bool = False,
        chars_estimated: int | None = None,
    ) -> None:
        self.prompt_estimated = prompt_estimated
        self.prompt_actual = prompt_actual
        self.completion_reserved = completion_reserved
        self.completion_actual = completion_actual
        self.prompt_charged = prompt_charged
        self.cheap = cheap
        self.chars_estimated = chars_estimated


class Permit:
    """An admitted attempt: holds one concurrency slot until released.

    Release it exactly once with the outcome's :class:`Signal`; further releases are ignored,
    so a ``finally`` can always release without double-counting.

    This class is what the surfaces that always report their attempts hold (the transports,
    ``Governor.run``, ``wrap()``, ``pacekeeper run``): it has no finaliser, whose call on
    every request's permit was pure cost there. A permit handed to user code is a
    :class:`UserPermit`, which frees its slot when dropped unreleased.
    """

    __slots__ = (
        "_lane",
        "charged_before",
        "filled_window",
        "in_flight_at_send",
        "lease",
        "output_charged_before",
        "output_tokens",
        "queued_s",
        "refused_for_slot",
        "released",
        "sent_at",
        "seq",
        "tokens",
    )

    # Positional or keyword: the lane's grant passes them positionally (every request).
    def __init__(  # noqa: PLR0917
        self,
        lane: Lane,
        sent_at: float,
        in_flight_at_send: int,
        tokens: int,
        queued_s: float,
        lease: object = None,
        seq: int = 0,
        charged_before: float = 0.0,
        filled_window: bool = False,
        output_tokens: int = 0,
        output_charged_before: float = 0.0,
    ) -> None:
        self.released = False  # first: UserPermit.__del__ reads it, even of one half made
        self._lane = lane
        self.output_tokens = output_tokens
        """The part of ``tokens`` reserved for the answer."""
        self.output_charged_before = output_charged_before
        """Output tokens the lane had charged before this one, net of what answers gave back."""
        self.filled_window = filled_window
        """Whether this request took the last slot of the concurrency window."""
        self.seq = seq
        """The lane's admission count with this one: later ones were sent after it."""
        self.charged_before = charged_before
        """Tokens the lane had charged before this one (what was sent after it, in tokens)."""
        self.lease = lease
        """A shared backend's handle on the slot (None for local slots)."""
        self.sent_at = sent_at
        self.in_flight_at_send = in_flight_at_send
        self.tokens = tokens
        self.queued_s = queued_s
        self.refused_for_slot = False
        """Refused for the number in flight under a cap this lane knows: its retry waits for
        a slot under the cap (an answer of ours frees one), not for the 429's hint."""

    def release(self, signal: Signal = Signal.NEUTRAL) -> None:
        if not self.released:
            self.released = True
            self._lane.release(self, signal)

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Permit {state} tokens={self.tokens} queued={self.queued_s:.3f}s>"


class UserPermit(Permit):
    """A :class:`Permit` handed to user code (``Lane.acquire``, ``Call.admit``,
    ``gov.admit``), or granted by a shared admission: dropped without release (an abandoned
    stream nobody closed, a forgotten permit), it frees its slot when collected."""

    __slots__ = ()

    def __del__(self) -> None:
        if not self.released:
            self.release()


_PERMITS = (Permit, UserPermit)
"""Both permit classes: ``turn.__class__ in _PERMITS`` tells a permit from a wait without
the C call of ``isinstance`` (the attempt loop does so on every wake)."""


class Lane:
    """The waiting queue, the acquire loop and the controller of one (route, model).

    Where its head is judged is :attr:`admission` (:mod:`pacekeeper.core.admission`): this
    process's gate, buckets and slots by default, or a backend's shared store composed over
    them. The lane is never subclassed: a backend supplies an admission."""

    __slots__ = (
        "_admitted",
        "_at_edge",
        "_burst_cut_at",
        "_burst_scale",
        "_cap_refuted",
        "_cap_retest_by",
        "_cap_retested",
        "_charged",
        "_cheap_learned",
        "_clock",
        "_configured",
        "_depths",
        "_estimates",
        "_first_admitted_at",
        "_first_discovery_at",
        "_first_success_at",
        "_floor_due",
        "_grid",
        "_input_alone_from_seq",
        "_limit_found",
        "_local",
        "_lock",
        "_next_limits_read",
        "_output_charged",
        "_outstanding_sent_at",
        "_probe_seq",
        "_queue",
        "_quota_budgets",
        "_quota_refills",
        "_rate_cut_seq",
        "_recent_charges",
        "_recent_sends",
        "_refusal_marks",
        "_refusals_back",
        "_request_window",
        "_request_windows",
        "_served_due",
        "_shared",
        "_stated_left_seq",
        "_stated_sent_at",
        "_success_peak_at",
        "_success_peak_in_flight",
        "_successes",
        "_sustained_best",
        "_token_windows",
        "_untested_after_start",
        "_untested_refusal",
        "_untested_seq",
        "_window_from_seq",
        "_window_intake",
        "_window_intake_tokens",
        "admission",
        "budget",
        "cheap_scale",
        "congestion",
        "cooldown",
        "estimate_scale",
        "key",
        "latency",
        "learned_otpm",
        "learned_rpm",
        "learned_tpm",
        "learned_tpm_alone",
        "local_share",
        "output_rate",
        "refusals",
        "request_rate",
        "slots",
        "stated_limit_text",
        "stats",
        "token_rate",
    )

    def __init__(
        self,
        key: LaneKey,
        *,
        limits: Limits,
        retry: RetryPolicy,
        clock: Callable[[], float],
        slots: FixedLimit | None = None,
        budget: RetryBudget | None = None,
        admission: Callable[[Lane], AdmissionPolicy] | None = None,
    ) -> None:
        """``slots``, ``budget`` and ``admission`` are for backends: the concurrency limit
        and the retry budget to use instead of this process's own, and a factory of the
        admission to decide with (given this lane, once it is made; see
        :mod:`pacekeeper.core.admission`). By default everything stays in this process."""
        self.key = key
        self._configured = limits
        self._clock = clock
        # Re-entrant: a Permit dropped without release is released from __del__, which the garbage
        # collector may run while this thread already holds the lock.
        self._lock = threading.RLock()
        self._queue = WaitQueue(
            name=f"{key[0]} model={key[1]}", min_share=limits.min_share, lock=self._lock
        )
        self._next_limits_read = -math.inf
        self.stated_limit_text: tuple[str, str] | None = None
        """Where the last answer whose limits were read stated the requests limit, and how
        (a header's name and text; set by the transports): an answer between reads (see
        :meth:`limits_due`) that states it otherwise is read at once. A limit that halved
        showed on two answers a tenth of a second before the 429 that taught it, unread."""
        self.learned_rpm: float | None = None
        """The requests-per-minute limit the provider's headers state (None: not stated)."""
        self.learned_tpm: float | None = None
        # The token limit was stated with nothing said of what is left (a 429 body's quota:
        # Gemini's quotaValue), not by headers that count a window down.
        self.learned_tpm_alone = False
        self.learned_otpm: float | None = None
        self.request_rate = PacedRate()
        self.token_rate = PacedRate()
        """Tokens per minute: all of a request's tokens, or its input alone where the
        provider limits output apart (then :attr:`output_rate` paces the output). With no
        token limit stated, a 429 that says tokens ran out discovers one."""
        self.output_rate = PacedRate(discovers=False)
        self.congestion = CongestionDetector()
        self.refusals = RefusalShare()
        """The share of 429s among recent outcomes against this lane's long-run share: a
        steady background of them (a busy provider's) is noise, not the rate
        (:meth:`_unexplained`)."""
        self.latency = LatencyTracker()
        self.estimate_scale = EstimateScale()
        self.cheap_scale = EstimateScale(initial=1.0, lowest=_CHEAP_LOWEST, highest=1.5)
        """Provider's tokens per character of a character-count estimate (see
        :meth:`wants_exact_estimate`): a separate ratio from the exact estimates'."""
        self._estimates = 0
        self._cheap_learned = False
        """Whether :attr:`cheap_scale` has seen enough answers (it never forgets them): read
        on every request, its count is a property's call until then, and none after."""
        self.local_share = 1.0
        """The share of the limits this process may use on its own (a shared backend that
        lost its store gives each of N live processes 1/N)."""
        self._admitted = 0
        self._stated_left_seq = 0
        # Successes since a window stated by remaining alone was last spent (from the
        # request admitted as ``_window_from_seq``): what the next such window holds.
        self._window_from_seq = 0
        self._window_intake = 0
        self._probe_seq = -1
        self._window_intake_tokens = 0
        self._first_admitted_at = -math.inf
        self._charged = 0.0
        self._output_charged = 0.0
        """Output tokens reserved at admission, net of what answers settled (gave back)."""
        self._burst_scale = 1.0
        self._burst_cut_at = -math.inf
        self._grid: FixedGrid | None = FixedGrid()
        """Where a discovered request rate's bare 429s give way to acceptances: fixed
        windows told from a bucket (None once a 429 said when to come back, or stated a
        limit: no longer a hintless server)."""
        self._depths = {name: StatedDepth() for name in _BUCKETS}
        """How deep the provider's bucket behind each of ours is, as its headers show."""
        self._token_windows = FixedWindows()
        """Whether the provider counts tokens in fixed windows, as its resets show."""
        self._request_windows = FixedWindows()
        """The same for requests of a per-minute limit counted in short windows."""
        self._floor_due = -math.inf
        self._served_due = -math.inf
        self._recent_sends: deque[float] = deque()
        """When this lane admitted its requests over the last couple of seconds."""
        self._input_alone_from_seq = 0
        """The admissions before the token bucket charged input alone (their charges in
        :attr:`_charged`'s old units)."""
        self._recent_charges: deque[tuple[int, int]] = deque()
        """What each of :attr:`_recent_sends` cost: (tokens, of which output reserved)."""
        self._refusal_marks: dict[str, tuple[float, int, float]] = {}
        """Per rate ("requests", "tokens"): the latest refusal it measured, as (sent at, its
        admission's number, the tokens charged before it)."""
        self._success_peak_in_flight = 0
        self._success_peak_at = -math.inf
        self._refusals_back: deque[tuple[int, float, float]] = deque(maxlen=_REFUSALS_KEPT)
        """The latest 429s as (admission number, when back, how long it took): a request
        refused held no slot at the server, however long our count held it
        (:meth:`_not_held_at`)."""
        self._cap_refuted = False
        self._untested_refusal: tuple[float, int] | None = None
        """(sent at, sent in the second before) of the bare 429 that taught a provisional
        cap: if the cap is refuted, that refusal was the rate, and it is measured then."""
        self._untested_seq = 0
        """The admission number of the request that refusal refused."""
        self._untested_after_start = False
        """The second before that refusal was mostly the start's burst
        (:meth:`_start_held_second`), whose count says what was held in flight, not a pace
        a rate took."""
        self._cap_retested = False
        """Whether the provisional cap's test was tried again (:attr:`_Refused.UNTOLD`)."""
        self._cap_retest_by = -math.inf
        """Until when that second test waits for a second quiet enough to tell."""
        self._first_success_at = math.inf
        self._stated_sent_at = -math.inf
        self._quota_budgets: set[str] = set()
        """Budgets ("requests", "tokens") whose headers turned out to describe a quota per
        hour or day: their limit is not a rate, their remaining not a minute's headroom."""
        self._quota_refills = {"requests": RefillingQuota(), "tokens": RefillingQuota()}
        """Whether a budget refills over hours or a day while its reset reads seconds."""
        self._request_window = StatedWindow()
        """How long the window of a request budget stated without one (a gateway's
        unsuffixed X-RateLimit-Limit) is, as its resets bound it."""
        self._successes = 0
        self._limit_found: tuple[float, float] | None = None
        self._at_edge = False
        """Whether the 429 being judged was taken as noise at a discovered pace's edge."""
        self._rate_cut_seq = 0
        """The latest admission number when the request rate was last cut."""
        self._first_discovery_at = math.inf
        """When the first 429 found a discovered rate in force (sampled then)."""
        self._sustained_best: tuple[float, float] = (0.0, -math.inf)
        """(per minute, when) the most a discovered rate's server was seen to take over five
        seconds lately, sampled at its 429s (:meth:`_unexplained_discovered`)."""
        """(when, at what pace) 429s last read as a limit's by their share: refusals soon
        after at a pace near it are that limit's again (:meth:`_unexplained`)."""
        if slots is None:
            adaptive = limits.adaptive
            slots = (
                AimdLimit(adaptive) if adaptive is not None else FixedLimit(int(limits.concurrency))  # type: ignore[arg-type]
            )
        self.slots = slots
        self._local = local = LocalAdmissionPolicy(slots=slots, latency=self.latency, clock=clock)
        # the send times of admitted attempts with no answer yet, oldest first: a live view,
        # made once (the latency tracker reads it on every answer)
        self._outstanding_sent_at = local.outstanding.values()
        self.cooldown = local.cooldown
        self.budget = budget or RetryBudget(
            ratio=retry.retry_budget_ratio,
            initial=retry.retry_budget_initial,
            maximum=retry.retry_budget_max,
        )
        self.stats = KeyStats(route=key[0], model=key[1])
        self.admission: AdmissionPolicy = local
        """Where the head of the queue is judged (:mod:`pacekeeper.core.admission`)."""
        self._shared = False
        """Whether :attr:`admission` is another than this process's own (a backend's)."""
        self._state_ceilings(now=clock())
        if admission is not None:
            # Made last: a backend's admission reads the lane (and may adopt what its fleet
            # learned before this process started).
            self.admission = made = admission(self)
            self._shared = made is not local
            if made.local is not local:
                raise ValueError(
                    f"the admission made for lane {key!r} ({made!r}) keeps a local state of "
                    "its own: a backend's admission must compose the lane's (`lane.local`)"
                )

    # -- the local state's buckets ---------------------------------------------------------

    @property
    def local(self) -> LocalAdmissionPolicy:
        """This process's admission state: the gate, the buckets, the slots (a shared
        admission's fallback, and the buckets the controller shapes either way)."""
        return self._local

    @property
    def requests(self) -> TokenBucket | None:
        """The request bucket (None: no request limit known)."""
        return self._local.requests

    @property
    def tokens(self) -> TokenBucket | None:
        """The token bucket: all of a request's tokens, or its input alone where the
        provider limits output apart (then :attr:`output_tokens` holds the output)."""
        return self._local.tokens

    @property
    def output_tokens(self) -> TokenBucket | None:
        return self._local.output_tokens

    # -- limits ---------------------------------------------------------------------------

    @property
    def queue(self) -> WaitQueue:
        """The requests waiting for this lane, and who goes next."""
        return self._queue

    @property
    def closed(self) -> bool:
        return self._queue.closed

    @property
    def limits(self) -> Limits:
        return self._configured

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute rate in force: the stated limit (configured or from headers,
        the lower of both) lowered by 429s, or one discovered from 429s that stated nothing."""
        return self.request_rate.rpm

    @property
    def tpm(self) -> float | None:
        return self.token_rate.rpm

    @property
    def output_tpm(self) -> float | None:
        """The output-tokens-per-minute rate in force, where output is limited apart."""
        return self.output_rate.rpm

    @property
    def rpm_limit(self) -> float | None:
        """The requests-per-minute limit as known: stated (configured or from headers), else
        discovered from 429s. :attr:`rpm` is what pacing uses, which 429s may hold below it."""
        rate = self.request_rate
        return rate.ceiling if rate.ceiling is not None else rate.rpm

    @property
    def tpm_limit(self) -> float | None:
        rate = self.token_rate
        return rate.ceiling if rate.ceiling is not None else rate.rpm

    @property
    def discovered_rpm(self) -> float | None:
        """The rate found from hintless 429s when no limit was ever stated (else None)."""
        return self.request_rate.rpm if self.request_rate.discovered else None

    def _state_ceilings(self, *, now: float) -> None:
        self.request_rate.state_ceiling(_lower(self._configured.rpm, self.learned_rpm))
        self.token_rate.state_ceiling(_lower(self._configured.tpm, self.learned_tpm))
        self.output_rate.state_ceiling(_lower(self._configured.output_tpm, self.learned_otpm))
        self._apply_rates(now=now, keep_level=True)

    def _apply_rates(self, *, now: float, keep_level: bool = False) -> None:
        share = self._configured.utilisation * self.local_share
        local = self._local
        for rpm, attr in zip((self.rpm, self.tpm, self.output_tpm), _BUCKETS, strict=True):
            if rpm is None:
                setattr(local, attr, None)  # never known, or a statement withdrawn
                continue
            if isinstance(self.slots, AimdLimit):
                self.slots.end_ramp()  # a rate paces from here, not the start's ramp
            rate = rpm * share / 60.0
            burst = max(1.0, rate * self.burst_s(attr))
            slotted = attr == "requests" and self._grid is not None and self.request_rate.held(now)
            if slotted and self._grid is not None and self._grid.windows is not None:
                # Fixed windows' count, each request in a slot of its own (set below): the
                # bucket must not bind within a window, where the slots go faster than its
                # mean (a burst of 2 let 22 of a window's 25 go).
                burst = float(self._grid.windows.budget)
            bucket: TokenBucket | None = getattr(local, attr)
            if bucket is None:
                bucket = TokenBucket(rate_per_s=rate, burst=burst)
                if self._admitted:
                    # Learned from an answer: what was sent before it already counts in the
                    # provider's window. The bucket holds what it would hold had it paced
                    # everything since the first admission (never more than empty of debt):
                    # a run's first answer comes back to a full bucket only if the requests
                    # before it left the room.
                    used = {
                        "requests": float(self._admitted),
                        "tokens": self._charged,
                        "output_tokens": self._output_charged,
                    }[attr]
                    elapsed_s = max(0.0, now - self._first_admitted_at)
                    bucket.drain_to(now=now, level=max(0.0, burst - used + rate * elapsed_s))
                setattr(local, attr, bucket)
            elif rate != bucket.rate_per_s or burst != bucket.burst:
                bucket.set_rate(rate_per_s=rate, burst=burst, now=now, keep_level=keep_level)
            if attr == "requests":
                self._slot_requests(bucket, now, slotted=slotted)

    def adopt_rates(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        now: float,
        rpm_loss: float | None = None,
    ) -> bool:
        """Make pacing rates decided elsewhere (what a fleet's controllers stored) this
        lane's own, each under its stated ceiling (None: nothing to adopt). ``rpm_loss``: the
        rate a discovered request rate climbs back to (what the fleet's key took when it was
        last refused), else the adopted rate is that aim. True when a rate moved (the
        buckets then follow). Called with the lock held."""
        moved = False
        for rate, value in ((self.request_rate, rpm), (self.token_rate, tpm)):
            if value is None:
                continue
            target = value if rate.ceiling is None else min(value, rate.ceiling)
            if rate.rpm is None or abs(rate.rpm - target) > 1e-6 * target:
                rate.adopt(target, now=now)
                moved = True
        if rpm_loss is not None:
            self.request_rate.aim(rpm_loss)
        if moved:
            self._apply_rates(now=now)
        return moved

    def set_local_share(self, share: float) -> None:
        """Use ``share`` of every limit in this process (a shared admission whose store is
        unreachable gives each of N live processes 1/N; 1.0 when it answers again)."""
        with self._lock:
            self.local_share = share
            self._apply_rates(now=self._clock())
            self._queue.wake_head()

    def burst_s(self, bucket: str) -> float:
        """How many seconds of its rate ``bucket`` (``"requests"``, ``"tokens"`` or
        ``"output_tokens"``) lets go at once: the configured burst, or the depth the
        provider's headers prove for its own bucket when that is deeper (a bucket of 5 s
        spent from the start saves 5 s of a run), halved by 429s at a paced rate (windows
        our burst overfills) and doubled back by quiet half-minutes."""
        burst_s = self._configured.burst_s
        if self._configured.learn_from_headers:
            depth_s = self._depths[bucket].depth_s
            if depth_s is not None and depth_s >= _DEEP_S:
                burst_s = max(burst_s, depth_s * _DEPTH_SPENT)
        return burst_s * self._burst_scale

    def _observe_depths(self, readings: tuple[_Reading, ...], age_s: float, grain_s: float) -> bool:
        """Read each budget's depth from its ``(limit, remaining, reset_s)``, in the order of
        ``_BUCKETS``, counted ``age_s`` before the answer, resets precise to ``grain_s``; True
        when a depth in use changed."""
        changed = False
        for name, (limit, remaining, reset_s) in zip(_BUCKETS, readings, strict=True):
            if not limit or remaining is None:
                continue
            depth = self._depths[name]
            before = depth.depth_s
            depth.observe(
                limit=limit, remaining=remaining, reset_s=reset_s, age_s=age_s, grain_s=grain_s
            )
            changed = changed or depth.depth_s != before
        return changed

    def limits_due(self, now: float) -> bool:
        """Whether a successful answer's rate-limit headers should be read now: at most every
        0.1 s per lane, because parsing them on every answer of a busy lane costs more than
        the little they change in between."""
        if now >= self._next_limits_read:
            self._next_limits_read = now + _LIMITS_READ_EVERY_S
            return True
        return False

    def learn(self, snapshot: RateLimitSnapshot, permit: Permit | None = None) -> None:
        """Adopt the limits a response's headers state (when learning is on), and drain our
        buckets to the provider's headroom when it is lower than ours.

        ``remaining`` is what was left when the provider counted ``permit``'s request, in a
        window of its own choosing; less what this lane sent after it, plus what the stated
        rate refilled since, it is the headroom now (see :mod:`pacekeeper.core.evidence`)."""
        if not self._configured.learn_from_headers:
            return
        with self._lock:
            if snapshot.limit_in_flight is not None:
                # A stated in-flight limit (LiteLLM's max_parallel_requests) is a ceiling from
                # the first answer: nothing to learn from 429s past it, nor to probe. Only
                # ever lowered (as a connection pool's): a limit raised mid-run is not taken.
                # In a fleet the window is the store's, and the cap is learned as before.
                self.slots.cap(snapshot.limit_in_flight)
            now = self._clock()
            sent_at = permit.sent_at if permit is not None else now
            current = sent_at >= self._stated_sent_at
            self._observe_windows(snapshot, now=now, sent_at=sent_at, current=current)
            # A day's quota under a minute's header names (Groq's requests) is not a rate: its
            # exhaustion comes back as a 429 whose hint is hours away, and the rate is found
            # from 429s. What is left is read as below.
            minute = self._per_minute_part(snapshot) or RateLimitSnapshot()
            tokens = _token_reading(minute)
            if self._shared and _input_alone_stated(minute):
                # A limit of input tokens alone (Gemini's quotaValue): a fleet's shared bucket
                # charges prompt and reserve (see _refused_budget), in which units it is no rate.
                tokens = (None, *tokens[1:])
            new_requests = new_tokens = False
            if current:
                self._stated_sent_at = sent_at
                new_requests = self.requests is None
                new_tokens = self._local.tokens is None
                self._take_statement(minute, tokens, now=now, sent_at=sent_at)
            # else: answers arrive out of order, and one to a request sent before the last
            # statement we took describes the limits as they were then (a limit that just
            # halved would flip back and forth with every late answer). What it says was left
            # is still evidence: less what was sent after it, it bounds the headroom now, and
            # its reset shows where a window ends (a 429 comes back at once, and the slower
            # answers sent before it went unread, the drains with them).
            if permit is None or permit.seq == 0:  # 0: not admitted by this lane's buckets
                return
            if permit.seq >= self._stated_left_seq:
                self._note_left(minute, unstated_tokens=tokens[0] is None, permit=permit)
            self._read_headroom(
                minute,
                tokens,
                permit,
                now=now,
                reset_requests_s=snapshot.reset_requests_s,
                new_requests=new_requests,
                new_tokens=new_tokens,
                current=current,
            )

    def _observe_windows(
        self, snapshot: RateLimitSnapshot, *, now: float, sent_at: float, current: bool
    ) -> None:
        """Read from an answer's resets how long its budgets' windows are: the window of a
        request budget stated without one, and (in send order) whether a budget refills over
        a day while its reset reads seconds (called with the lock held)."""
        # A time of day was turned into a wait from now, the answer; a duration counts from
        # when the provider counted the request.
        age_s = now - sent_at if snapshot.resets_to_the_second else 0.0
        reset_from = now if snapshot.resets_to_the_second else sent_at
        window_reset_s = snapshot.reset_requests_s
        if snapshot.requests_window_unknown and window_reset_s is not None:
            self._request_window.observe(
                reset_s=window_reset_s, age_s=age_s, end_at=reset_from + window_reset_s
            )
        if not current:
            return
        for name, limit, remaining, reset_s in (
            (
                "requests",
                snapshot.limit_requests,
                snapshot.remaining_requests,
                snapshot.reset_requests_s,
            ),
            ("tokens", snapshot.limit_tokens, snapshot.remaining_tokens, snapshot.reset_tokens_s),
        ):
            if not limit or remaining is None or reset_s is None:
                continue
            refill = self._quota_refills[name]
            refill.observe(
                limit=limit,
                remaining=remaining,
                reset_s=reset_s,
                end_at=reset_from + reset_s,
                grain_s=snapshot.reset_grain_s,
                # a time of day is also off by the difference between the two clocks
                clocks_apart_s=_CLOCKS_APART_S if snapshot.resets_to_the_second else 0.0,
            )
            if refill.proven:
                self._quota_budgets.add(name)

    def _take_statement(
        self, minute: RateLimitSnapshot, tokens: _TokenReading, *, now: float, sent_at: float
    ) -> None:
        """Adopt the per-minute limits the latest answer states, and the depths its
        resets show (called with the lock held)."""
        tpm, otpm, remaining_tokens, reset_tokens_s = tokens
        limit_requests = minute.limit_requests
        rpm: float | None = limit_requests
        if rpm and minute.requests_window_unknown:
            # N a window nobody stated: a rate only once the resets bound the window.
            depth = self._depths["requests"]
            window_rpm = self._request_window.per_minute(
                rpm, depth_s=depth.depth_s if depth.continuous else None
            )
            rpm = None if window_rpm is None else round(window_rpm, 6)
        quotas = self._quota_budgets
        changed = False
        if "requests" in quotas and self.learned_rpm is not None:
            self.learned_rpm = None  # stated by answers that came before the quota showed
            changed = True
        if "tokens" in quotas and self.learned_tpm is not None:
            self.learned_tpm = None
            changed = True
        if rpm and rpm > 0 and rpm != self.learned_rpm:
            self.learned_rpm = float(rpm)
            changed = True
        if tpm and tpm > 0 and tpm != self.learned_tpm:
            self.learned_tpm = float(tpm)
            self.learned_tpm_alone = remaining_tokens is None
            changed = True
        if otpm and otpm > 0 and otpm != self.learned_otpm:
            self.learned_otpm = float(otpm)
            changed = True
        readings = (
            (limit_requests, minute.remaining_requests, minute.reset_requests_s),
            (tpm, remaining_tokens, reset_tokens_s),
            (otpm, minute.remaining_output_tokens, minute.reset_output_tokens_s),
        )
        # A duration counts from when the provider counted the request; a time of day was
        # turned into a wait from now, the answer, a time on the wire later.
        age_s = now - sent_at if minute.resets_to_the_second else 0.0
        grain_s = minute.reset_grain_s
        if minute.resets_to_the_second:
            # A time of day's depth is off by the clocks' difference as well: an epoch in ms
            # is read as coarsely as one in seconds.
            grain_s = max(grain_s, _CLOCKS_APART_S)
        changed = self._observe_depths(readings, age_s, grain_s) or changed
        if changed:
            self._state_ceilings(now=now)
            self._queue.wake_head()
            if self._shared:
                self.admission.stated(self.learned_rpm, self.learned_tpm)

    def _read_headroom(
        self,
        minute: RateLimitSnapshot,
        tokens: _TokenReading,
        permit: Permit,
        *,
        now: float,
        reset_requests_s: float | None,
        new_requests: bool,
        new_tokens: bool,
        current: bool,
    ) -> None:
        """Drain the buckets to what ``permit``'s answer says was left (less what was sent
        after it), and read where its windows end (called with the lock held). ``current``:
        not an answer to a request sent before the latest one read, which still bounds the
        headroom but does not start the first window over (drained to empty by each late
        answer whose window had ended, a lane on a simulated clock drew a refusal that
        main's code did not)."""
        _, otpm, remaining_tokens, reset_tokens_s = tokens
        rpm, remaining_requests = minute.limit_requests, minute.remaining_requests
        elapsed_s = max(0.0, now - permit.sent_at)
        if not minute.resets_to_the_second:
            self._observe_fixed_windows(
                minute,
                permit,
                now=now,
                reset_requests_s=reset_requests_s,
                reset_tokens_s=reset_tokens_s,
            )
        if new_requests and rpm and remaining_requests is not None:
            self._start_full_as_stated(remaining_requests - (self._admitted - permit.seq), rpm)
        windowed = (
            minute.requests_window_unknown and self._keep_request_windows(now=now)
        ) or self._request_windows.fixed
        if windowed and reset_requests_s is not None and minute.resets_to_the_second:
            reset_requests_s += elapsed_s  # a time of day, measured from the answer
        if remaining_requests is not None:
            drain_to_headroom(
                self.requests,
                now=now,
                remaining=remaining_requests,
                reset_s=reset_requests_s,
                elapsed_s=elapsed_s,
                used_since=self._admitted - permit.seq,
                slack=1.0,
                fixed_window=windowed,
                continuous=self._depths["requests"].continuous,
            )
        if current and remaining_requests is not None and reset_requests_s is not None:
            self._drain_first_request_window(
                minute,
                permit,
                now=now,
                remaining=remaining_requests,
                reset_s=reset_requests_s,
                new_requests=new_requests,
            )
        if remaining_tokens is not None:
            self._drain_tokens(
                permit,
                now=now,
                remaining=remaining_tokens,
                reset_s=reset_tokens_s,
                first_window=current
                and reset_tokens_s is not None
                and not minute.resets_to_the_second,
                new_tokens=new_tokens,
            )
        if otpm and minute.remaining_output_tokens is not None:
            # The provider reserves max_tokens at admission and settles at the end, as we
            # do: what we reserved after this request, net of what answers gave back since,
            # has been counted after its remaining.
            drain_to_headroom(
                self.output_tokens,
                now=now,
                remaining=minute.remaining_output_tokens,
                reset_s=minute.reset_output_tokens_s,
                elapsed_s=elapsed_s,
                used_since=max(
                    0.0,
                    self._output_charged - permit.output_charged_before - permit.output_tokens,
                ),
                slack=float(permit.output_tokens),
            )

    def _note_left(
        self, minute: RateLimitSnapshot, *, unstated_tokens: bool, permit: Permit
    ) -> None:
        """What is left of a budget whose limit is not stated (Azure's ``remaining`` of a
        10-s window, with no limit and no reset): ``remaining`` less what this lane sent
        after ``permit``, and nothing more until an answer says otherwise (tokens: less what
        it charged since, estimates that the provider counts its own way). Only the latest
        statement in send order counts (an earlier one was counted before requests it does
        not show), and none about a request sent before the last 429 (its window may be
        over: the 429's hint says when the next begins).

        Spending a window's budget and finding its end from a 429 costs one 429 a window;
        sending on with none left cost every request in flight (4-7 a window at 10-s
        windows, 30-50 in flight)."""
        self._stated_left_seq = permit.seq
        local = self._local
        began = False
        if self.admission is not local:
            self.admission.budget_left(
                permit,
                requests_left=minute.remaining_requests if minute.limit_requests is None else None,
                tokens_left=minute.remaining_tokens if unstated_tokens else None,
            )
        if minute.limit_requests is None and minute.remaining_requests is not None:
            left = float(minute.remaining_requests - (self._admitted - permit.seq))
            began = left > local.stated_left + 1.0
            local.stated_left = left
        if unstated_tokens and minute.remaining_tokens is not None:
            used_since = self._charged_since(permit)
            tokens_left = minute.remaining_tokens - used_since
            # (our estimates drift from the provider's count by a request's worth or so)
            began = began or tokens_left > local.stated_tokens_left + 2.0 * permit.tokens
            local.stated_tokens_left = tokens_left
        if began:
            # More is left than was: a window began, at a request sent since the last
            # statement. What the windows hold is counted from this one (a little under).
            self._window_from_seq = permit.seq
            self._window_intake = self._window_intake_tokens = 0

    def _forget_stated_left(self, permit: Permit) -> None:
        """What answers said was left of an unstated budget no longer holds (see
        :meth:`_note_left`): here and, for a shared admission, for the whole fleet."""
        local = self._local
        local.stated_left = local.stated_tokens_left = math.inf
        if self.admission is not local:
            # (another process may have set the fleet's budget where this one read none)
            self.admission.budget_left(permit, requests_left=math.inf, tokens_left=math.inf)

    def _keep_request_windows(self, *, now: float) -> bool:
        """Keep the request bucket to the fixed windows of a budget stated per window (a
        gateway's unsuffixed X-RateLimit-*) once its readings show one end for a window's
        requests: each window's budget from its start, as the provider allows, not paced
        through it (10-s windows paced evenly took 0.83 of a client spending each at its
        start). True when the bucket keeps to them (called with the lock held)."""
        bucket = self.requests
        if bucket is None or not self._quota_refills["requests"].windowed:
            return False
        grid = self._request_window.grid()
        if grid is None:
            return False
        end_s, length_s = grid
        bucket.set_windows(
            start_s=end_s - FixedWindows.guard_s,
            length_s=length_s,
            now=now,
            guard_s=2.0 * FixedWindows.guard_s,
            budget_per_s=self._stated_per_s(self.request_rate.ceiling),
        )
        return True

    def _stated_per_s(self, ceiling_per_min: float | None) -> float | None:
        """This process's share of a stated per-minute limit, per second (None: none)."""
        if ceiling_per_min is None:
            return None
        return ceiling_per_min * self._configured.utilisation * self.local_share / 60.0

    def _observe_fixed_windows(
        self,
        minute: RateLimitSnapshot,
        permit: Permit,
        *,
        now: float,
        reset_requests_s: float | None,
        reset_tokens_s: float | None,
    ) -> None:
        """Read from resets sent as durations whether the requests and tokens of per-minute
        limits are counted in fixed windows, and keep the buckets to them (called with the
        lock held). A request budget stated per window (a gateway's) has its own reading
        (:meth:`_keep_request_windows`)."""
        if not minute.requests_window_unknown:
            self._request_windows.observe(sent_at=permit.sent_at, reset_s=reset_requests_s)
            _keep_windows(
                self._local.requests,
                self._request_windows,
                now=now,
                budget_per_s=self._stated_per_s(self.request_rate.ceiling),
            )
        self._token_windows.observe(sent_at=permit.sent_at, reset_s=reset_tokens_s)
        _keep_windows(
            self._local.tokens,
            self._token_windows,
            now=now,
            budget_per_s=self._stated_per_s(self.token_rate.ceiling),
        )

    def _drain_first_request_window(
        self,
        minute: RateLimitSnapshot,
        permit: Permit,
        *,
        now: float,
        remaining: int,
        reset_s: float,
        new_requests: bool,
    ) -> None:
        """The request bucket's :func:`drain_to_first_window`, as the token bucket's (see
        :meth:`_drain_tokens`): a per-minute limit counted in short windows (the `window`
        profile) was read from an answer about a window already gone, and the bucket made
        full from it sent half a second's burst into the window just begun and paced the
        rate through the rest: sixteen of fifteen (called with the lock held)."""
        if minute.resets_to_the_second or minute.requests_window_unknown:
            return  # (a time of day bounds no short window; a gateway's has its own reading)
        windows = self._request_windows
        if new_requests:
            windows.first_answer_at = now
        if permit.sent_at < windows.first_answer_at:
            drain_to_first_window(
                self.requests,
                now=now,
                remaining=remaining,
                reset_s=reset_s,
                elapsed_s=max(0.0, now - permit.sent_at),
                used_since=self._admitted - permit.seq,
                late_s=_FIRST_TRIP_S,
                short_s=_SHORT_REQUEST_WINDOW_S,
            )

    def _drain_tokens(
        self,
        permit: Permit,
        *,
        now: float,
        remaining: int,
        reset_s: float | None,
        first_window: bool,
        new_tokens: bool,
    ) -> None:
        """The token bucket's share of :meth:`_read_headroom`."""
        elapsed_s = max(0.0, now - permit.sent_at)
        used_since = self._charged_since(permit)
        drain_to_headroom(
            self.tokens,
            now=now,
            remaining=remaining,
            reset_s=reset_s,
            elapsed_s=elapsed_s,
            used_since=used_since,
            slack=float(permit.tokens),
            fixed_window=self._token_windows.fixed,
            continuous=self._depths["tokens"].continuous,
        )
        # The answers to the requests sent before the first came back describe the window
        # that was blind to us; each says when it ends a little differently (the first
        # connection delays the first request), and the latest counts.
        windows = self._token_windows
        if new_tokens:
            windows.first_answer_at = now
        if first_window and reset_s is not None and permit.sent_at < windows.first_answer_at:
            drain_to_first_window(
                self.tokens,
                now=now,
                remaining=remaining,
                reset_s=reset_s,
                elapsed_s=elapsed_s,
                used_since=used_since,
                late_s=_FIRST_TRIP_S,
            )

    # -- admission ------------------------------------------------------------------------

    def cost_of(self, prompt_tokens: int, completion_tokens: int, cheap: bool = False) -> int:
        """The token cost charged at admission: the prompt estimate corrected by what usage
        has shown about our estimates on this lane (see :mod:`pacekeeper.core.scale`), plus
        the answer's reserve. ``cheap``: the prompt is a character count."""
        scale = self.cheap_scale if cheap else self.estimate_scale
        return math.ceil(prompt_tokens * scale.charge_factor) + completion_tokens

    def worst_prompt_of(self, prompt_tokens: int, cheap: bool = False) -> int:
        """The most the prompt estimate ``prompt_tokens`` may be billed, as far as usage on
        this lane has shown: the highest ratio of billed to estimated seen so far (never below
        what :meth:`cost_of` charges). What a spend cap's worst case counts.

        >>> from pacekeeper import Limits, RetryPolicy
        >>> lane = Lane(("/v1/chat", "m"), limits=Limits(), retry=RetryPolicy(), clock=float)
        >>> for billed in (100,) * 9 + (125,):  # one prompt billed a quarter over
        ...     lane.estimate_scale.observe(estimated=100, actual=billed)
        >>> lane.cost_of(100, 0), lane.worst_prompt_of(100)
        (114, 125)
        """
        scale = self.cheap_scale if cheap else self.estimate_scale
        return math.ceil(prompt_tokens * max(scale.highest_seen, scale.charge_factor))

    def wants_exact_estimate(self, now: float, tokens_charged: int) -> bool:
        """Whether a request estimated in characters (charged ``tokens_charged`` as such)
        should be counted exactly before it is admitted: when the token budget decides when
        requests leave (its bucket holds less than 64 such requests; requests queued for a
        slot do not count), before usage taught the tokens per character, and one request
        in 64 otherwise (so the exact estimates' scale stays
        learned). Before the first answer every request counts exactly (a limit may be
        stated by it). Without a token limit the estimate paces nothing: characters and the
        learned ratio are enough for records and costs. An exact count costs tens of
        microseconds a request, about as much as the rest of the governor.

        A shared admission whose token bucket lives in its store (this process cannot see how
        full it is) counts every request charged against a token limit exactly: a burst
        queued at start went out charged in characters, four times its tokens, and a fleet
        paced a binding tpm at a quarter of it."""
        tokens = self._local.tokens
        if self._shared and tokens is not None and not self.admission.sees_token_level:
            return True
        if tokens is None:
            # No token limit known yet. Before the first answer, every request counts exactly:
            # those that queue now (a burst started at once) are admitted under the limit the
            # first answers state, with the estimate made here.
            return self._successes == 0
        self._estimates += 1
        if not self._cheap_learned:
            if self.cheap_scale.count < _CHEAP_LEARNED:
                return True
            self._cheap_learned = True
        return (
            self._estimates % _EXACT_EVERY == 0
            or tokens.level(now) < _TIGHT_REQUESTS * tokens_charged
        )

    @property
    def prompt_scale(self) -> float:
        """The mean ratio of the provider's prompt counts to our estimates on this lane."""
        return self.estimate_scale.mean

    def _try_admit(self, now: float, tokens: int, output_tokens: int = 0) -> float:
        """0.0 when admitted (buckets charged, slot free); else seconds to wait (inf: a slot).
        The local admission's decision (:meth:`LocalAdmissionPolicy.try_admit`)."""
        return self._local.try_admit(now, tokens, output_tokens)

    def _waiting_for_slot(self, now: float) -> bool:
        """Whether the head of the queue is held back by the concurrency limit alone (not by
        the cooldown or pacing): only then is the limit really in use."""
        if not self._queue.members or self.slots.has_room():
            return False
        if self.cooldown.remaining_s(now=now) > 0:
            return False
        requests = self._local.requests
        return requests is None or requests.wait_s(now=now, cost=1) == 0.0

    def _grant(
        self,
        now: float,
        tokens: int,
        asked_at: float,
        output_tokens: int = 0,
        permit_class: type[Permit] = UserPermit,
    ) -> Permit:
        local = self._local
        slots = self.slots
        in_flight = slots.acquire(now)
        if in_flight > local.sent_peak:
            local.sent_peak = in_flight
            local.new_territory_at = now
            local.new_territory_answered = False
        # _count_admission, inlined (the same work in the same order): every request
        if not self._admitted:
            self._first_admitted_at = now
        seq = self._admitted = self._admitted + 1
        sends = self._recent_sends
        sends.append(now)
        charges = self._recent_charges
        charges.append((tokens, output_tokens))
        while now - sends[0] > _SENDS_KEPT_S:
            sends.popleft()
            charges.popleft()
        charged_before = self._charged
        self._charged = charged_before + (
            tokens - output_tokens
            if local.output_tokens is not None or local.input_only
            else tokens
        )
        output_charged_before = self._output_charged
        self._output_charged = output_charged_before + output_tokens
        # Positionally (see Permit.__init__): sent_at, in_flight_at_send, tokens, queued_s,
        # lease, seq, charged_before, filled_window, output_tokens, output_charged_before.
        permit = permit_class(
            self,
            now,
            in_flight,
            tokens,
            now - asked_at,
            None,
            seq,
            charged_before,
            in_flight >= slots.limit,
            output_tokens,
            output_charged_before,
        )
        local.outstanding[id(permit)] = now
        if local.stated_left < 0.0 or local.stated_tokens_left < tokens:
            self._probe_seq = permit.seq  # sent with nothing left (see _note_left)
        return permit

    def _grant_shared(
        self, granted: Granted, tokens: int, asked_at: float, output_tokens: int
    ) -> Permit:
        """The permit of a request a shared admission granted: its slot counted here (this
        process's requests in flight), in flight and the window as the store counted them."""
        now = self._clock()
        self.slots.acquire(now=now)
        charged_before, output_charged_before = self._count_admission(now, tokens, output_tokens)
        # With a finaliser whatever the caller: a shared lane's path is not worth the plumbing
        # (its store's round trip costs far more than a finaliser's call).
        permit = UserPermit(
            self,
            sent_at=now,
            in_flight_at_send=granted.in_flight,
            tokens=tokens,
            queued_s=now - asked_at,
            seq=self._admitted,
            charged_before=charged_before,
            output_charged_before=output_charged_before,
            lease=granted.lease,
            filled_window=granted.in_flight >= granted.limit,
            output_tokens=output_tokens if self.output_tpm else 0,
        )
        # unanswered, as a local grant is: the latency windows judge the fleet's lane by them
        self._local.outstanding[id(permit)] = now
        return permit

    def _count_admission(self, now: float, tokens: int, output_tokens: int) -> tuple[float, float]:
        """What every admission records, here or in a shared store (called with the lock
        held): the count, the send times the controller judges 429s by, and the tokens
        charged (what was sent after an answered request, for its headers). Returns the
        tokens and the output tokens charged before this one."""
        if not self._admitted:
            self._first_admitted_at = now
        self._admitted += 1
        sends = self._recent_sends
        local = self._local
        charge = (
            tokens - output_tokens
            if local.output_tokens is not None or local.input_only
            else tokens
        )
        sends.append(now)
        charges = self._recent_charges
        # Both parts, not the charge: a 429 naming an input-token quota changes what the
        # bucket charges, and the second before it is then counted in the new units.
        charges.append((tokens, output_tokens))
        while now - sends[0] > _SENDS_KEPT_S:
            sends.popleft()
            charges.popleft()
        charged_before = self._charged
        # What the token bucket was charged: the input alone where output is limited apart
        # or the provider counts input alone.
        self._charged += charge
        output_charged_before = self._output_charged
        self._output_charged += output_tokens
        return charged_before, output_charged_before

    def waiting_for(self, now: float) -> str:
        """What the head waits for, in words (for a queue timeout's message)."""
        if self.cooldown.remaining_s(now=now) > 0:
            return "the cooldown after a 429"
        if not self.slots.has_room():
            return f"a free slot ({self.slots.in_flight} in flight, limit {self.slots.limit})"
        return "pacing to the rpm/tpm limits"

    def join(  # noqa: PLR0917  # the attempt loop passes its arguments positionally
        self,
        tokens: int,
        front: bool,
        waiter: type[AsyncWaiter] | type[ThreadWaiter],
        output_tokens: int = 0,
        priority: Priority = Priority.INTERACTIVE,
        tenant: str | None = None,
        now: float | None = None,
        deadline: float | None = None,
        permit_class: type[Permit] = UserPermit,
    ) -> Permit | tuple[Waiter, float | None]:
        """Admit at once when nobody waits and the state allows; else queue a new
        ``waiter`` (made only then: the uncontended path allocates none) and return it with
        how long it sleeps before its first look (None: it looks at once).

        A waiter that found the queue empty is its head, and the look just made here is its
        first: it is armed and sleeps what that look said, rather than looking again at
        once. So is one that queued behind another head (until woken). Only one that became
        the head of a queue that already held others (a retry or a higher class) looks at
        once. ``now``: the caller's reading of the clock, when it just took one.
        ``permit_class``: :class:`Permit` for a caller that always releases what it is
        granted (no finaliser), else :class:`UserPermit`."""
        if now is None:
            now = self._clock()
        queue = self._queue
        with self._lock:
            if queue.closed:
                queue.check_open()
            wait = None
            # A shared admission asks its store outside the lock: its newcomer queues, and
            # looks at once when it is the head.
            if not queue.members and not self._shared:
                wait = self._local.try_admit(now, tokens, output_tokens)
                if wait == 0.0:
                    queue.count_admission_held(priority, tenant)
                    return self._grant(now, tokens, now, output_tokens, permit_class)
            joined = waiter()
            queue.join_held(joined, front, priority, tenant)
            if wait is None and queue.head is not joined:
                wait = math.inf
            if wait is not None:
                joined.arm()
                if deadline is not None:
                    try:
                        wait = bounded_by_deadline(
                            now, wait, deadline, lambda: self.waiting_for(now)
                        )
                    except QueueTimeout:
                        queue.leave(joined)
                        raise
        return joined, wait

    def turn(
        self,
        waiter: Waiter,
        tokens: int,
        deadline: float | None,
        asked_at: float,
        output_tokens: int = 0,
        *,
        prompt_tokens: int | None = None,
        prompt_cheap: bool = False,
        permit_class: type[Permit] = UserPermit,
    ) -> Permit | float:
        """One look at the state by a queued waiter: its permit, or how long to sleep (inf:
        until woken). The waiter is armed before the lock is released, so a wake between
        this look and the sleep is not lost. With ``prompt_tokens`` (the prompt's estimate)
        the cost is charged as the lane's answers scale estimates now, not as they did when
        the request joined the queue: a queue filled before the first answer would otherwise
        hold every prompt at the unscaled estimate until its own answer settles it.
        ``prompt_cheap``: that estimate is a character count (scaled as such);
        ``permit_class`` as :meth:`join`'s."""
        with self._lock:
            now = self._clock()
            if prompt_tokens is not None:
                tokens = self.cost_of(prompt_tokens, output_tokens, cheap=prompt_cheap)
            if self._queue.turn_held(waiter):
                wait = self._local.try_admit(now, tokens, output_tokens)
                if wait == 0.0:
                    self._queue.admitted_held(waiter)
                    return self._grant(now, tokens, asked_at, output_tokens, permit_class)
                waiter.arm()
            else:
                wait = math.inf
            if deadline is not None:
                wait = bounded_by_deadline(now, wait, deadline, lambda: self.waiting_for(now))
        return wait

    def _look(
        self,
        waiter: Waiter,
        tokens: int,
        deadline: float | None,
        asked_at: float,
        output_tokens: int,
        *,
        priority: Priority,
        prompt_tokens: int | None,
        prompt_cheap: bool,
    ) -> Permit | float | tuple[Ask, int]:
        """:meth:`turn` for a lane whose admission is shared: the head's request to the
        store with the cost it charges (sent by the caller, outside the lock), or the local
        decision when the admission makes none (its store unreachable)."""
        with self._lock:
            if prompt_tokens is not None:
                tokens = self.cost_of(prompt_tokens, output_tokens, cheap=prompt_cheap)
            if self._queue.turn_held(waiter):
                ask = self.admission.ask(
                    tokens=tokens, output_tokens=output_tokens, priority=priority
                )
                if ask is not None:
                    return ask, tokens
                return self.turn(waiter, tokens, deadline, asked_at, output_tokens)
            now = self._clock()
            wait = math.inf
            if deadline is not None:
                wait = bounded_by_deadline(now, wait, deadline, lambda: self.waiting_for(now))
        return wait

    async def _ask(
        self,
        waiter: Waiter,
        tokens: int,
        deadline: float | None,
        asked_at: float,
        output_tokens: int,
        *,
        priority: Priority,
        prompt_tokens: int | None,
        prompt_cheap: bool,
    ) -> Permit | float:
        """One look of a shared lane's head: its permit, or how long to sleep (armed)."""
        look = self._look(
            waiter,
            tokens,
            deadline,
            asked_at,
            output_tokens,
            priority=priority,
            prompt_tokens=prompt_tokens,
            prompt_cheap=prompt_cheap,
        )
        if isinstance(look, (Permit, float)):
            return look
        ask, charged = look
        cancels = cancels_requested()
        reply = await ask.send()
        turn = self._answered(
            waiter,
            reply,
            charged,
            asked_at=asked_at,
            output_tokens=output_tokens,
            deadline=deadline,
        )
        if cancelled_since(cancels):
            if isinstance(turn, Permit):
                turn.release()  # granted in the reply to a request already cancelled
            raise CancelledError
        return turn

    def _ask_sync(
        self,
        waiter: Waiter,
        tokens: int,
        deadline: float | None,
        asked_at: float,
        output_tokens: int,
        *,
        priority: Priority,
        prompt_tokens: int | None,
        prompt_cheap: bool,
    ) -> Permit | float:
        """The blocking twin of :meth:`_ask`."""
        look = self._look(
            waiter,
            tokens,
            deadline,
            asked_at,
            output_tokens,
            priority=priority,
            prompt_tokens=prompt_tokens,
            prompt_cheap=prompt_cheap,
        )
        if isinstance(look, (Permit, float)):
            return look
        ask, charged = look
        return self._answered(
            waiter,
            ask.send_sync(),
            charged,
            asked_at=asked_at,
            output_tokens=output_tokens,
            deadline=deadline,
        )

    def _answered(
        self,
        waiter: Waiter,
        reply: object,
        tokens: int,
        *,
        asked_at: float,
        output_tokens: int,
        deadline: float | None,
    ) -> Permit | float:
        """The store's reply to the head: its permit, or how long to sleep (armed). An
        admitted waiter leaves as itself, not as "the head": a retry (or a higher class) may
        have joined the front while the store answered."""
        with self._lock:
            answer = self.admission.answer(reply)
            if isinstance(answer, Granted):
                self._queue.admitted_held(waiter)
                return self._grant_shared(answer, tokens, asked_at, output_tokens)
            waiter.arm()
            if answer is None:
                return 0.0  # the store failed: the admission falls back; look again at once
            wait = answer.sleep_s
            if deadline is not None:
                now = self._clock()
                bounded = bounded_by_deadline(
                    now, answer.wait_s, deadline, lambda: self.waiting_for(now)
                )
                wait = min(wait, bounded)
        return wait

    async def acquire(
        self,
        tokens: int,
        *,
        front: bool = False,
        deadline: float | None = None,
        output_tokens: int = 0,
        priority: Priority = Priority.INTERACTIVE,
        tenant: str | None = None,
        prompt_tokens: int | None = None,
        prompt_cheap: bool = False,
        permit_class: type[Permit] = UserPermit,
    ) -> Permit:
        """Wait for admission (cooldown, pacing, a slot), FIFO, and return the permit.

        ``tokens`` is the whole cost, ``output_tokens`` the part of it reserved for the answer
        (charged to the output budget where the provider limits output apart);
        ``prompt_tokens``, the prompt's estimate, lets a queued request be charged at the
        estimate scale in force when it goes (``tokens`` is then the cost at joining).
        ``permit_class`` as :meth:`join`'s: a :class:`UserPermit` unless the caller always
        releases it."""
        asked_at = self._clock()
        joined = self.join(
            tokens,
            front=front,
            waiter=AsyncWaiter,
            output_tokens=output_tokens,
            priority=priority,
            tenant=tenant,
            now=asked_at,
            deadline=deadline,
            permit_class=permit_class,
        )
        if isinstance(joined, Permit):
            return joined
        waiter, wait = joined
        assert isinstance(waiter, AsyncWaiter)
        return await self.wait(
            waiter,
            wait,
            tokens=tokens,
            deadline=deadline,
            asked_at=asked_at,
            output_tokens=output_tokens,
            priority=priority,
            prompt_tokens=prompt_tokens,
            prompt_cheap=prompt_cheap,
            permit_class=permit_class,
        )

    async def wait(
        self,
        waiter: AsyncWaiter,
        sleep_s: float | None,
        *,
        tokens: int,
        deadline: float | None,
        asked_at: float,
        output_tokens: int,
        priority: Priority,
        prompt_tokens: int | None,
        prompt_cheap: bool,
        permit_class: type[Permit] = UserPermit,
    ) -> Permit:
        """The wait of a ``waiter`` that :meth:`join` queued (``sleep_s``: how long it
        sleeps first, None: it looks at once), to its permit; it leaves the queue if the
        wait fails or is cancelled."""
        turn: Permit | float | None
        turn = sleep_s
        try:
            while True:
                if turn is not None:
                    await waiter.sleep(turn)
                if self._shared:
                    turn = await self._ask(
                        waiter,
                        tokens,
                        deadline,
                        asked_at,
                        output_tokens,
                        priority=priority,
                        prompt_tokens=prompt_tokens,
                        prompt_cheap=prompt_cheap,
                    )
                else:
                    turn = self.turn(
                        waiter,
                        tokens,
                        deadline,
                        asked_at,
                        output_tokens,
                        prompt_tokens=prompt_tokens,
                        prompt_cheap=prompt_cheap,
                        permit_class=permit_class,
                    )
                if isinstance(turn, Permit):
                    return turn
        except BaseException:
            self._queue.leave(waiter)
            raise

    @property
    def shared(self) -> bool:
        """Whether :attr:`admission` is another than this process's own (a backend's): the
        head's look then asks a store (:meth:`wait` does; :meth:`turn` does not)."""
        return self._shared

    def leave(self, waiter: Waiter) -> None:
        """``waiter``, which :meth:`join` queued, gives up (cancelled, deadline passed)."""
        self._queue.leave(waiter)

    def acquire_sync(
        self,
        tokens: int,
        *,
        front: bool = False,
        deadline: float | None = None,
        output_tokens: int = 0,
        priority: Priority = Priority.INTERACTIVE,
        tenant: str | None = None,
        prompt_tokens: int | None = None,
        prompt_cheap: bool = False,
        permit_class: type[Permit] = UserPermit,
    ) -> Permit:
        """The blocking twin of :meth:`acquire`, for threads."""
        asked_at = self._clock()
        joined = self.join(
            tokens,
            front=front,
            waiter=ThreadWaiter,
            output_tokens=output_tokens,
            priority=priority,
            tenant=tenant,
            now=asked_at,
            deadline=deadline,
            permit_class=permit_class,
        )
        if isinstance(joined, Permit):
            return joined
        # A queued request's frame keeps its locals while it waits: the tuple is dropped,
        # and one name holds the wait and then the look's answer (no extra slot).
        turn: Permit | float | None
        waiter, turn = joined
        del joined
        assert isinstance(waiter, ThreadWaiter)
        try:
            while True:
                if turn is not None:
                    waiter.sleep(turn)
                if self._shared:
                    turn = self._ask_sync(
                        waiter,
                        tokens,
                        deadline,
                        asked_at,
                        output_tokens,
                        priority=priority,
                        prompt_tokens=prompt_tokens,
                        prompt_cheap=prompt_cheap,
                    )
                else:
                    turn = self.turn(
                        waiter,
                        tokens,
                        deadline,
                        asked_at,
                        output_tokens,
                        prompt_tokens=prompt_tokens,
                        prompt_cheap=prompt_cheap,
                        permit_class=permit_class,
                    )
                if isinstance(turn, Permit):
                    return turn
        except BaseException:
            self._queue.leave(waiter)
            raise

    def close(self) -> None:
        """Stop admitting: every queued request fails with AdmissionClosed (it was not sent);
        requests in flight are not touched."""
        self._queue.close()

    async def sleep(self, delay_s: float) -> None:
        """Wait before a retry; :meth:`close` cuts the wait short with AdmissionClosed, so a
        request waiting to retry does not hold up a shutdown."""
        await self._queue.pause(delay_s)

    def sleep_sync(self, delay_s: float) -> None:
        """The blocking twin of :meth:`sleep`."""
        self._queue.pause_sync(delay_s)

    def release(self, permit: Permit, signal: Signal) -> None:
        with self._lock:
            self._release(permit, signal, self._clock())

    def _release(self, permit: Permit, signal: Signal, now: float) -> None:
        """Free ``permit``'s slot; called with the lock held."""
        local = self._local
        local.outstanding.pop(id(permit), None)
        local.answered = local.new_territory_answered = True
        if permit.lease is not None:  # granted by a shared admission: freed its way
            self.admission.release(permit, signal, now=now, backlog=bool(self._queue.members))
            return
        queued = bool(self._queue.members)  # mostly nobody: then nothing to judge or wake
        self.slots.release(  # positionally: every request
            now,
            permit.sent_at,
            permit.in_flight_at_send,
            signal,
            queued and self._waiting_for_slot(now),
        )
        if queued:
            self._queue.wake_head()

    # -- outcomes -------------------------------------------------------------------------

    def settle(
        self,
        permit: Permit,
        verdict: Verdict,
        *,
        now: float,
        max_hint_s: float,
        retry: bool,
        hold: bool = False,
        gate: bool = True,
        usage: Reconciliation | None = None,
        finished: Call | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """Everything an attempt's outcome teaches the lane, under one lock: the limits its
        headers state, the rate (a 429 about the rate) or the in-flight cap (a 429 about
        requests in flight), the evidence of load, the latency; then the slot is released
        (unless ``hold``: a stream keeps it until closed) and the attempt counted; with
        ``usage``, the tokens reconciled (:meth:`reconcile`); with ``finished`` (the call a
        success ends, with the answer's usage), the request counted as done.

        ``gate`` False keeps a hinted 429 from closing the cooldown gate (tests that make
        retries instant)."""
        kind = verdict.kind
        latency_s = now - permit.sent_at
        with self._lock:
            if verdict.limits is not None:
                self.learn(verdict.limits, permit)
            signal = Signal.NEUTRAL
            if kind is OutcomeKind.OK:
                signal = self._succeeded(permit, now, latency_s)
            elif kind is OutcomeKind.RATE_LIMITED:
                self._throttled(permit, verdict, now, max_hint_s=max_hint_s, gate=gate)
            elif kind in _OVERLOAD_KINDS:
                if self.congestion.observe(overload=True):
                    signal = Signal.BACKPRESSURE
            else:
                self.congestion.observe(overload=False)
            if usage is not None:
                self._reconcile(usage)
            if hold:
                # A stream answered: it is no longer a candidate for a hung request.
                self._local.outstanding.pop(id(permit), None)
            elif not permit.released:  # as Permit.release, without re-entering the lock
                permit.released = True
                self._release(permit, signal, now)
            if finished is not None:
                # Counted from the call's own fields: its record is built only when read.
                charged = finished.charged
                self.stats.on_answer(
                    status=verdict.status,
                    total_s=now - finished._started_mono,
                    queued_s=finished.queued_s,
                    priority=finished.priority._value_,
                    tenant=finished.tenant,
                    tokens_estimated=charged if charged is not None else finished.cost,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cost_usd=finished.cost_usd,
                    latency_s=latency_s,
                    retry=retry,
                    at=now,
                )
            else:
                self.stats.on_attempt(
                    status=verdict.status,
                    rate_limited=kind is OutcomeKind.RATE_LIMITED,
                    latency_s=latency_s,
                    retry=retry,
                    at=now,
                )
        if self._shared:
            self.admission.settled(now)  # what the controller decided, shared

    def settle_success(  # noqa: PLR0917  # positional on the hot path (below)
        self,
        permit: Permit,
        limits: RateLimitSnapshot | None,
        now: float,
        latency_s: float,
        call: Call,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        status: int | None,
        hold: bool,
    ) -> None:
        """:meth:`settle` of a success that ends ``call`` (what every answered request is),
        in one step: the same work in the same order under one acquisition of the lock, with
        the usage reconciled from the call's own fields (no :class:`Reconciliation` made)
        and no branch for the other outcomes. Arguments are positional: this runs on every
        request, and binding a dozen keywords costs as much as a small observer."""
        with self._lock:
            if limits is not None:
                self.learn(limits, permit)
            signal = self._succeeded(permit, now, latency_s)
            if prompt_tokens is not None:
                reserved = call.completion_tokens
                self._reconcile_counts(
                    call.prompt_tokens,
                    prompt_tokens,
                    reserved,
                    completion_tokens,
                    permit.tokens - reserved,
                    call._body is not None,
                    call._chars,
                )
            if hold:
                # A stream answered: it is no longer a candidate for a hung request.
                self._local.outstanding.pop(id(permit), None)
            elif not permit.released:  # as Permit.release, without re-entering the lock
                permit.released = True
                if permit.lease is None and not self._queue.members:
                    # _release of a local slot with nobody queued, inlined: every request
                    local = self._local
                    local.outstanding.pop(id(permit), None)
                    local.answered = local.new_territory_answered = True
                    self.slots.release(  # positionally: every request
                        now, permit.sent_at, permit.in_flight_at_send, signal, False
                    )
                else:
                    self._release(permit, signal, now)
            charged = call.charged
            self.stats.on_answer(
                status,
                now - call._started_mono,
                call.queued_s,
                call.priority._value_,
                call.tenant,
                charged if charged is not None else call.cost,
                prompt_tokens,
                completion_tokens,
                call.cost_usd,
                latency_s,
                call.attempt > 1,
                now,
            )
        if self._shared:
            self.admission.settled(now)  # what the controller decided, shared

    def _succeeded(self, permit: Permit, now: float, latency_s: float) -> Signal:
        self._successes += 1
        # what it charged the token bucket (_charged_for, inline: this runs on every answer)
        local = self._local
        charged = (
            permit.tokens - permit.output_tokens
            if local.output_tokens is not None or local.input_only
            else permit.tokens
        )
        if permit.seq >= self._window_from_seq:
            self._window_intake += 1
            self._window_intake_tokens += charged
            if permit.seq == self._probe_seq and permit.seq > self._stated_left_seq:
                # Sent alone with nothing left, and accepted stating nothing newer: the
                # budget it was held to is not the provider's (any more).
                self._forget_stated_left(permit)
        if now < self._first_success_at:  # noqa: PLR1730  # min() is a call, on every answer
            self._first_success_at = now
        self.congestion.observe(False)
        slots = self.slots
        # isinstance once: three C calls were one per answer
        aimd = slots if isinstance(slots, AimdLimit) else None
        self.latency.observe(  # positionally: every answer
            latency_s,
            permit.in_flight_at_send,
            permit.sent_at,
            self._outstanding_sent_at,
            aimd is None or permit.sent_at >= aimd.queue_cut_at,
        )
        in_flight = permit.in_flight_at_send
        if aimd is not None and aimd.passed_cap_by(in_flight, permit.sent_at):
            # Past a provisional cap: a refutation, unless the server did not hold that many
            # (:meth:`_not_held_at`); then it proves only the peak it held.
            held = in_flight - self._not_held_at(permit)
            if aimd.refuted_by(in_flight_at_send=held, sent_at=permit.sent_at):
                self._refusal_was_the_rate(now)
            else:
                in_flight = held
        if aimd is not None and aimd.cap_provisional and self._cap_retested:
            aimd.hold_test = self._retest_untold(now)
        # The most in flight at which a request succeeded lately (a peak that fades in 2 s).
        if in_flight >= self._success_peak_in_flight or now - self._success_peak_at > _PEAK_FADES_S:
            self._success_peak_in_flight = in_flight
            self._success_peak_at = now
        backlog = True if self._queue.members else False  # noqa: SIM210  # bool() is a call
        grid = self._grid
        moved = (
            self._note_grid(permit, now, accepted=True)
            if grid is not None and grid.active
            else False
        )
        # The three rates' succeeded() in one pass (one call, not three, on every answer).
        if succeeded_together(
            self.request_rate, self.token_rate, self.output_rate, now, backlog, charged
        ):
            moved = True
        if self._burst_scale < 1.0 and now - self._burst_cut_at > _BURST_QUIET_S:
            self._burst_scale = min(1.0, self._burst_scale * 2.0)
            self._burst_cut_at = now
            moved = True
        if moved:
            self._apply_rates(now=now)
        if aimd is None:
            return Signal.SUCCESS
        slots = aimd
        rpm = self.rpm
        if rpm is not None and now >= self._floor_due:
            # What the rate needs in flight, but never more than 4x what was achieved: a
            # stated limit far above what this lane reaches (gateways state 100,000 a minute)
            # must not open the window to thousands. x4 per round trip, the floor still
            # follows a long-latency lane up to its rate within a few round trips.
            elapsed_s = min(_FLOOR_DOUBLES_S, now - (self._floor_due - _FLOOR_EVERY_S))
            self._floor_due = now + _FLOOR_EVERY_S
            share = self._configured.utilisation * self.local_share
            per_s = self.latency.mean_s / 60.0 * _FLOOR_HEADROOM
            needed = rpm * share * per_s
            achieved = 4.0 * self.request_rate.accepted_peak_rpm() * per_s
            # Answers that take seconds lag what was sent by as long: the accepted rate says
            # nothing yet about the last round trip's requests. While they wait, the floor
            # may also double every second from what is in flight (no answer yet is no
            # evidence of load, and pacing keeps the rate): reasoning models answering in
            # 5-15 s reach the hundreds they need within seconds, not round trips.
            ramp = slots.in_flight * 2.0 ** (elapsed_s / _FLOOR_DOUBLES_S) if backlog else 0.0
            slots.set_floor(math.ceil(min(needed, max(achieved, ramp))))
        latency = self.latency
        if (
            slots.outgrew_served
            and now >= self._served_due
            # A window's worth of answers, or a round trip since the first with two windows'
            # worth in flight (the answers not back then say as much as those back): a server
            # that serves one at a time answers a window's worth in 16 round trips, and slow
            # start grew by one slot per answer all that while (silence had sent 37 to a
            # server of 1 answering in 2-4.5 s; it grew to 47, and the server queued for two
            # minutes). Not with one window in flight: a rate's ramp sends about that many,
            # its answers come back at the ramp's pace, and its top read from them cost late
            # 429s on the rate's discovery (tests/core/test_controller_property.py).
            and (
                latency.mean_known
                or (
                    slots.in_flight >= _WINDOW_IN_FLIGHT
                    and now - self._first_success_at >= latency.mean_s
                )
            )
        ):
            # What the upstream serves at once (Little's law): answers per second at best over
            # an unloaded latency (at most the 5 s of answers kept), times that latency. The
            # mean would count time spent queueing, and so what is in flight, not served.
            self._served_due = now + _SERVED_EVERY_S  # a scan of 5 s of answers: not each one
            latency_s = min(latency.mean_s, latency.base_s)
            span_s = min(latency_s, _SERVED_SPAN_MAX_S)
            served = self.request_rate.accepted_peak_rpm(span_s) / 60.0 * latency_s
            slots.served(served)
        # Answers that swell as more are in flight: the upstream queues them (all a server
        # that never answers 429 says about its capacity). The window shrinks by how much.
        if latency.refuted_load is not None:
            slots.undo_queueing(latency.refuted_load)
            latency.refuted_load = None
        if latency.swollen(_SWOLLEN):
            if slots.queueing(capacity=self._queueing_capacity(), now=now):
                # What was judged shows the queue before the cut: judge the next window
                # from requests sent after it (it would cut again, lower, as old answers
                # from the deepest queue come in, slower still).
                latency.restart_window(cut=True)
            return Signal.NEUTRAL
        # An answer this much slower, sent past the load the unloaded latency was read at,
        # grows no window: in slow start, 1.3 times; after, 1.6 (one answer is noisy, and the
        # window near a capacity must still grow). Without it, a server of 1-2 is pushed a slot
        # or more a round trip past its capacity (100% for a server of 1) for the 16 answers a
        # window of them takes to judge.
        if (
            latency_s > _SWOLLEN * latency.base_s
            and latency.loaded(permit.in_flight_at_send)
            and (slots.slow_start or latency_s > _QUEUED_ANSWER * latency.base_s)
        ):
            return Signal.NEUTRAL
        return Signal.SUCCESS

    def _queueing_capacity(self) -> float:
        """How many requests a queueing upstream serves at once: what it completed per second
        at best (over 2 s) times its unloaded latency, or what is in flight over how much
        slower answers come, whichever is more. The second alone runs low: a server under a
        long queue also works slower (batching under memory pressure), and swollen answers
        then read as a smaller capacity than it has; its completions per second do not."""
        latency = self.latency
        served = self.request_rate.accepted_peak_rpm(_SERVED_SPAN_S) / 60.0 * latency.base_s
        return max(latency.capacity(), served, float(latency.base_in_flight))

    def _throttled(
        self, permit: Permit, verdict: Verdict, now: float, *, max_hint_s: float, gate: bool
    ) -> None:
        """What a 429 teaches, in order: whether it is noise (nothing learned), a day's quota
        (the gate waits, no rate), a refusal of the count in flight (a cap), a window the
        answers counted down and now spent, or a rate's: of requests, tokens or output."""
        self.congestion.observe(overload=False)
        self._refusals_back.append((permit.seq, now, now - permit.sent_at))
        self._sample_sustained(now)
        unexplained, at_peak = self._judge_refusal(permit, verdict, now)
        if unexplained and not at_peak:
            self._noise_refused(now)
            return
        if permit.seq >= self._window_from_seq:
            # What answers said was left is of a window that a 429 may have ended (or that
            # was not the limit that refused): the next answers tell. (A 429 to a request
            # sent before the last window was found spent is about that window.)
            self._forget_stated_left(permit)
            self._stated_left_seq = self._admitted + 1
        if verdict.limit_scope == "daily":
            # A quota per day (or hour) ran out: nothing goes before it refills, as the hint
            # says, and no rate is learned. Read as the rate, the second before it cut the
            # pace to a fraction of the minute's limit for when the quota is back.
            if verdict.hint_s is not None and gate:
                self.close_gate(min(verdict.hint_s, max_hint_s), now=now)
            return
        refused = self._refused(permit, verdict)
        # A stated rate with room left rules the rate out: only the count in flight, or noise.
        # Not in a fleet, as a precaution: its count in flight runs ahead of the server's, and
        # its tests were not measured apart from the way a fleet confirms a busy 429's cap
        # (docs/CONTROLLER.md, known gaps).
        rate_ruled_out = refused is _Refused.IN_FLIGHT and self.admission.sees_every_acceptance
        if at_peak:
            at_peak_read = self._refused_at_peak(refused)
            if at_peak_read is None:
                return
            refused = at_peak_read
        if refused is not _Refused.RATE:
            self._refused_in_flight(
                permit, verdict, refused, at_peak=at_peak, rate_ruled_out=rate_ruled_out, now=now
            )
            return
        if self._window_spent(permit, verdict, now, max_hint_s=max_hint_s, gate=gate):
            return
        if permit.seq >= self._window_from_seq:
            self._next_window_holds_stated(verdict)
        tokens_out, output_out = self._refused_budget(permit, verdict, now)
        if verdict.hint_s is not None and gate:
            refusing = (
                self.output_rate
                if output_out
                else self.token_rate
                if tokens_out
                else self.request_rate
            )
            self._close_for_hint(
                permit,
                verdict.hint_s,
                refusing,
                now,
                max_hint_s=max_hint_s,
            )
        if output_out:
            if self.output_rate.throttled(
                sent_at=permit.sent_at, now=now, hinted=verdict.hint_s is not None
            ):
                self._apply_rates(now=now)
            if self.output_tokens is not None:
                self.output_tokens.drain_to(now=now, level=0.0)
            return
        self._cut_pace(permit, verdict, now, tokens_out=tokens_out)

    def _sample_sustained(self, now: float) -> None:
        """At each 429 (not on the hot path of successes), noise or not: the most a
        discovered request rate was shown to take lately (``_sustained_best``)."""
        rate = self.request_rate
        if rate.ceiling is None and rate.rpm is not None:
            self._first_discovery_at = min(self._first_discovery_at, now)
            sustained = rate.accepted_mean_rpm(now)
            if now - self._first_discovery_at >= _SHORT_MEAN_AFTER_S:
                sustained = max(sustained, rate.accepted_mean_rpm(now, _SHORT_MEAN_S))
            best, best_at = self._sustained_best
            if sustained >= best or now - best_at > _SUSTAINED_BEST_S:
                self._sustained_best = (sustained, now)

    def _judge_refusal(self, permit: Permit, verdict: Verdict, now: float) -> tuple[bool, bool]:
        """(unexplained, at_peak): whether nothing about our sending explains the 429
        (:meth:`_unexplained`), and whether it may yet be a cap's (sent at more in flight
        than any success lately); the share of noise counts it either way."""
        load = self.refusals.refused(
            permit.seq,
            latest=self._admitted,
            # A discovered rate's cut answered the refusals sent before it: counted on, the
            # share read load for 64 sends more, and each busy 429 then cut again and closed
            # the gate for its hint.
            after=self._rate_cut_seq if self.request_rate.ceiling is None else 0,
        )
        self._at_edge = False
        unexplained = self._unexplained(permit, verdict, load=load, now=now)
        # Once a cap it suggested was refuted, no longer: while the window grows back, every
        # request goes at a new peak, and each busy 429 taught another provisional cap (a
        # 2400/min lane with 2-s answers held at 12-17 in flight of the 80 it needs, for 20 s).
        at_peak = (
            unexplained
            and permit.in_flight_at_send > self._success_peak_in_flight
            and not self._cap_refuted
        )
        # Into the share of noise even at a peak: a cap refuses only while the window
        # outgrows it (a few), and noise counted out of the baseline at each new peak of a
        # growing window left it at 0, and 7 busy 429s in 64 sends (6%) read as load.
        self.refusals.judged(permit.seq, noise=unexplained and not self._at_edge)
        return unexplained, at_peak

    def _noise_refused(self, now: float) -> None:
        """Noise: nothing is learned from it (no cut, no halved burst, no cap, the window
        that answers counted down stays as they said)."""
        if self.request_rate.ceiling is None:
            # A discovered rate: the loss it climbs back to may have been noise as well.
            # Soon after a limit was found by its share, only up to what the server was
            # shown to take lately.
            best = self._sustained_best[0]
            if not self._limit_found_lately(now):
                self.request_rate.unproven(_FAST_PAST_BEST * best if best else math.inf)
            elif best:  # nothing taken lately bounds no doubling: none
                self.request_rate.unproven(best)

    def _refused_at_peak(self, refused: _Refused) -> _Refused | None:
        """How a 429 at a new peak in flight that nothing else explains is read (None:
        nothing is learned from it).

        Nothing but the count in flight explains it: a cap may (it refuses all past it), or
        it is noise that came back before the answers of the burst it went in (a 429 comes
        at once). A cap it is only once its test is refused too (provisional); a success
        there refutes it and measures nothing. Taken as a confirmed cap (the headers said
        there was room), a busy 429 to the start's eleventh request held a 1206/min lane at
        10 in flight for good: 0.53 of the reference. Read as the rate, it is noise (nothing
        else refused it)."""
        if refused is _Refused.RATE:
            return None
        slots = self.slots
        if isinstance(slots, AimdLimit) and slots.probing and slots.cap_provisional:
            # A provisional cap's test, refused as noise refuses any request now and then:
            # tried once more before the cap stands (a busy 429 to the test of one that
            # noise had taught held a 600/min lane with 2-s answers at 8 in flight).
            return refused if self._cap_retested else _Refused.UNTOLD
        if refused is _Refused.IN_FLIGHT:
            return _Refused.EITHER
        return refused

    def _refused_in_flight(
        self,
        permit: Permit,
        verdict: Verdict,
        refused: _Refused,
        *,
        at_peak: bool,
        rate_ruled_out: bool,
        now: float,
    ) -> None:
        """A 429 read as a refusal of the count in flight: a cap learned (or its test tried
        again), and only this request waits: its hint is about a slot, not about the rate."""
        self._grid_refused(permit, verdict, now)
        slots = self.slots
        local = self._local
        # Refused at this many in flight: the way up to it is new territory again.
        local.sent_peak = min(local.sent_peak, permit.in_flight_at_send - 1)
        if not isinstance(slots, AimdLimit):
            return
        if refused is _Refused.UNTOLD:
            # Back at the cap, still provisional, tried again a round trip on.
            round_trip_s = max(_CAP_TEST_MIN_S, self.latency.mean_s)
            slots.retest_cap(now=now, after_s=round_trip_s)
            if not self._cap_retested:
                self._cap_retested = True
                self._cap_retest_by = now + _RETEST_WAITS_RT * round_trip_s
            return
        slots.learn_cap(
            in_flight_at_send=permit.in_flight_at_send,
            now=now,
            provisional=refused is _Refused.EITHER,
            probe_after_s=_CAP_TEST_MIN_S if rate_ruled_out else self._round_trip_s(),
        )
        if at_peak:
            self._untested_refusal = None  # refuted, it measures no rate
            self._cap_retested = False
        elif slots.cap_provisional and refused is _Refused.EITHER:
            sent_in_second = self._sent_in_second_before(permit.sent_at)
            self._untested_refusal = (permit.sent_at, sent_in_second)
            self._untested_seq = permit.seq
            self._untested_after_start = self._start_held_second(permit.sent_at)
            self._cap_retested = False
        elif not slots.cap_provisional:
            self._untested_refusal = None
            # A hint on a refusal of the count says nothing about when a slot frees: one of
            # ours does, with its answer. Waited out, a 2-s retry-after on the cap's probe at
            # 11 s held one request to the end of a 13-s run (1.7 s of a 15-slot lane's
            # tail). Not in a fleet: the others hold slots we do not see.
            permit.refused_for_slot = (
                refused is _Refused.IN_FLIGHT and self.admission.sees_every_acceptance
            )

    def _window_spent(
        self, permit: Permit, verdict: Verdict, now: float, *, max_hint_s: float, gate: bool
    ) -> bool:
        """Whether the 429's headers show the window they counted down spent, with no limit
        stated (Azure): then the hint says when the next begins, and that is all this 429
        says. Read as a rate, the second before it (one request, sent when nothing was
        left) cut the pace to a few requests a second."""
        if verdict.hint_s is None:
            return False
        spent = spent_budget(verdict.limits, permit.tokens, unstated=True)
        if spent is None:
            return False
        if gate:
            # through close_gate: a shared admission closes the fleet's gate, not only ours
            self.close_gate(min(verdict.hint_s, max_hint_s), now=now)
        if permit.seq >= self._window_from_seq:
            self._next_window_holds(spent)
        return True

    def _refused_budget(self, permit: Permit, verdict: Verdict, now: float) -> tuple[bool, bool]:
        """(tokens_out, output_out): whether the 429 says, by its structure, that tokens or
        output tokens ran out rather than requests. An input-token quota's also makes the
        token bucket charge the prompt alone from now on."""
        tokens_out = verdict.limit_scope == "tokens"
        if verdict.limit_scope == "input_tokens":
            tokens_out = True
            # Not in a fleet: its processes share one token rate and bucket, and one that saw
            # no such 429 would charge them prompt and reserve (its store does not carry the
            # unit: a 3-process `gemini` run fell to 0.66 of the reference).
            if not self._charges_input_alone and not self._shared:
                self._count_input_alone(now)
        limits = verdict.limits
        if verdict.limit_scope is None and limits is not None:
            tokens_out = (
                limits.remaining_tokens is not None
                and limits.remaining_tokens < permit.tokens
                and (limits.remaining_requests is None or limits.remaining_requests >= 1)
                # Headers showing the token budget short, with no token limit stated (Azure's
                # `remaining` of 10-s windows): a token rate discovered from them, measured
                # per second, held a lane at 0.3 of its windows' rate; requests it is, as before.
                and self.token_rate.rpm is not None
            )
        output_out = verdict.limit_scope == "output_tokens" or (
            verdict.limit_scope is None
            and limits is not None
            and limits.remaining_output_tokens is not None
            and (
                limits.remaining_output_tokens < 1
                or output_budget_short(limits, permit.output_tokens)
            )
        )
        return tokens_out, output_out and self.output_rate.rpm is not None

    def _cut_pace(self, permit: Permit, verdict: Verdict, now: float, *, tokens_out: bool) -> None:
        """A 429 about a rate: the pace of requests or tokens is cut (or discovered), measured
        on what the server took before it; then :meth:`_after_cut`."""
        # Tokens ran out, as the answer says by its structure: pace tokens, a stated rate or
        # one discovered now (cutting requests instead never learns a token limit).
        rate = self.token_rate if tokens_out else self.request_rate
        paced = rate.rpm is not None
        since = rate.measured_since(permit.sent_at)
        if since is not None and (
            self._sent_in_second_before(permit.sent_at, since=since) < _CLIMB_MEASURED_SENDS
        ):
            since = None
        name = "tokens" if tokens_out else "requests"
        measure = self.admission.sees_every_acceptance
        # Since an earlier refusal, net of the burst the server had stored: only where this
        # lane's sends are all the key's (a fleet's share would read as the server's rate).
        refused_at = rate.refused_before(permit.sent_at) if measure else None
        pace_before = rate.rpm
        moved = rate.throttled(
            sent_at=permit.sent_at,
            now=now,
            hinted=verdict.hint_s is not None,
            measure=measure,
            sent_in_second=(
                self._charged_in_second_before(permit.sent_at)
                if tokens_out
                else self._sent_in_second_before(permit.sent_at)
            ),
            sent_since_refusal=self._sent_since_refusal(permit, name, refused_at),
            amount=float(self._charged_for(permit)) if tokens_out else 1.0,
            since=since,
            least_measure=(
                _DISCOVERED_HELD * self._sustained_best[0] if rate is self.request_rate else 0.0
            ),
            sent_since=(
                None
                if since is None
                else self._charged_in_second_before(permit.sent_at, since=since)
                if tokens_out
                else self._sent_in_second_before(permit.sent_at, since=since)
            ),
        )
        if (
            rate is self.request_rate
            and pace_before is not None
            and rate.rpm is not None
            and rate.rpm < pace_before
        ):
            self._rate_cut_seq = self._admitted
        loss = rate.loss_rpm
        if (
            moved
            and pace_before is not None
            and rate is self.request_rate
            and rate.ceiling is None
            and rate.measured
            and loss is not None
        ):
            # What the server took in the second before a refusal after the discovery (whose
            # second holds the start's burst) is what it takes: a noise 429 at 0.8 of it is
            # one, where the 5-s mean still lagged the climb (1008 for a 1380/min lane). Not
            # far past that mean: a second after a gate holds the bucket's store as well
            # (2640/min of a 1489/min bucket, and its true measures then went unheard).
            loss = min(loss, _LOSS_OVER_MEAN * rate.accepted_mean_rpm(now))
            if loss > self._sustained_best[0]:
                self._sustained_best = (loss, now)
        self._after_cut(permit, verdict, now, rate=rate, name=name, paced=paced, moved=moved)

    def _after_cut(
        self,
        permit: Permit,
        verdict: Verdict,
        now: float,
        *,
        rate: PacedRate,
        name: str,
        paced: bool,
        moved: bool,
    ) -> None:
        """What follows a rate's 429 whatever the cut: the count since the refusal marked,
        the burst halved when refused at or under the pace, the buckets set and drained."""
        tokens_out = name == "tokens"
        mark = self._refusal_marks.get(name)
        if rate.refused_sent_at == permit.sent_at and (
            mark is None or mark[0] != permit.sent_at or permit.seq < mark[1]
        ):
            # The first of the refusals sent at that instant (a clump goes out at once, and
            # its refusals come back one by one): the count since starts at it, and every
            # refusal sent then is among those subtracted. Marked at the last, the others
            # were subtracted and not counted: 7 of a clump of 8, which read a 2400/min
            # bucket as 1846 and held the pace at 0.75 of it for 19 s.
            self._refusal_marks[name] = (permit.sent_at, permit.seq, self._counted_before(permit))
        if paced and permit.sent_at >= self._burst_cut_at:
            # Refused at or under the stated (or discovered) rate: the provider counts in
            # windows that our burst can overfill (fixed windows, a shorter window than ours).
            # Halve the burst; a quiet half-minute doubles it back.
            self._burst_scale = max(_MIN_BURST_SCALE, self._burst_scale / 2.0)
            self._burst_cut_at = now
            moved = True
        if not tokens_out:
            moved = self._grid_refused(permit, verdict, now) or moved
        if moved:
            # The halved burst keeps its debt (the window that refused stays empty a while:
            # dropping it cost 35% more 429s on hintless fixed windows), unless the provider's
            # bucket refills all along and said when the next request fits (the hint, which
            # the gate waits out): then its bucket is as empty as ours, not emptier. Kept, the
            # debt of a 1-s bucket of 940/min held the lane 0.37 s where the hint said 5 ms.
            hinted = verdict.hint_s is not None and self._depths[name].continuous
            self._apply_rates(now=now, keep_level=hinted)
        # The provider's window is empty right now: so is ours (a bucket just made for a
        # discovered rate starts full, and would send its burst into the refusal).
        bucket = self.tokens if tokens_out else self.requests
        if bucket is not None:
            bucket.drain_to(now=now, level=0.0)

    def _unexplained(self, permit: Permit, verdict: Verdict, *, load: bool, now: float) -> bool:
        """Whether a 429 is noise: a provider's shared capacity busy (OpenAI's "overloaded"
        429s, a gateway passing on an upstream's), which no pace of ours causes or cures.
        Taken as the rate, 5% of them held a lane at 0.2-0.5 of its stated limit (each a 15%
        cut and a halved burst, and the next came before the climb back). Noise only when
        everything says so:

        * their share of the last outcomes is this lane's usual one (``load`` False,
          :class:`~pacekeeper.core.congestion.RefusalShare`): a limit the pace outruns
          refuses more the further it goes, noise the same share at any pace;
        * the 429 names no limit (a code saying tokens, requests in flight, a day's quota);
        * a limit is stated (headers or configured): else a discovered rate judges it
          (:meth:`_unexplained_discovered`);
        * its own headers, if any, show no budget short;
        * the second before it held no more than the stated rate plus our burst: a bucket
          of the stated rate as deep as ours had room for it (nor did tokens outrun theirs);
          in a fleet, counted on every process's sends
          (:meth:`~pacekeeper.core.admission.AdmissionPolicy.key_sent_at_most`), and the
          request was not a learned cap's test refused at the fleet's last slot;
        * it does not come back as a limit found by its share within 10 s did, at a pace
          near the one it was found at (such a limit refuses again as the pace comes back).

        Sent at more in flight than succeeded lately, it may also be a cap's: see
        :meth:`_refused_at_peak` (a provisional cap, which a success past it refutes)."""
        rpm = self.request_rate.rpm
        found = self._limit_found
        if load:
            self._limit_found = (now, rpm if rpm is not None else math.inf)
            return False
        if (
            found is not None
            and rpm is not None
            # A discovered rate's limit found so was measured as it was cut: the edge of the
            # pace is judged by the share (:meth:`_unexplained_discovered`).
            and self.request_rate.ceiling is not None
            and now - found[0] < _LIMIT_REMEMBERED_S
            and rpm >= _LIMIT_PACE_SHARE * found[1]
        ):
            # A limit whose refusals rose with the pace refuses again as the pace comes back,
            # one by one, before their share shows it again.
            return False
        if verdict.limit_scope is not None:
            return False
        ceiling = self.request_rate.ceiling
        if ceiling is None:
            return self._unexplained_discovered(permit, verdict, now=now)
        if self._headers_show_budget_short(permit, verdict):
            return False
        share = self._configured.utilisation * self.local_share
        requests = self.requests
        burst = requests.burst if requests is not None else 1.0
        # A fleet's process counts what every process sent (the store's counts, high rather
        # than low): its own share of the key says nothing of whether the key outran the
        # limit. Its share of refusals (``load``) is its own: noise refuses the same share
        # of any process's sends, a limit the fleet outruns refuses each process's too.
        fleet = self.admission.key_sent_at_most(permit.sent_at)
        slots = self.slots
        if (
            fleet is not None
            and permit.filled_window
            and isinstance(slots, AimdLimit)
            and slots.probing
        ):
            # A learned cap's test (the cap raised by one), refused at the fleet's edge (its
            # last slot under that cap: `backends/_redis.py`): judged as the test. A success
            # there (the store's count runs a little ahead of the server's) may have set this
            # process's peak as high, and as noise it was neither confirmed nor refuted:
            # three lanes under a bare cap of 8 drew 7-37 429s in 7 runs of 8. Any other 429
            # to the fleet's last slot is judged as one process judges its own last slot's
            # (every one taken as not noise, busy 429s there cut the pace 1 run in 8).
            return False
        sent = self._sent_in_second_before(permit.sent_at) if fleet is None else fleet[0]
        if sent > ceiling * share / 60.0 + burst:
            return False
        tpm = self.token_rate.ceiling
        tokens = self.tokens
        if tpm is not None and tokens is not None:
            charged = self._charged_in_second_before(permit.sent_at) if fleet is None else fleet[1]
            if charged > tpm * share / 60.0 + tokens.burst:
                return False
        return True

    def _headers_show_budget_short(self, permit: Permit, verdict: Verdict) -> bool:
        """Whether the 429's own rate-limit headers, if any, show the budget of a minute too
        short for this request (then it is a limit's, never noise)."""
        limits = verdict.limits
        if limits is None:
            return False
        limits = self._per_minute_part(limits)
        return limits is not None and (
            budget_exhausted(limits, permit.tokens)
            or output_budget_short(limits, permit.output_tokens)
        )

    def _limit_found_lately(self, now: float) -> bool:
        """Whether 429s were read as a limit's by their share within the last
        ``_FAST_PROBE_AFTER_LIMIT_S`` (past a noise 429, a discovered rate then doubles only
        up to the most the server took lately)."""
        found = self._limit_found
        return found is not None and now - found[0] < _FAST_PROBE_AFTER_LIMIT_S

    def _unexplained_discovered(self, permit: Permit, verdict: Verdict, *, now: float) -> bool:
        """:meth:`_unexplained` where no request limit is stated or configured, once a rate
        was discovered from 429s (no rate-limit headers: vLLM-style and many OpenAI-compatible
        gateways). Their busy 429s (``retry-after: 1``, no headers) taken as the rate held a
        lane at 0.15 of its limit (median of 20 simulated draws at 2-8%): each cut measured
        the second before it, already held low by the cut before or emptied by its hint.
        Noise (besides the share of refusals, ``load``, judged by the caller) when either:

        * the second before it took under ``_DISCOVERED_HELD`` of the most the server was
          seen to take lately (:attr:`_sustained_best`: the mean accepted over 5 s, or 2 s,
          or a measured loss, sampled at each 429), held low by our sending (at most
          ``_HELD_REFUSED`` refused in it): a limit refuses only a pace past what it takes,
          so this refusal measures our own pace, not the server's; or
        * noise was seen so already (the share of 429s taken as noise is above 0): then a
          429 at the pace's edge is a limit's only when refusals since the last cut rose
          above that share (counted there as a limit's, not in the baseline). With no rate
          found yet, the share decides alone.

        Docs: docs/CONTROLLER.md, known gap "Random 429s with no limit stated". A fleet's
        process judges none so (the others' sends may have outrun the rate)."""
        rate = self.request_rate
        if self._shared or not self.admission.sees_every_acceptance:
            return False
        if rate.rpm is None and self.refusals.baseline == 0.0:
            return False
        if verdict.hint_s is not None and verdict.hint_s > 1.0:
            # A hint of seconds says a window runs until then (a bucket's next request, or a
            # busy upstream, says 1 s at most in whole seconds).
            return False
        if self._headers_show_budget_short(permit, verdict):
            return False
        if rate.rpm is None:
            # No rate found yet, and noise seen: the share of refusals decides (the start's
            # climb past a limit refuses most of what it sends).
            self._at_edge = True
            return True
        best = self._sustained_best[0]
        sent = self._sent_in_second_before(permit.sent_at)
        taken = rate.accepted_in_second_rpm(permit.sent_at, sent)
        # Held low by our sending, not by refusals: fixed windows of 2 s run dry in their
        # first second, and the next refuses all that is sent (it took nothing: not noise).
        if taken < _DISCOVERED_HELD * best and taken >= (sent - _HELD_REFUSED) * 60.0:
            return True
        # At the pace's edge: noise only once some was seen under it, and counted in the
        # share of refusals as a limit's (not in the baseline of noise, which only those
        # under it make): a limit the pace passed refuses a share that rises above the
        # noise seen under it, where counted as noise, it raised the baseline with it and
        # the lane ran a fifth past its limit for seconds.
        self._at_edge = self.refusals.baseline > 0.0
        return self._at_edge

    def _slot_requests(self, bucket: TokenBucket, now: float, *, slotted: bool) -> None:
        """Spread the requests over fixed windows' slots while the pace is held to them
        (:meth:`TokenBucket.set_slots`), or no longer."""
        grid = self._grid
        windows = grid.windows if grid is not None else None
        if not slotted or windows is None:
            bucket.clear_slots()
            return
        if bucket.slotted:
            return
        length_s = windows.length_s
        margin_s = windows.spread_s + _SLOT_MARGIN_S
        # What went into this window before the slots, from where it may have begun: a
        # window's budget in slots on top of it drew a 429 within the window.
        began_at = windows.origin + math.floor((now - windows.origin) / length_s) * length_s
        bucket.set_slots(
            origin=windows.origin,
            length_s=length_s,
            count=windows.budget,
            margin_s=margin_s,
            now=now,
            spent=sum(1 for t in self._recent_sends if t >= began_at - margin_s),
        )

    def _grid_refused(self, permit: Permit, verdict: Verdict, now: float) -> bool:
        """A 429 for :class:`FixedGrid`: a bare one is noted (a rate or a cap on requests
        in flight, told apart elsewhere); any other ends the grid for good (the server
        says more than refusals, or this lane does not see all its key's acceptances).
        True when the pace moved."""
        grid = self._grid
        if grid is None or verdict.limit_scope is not None:
            return False
        if (
            verdict.hint_s is not None
            or verdict.limits is not None
            or self.request_rate.ceiling is not None
            or self._shared
            or not self.admission.sees_every_acceptance
        ):
            self._grid = None
            return False
        return self._note_grid(permit, now, accepted=False)

    def _note_grid(self, permit: Permit, now: float, *, accepted: bool) -> bool:
        """Note an outcome of a discovered request rate for :class:`FixedGrid`; when fixed
        windows show, with the count each took, hold the pace to that count, evenly, half a
        request short of it (:meth:`PacedRate.hold`). True when the pace moved."""
        grid = self._grid
        assert grid is not None
        rate = self.request_rate
        if not accepted and grid.held_at is not None and permit.sent_at >= grid.held_at:
            # Refused at the windows' pace: they changed, or were misread. The cut (already
            # made) ends the hold; what was seen before it is shown afresh or not at all.
            grid.forget()
            return False
        shown = grid.note(seq=permit.seq, sent_at=permit.sent_at, accepted=accepted, now=now)
        if shown is None or rate.held(now) or not rate.discovered:
            return False
        grid.held_at = now
        grid.windows = shown
        share = self._configured.utilisation * self.local_share
        rpm = 60.0 * shown.budget / shown.length_s / share
        rate.hold(rpm, loss=rpm, now=now)
        return True

    def _count_input_alone(self, now: float) -> None:
        """A 429 named the token quota as counting input alone (Gemini's TPM): from now on
        the token bucket charges a request's input alone, as where output is limited apart.
        Charged prompt and max_tokens, a lane discovered about twice the input limit, and
        paced prompts ten times apart at one share of the answer's reserve each. What the
        token rate learned in the old units (its acceptances, a rate) is rescaled by the
        input's share of what was sent lately; the second before this 429 is counted anew."""
        local = self._local
        local.input_only = True
        self._input_alone_from_seq = self._admitted
        # A refusal marked before counts in the old units: nothing is measured from it.
        self._refusal_marks.pop("tokens", None)
        whole = sum(tokens for tokens, _ in self._recent_charges)
        output = sum(output_tokens for _, output_tokens in self._recent_charges)
        if whole > 0 and output > 0:
            self.token_rate.rescale((whole - output) / whole)
        # Without an output bucket, every admission's reserve is still in the count.
        self._charged -= self._output_charged
        self._apply_rates(now=now)

    def _next_window_holds(self, spent: str) -> None:
        """A window stated by ``remaining`` alone is spent (``spent``: "requests" or
        "tokens"): the next holds what this one took, as far as this lane saw (its successes
        since the last window was spent), until its own answers say what is left. Nothing
        goes before the hint anyway; after it, with nothing held, the whole window in flight
        went at once, a request or two over a window the rounded hint opened late."""
        if spent == "requests" and self._window_intake:
            self._local.stated_left = float(self._window_intake)
        elif spent == "tokens" and self._window_intake_tokens:
            self._local.stated_tokens_left = float(self._window_intake_tokens)
        self._window_from_seq = self._admitted + 1
        self._window_intake = self._window_intake_tokens = 0

    def _next_window_holds_stated(self, verdict: Verdict) -> None:
        """A 429 shows a gateway's window spent (N requests per a window it does not name,
        none left) and says when it ends: the next holds N, counted from the admissions
        after this refusal, as the provider counts it. OpenRouter states its window only in
        a 429's body, so nothing else holds the lane to it: paced at a rate read from the
        hint (a bound below the window, so high), it spent each window before it ended and
        every request sent until the refusal came back was refused too (5-6 429s in 200
        requests, two windows). With none left, one goes at a time (its 429 ends the window,
        its success shows a new one and forgets the count). Not in a fleet: the others'
        admissions are not counted here."""
        limits = verdict.limits
        if (
            limits is None
            or not limits.requests_window_unknown
            or not limits.limit_requests
            or limits.remaining_requests != 0
            or verdict.hint_s is None
            or self.admission is not self._local
        ):
            return
        self._local.stated_left = float(limits.limit_requests)
        self._window_from_seq = self._admitted + 1
        self._window_intake = self._window_intake_tokens = 0

    def _close_for_hint(
        self,
        permit: Permit,
        hint_s: float,
        refusing: PacedRate,
        now: float,
        *,
        max_hint_s: float,
    ) -> None:
        """Close the gate for a 429's wait hint: all of it, or where it is in whole seconds
        and the budget that refused is tokens of which no limit is stated, or only the
        server's limit with nothing said of what is left (Gemini's ``quotaValue``: the lane
        paces them from empty now, at the limit), the part that is certain
        (:meth:`CooldownGate.hinted_wait_s`).
        A ``retryDelay: "1s"`` for a bucket short of 0.1 s held a Gemini lane near idle a
        second per 429 (four in a 12-s trace, in flight falling to 0-4 each time). So too
        for requests at a rate discovered already (Groq states its per-minute request limit
        nowhere and rounds ``retry-after`` up to the second): the lane paces them from empty
        as well, and the whole second after each measured cut was a tenth of a 10-s run (on
        a simulated clock, 12 Groq-like 1-s buckets took 0.875 of what they allow, 0.913 now,
        at the same 429s, tests/core/test_whole_second_hints.py). A hint of 1 s only: any
        rate of a request a second or more rounds a bucket's wait for one request up to it,
        while 2 s or more is a window running until then (waited short, 10-s fixed windows
        with such hints drew twice the 429s). Not the discovery's own hint: its pace is a
        first guess. Nor a budget its headers show spent (Azure's 10-s
        windows: waited short, they drew 429s at each window's end, whose cuts held a lane at
        a third of its rate), which waits in :meth:`_window_spent` before this."""
        hint_s = min(hint_s, max_hint_s)
        whole = (
            hint_s >= 1.0
            and hint_s == math.floor(hint_s)
            and (
                (
                    refusing is self.token_rate
                    and (
                        refusing.ceiling is None
                        or (self.learned_tpm_alone and self._configured.tpm is None)
                    )
                )
                or (
                    refusing is self.request_rate
                    and refusing.ceiling is None
                    and refusing.rpm is not None
                    and hint_s == 1.0
                )
            )
        )
        wait_s = self.cooldown.hinted_wait_s(
            hint_s, sent_at=permit.sent_at, now=now, whole_seconds=whole, first=refusing.rpm is None
        )
        if wait_s > 0.0:
            # through close_gate: a shared admission closes the fleet's gate, not only ours
            self.close_gate(wait_s, now=now, tokens=refusing is self.token_rate)

    @property
    def round_trip_s(self) -> float:
        """How long an answer takes here (a second until one is known): how soon a
        provisional in-flight cap is tried one higher."""
        return self._round_trip_s()

    def _round_trip_s(self) -> float:
        """How long an answer takes here (a second until one is known)."""
        if not self.latency.mean_known:
            return 1.0
        return max(_CAP_TEST_MIN_S, self.latency.mean_s)

    def _not_held_at(self, permit: Permit) -> int:
        """How many of the requests counted in flight when ``permit``'s was sent (ours, itself
        included) the server did not hold when it arrived: those sent before it that were
        refused (a 429 back after it went: no slot was ever theirs), and those whose answers
        came back within a refusal's round trip after it went (they may have left the server
        before it arrived). Past a provisional cap by no more than these, its success
        refutes nothing, and the peak in flight it proves is what the server held.

        A cap of 7 refused as `rate_limit_exceeded` (the bench's `inflight` seed 3): the test
        went at 8 of ours 9 ms after a request at 7 that was refused (the server still held
        an answer that had reached us), was taken at 7 of the server's, and refuted the cap:
        the window opened to the floor the stated rate set (54), and 20-25 requests were
        refused in 0.1 s, 1 run in 4-8. Not refuted but counted as a peak of 8, it made
        every refusal at 8 after it noise (no new peak): 10 in 30 ms, each freed slot taken
        again at once."""
        seq, sent_at = permit.seq, permit.sent_at
        not_held = 0
        round_trip_s = 0.0
        for refused_seq, back_at, took_s in self._refusals_back:
            if took_s > round_trip_s:  # noqa: PLR1730  # the slowest refusal seen lately
                round_trip_s = took_s
            if refused_seq < seq and back_at > sent_at:
                not_held += 1
        return not_held + self.request_rate.accepted_between(sent_at, sent_at + round_trip_s)

    def _refusal_was_the_rate(self, now: float) -> None:
        """A request past a provisional cap succeeded: the bare 429 that taught the cap was
        the rate. What the server took in the second before it is measured now, as it would
        have been then; later bare 429s are read as the rate (as after any refuted cap)."""
        self._cap_refuted = True
        untested, self._untested_refusal = self._untested_refusal, None
        if untested is None:
            return
        sent_at, sent_in_second = untested
        rate = self.request_rate
        if (
            rate.rpm is None
            and rate.ceiling is None
            and not self._shared
            and self.admission.sees_every_acceptance
            and rate.accepted_peak_rpm()
            >= _REFUTED_PEAK * rate.accepted_in_second_rpm(sent_at, sent_in_second)
        ):
            # Nor the rate: the server took far more in a second since than in the one
            # before it (a busy upstream's 429 to slow start's peak, read as the rate, held a
            # 1427/min lane at 840 for 20 s). Noise, which makes the baseline.
            self.refusals.noise_after_all(self._untested_seq)
            return
        if self.request_rate.refused_earlier(
            sent_at=sent_at, sent_in_second=sent_in_second, now=now
        ):
            self._apply_rates(now=now)

    def _refused(self, permit: Permit, verdict: Verdict) -> _Refused:
        """What a 429 is about, read from structure, never from the message's words: requests
        in flight when the code says so, or the answer's own rate-limit headers show room for
        this request, or the lane was accepted at under half the stated rate, or (with nothing
        else to go by) it was sent well past the most in flight that ever succeeded, or at that
        peak taking the window's last slot; but with no stated rate, such a peak says only
        that it may be either. The answer's own headers showing a budget run out make it the
        rate."""
        told = self._refused_by_structure(permit, verdict)
        if told is not None:
            return told
        ceiling = self.request_rate.ceiling
        # No word from the answer. Requests succeed lately with as many in flight, or more: the
        # rate ran out. At (or past) that peak, with the request taking the last slot of the
        # window, the number in flight is what the server refused, until a refusal at no more
        # in flight than the cap it taught refutes that: then it was the rate all along.
        slots = self.slots
        if not isinstance(slots, AimdLimit) or self._cap_refuted:
            return _Refused.RATE
        in_flight = permit.in_flight_at_send
        cap = slots.learned_cap
        if cap is not None and in_flight <= cap and not (slots.probing and in_flight == cap):
            if ceiling is not None and in_flight + _PEAK_MARGIN > cap:
                # Within what our count runs ahead of the server's: the refusal that taught
                # the cap counted answers still on the wire, and the cap is a little lower.
                # A stated rate this lane is far from (above) does not explain it. (A 15-slot
                # server refused at 17 of ours, then at 16: read as the rate, the cap was
                # dropped and the window reopened to 80, and ten more were refused.)
                return _Refused.IN_FLIGHT
            self._cap_refuted = True
            self._untested_refusal = None  # this refusal measures the rate, and more recently
            slots.forget_cap()
            return _Refused.RATE
        if in_flight + _PEAK_MARGIN <= self._success_peak_in_flight:
            return _Refused.RATE
        at_peak = permit.filled_window or (
            # well past the most in flight that ever succeeded
            self._successes > 0 and in_flight > self._success_peak_in_flight + _PEAK_MARGIN
        )
        if not at_peak:
            return _Refused.RATE
        untested = self._untested_refusal
        if slots.probing and untested is not None and cap is not None and in_flight >= cap:
            return self._refused_probe(permit, slots, untested)
        # A stated rate that this lane was far from (see above) leaves only the cap; with none,
        # the burst that reached this peak may have outrun a rate just as well.
        return _Refused.IN_FLIGHT if ceiling is not None else _Refused.EITHER

    def _refused_by_structure(self, permit: Permit, verdict: Verdict) -> _Refused | None:
        """What a 429 is about by what the answer says (its code, its own headers) and by
        what this lane sent against a stated rate; None when neither tells."""
        if verdict.limit_scope is not None:
            return _Refused.IN_FLIGHT if verdict.limit_scope == "concurrency" else _Refused.RATE
        limits = verdict.limits
        if limits is not None:
            limits = self._per_minute_part(limits)
        if limits is not None:
            if budget_exhausted(limits, permit.tokens):
                return _Refused.RATE  # its own headers say a budget ran out
            if output_budget_short(limits, permit.output_tokens):
                return _Refused.RATE  # the output budget, which this request reserved from
            if budgets_have_room(limits, permit.tokens):
                return _Refused.IN_FLIGHT
        ceiling = self.request_rate.ceiling
        if ceiling is not None and self._key_sent_in_second_before(permit.sent_at) >= (
            _RATE_PLAUSIBLE * ceiling / 60.0
        ):
            # This lane sent a second's worth of the stated rate just before: the rate explains
            # the refusal, whatever else was in flight (a slow start or a silence that opened
            # the window sends in bursts that a per-second bucket refuses).
            return _Refused.RATE
        if (
            ceiling is not None
            # A process of a fleet is accepted at its own share of the key, however small;
            # the others fill the rest. Its acceptances say nothing about the key's rate.
            and self.admission.sees_every_acceptance
            and self._successes >= _SUCCESSES_TO_JUDGE
            and self.request_rate.accepted_peak_rpm() < 0.5 * ceiling
        ):
            # Refused while accepted at under half the stated rate: not the rate. Requests in
            # flight are what this server counts.
            return _Refused.IN_FLIGHT
        return None

    def _refused_probe(
        self, permit: Permit, slots: AimdLimit, untested: tuple[float, int]
    ) -> _Refused:
        """A provisional cap's probe, refused: the cap, the rate, or untold yet."""
        # The probe of a provisional cap, refused. Sent after a second as busy as the one
        # before the refusal that taught the cap, the rate explains it as well: then the
        # rate it is, measured from this refusal. After a clearly quieter second, only a
        # cap. "As busy" within two: answers come back in clumps, and where a clump falls
        # across a second's edge moves the count by one or two (a 1-s bucket of 10/s with
        # 1.6-s answers refused a clump of 14, then one counted at 13, which a cap of 13
        # was confirmed from: the lane then held 8.2/s of 10). But the cap it is when the
        # server took, since the cap was learned, a request after a second as busy as
        # that one (no margin: a rate that refused 11 takes 10), or when the lane's pace
        # over the round trip was as busy as the refused second (a rate refuses clumps
        # above the pace it takes; a cap refuses the pace itself).
        sent_in_second = self._sent_in_second_before(permit.sent_at)
        as_busy = sent_in_second >= untested[1] - self._as_busy_margin()
        if as_busy and self._cap_retested and permit.sent_at < self._cap_retest_by:
            # Not the second test (that one goes after a quieter second), but a request
            # sent at its level while it was out: the rate refuses it as well (fixed
            # windows of 5/s, answers of 1.295 s: the test at 3.90 s was taken, the
            # third of its clump's replacements refused). The test's answer decides.
            return _Refused.UNTOLD
        # the pace counts no send of the start's burst
        since, before = self._first_success_at, permit.sent_at
        if as_busy and not (
            self._took_as_busy(untested[1], since=slots.cap_learned_at, before=before)
            or self._pace_matched(sent_in_second, since=since, before=before)
        ):
            if not self._cap_retested and self._pace_matched(
                sent_in_second, since=-math.inf, before=before
            ):
                # Only the start's burst made the pace as busy: sends from before the
                # first answer, which are no pace under the cap (nothing had come back
                # to pace them). Counted, they confirmed a cap of 5 on fixed windows of
                # 5/s with answers of 1.3125 s (the ramp's 0.63 and the refused 0.73 in
                # the round trip before the test at 1.95: 8 sends for 7.9), and the lane
                # held 3.8/s of 5 for the run. A cap of 5 with such answers sends the
                # very same requests at the very same times up to that refusal: nothing
                # seen tells them apart. Tested once more, after a quieter second.
                return _Refused.UNTOLD
            self._cap_refuted = True
            self._untested_refusal = None
            slots.forget_cap()
            return _Refused.RATE
        return _Refused.IN_FLIGHT

    def _retest_untold(self, now: float) -> bool:
        """Whether the second test of a provisional cap (:attr:`_Refused.UNTOLD`) should wait:
        sent now, after this answer's replacement, it would follow a second as busy as the
        one before the refusal that taught the cap, which a rate refuses as well. Sent after
        a quieter one, it tells: a rate has room then, so a refusal is the cap, and a success
        refutes it. Not past :attr:`_cap_retest_by` (a cap with fast answers is never that
        quiet: then the test goes, and is judged as the first was)."""
        untested = self._untested_refusal
        if untested is None or now >= self._cap_retest_by:
            return False
        return self._sent_in_second_before(now) + 2 >= untested[1] - self._as_busy_margin()

    def _as_busy_margin(self) -> int:
        """How many sends fewer than the second before the refusal that taught a provisional
        cap still count as "as busy". The second before a refusal at the start held the
        start's burst, nearly all still in flight: no clump fell across its edge, so none (a
        cap of 3 refused the first window's fourth; a second of 2 sends under it was "as
        busy")."""
        return 0 if self._untested_after_start else _AS_BUSY_MARGIN

    def _start_held_second(self, sent_at: float) -> bool:
        """Whether half or more of the requests sent in the second up to ``sent_at`` went
        before the first answer came back: the start's burst (the first window, the paced
        ramp, silence's doubling), not a pace that answers set. One straggler of the ramp
        among slow start's clumps is not."""
        second = [t for t in self._recent_sends if sent_at - 1.0 <= t <= sent_at]
        early = sum(1 for t in second if t < self._first_success_at)
        return 2 * early >= len(second)

    def _took_as_busy(self, busy: int, *, since: float, before: float) -> bool:
        """Whether the server took a request sent between ``since`` (a provisional cap was
        learned) and ``before`` after a second in which this lane sent at least ``busy`` (as
        many as in the second before the refusal that taught the cap, not within a margin:
        a rate that refused 11 in a second takes 10, and a one-second bucket or fixed
        window, refilled during the second, takes one as busy as it refused now and then,
        so this alone is not enough). Held under a cap, a lane sends as much a second as it
        did before the cap's refusal (the cap is what limited it). Every request sent since
        then and answered was taken: a refusal at no more in flight than the cap would have
        refuted it."""
        unanswered = Counter(self._outstanding_sent_at)
        for sent_at in self._recent_sends:
            if not since <= sent_at < before:
                continue
            if unanswered[sent_at] > 0:
                unanswered[sent_at] -= 1
            elif self._sent_in_second_before(sent_at) >= busy:
                return True
        return False

    def _pace_matched(self, sent_in_second: int, *, since: float, before: float) -> bool:
        """Whether the lane's pace (:meth:`_paced_as_busy`) was as busy as a refused second of
        ``sent_in_second`` sends; a start's second is judged against the pace less the refused
        test (what a rate reading would measure): a cap refuses the pace (a cap of 6 with 1-s
        answers: 7 sends before the first refusal, 6-7 a second under the cap; read as the
        rate, the lane paced at 0.44 of what the cap allowed, and the in-flight refusals that
        followed cut it again), a rate a clump above it (fixed windows of 5 a second that
        refused the ramp's sixth, then a clump of 5 answers with a pace of 2.5 a second)."""
        if self._paced_as_busy(sent_in_second, since=since, before=before):
            return True
        return self._untested_after_start and self._paced_as_busy(
            sent_in_second - 1, since=since, before=before
        )

    def _paced_as_busy(self, sent_in_second: int, *, since: float, before: float) -> bool:
        """Whether this lane sent, over the round trip up to ``before`` (no send from before
        ``since`` counted), at least ``sent_in_second`` a second: its pace under the cap
        (what is in flight over how long an answer takes, all of it taken) was as busy as
        the refused second. A rate refuses a second well above the pace it takes (a clump:
        with answers of a constant 1.6 s, a lane held at 13 in flight by 10/s sent 13 in a
        third of a second, 8.9/s over the round trip); a cap refuses the lane's steady pace.
        And were it a rate after all, a cap that lets through as much a second as the rate
        refused costs nothing. Unknown (False) before a few answers."""
        if self._successes < _PACE_KNOWN_AFTER:
            return False
        # The mean of the answers so far, not only once a window of 16 is in: a cap of 4
        # answered in 0.8 s has 5 answers when its test is refused, and read as the rate
        # then, the lane was paced at 0.6 of what the cap allowed.
        round_trip_s = max(_CAP_TEST_MIN_S, self.latency.mean_s)
        start = before - round_trip_s
        sent = sum(1 for t in self._recent_sends if start < t <= before and t >= since)
        return sent >= sent_in_second * round_trip_s

    def _start_full_as_stated(self, left: float, limit: float) -> None:
        """A request bucket just made from an answer's statement starts as full as the
        provider's window is: ``left`` of ``limit`` (after what we sent since the answered
        request), whatever the window's length, as a share of our burst. It started empty
        (what was sent before counts in the provider's window), which left the first half
        second of a fresh key unused: with a limit that halves soon after, that is seconds."""
        bucket = self.requests
        if bucket is None or left <= 0:
            return
        bucket.adjust(now=self._clock(), delta=-min(1.0, left / limit) * bucket.burst)

    def _charged_since(self, permit: Permit) -> float:
        """What this lane charged the token bucket after ``permit`` (what an answer's
        ``remaining`` of tokens has not counted yet)."""
        return self._charged - permit.charged_before - self._charged_for(permit)

    def _charged_for(self, permit: Permit) -> int:
        """What ``permit`` charged the token bucket (its input alone where output is apart or
        the provider counts input alone)."""
        if self._charges_input_alone:
            return permit.tokens - permit.output_tokens
        return permit.tokens

    @property
    def _charges_input_alone(self) -> bool:
        """Whether the token bucket charges a request's input alone: output is limited apart
        (its own bucket), or a 429 named the token quota as counting input alone."""
        local = self._local
        return local.output_tokens is not None or local.input_only

    def _sent_in_second_before(self, sent_at: float, *, since: float | None = None) -> int:
        """How many requests this lane admitted in the second up to ``sent_at`` (or from
        ``since``)."""
        start = sent_at - 1.0 if since is None else since
        return sum(1 for t in self._recent_sends if start <= t <= sent_at)

    def _charged_in_second_before(self, sent_at: float, *, since: float | None = None) -> float:
        """The tokens this lane charged the token bucket in the second up to ``sent_at`` (or
        from ``since``)."""
        input_alone = self._charges_input_alone
        start = sent_at - 1.0 if since is None else since
        return sum(
            tokens - output_tokens if input_alone else tokens
            for t, (tokens, output_tokens) in zip(
                self._recent_sends, self._recent_charges, strict=True
            )
            if start <= t <= sent_at
        )

    def _sent_since_refusal(self, permit: Permit, name: str, since: float | None) -> float | None:
        """What this lane sent (requests, or tokens charged for ``name`` "tokens") from the
        refusal its rate last measured, sent at ``since``, up to ``permit`` (both included),
        counted from the admissions' running totals: any span, at no cost per request."""
        mark = self._refusal_marks.get(name)
        if since is None or mark is None or mark[0] != since:
            return None
        _, seq, charged_before = mark
        if name == "tokens":
            return self._counted_before(permit) + self._charged_for(permit) - charged_before
        return float(permit.seq - seq + 1)

    def _counted_before(self, permit: Permit) -> float:
        """What the token bucket was charged before ``permit``, in the units it charges now:
        admitted before it switched to counting input alone, less the reserves charged
        before it then (the running total dropped them at the switch). Counted in both units
        at once, the tokens sent since a refusal at the switch were short of every reserve
        before it: a 150k input-token bucket measured at 41k, paced at 0.25 of it for 10 s."""
        if self._charges_input_alone and permit.seq <= self._input_alone_from_seq:
            return permit.charged_before - permit.output_charged_before
        return permit.charged_before

    def _key_sent_in_second_before(self, sent_at: float) -> int:
        """How many requests every client of this lane's key (a fleet's processes) sent in
        the second up to ``sent_at``: for a lane alone, :meth:`_sent_in_second_before`."""
        sent = self.admission.key_sent_in_second_before(sent_at)
        return self._sent_in_second_before(sent_at) if sent is None else sent

    def _per_minute_part(self, limits: RateLimitSnapshot) -> RateLimitSnapshot | None:
        """``limits`` without the budgets known to be quotas per hour or day: a day's quota
        with plenty left says nothing about the minute's rate (None: nothing left to read)."""
        quotas = self._quota_budgets
        if outlasts_a_minute(limits.reset_requests_s):
            quotas.add("requests")
        if outlasts_a_minute(limits.reset_tokens_s):
            quotas.add("tokens")
        # A budget whose latest reading bounds its refill beyond a minute is set aside too
        # until the readings show a quota or a window (core/depth.py RefillingQuota).
        refills = self._quota_refills
        if refills["requests"].suspect:
            quotas = quotas | {"requests"}
        if refills["tokens"].suspect:
            quotas = quotas | {"tokens"}
        if not quotas:
            return limits
        if "requests" in quotas:
            limits = replace(
                limits, limit_requests=None, remaining_requests=None, reset_requests_s=None
            )
        if "tokens" in quotas:
            limits = replace(limits, limit_tokens=None, remaining_tokens=None, reset_tokens_s=None)
        return None if limits.is_empty else limits

    def close_gate(self, wait_s: float, *, now: float | None = None, tokens: bool = False) -> None:
        """After a 429 with a hint: nobody on this lane goes before the hinted time (``wait_s``
        from ``now``, by default the lane's clock). ``tokens``: the 429 was about tokens."""
        with self._lock:
            until = (self._clock() if now is None else now) + wait_s
            self.admission.close_gate(until, wait_s, tokens=tokens)

    def reconcile(
        self,
        *,
        prompt_estimated: int,
        prompt_actual: int | None,
        completion_reserved: int,
        completion_actual: int | None,
        prompt_charged: int | None = None,
        cheap: bool = False,
        chars_estimated: int | None = None,
    ) -> None:
        """Correct the token bucket once the response's usage says what was really spent
        (``prompt_charged``: what admission charged for the prompt), and learn how our prompt
        estimates compare with the provider's counts: their mean and their spread.
        ``cheap``: ``prompt_estimated`` is a character count; ``chars_estimated``: the
        character count of a prompt also counted exactly (both ratios learn from it)."""
        if prompt_actual is None:
            return
        with self._lock:
            self._reconcile(
                Reconciliation(
                    prompt_estimated=prompt_estimated,
                    prompt_actual=prompt_actual,
                    completion_reserved=completion_reserved,
                    completion_actual=completion_actual,
                    prompt_charged=prompt_charged,
                    cheap=cheap,
                    chars_estimated=chars_estimated,
                )
            )

    def _reconcile(self, usage: Reconciliation) -> None:
        """:meth:`reconcile`, called with the lock held."""
        self._reconcile_counts(
            usage.prompt_estimated,
            usage.prompt_actual,
            usage.completion_reserved,
            usage.completion_actual,
            usage.prompt_charged,
            usage.cheap,
            usage.chars_estimated,
        )

    def _reconcile_counts(  # noqa: PLR0917  # positional on the hot path
        self,
        prompt_estimated: int,
        prompt_actual: int,
        completion_reserved: int,
        completion_actual: int | None,
        prompt_charged: int | None,
        cheap: bool,
        chars_estimated: int | None,
    ) -> None:
        """:meth:`_reconcile` from its fields (positional): a success's settle passes the
        call's own, with no :class:`Reconciliation` made for it."""
        scale = self.cheap_scale if cheap else self.estimate_scale
        if prompt_charged is None:
            prompt_charged = math.ceil(prompt_estimated * scale.charge_factor)
        scale.observe(prompt_estimated, prompt_actual)
        if chars_estimated is not None:
            self.cheap_scale.observe(chars_estimated, prompt_actual)
        delta = float(prompt_actual - prompt_charged)
        given_back = delta < 0
        if self._local.output_tokens is not None:
            # Output limited apart (Anthropic's OTPM): reserved from max_tokens, settled
            # with what was generated, as the provider does.
            if completion_actual is not None:
                output_delta = completion_actual - completion_reserved
                self.admission.charge_output(float(output_delta))
                self._output_charged += output_delta
                given_back = given_back or output_delta < 0
        elif (
            self._configured.refund_unused_completion
            and completion_actual is not None
            and not self._local.input_only  # the output was never charged
        ):
            delta += min(0, completion_actual - completion_reserved)
            given_back = given_back or delta < 0
        if delta:
            admission = self.admission
            if admission is self._local:  # its charge_tokens, inlined: every answer
                tokens = self._local.tokens
                if tokens is not None:
                    tokens.adjust(self._clock(), delta)
            else:
                admission.charge_tokens(delta)
        if given_back and self._queue.members:
            # The head may fit now: left asleep until the refill alone would let it go,
            # it would let the bucket fill past its burst and the refund spill over.
            self._queue.wake_head()

    def output_not_generated(self, permit: Permit) -> None:
        """An answered failure (a 5xx, a 529, a refused body) generated nothing: give back
        the output it reserved, as a provider that reserves max_tokens does. A 429's reserve
        stays: where the output budget refused, the bucket was already emptied to match."""
        if permit.output_tokens <= 0:
            return
        with self._lock:
            if self._local.output_tokens is None:
                return
            self.admission.charge_output(-float(permit.output_tokens))
            self._output_charged -= permit.output_tokens
            self._queue.wake_head()

    # -- reading --------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting for admission."""
        return len(self._queue)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return self.stats.snapshot(
                concurrency_limit=self.slots.limit,
                peak_in_flight=self.slots.peak_in_flight,
                rpm_limit=self.rpm_limit,
                tpm_limit=self.tpm_limit,
                cooldowns=self.cooldown.times_closed,
            )

    def __repr__(self) -> str:
        route, model = self.key
        shared = f" {self.admission!r}" if self._shared else ""
        return (
            f"<Lane {route} model={model} queued={self.queued} {self.slots!r} "
            f"rpm={_number(self.rpm)} tpm={_number(self.tpm)} {self.cooldown!r}{shared}>"
        )


def _number(value: float | None) -> str:
    return "None" if value is None else f"{value:.6g}"


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
