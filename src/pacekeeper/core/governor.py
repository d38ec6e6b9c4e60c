"""The governor: admission before each attempt, a decision after each outcome.

::

    Call.admit()  ->  cooldown gate  ->  rpm/tpm buckets  ->  concurrency slot  ->  Permit
    (the caller sends the request)
    Call.settle(permit, verdict)
        learn the limits the headers state; close the gate on a hinted 429;
        reconcile tokens with usage; release the slot with its signal (AIMD);
        decide: done, or retry after a delay (hint + jitter, or capped full-jitter backoff),
        within max_attempts, the deadline, max_hint_s and the retry budget;
        record the attempt (and the request when final) to stats, hooks and the log.

Nothing here does network I/O or knows HTTP libraries: every surface (the transports,
``Governor.run``, ``Governor.admit``) drives the attempt loop of
:mod:`pacekeeper.core.attempts`, which admits, pauses and stops on the :class:`Decision`; the
surface turns its outcomes into a :class:`~pacekeeper.core.classify.Verdict`.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pacekeeper.core.attempts import _OVER, Attempts, Decision, SurfaceAttempts
from pacekeeper.core.backend import SpendBackend
from pacekeeper.core.classify import (
    OutcomeKind,
    Verdict,
    classify_response,
    verdict_for_exception,
)
from pacekeeper.core.concurrency import Signal
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.cost import (
    BilledUsage,
    CompletionLengths,
    LocalSpendLedger,
    Price,
    PriceLookup,
    Reservation,
    SpendCap,
    SpendLedger,
)
from pacekeeper.core.errors import (
    ConfigurationError,
    DeadlineExceeded,
    NonRetryableError,
    RequestFailed,
    RequestTooLarge,
    RetriesExhausted,
    RetryBudgetExhausted,
    RetryWaitTooLong,
    SpendCapReached,
)
from pacekeeper.core.lane import Lane, LaneKey, Permit, QueueTimeout
from pacekeeper.core.ordered import amap
from pacekeeper.core.priority import PRIORITY_VAR, TENANT_VAR, Priority
from pacekeeper.core.queue import check_weight
from pacekeeper.core.records import AnswerCounter, AttemptRecord, RecordHook, RequestRecord
from pacekeeper.core.testing import is_testing
from pacekeeper.core.tokens import CHARS, estimate_request_tokens, route_generates

if TYPE_CHECKING:
    from pacekeeper.core.backend import Backend
    from pacekeeper.core.stats import StatsSnapshot
    from pacekeeper.core.tokens import TokenEstimate

__all__ = ["Admission", "Call", "Decision", "Governor"]

logger = logging.getLogger("pacekeeper")

T = TypeVar("T")
R = TypeVar("R")


class Governor:
    """Decides when each request may leave, and what happens after each outcome.

    State is kept per (route, model) in a :class:`~pacekeeper.core.lane.Lane`. ``limits`` apply
    to every model unless ``models`` names the model; unset rpm/tpm are learned from responses.
    A streamed answer holds its slot until closed, or until it sat ``stream_idle_timeout_s``
    unread and unclosed (a caller that walked away).

    ``prices`` gives a model's :class:`~pacekeeper.core.cost.Price` (``pacekeeper.prices.
    price_lookup()`` reads genai-prices): each request's cost is then computed from its usage
    and recorded. ``budget`` caps the spend (:class:`~pacekeeper.core.cost.SpendCap`; it needs
    ``prices``); with a backend that shares spend (Redis), the cap holds across processes.

    ``tenant_weights`` weighs tenants within their priority class (default 1 each): tenants
    ``{"chat": 2, "etl": 1}`` that both wait get admissions 2:1 (``tenant=`` on each call, or
    :func:`pacekeeper.priority`).

    >>> gov = Governor(limits=Limits(rpm=600, concurrency=4))
    >>> gov
    <Governor lanes=0 limits rpm=600 tpm=None concurrency=4>
    """

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        models: Mapping[str, Limits] | None = None,
        retry: RetryPolicy | None = None,
        hooks: Iterable[RecordHook] = (),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        seed: int | None = None,
        stream_idle_timeout_s: float = 60.0,
        backend: Backend | None = None,
        prices: PriceLookup | None = None,
        budget: SpendCap | None = None,
        tenant_weights: Mapping[str, float] | None = None,
    ) -> None:
        if budget is not None and prices is None:
            raise ConfigurationError(
                "Governor(budget=...) needs prices=...: a spend cap cannot count costs without "
                "them (pacekeeper.prices.price_lookup() reads genai-prices)"
            )
        self.limits = limits or Limits()
        self.models: dict[str, Limits] = dict(models or {})
        self.retry = retry or RetryPolicy()
        self.hooks: list[RecordHook] = list(hooks)
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.backend = backend
        self.clock = clock
        self.wall_clock = wall_clock
        self._rng = random.Random(seed)
        self._lanes: dict[LaneKey, Lane] = {}
        self._lanes_lock = threading.Lock()
        self._concurrency_ceiling: int | None = None
        self._closed = False
        self.prices = prices
        self.budget = budget
        self.spend: SpendLedger | None = None
        """The spend cap's ledger (None without a ``budget``): spent and reserved USD."""
        if budget is not None:
            self.spend = (
                backend.make_spend_ledger(budget)
                if isinstance(backend, SpendBackend)
                else LocalSpendLedger(budget)
            )
        self.tenant_weights: dict[str, float] = {}
        """Tenants' weights within their class (others weigh 1): a tenant of weight 2 gets
        twice the admissions of one of weight 1 while both wait (:meth:`weigh_tenant`)."""
        for name, weight in (tenant_weights or {}).items():
            check_weight(name, weight)
            self.tenant_weights[name] = float(weight)
        self._price_cache: dict[str | None, Price | None] = {}
        self._completions: dict[LaneKey, CompletionLengths] = {}
        # The hooks as last seen, and they again when each is an AnswerCounter (None: not),
        # in one tuple: read together by every thread that settles.
        self._counting: tuple[list[RecordHook], tuple[AnswerCounter, ...] | None] = ([], None)

    def _counters_of(self, hooks: list[RecordHook]) -> tuple[AnswerCounter, ...] | None:
        """``hooks`` when every one counts a successful request's fields (an
        :class:`~pacekeeper.core.records.AnswerCounter`), else None; worked out again only when
        the list changed."""
        counters = tuple(hook for hook in hooks if isinstance(hook, AnswerCounter))
        counting = counters if len(counters) == len(hooks) else None
        self._counting = (list(hooks), counting)
        return counting

    # -- lanes ----------------------------------------------------------------------------

    def limits_for(self, model: str | None) -> Limits:
        if model is not None and model in self.models:
            return self.models[model]
        return self.limits

    def lane(self, route: str, model: str | None) -> Lane:
        """The lane of (route, model), created on first use."""
        key = (route, model)
        lane = self._lanes.get(key)
        if lane is None:
            with self._lanes_lock:
                lane = self._lanes.get(key)
                if lane is None:
                    make = self.backend.make_lane if self.backend is not None else Lane
                    lane = make(
                        key, limits=self.limits_for(model), retry=self.retry, clock=self.clock
                    )
                    if self._concurrency_ceiling is not None:
                        lane.slots.cap(self._concurrency_ceiling)
                    for name, weight in self.tenant_weights.items():
                        lane.queue.set_weight(name, weight)
                    if self._closed:
                        lane.close()
                    self._lanes[key] = lane
        return lane

    def weigh_tenant(self, tenant: str, weight: float) -> None:
        """Give ``tenant`` ``weight`` in every lane, now and later: within its class, tenants
        that wait share admissions in proportion to their weights (default 1)."""
        check_weight(tenant, weight)
        with self._lanes_lock:
            self.tenant_weights[tenant] = float(weight)
            for lane in self._lanes.values():
                lane.queue.set_weight(tenant, weight)

    def price_of(self, model: str | None) -> Price | None:
        """The model's price (None: unknown, or no ``prices`` given)."""
        try:
            return self._price_cache[model]
        except KeyError:
            price = self.prices(model) if self.prices is not None else None
            self._price_cache[model] = price
            return price

    def completion_lengths(self, route: str, model: str | None) -> CompletionLengths:
        """The completion lengths answers on (route, model) had: what admission expects."""
        key = (route, model)
        lengths = self._completions.get(key)
        if lengths is None:
            lengths = self._completions.setdefault(key, CompletionLengths())
        return lengths

    def close(self) -> None:
        """Stop admitting on every lane, now and for lanes made later: queued requests fail
        with :class:`~pacekeeper.AdmissionClosed` (never sent); those in flight finish."""
        with self._lanes_lock:
            self._closed = True
            for lane in self._lanes.values():
                lane.close()

    @property
    def lanes(self) -> list[Lane]:
        return list(self._lanes.values())

    def cap_concurrency(self, ceiling: int) -> None:
        """Never admit more than ``ceiling`` at once per lane (e.g. the connection pool's size,
        so that the pool never becomes the queue)."""
        with self._lanes_lock:
            self._concurrency_ceiling = (
                ceiling
                if self._concurrency_ceiling is None
                else min(ceiling, self._concurrency_ceiling)
            )
            for lane in self._lanes.values():
                lane.slots.cap(ceiling)

    # -- requests -------------------------------------------------------------------------

    def call(
        self,
        *,
        route: str,
        model: str | None,
        estimate: TokenEstimate | None = None,
        tokens: int | None = None,
        tag: str | None = None,
        priority: Priority | str | None = None,
        tenant: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Call:
        """Start one logical request. Give its token ``estimate`` (or a plain ``tokens`` cost);
        ``tag`` is copied into its records (e.g. a batch line's custom_id).

        An ``estimate`` in characters (:func:`~pacekeeper.core.tokens.estimate_request_chars`,
        a few microseconds) comes with the ``body`` it was made from: the lane counts its
        tokens exactly (tens of microseconds) only where the count decides when the request
        may leave (see :meth:`Lane.wants_exact_estimate`), and charges characters times the
        tokens per character that usage showed everywhere else.

        ``priority`` is its class (``"interactive"``, ``"batch"``, ``"background"``) and
        ``tenant`` whose share it counts in within that class; unset, they come from the
        innermost :func:`pacekeeper.priority` block, else ``interactive`` and no tenant."""
        if estimate is not None:
            return self._open(
                route,
                model,
                estimate.prompt_tokens,
                estimate.max_completion_tokens,
                tag,
                body if estimate.method == CHARS else None,
                priority,
                tenant,
            )
        return self._open(route, model, tokens or 0, 0, tag, None, priority, tenant)

    def _open(  # noqa: PLR0917  # positional: the transports call it on every request
        self,
        route: str,
        model: str | None,
        prompt: int,
        completion: int | None,
        tag: str | None,
        chars_of: Mapping[str, Any] | None,
        priority: Priority | str | None = None,
        tenant: str | None = None,
    ) -> Call:
        """:meth:`call` from an estimate's fields (``completion`` None: the body set no
        budget), positionally: ``chars_of`` is the body ``prompt`` counted the characters
        of (None: ``prompt`` is tokens). The transports read a request's counts without a
        :class:`TokenEstimate` and pass them here."""
        # current_priority() and current_tenant(), inlined: two frames on every request
        cls = Priority.parse(priority) if priority is not None else PRIORITY_VAR.get()
        if cls is None:
            cls = Priority.INTERACTIVE
        if tenant is None:
            tenant = TENANT_VAR.get()
        lane = self._lanes.get((route, model))  # self.lane, one call fewer once it exists
        if lane is None:
            lane = self.lane(route, model)
        # Only routes that generate reserve an answer; embeddings, moderations and the like
        # cost their input alone.
        if completion is None:
            completion = lane.limits.default_completion_tokens if route_generates(route) else 0
        call = Call(self, lane, prompt, completion, tag, cls, tenant)  # positionally
        if chars_of is not None:
            call._body = chars_of
        return call

    def delay_for(self, verdict: Verdict, attempt: int) -> float:
        """The wait before retrying after ``verdict`` on attempt number ``attempt``."""
        policy = self.retry
        if verdict.hint_s is not None:
            hint = verdict.hint_s
            return hint + self._rng.uniform(0.0, policy.hint_jitter_s + 0.05 * hint)
        ceiling = min(policy.backoff_cap_s, policy.backoff_base_s * 2.0 ** (attempt - 1))
        return self._rng.uniform(0.0, ceiling)

    # -- reading --------------------------------------------------------------------------

    def stats(self) -> list[StatsSnapshot]:
        """Aggregates per (route, model), as plain data."""
        return [lane.snapshot() for lane in self.lanes]

    def __repr__(self) -> str:
        lim = self.limits
        return (
            f"<Governor lanes={len(self._lanes)} limits rpm={lim.rpm} tpm={lim.tpm} "
            f"concurrency={lim.concurrency}>"
        )

    # -- for code that does not use an HTTP transport -------------------------------------

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        route: str = "/",
        model: str | None = None,
        tokens: int | None = None,
        estimate: TokenEstimate | None = None,
        priority: Priority | str | None = None,
        tenant: str | None = None,
    ) -> T:
        """Run ``fn`` under the governor, retrying what can succeed on retry.

        Failures are read from the exception ``fn`` raises: anything with a ``status_code``
        (and optionally ``response.headers``/``body``), as the openai and anthropic SDKs raise,
        is classified like an HTTP answer; timeouts and connection errors are retried; other
        exceptions propagate at once. Cancellation always propagates and frees the slot.
        """
        call = self.call(
            route=route,
            model=model,
            tokens=tokens,
            estimate=estimate,
            priority=priority,
            tenant=tenant,
        )
        attempts = SurfaceAttempts(call)
        async for _ in attempts:
            try:
                result = await fn()
            except BaseException as exc:
                if attempts.raised(exc, self._classify):
                    continue
                decision = attempts.decision
                if decision is not None and decision.error is not None:
                    raise decision.error from exc
                raise
            usage = getattr(result, "usage", None)
            attempts.answered(
                _OK,
                prompt_tokens=_int_attr(usage, "prompt_tokens", "input_tokens"),
                completion_tokens=_int_attr(usage, "completion_tokens", "output_tokens"),
            )
            return result
        raise AssertionError("the attempt loop ended without an outcome")  # pragma: no cover

    def _classify(self, exc: Exception) -> Verdict | None:
        """What an exception ``fn`` raised means (:meth:`run`): SDK errors by their status."""
        return verdict_for_exception(exc, now_wall_s=self.wall_clock())

    def admit(
        self,
        *,
        route: str = "/",
        model: str | None = None,
        tokens: int | None = None,
        estimate: TokenEstimate | None = None,
        priority: Priority | str | None = None,
        tenant: str | None = None,
    ) -> Admission:
        """One governed attempt for code that makes its own calls::

            async with gov.admit(route="/v1/chat/completions", model="gpt-4o", tokens=900) as a:
                response = await my_http_call()
                a.report(status=response.status, headers=response.headers, body=response.body)

        Admission waits for the cooldown, pacing and a slot; leaving the block frees the slot.
        ``report`` feeds the outcome back (limits learned, 429 cooldowns, AIMD, records) and
        returns the :class:`Decision`; an exception that escapes the block is recorded too
        (a cancellation frees the slot and is never taken for a failure). There is no retry
        here: use :meth:`run` for that. ``with gov.admit(...)`` works in threads.
        """
        return Admission(
            self.call(
                route=route,
                model=model,
                tokens=tokens,
                estimate=estimate,
                priority=priority,
                tenant=tenant,
            )
        )

    def amap(
        self,
        fn: Callable[[T], Awaitable[R]],
        items: Iterable[T],
        *,
        route: str = "/",
        model: str | None = None,
        tokens: Callable[[T], int] | None = None,
        window: int = 1000,
        return_exceptions: bool = False,
    ) -> AsyncIterator[R | BaseException]:
        """Yield ``fn(item)`` for every item, each call governed by :meth:`run`, in input
        order, with at most ``window`` items started and not yet yielded."""

        async def governed(item: T) -> R:
            return await self.run(
                lambda: fn(item),
                route=route,
                model=model,
                tokens=tokens(item) if tokens is not None else None,
            )

        return amap(governed, items, window=window, return_exceptions=return_exceptions)


_BYTES_REACHED_CALLER = "part of the answer had already reached the caller"

# An enum member's .value is two Python calls (a descriptor and a property), and a plain
# Enum's hash one more: a record, built on every request, reads ``_value_`` or, for the
# str-valued Priority (hashed as a str), this table.
_PRIORITY_NAMES: dict[Priority, str] = {cls: cls.value for cls in Priority}


_ANSWERED = Decision(retry=False)
"""A success's decision for a surface that reads the record from the call (one for all)."""

_Answered = tuple[int | None, float, int | None, int | None, str | None, float]
"""An answer that ended its request: status, latency, prompt and completion tokens, request
id, and when (on the governor's clock)."""

_OK = Verdict(
    kind=OutcomeKind.OK,
    retryable=False,
    reason="ok",
    hint_s=None,
    limits=None,
    error_code=None,
    status=None,
)


class Call:
    """One logical request: its attempts, waits and records.

    :class:`~pacekeeper.core.attempts.Attempts` drives it in a loop; by hand, use
    :meth:`admit` (or :meth:`admit_sync`) before each attempt and :meth:`settle` after it,
    and act on the returned :class:`Decision`.
    """

    __slots__ = (
        "_body",
        "_chars",
        "_end",
        "_made",
        "_reservation",
        "_started_mono",
        "_started_wall",
        "attempt",
        "charged",
        "completion_tokens",
        "cost_usd",
        "deadline",
        "done",
        "governor",
        "lane",
        "model",
        "priority",
        "prompt_tokens",
        "queued_s",
        "route",
        "tag",
        "tenant",
    )

    def __init__(  # noqa: PLR0917  # Governor.call passes them positionally: every request
        self,
        gov: Governor,
        lane: Lane,
        prompt_tokens: int,
        completion_tokens: int,
        tag: str | None = None,
        priority: Priority = Priority.INTERACTIVE,
        tenant: str | None = None,
    ) -> None:
        self.governor = gov
        """The governor this request runs under."""
        self.tag = tag
        self.priority = priority
        self.tenant = tenant
        self.lane = lane
        self.route: str = lane.key[0]
        self.model: str | None = lane.key[1]
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.attempt = 0
        self.done = False
        # price_of without its call once the model's price is cached (every request but one)
        prices = gov._price_cache
        model = lane.key[1]
        price = prices[model] if model in prices else gov.price_of(model)
        self.cost_usd: float | None = 0.0 if price is not None else None
        """What this request's answers cost so far (None: its model has no known price)."""
        self._reservation: Reservation | None = None
        self._started_mono = gov.clock()
        self._started_wall = gov.wall_clock()
        self.queued_s = 0.0
        """Seconds its attempts waited in the queue, so far."""
        self._body: Mapping[str, Any] | None = None
        """The body, to count exactly, while ``prompt_tokens`` holds its characters."""
        self.charged: int | None = None
        """Tokens charged at the last admission (what records report; None: not admitted)."""
        self._chars: int | None = None
        """The prompt in characters, once counted exactly too (both scales learn from it)."""
        self._end: _Answered | None = None
        """What the answer that ended the request said, for its record (built when read)."""
        self._made: RequestRecord | None = None
        """The final record, once built."""
        deadline_s = gov.retry.deadline_s
        self.deadline = self._started_mono + deadline_s if deadline_s is not None else None
        """When (on the governor's monotonic clock) it gives up; None: never."""

    @property
    def record(self) -> RequestRecord | None:
        """The request's final record (None: it has not ended). An answered request's is
        built when first read: most requests have no hook, log or surface that reads it."""
        made = self._made
        if made is None and self._end is not None:
            made = self._answered_record()
        return made

    def _answered_record(self) -> RequestRecord:
        made = self._made
        if made is None:
            end = self._end
            assert end is not None  # only an answered request's record is built late
            status, latency_s, prompt_tokens, completion_tokens, request_id, now = end
            made = self._made = self._record(
                ok=True,
                outcome="ok",
                status=status,
                latency_s=latency_s,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                error=None,
                request_id=request_id,
                now=now,
            )
        return made

    @property
    def idle_timeout_s(self) -> float:
        """How long a streamed answer may sit unread and unclosed before its slot is freed."""
        return self.governor.stream_idle_timeout_s

    @property
    def cost(self) -> int:
        """Tokens charged at admission (prompt, corrected by learned scale, plus reserve)."""
        return self.lane.cost_of(
            self.prompt_tokens, self.completion_tokens, cheap=self._body is not None
        )

    def _where(self) -> str:
        return f"{self.route} model={self.model}"

    def _count_exactly(self) -> None:
        """Replace the prompt's character count with its exact token count."""
        body, self._body = self._body, None
        if body is not None:
            self._chars = self.prompt_tokens
            self.prompt_tokens = estimate_request_tokens(body, model=self.model).prompt_tokens

    @property
    def prompt_cheap(self) -> bool:
        """Whether ``prompt_tokens`` is still a count of characters (its body kept, to count
        exactly where the count decides when the request may leave)."""
        return self._body is not None

    def next_attempt(self) -> int:
        """The next attempt begins: the tokens it is admitted at (counted exactly first where
        that decides; :class:`~pacekeeper.RequestTooLarge` if no admission could ever take
        them), and it is counted. What an attempt loop calls before each admission."""
        lane = self.lane
        cheap = self._body is not None
        # Lane.cost_of, inlined: every attempt
        scale = lane.cheap_scale if cheap else lane.estimate_scale
        cost = math.ceil(self.prompt_tokens * scale.charge_factor) + self.completion_tokens
        if cheap and lane.wants_exact_estimate(self.governor.clock(), cost):
            self._count_exactly()
            cost = self.cost
        tpm = lane.token_rate.rpm  # Lane.tpm without the property's call
        if tpm is not None and cost > tpm:  # one test on every attempt, not two
            if self._body is not None:
                self._count_exactly()  # characters overstate: never refuse on them
                cost = self.cost
            if cost > tpm:
                prompt = cost - self.completion_tokens  # as charged: the learned scale applied
                raise RequestTooLarge(
                    f"{self._where()}: this request needs about {cost} tokens (prompt "
                    f"{prompt} + {self.completion_tokens} reserved for the answer), more than "
                    f"the whole limit of {tpm:g} tokens per minute, so it can never be "
                    "admitted. Lower max_tokens or split the input.",
                    route=self.route,
                    model=self.model,
                    tokens=cost,
                )
        if self.attempt == 0:
            lane.budget.deposit()
        self.attempt += 1
        self.charged = cost
        return cost

    def gave_up_waiting(self, exc: QueueTimeout) -> DeadlineExceeded:
        """The error (recorded, final) of an admission that gave up at the deadline."""
        deadline_s = self.governor.retry.deadline_s
        return self._final_failure(
            DeadlineExceeded,
            f"{self._where()}: gave up after {self.governor.clock() - self._started_mono:.1f}s in "
            f"the queue waiting for {exc.reason} (about {exc.wait_s:.1f}s more), beyond the "
            f"{deadline_s:g}s deadline. Raise RetryPolicy.deadline_s or the limits.",
            outcome="deadline_exceeded",
        )

    def admit(self) -> Awaitable[Permit]:
        """Wait until one attempt may leave; retries go to the front of the queue. Under a
        spend cap, the attempt also waits for room in it (answers in flight free room), or
        fails with :class:`~pacekeeper.SpendCapReached` when nothing can free enough.

        One turn of :class:`~pacekeeper.core.attempts.Attempts`, whose awaitable this hands
        back (a queued request holds no frame of its own)."""
        return Attempts(self).__anext__()

    def admit_sync(self) -> Permit:
        """The blocking twin of :meth:`admit`."""
        permit = Attempts(self).next_sync()
        assert permit is not None  # a first turn always admits (or raises)
        return permit

    def spend_may_fit(self) -> bool:
        """Whether this request's worst case fits the spend cap now, or nothing in flight
        holds room any more (then admission refuses it, or it fits): worth a permit."""
        ledger = self.governor.spend
        costs = self.expected_cost_usd()
        if ledger is None or costs is None:
            return True
        totals = ledger.totals()
        return totals.reserved_usd <= 0 or (
            totals.spent_usd + totals.reserved_usd + costs[1] <= totals.cap_usd
        )

    def expected_cost_usd(self) -> tuple[float, float] | None:
        """(what admission holds, the worst case) in USD for this request's next attempt: the
        prompt as charged and the answer at the lane's observed quantile of completion lengths
        (max_tokens until enough answers are known); the prompt at the most it was seen billed
        over our estimate (:meth:`Lane.worst_prompt_of`) and the answer at max_tokens. None: no
        price."""
        gov = self.governor
        price = gov.price_of(self.model)
        if price is None:
            return None
        cheap = self._body is not None
        prompt = self.lane.cost_of(self.prompt_tokens, 0, cheap=cheap)
        worst = self.completion_tokens
        expected = worst
        cap = gov.budget
        lengths = gov.completion_lengths(self.route, self.model)
        if cap is not None and lengths.count >= cap.learn_after:
            expected = min(worst, lengths.quantile(cap.completion_quantile))
        rate_in, _, rate_out = price.rates(prompt)
        held_usd = (prompt * rate_in + expected * rate_out) / 1e6
        # The worst case bills the prompt at the highest ratio to our estimate seen: charged
        # at the usual factor, a run once ended $0.00008 past its cap.
        prompt = self.lane.worst_prompt_of(self.prompt_tokens, cheap=cheap)
        rate_in, _, rate_out = price.rates(prompt)
        return held_usd, (prompt * rate_in + worst * rate_out) / 1e6

    def reserve(self, permit: Permit) -> bool:
        """Hold this attempt's expected cost in the spend cap (True at once without one);
        False: ``permit`` was given back, wait (:meth:`spend_may_fit`) and admit again."""
        ledger = self.governor.spend
        if ledger is None:
            return True
        cap_usd = ledger.cap.usd
        costs = self.expected_cost_usd()
        if costs is None:
            permit.release(Signal.NEUTRAL)
            raise SpendCapReached(
                f"{self._where()}: no price is known for model {self.model!r}, so the spend "
                f"cap of ${cap_usd:g} cannot admit it (its cost would be unknown). Give its "
                f'price in pacekeeper.toml: [models."{self.model}".price] input = USD per '
                "million input tokens, output = USD per million output tokens.",
                model=self.model,
                spent_usd=ledger.totals().spent_usd,
                cap_usd=cap_usd,
                need_usd=None,
            )
        hold, need = costs
        answer = ledger.reserve(hold_usd=hold, need_usd=need)
        if isinstance(answer, Reservation):
            self._reservation = answer
            return True
        permit.release(Signal.NEUTRAL)
        if answer.wait:
            return False
        raise SpendCapReached(
            f"{self._where()}: the spend cap of ${cap_usd:g} is reached: ${answer.spent_usd:.4f} "
            f"spent, and this request may cost up to ${need:.4f}. It was not sent; raise the "
            "cap to go on.",
            model=self.model,
            spent_usd=answer.spent_usd,
            cap_usd=cap_usd,
            need_usd=need,
        )

    def _account(
        self,
        ok: bool,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        billed: BilledUsage | None,
    ) -> float | None:
        """The attempt's cost from its usage (None: unknown); the spend cap's reservation is
        settled to it, or released when the attempt failed without usage."""
        gov = self.governor
        if ok and completion_tokens is not None:
            lengths = gov._completions.get(self.lane.key)  # completion_lengths, one call less
            if lengths is None:
                lengths = gov.completion_lengths(self.route, self.model)
            lengths.add(completion_tokens)
        # cost_usd is None exactly when the model has no price (see __init__)
        price = gov.price_of(self.model) if self.cost_usd is not None else None
        if price is None:
            cost = None
        else:
            if (
                billed is None
                and ok
                and prompt_tokens is not None
                and completion_tokens is not None
            ):
                billed = BilledUsage(input_tokens=prompt_tokens, output_tokens=completion_tokens)
            cost = price.cost_usd(billed) if billed is not None else None
        if cost is not None and self.cost_usd is not None:
            self.cost_usd += cost
        reservation, self._reservation = self._reservation, None
        if reservation is not None and gov.spend is not None:
            if cost is not None:
                gov.spend.settle(reservation, cost)
            elif ok:  # answered, usage unknown: count what was held rather than nothing
                gov.spend.settle(reservation, reservation.usd)
            else:
                gov.spend.release(reservation)
        return cost

    def settle(
        self,
        permit: Permit,
        verdict: Verdict,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        request_id: str | None = None,
        hold: bool = False,
        final: bool | str = False,
        billed: BilledUsage | None = None,
        with_record: bool = True,
    ) -> Decision:
        """Take an attempt's outcome; release its slot (unless ``hold``: a stream keeps it
        until closed) and decide what comes next. ``final`` forbids a retry (e.g. bytes of a
        stream already reached the caller); a string says why, for the error message.
        ``billed`` is the usage as the provider bills it (cache reads apart); without it the
        cost is that of ``prompt_tokens`` and ``completion_tokens``. ``with_record`` False: a
        success's decision carries no record (a surface that reads :attr:`record` itself,
        when at all)."""
        if verdict.kind is OutcomeKind.OK:
            return self.settle_success(
                permit,
                verdict,
                prompt_tokens,
                completion_tokens,
                request_id,
                billed,
                hold,
                with_record,
            )
        gov, lane = self.governor, self.lane
        now = gov.clock()
        latency_s = now - permit.sent_at
        kind = verdict.kind
        if self.cost_usd is None and self._reservation is None:
            cost_usd = None  # no price, nothing held under a spend cap: nothing to account
        else:
            cost_usd = self._account(False, prompt_tokens, completion_tokens, billed)
        # What is left is an attempt that failed: counted by the lane under one acquisition of
        # its lock (a success ends in settle_success).
        lane.settle(
            permit,
            verdict,
            now=now,
            max_hint_s=gov.retry.max_hint_s,
            retry=self.attempt > 1,
            hold=hold,
            gate=kind is not OutcomeKind.RATE_LIMITED or not is_testing(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if kind is not OutcomeKind.RATE_LIMITED and (verdict.status or 0) >= 400:
            lane.output_not_generated(permit)
        retry, delay_s, error = self._decide(verdict, now, final)
        if permit.refused_for_slot:
            delay_s = 0.0  # it waits in the queue for a slot under the learned cap
        hooks = gov.hooks
        # Built only when someone reads it: this runs once per attempt. A logger below INFO
        # is below DEBUG too: one check of the level for both records.
        if (hooks or logger.isEnabledFor(logging.INFO)) and (
            hooks or logger.isEnabledFor(logging.DEBUG)
        ):
            self._publish_attempt(
                permit,
                verdict,
                latency_s=latency_s,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                retry_in_s=delay_s if retry else None,
                request_id=request_id,
                cost_usd=cost_usd,
            )
        if retry:
            return Decision(retry=True, delay_s=delay_s)
        record = self._finish(
            ok=False,
            outcome=kind.value,
            status=verdict.status,
            latency_s=latency_s,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            error=error,
            request_id=request_id,
        )
        if error is not None:
            error.record = record
        return Decision(retry=False, error=error, record=record)

    def settle_success(  # noqa: PLR0917  # positional: every request's settle
        self,
        permit: Permit,
        verdict: Verdict,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        request_id: str | None = None,
        billed: BilledUsage | None = None,
        hold: bool = False,
        with_record: bool = True,
    ) -> Decision:
        """:meth:`settle` of a success (``verdict`` OK), whose arguments it takes
        positionally: it ends the request, and the lane counts the attempt, the usage and
        the request in one step (:meth:`Lane.settle_success`) from the call's own fields.
        Its frozen record (20 ``object.__setattr__`` calls) waits until a hook, the log or a
        surface reads it."""
        gov, lane = self.governor, self.lane
        now = gov.clock()
        latency_s = now - permit.sent_at
        if self.cost_usd is None and self._reservation is None:
            # No price, nothing held under a spend cap: _account would only count the
            # answer's length (inlined: a frame fewer on every request of an unpriced model).
            cost_usd = None
            if completion_tokens is not None:
                lengths = gov._completions.get(lane.key)
                if lengths is None:
                    lengths = gov.completion_lengths(self.route, self.model)
                lengths.add(completion_tokens)
        else:
            cost_usd = self._account(True, prompt_tokens, completion_tokens, billed)
        self.done = True
        self._end = (verdict.status, latency_s, prompt_tokens, completion_tokens, request_id, now)
        lane.settle_success(
            permit,
            verdict.limits,
            now,
            latency_s,
            self,
            prompt_tokens,
            completion_tokens,
            verdict.status,
            hold,
        )
        hooks = gov.hooks
        if not hooks and not logger.isEnabledFor(logging.INFO):
            # Nobody reads the record now (the commonest case by far).
            if with_record:
                return Decision(retry=False, record=self._answered_record())
            return _ANSWERED
        # A success that every hook counted from its fields (:meth:`_counted`) builds no
        # record; else its attempt's record goes to the hooks and the debug log, and the
        # request's to the hooks and the log.
        published = not (
            hooks
            and self._counted(verdict.status, now, latency_s, prompt_tokens, completion_tokens)
        )
        if published and (hooks or logger.isEnabledFor(logging.DEBUG)):
            self._publish_attempt(
                permit,
                verdict,
                latency_s=latency_s,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                retry_in_s=None,
                request_id=request_id,
                cost_usd=cost_usd,
            )
        if published:
            self._publish(self._answered_record())
        if with_record:
            return Decision(retry=False, record=self._answered_record())
        return _ANSWERED

    def _counted(
        self,
        status: int | None,
        now: float,
        latency_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> bool:
        """A success counted by every hook from its fields, when every hook counts that way
        (the Prometheus collector, :class:`~pacekeeper.core.records.AnswerCounter`) and the
        log is below INFO: then its two records wait until something reads them, as without
        hooks."""
        gov = self.governor
        hooks = gov.hooks
        seen, counters = gov._counting
        if hooks != seen:
            counters = gov._counters_of(hooks)
        if counters is None or logger.isEnabledFor(logging.INFO):
            return False
        total_s = now - self._started_mono
        priority = _PRIORITY_NAMES[self.priority]
        for counter in counters:
            counter.count_answer(
                self.route,
                self.model,
                status,
                attempt=self.attempt,
                latency_s=latency_s,
                total_s=total_s,
                queued_s=self.queued_s,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=self.cost_usd,
                priority=priority,
                tenant=self.tenant,
            )
        return True

    def _publish_attempt(
        self,
        permit: Permit,
        verdict: Verdict,
        *,
        latency_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        retry_in_s: float | None,
        request_id: str | None,
        cost_usd: float | None,
    ) -> None:
        """The attempt's record to the hooks and the debug log."""
        gov, lane = self.governor, self.lane
        kind = verdict.kind
        attempt_record = AttemptRecord(
            route=self.route,
            model=self.model,
            attempt=self.attempt,
            outcome=kind.value,
            status=verdict.status,
            started_at=gov.wall_clock() - latency_s,
            queued_s=permit.queued_s,
            latency_s=latency_s,
            tokens_estimated=permit.tokens,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            retry_in_s=retry_in_s,
            error=None if kind is OutcomeKind.OK else verdict.reason,
            request_id=request_id,
            tag=self.tag,
            priority=self.priority.value,
            tenant=self.tenant,
            in_flight=permit.in_flight_at_send,
            concurrency_limit=lane.slots.limit,
            rpm_limit=lane.rpm_limit,
            tpm_limit=lane.tpm_limit,
            cost_usd=cost_usd,
        )
        for hook in gov.hooks:
            hook.on_attempt(attempt_record)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("attempt %s", _kv(attempt_record.as_dict()))

    def _decide(
        self, verdict: Verdict, now: float, final: bool | str
    ) -> tuple[bool, float, RequestFailed | None]:
        policy = self.governor.retry
        where = self._where()
        if not verdict.retryable:
            return (
                False,
                0.0,
                NonRetryableError(
                    f"{where}: {verdict.reason} (not retried: a retry cannot change this answer)"
                ),
            )
        if final:
            return (
                False,
                0.0,
                RetriesExhausted(
                    f"{where}: {verdict.reason} (not retried: "
                    f"{final if isinstance(final, str) else _BYTES_REACHED_CALLER})"
                ),
            )
        if self.attempt >= policy.max_attempts:
            return (
                False,
                0.0,
                RetriesExhausted(
                    f"{where}: {verdict.reason} (gave up after {self.attempt} attempts; raise "
                    "RetryPolicy.max_attempts if the provider is expected to recover)"
                ),
            )
        if verdict.hint_s is not None and verdict.hint_s > policy.max_hint_s:
            return (
                False,
                0.0,
                RetryWaitTooLong(
                    f"{where}: {verdict.reason} (the server asks to wait {verdict.hint_s:g}s, "
                    f"longer than RetryPolicy.max_hint_s={policy.max_hint_s:g}s; failing now "
                    "instead of sleeping)"
                ),
            )
        delay_s = self.governor.delay_for(verdict, self.attempt)
        if self.deadline is not None and now + delay_s > self.deadline:
            return (
                False,
                0.0,
                DeadlineExceeded(
                    f"{where}: {verdict.reason} (a retry would wait {delay_s:.1f}s, past the "
                    f"request's {policy.deadline_s:g}s deadline)"
                ),
            )
        # 429s are slowed by pacing, the cooldown gate and AIMD; the budget guards against
        # storms of retries of failures (5xx, timeouts, dropped connections).
        if verdict.kind is not OutcomeKind.RATE_LIMITED and not self.lane.budget.try_spend():
            return (
                False,
                0.0,
                RetryBudgetExhausted(
                    f"{where}: {verdict.reason} (not retried: retries already use their "
                    f"{policy.retry_budget_ratio:.0%} share of traffic on this route and model; "
                    "the upstream looks degraded)"
                ),
            )
        return True, delay_s, None

    def cancelled(self, permit: Permit | None) -> None:
        """The caller's task was cancelled: free the slot and record it (never retried)."""
        reservation, self._reservation = self._reservation, None
        if reservation is not None and self.governor.spend is not None:
            self.governor.spend.release(reservation)
        if permit is not None:
            permit.release(Signal.NEUTRAL)
        if not self.done:
            self._finish(
                ok=False,
                outcome="cancelled",
                status=None,
                latency_s=self.governor.clock() - permit.sent_at if permit else 0.0,
                prompt_tokens=None,
                completion_tokens=None,
                error=None,
                request_id=None,
                error_type="CancelledError",
            )

    def _final_failure(
        self, cls: type[DeadlineExceeded], message: str, *, outcome: str
    ) -> DeadlineExceeded:
        error = cls(message)
        error.record = self._finish(
            ok=False,
            outcome=outcome,
            status=None,
            latency_s=0.0,
            prompt_tokens=None,
            completion_tokens=None,
            error=error,
            request_id=None,
        )
        return error

    def _finish(
        self,
        *,
        ok: bool,
        outcome: str,
        status: int | None,
        latency_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        error: RequestFailed | None,
        request_id: str | None,
        error_type: str | None = None,
    ) -> RequestRecord:
        """The request ended without an answer to count (a failure, a cancellation): record
        it, count it and publish it."""
        now = self.governor.clock()
        record = self._record(
            ok=ok,
            outcome=outcome,
            status=status,
            latency_s=latency_s,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            error=error,
            request_id=request_id,
            error_type=error_type,
            now=now,
        )
        self._made = record
        lane = self.lane
        with lane._lock:
            lane.stats.on_record(record, at=now)
        self._publish(record)
        return record

    def _record(
        self,
        *,
        ok: bool,
        outcome: str,
        status: int | None,
        latency_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        error: RequestFailed | None,
        request_id: str | None,
        now: float,
        error_type: str | None = None,
    ) -> RequestRecord:
        self.done = True
        return RequestRecord(
            route=self.route,
            model=self.model,
            outcome=outcome,
            status=status,
            ok=ok,
            attempts=self.attempt,
            started_at=self._started_wall,
            total_s=now - self._started_mono,
            queued_s=self.queued_s,
            latency_s=latency_s,
            tokens_estimated=self.charged if self.charged is not None else self.cost,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            error=str(error) if error is not None else None,
            error_type=type(error).__name__ if error is not None else error_type,
            request_id=request_id,
            tag=self.tag,
            priority=_PRIORITY_NAMES[self.priority],
            tenant=self.tenant,
            cost_usd=self.cost_usd,
        )

    def _publish(self, record: RequestRecord) -> None:
        """The request's record to the hooks and the log."""
        for hook in self.governor.hooks:
            hook.on_request(record)
        if logger.isEnabledFor(logging.INFO):
            logger.info("request %s", _kv(record.as_dict()), extra={"pacekeeper": record})


class _SingleAttempt(Attempts):
    __slots__ = ()
    final = "a single admission does not retry"


class Admission:
    """One attempt admitted by :meth:`Governor.admit`; report what happened with :meth:`report`.

    A one-turn drive of the call's :class:`~pacekeeper.core.attempts.Attempts` (no retry)."""

    __slots__ = ("_attempts",)

    def __init__(self, call: Call) -> None:
        self._attempts = _SingleAttempt(call)

    @property
    def call(self) -> Call:
        return self._attempts.call

    @property
    def decision(self) -> Decision | None:
        """What the reported outcome decided (None until it is reported)."""
        decision = self._attempts.decision
        return decision if decision is not _OVER else None

    def report(
        self,
        *,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        request_id: str | None = None,
    ) -> Decision:
        """The answer's status, headers and (for errors) body; usage when known."""
        attempts = self._attempts
        if attempts.permit is None:
            if attempts.decision is not None:
                raise RuntimeError("this attempt's outcome was already reported")
            raise RuntimeError("report() belongs inside the `async with gov.admit(...)` block")
        verdict = classify_response(
            status, headers or {}, body, now_wall_s=attempts.call.governor.wall_clock()
        )
        return attempts.answered(
            verdict,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            request_id=request_id,
        )

    def _exit(self, exc: BaseException | None) -> None:
        attempts = self._attempts
        if attempts.permit is None:  # reported already, or never admitted
            return
        if exc is None:
            attempts.answered(_OK)
        else:
            attempts.raised(exc, attempts.call.governor._classify)

    async def __aenter__(self) -> Admission:
        await anext(self._attempts)
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(exc)

    def __enter__(self) -> Admission:
        self._attempts.next_sync()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._exit(exc)


def _kv(fields: Mapping[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None or key == "type":
            continue
        if isinstance(value, float):
            text = f"{value:.3f}"
        elif isinstance(value, str) and (" " in value or not value):
            text = repr(value)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _int_attr(obj: object, *names: str) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int):
            return value
    return None
