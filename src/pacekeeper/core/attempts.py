"""The attempt loop of one request: what every surface drives.

In the spirit of stamina's ``retry_context``: the loop owns admission, the pause between
attempts, cancellation and the decision; the surface only sends, and reports what came back::

    attempts = Attempts(gov.call(route="/v1/chat/completions", model="gpt-4o", tokens=900))
    async for _ in attempts:                  # admitted (after the pause, on a retry)
        try:
            answer = await send()
        except BaseException as exc:
            if attempts.raised(exc, classify):  # settled; True: retried
                continue
            raise                             # a cancellation, or an error not retried
        if not attempts.answered(verdict_of(answer), prompt_tokens=...).retry:
            return answer

A streamed answer reports its outcome later, when it ends (:meth:`Attempts.ended`): its
attempt holds the concurrency slot until then and is never retried. ``for _ in attempts`` is
the blocking twin (threads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacekeeper.core.classify import OutcomeKind, Verdict, describe_exception, verdict_for_failure
from pacekeeper.core.lane import _PERMITS, Permit, UserPermit
from pacekeeper.core.testing import is_testing
from pacekeeper.core.waiting import AsyncWaiter, QueueTimeout

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from pacekeeper.core.cost import BilledUsage
    from pacekeeper.core.errors import RequestFailed
    from pacekeeper.core.governor import Call
    from pacekeeper.core.headers import RateLimitSnapshot
    from pacekeeper.core.records import RequestRecord

__all__ = ["Attempts", "Classify", "Decision", "SurfaceAttempts"]

Classify = Callable[[Exception], "Verdict | None"]
"""What an exception the send raised means (None: not a failure the governor knows: it is
recorded and propagates, never retried)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after an attempt: retry after ``delay_s``, or stop (``error`` None: success)."""

    retry: bool
    delay_s: float = 0.0
    error: RequestFailed | None = None
    record: RequestRecord | None = None
    """The final record, when this decision ends the request."""


SPEND_POLL_S = 0.02
"""How often a request the spend cap holds back looks again (answers in flight free room)."""

_OVER = Decision(retry=False)
"""The loop is over without a decision of its own: the answer streams to the caller (its
outcome comes later), or the caller was cancelled (never retried)."""


class Attempts:
    """The attempts of one :class:`~pacekeeper.core.governor.Call`, in a loop.

    Each turn of ``async for`` (or ``for``) pauses the last decision's delay (none under
    :func:`~pacekeeper.set_testing`) and admits the next attempt; the loop ends when an outcome
    was reported that is not retried. ``permit`` is an attempt admitted before the loop (at an
    SDK's method): the first turn sends on it. A subclass that sets ``final`` (a string that
    says why) never retries.

    >>> from pacekeeper.core.governor import Governor
    >>> Attempts(Governor().call(route="/v1/embeddings", model="m", tokens=10))
    <Attempts /v1/embeddings model=m: attempt 0, not admitted>
    """

    # One of these lives as long as each queued request, and it is all that request's
    # admission holds while it waits: the loop awaits the queue's future itself (see
    # __next__), with no coroutine frame of its own or of the lane's.
    __slots__ = ("_asked_at", "_sleep_on", "_waiter", "call", "decision", "permit")

    final: bool | str = False
    """Whether (and why) no outcome is retried."""

    permit_class: type[Permit] = UserPermit
    """What the lane grants: a permit with a finaliser (freed when dropped unreleased), as
    this loop's permits may reach user code (``Call.admit``, ``gov.admit``)."""

    decision_record: bool = True
    """Whether a success's decision carries the request's record (the decisions of this loop
    may reach user code); False: the surface reads ``call.record`` when it needs it."""

    def __init__(self, call: Call, *, permit: Permit | None = None) -> None:
        self.call = call
        self.permit = permit
        """The attempt in progress (or admitted ahead), until its outcome is reported."""
        self.decision: Decision | None = None
        """What the last reported outcome decided (None: nothing reported yet)."""
        self._waiter: AsyncWaiter | Coroutine[Any, Any, Permit] | None = None
        """While queued: its waiter (or, on a shared lane, the lane's wait)."""
        self._asked_at = 0.0
        self._sleep_on: Any = None
        """The future a :meth:`first_turn` that queued left to sleep on: the next step of
        the awaited loop yields it."""

    def __repr__(self) -> str:
        call = self.call
        decision = self.decision
        if decision is _OVER and self.permit is not None:
            state = "streaming"
        elif decision is not None:
            state = "retrying" if decision.retry else "done"
        elif self._waiter is not None:
            state = "queued"
        else:
            state = "admitted" if self.permit is not None else "not admitted"
        return f"<Attempts {call.route} model={call.model}: attempt {call.attempt}, {state}>"

    # -- the loop -------------------------------------------------------------------------

    def __aiter__(self) -> Attempts:
        return self

    def __anext__(self) -> Awaitable[Permit]:
        """The next attempt's admission, to await: the loop itself on the common path (a
        first attempt, or a retry without a pause, with no spend cap; on a shared lane it
        steps the lane's wait, which asks the store), else a coroutine that pauses or
        waits for room in the spend cap."""
        decision = self.decision
        if decision is not None:
            if not decision.retry:
                raise StopAsyncIteration
            self.decision = None
            if decision.delay_s > 0 and not is_testing():
                return self._admit_after(decision.delay_s)
        elif self.permit is not None:  # admitted ahead: its first attempt
            return self
        if self.call.governor.spend is not None:
            return self._admit_after(0.0)
        return self

    # The awaitable of one admission, stepped by the task that awaits it (as an
    # asyncio.Future is): a queued request holds this object and its waiter's future, not
    # the frames of coroutines (a frame keeps every local while it waits).

    def __await__(self) -> Generator[Any, None, Permit]:
        return self  # type: ignore[return-value]  # an iterator stepped as a generator is

    def __next__(self) -> Any:
        """One step of the admission: its permit (as StopIteration's value), or the future
        the task sleeps on until the queue wakes it."""
        call = self.call
        pending = self._waiter
        try:
            if pending is None:
                permit = self.permit
                if permit is not None:  # admitted ahead
                    raise StopIteration(permit)
                turn = self._join()
                if turn.__class__ not in _PERMITS:
                    return turn  # the future to sleep on
            else:
                sleep_on = self._sleep_on
                if sleep_on is not None:  # queued by first_turn: its sleep first
                    self._sleep_on = None
                    return sleep_on
                turn = self._waited(pending, None)
                if turn.__class__ not in _PERMITS:
                    return turn
        except QueueTimeout as exc:
            self._left()
            raise call.gave_up_waiting(exc) from None
        except StopIteration:
            raise
        except BaseException:
            self._left()
            raise
        self._waiter = None
        self.permit = turn
        call.queued_s += turn.queued_s
        raise StopIteration(turn)

    def _join(self) -> Any:
        """An attempt's first look: counted (:meth:`Call.next_attempt`) and admitted at once
        (its permit), or queued (its waiter kept; the future to sleep on, or its permit when
        a shared lane's store granted it at once)."""
        call = self.call
        lane = call.lane
        cost = call.next_attempt()
        self._asked_at = asked_at = call.governor.clock()
        joined = lane.join(  # positionally (see Lane.join): every request
            cost,
            call.attempt > 1,
            AsyncWaiter,
            call.completion_tokens,
            call.priority,
            call.tenant,
            asked_at,
            call.deadline,
            self.permit_class,
        )
        if joined.__class__ in _PERMITS:  # at once: the common case
            return joined
        return self._queued(joined, cost, asked_at)

    def _queued(self, joined: Any, cost: int, asked_at: float) -> Any:
        """:meth:`_join`'s attempt that queued (``joined``: its waiter and how long it sleeps
        first): its waiter kept; the future to sleep on, or its permit when a shared lane's
        store granted it at once."""
        call = self.call
        lane = call.lane
        waiter, turn = joined
        assert isinstance(waiter, AsyncWaiter)
        # A shared lane's head asks its store: that wait is the lane's coroutine.
        self._waiter = pending = (
            waiter
            if not lane.shared
            else lane.wait(
                waiter,
                turn,
                tokens=cost,
                deadline=call.deadline,
                asked_at=asked_at,
                output_tokens=call.completion_tokens,
                priority=call.priority,
                prompt_tokens=call.prompt_tokens,
                prompt_cheap=call.prompt_cheap,
            )
        )
        return self._waited(pending, turn)

    def first_turn(self) -> Permit | None:
        """The first attempt's admission without an ``await`` when it needs no wait: its
        permit (the loop's first turn is then over), else None, and the caller awaits
        :meth:`__anext__` as usual (the attempt queued here sleeps first, as it would have).

        What the transport calls once per request: awaiting the loop raises its permit as
        StopIteration's value through three frames, which cost about as much as the rest
        of an uncontended admission. Only a fresh loop on a lane of this process without a
        spend cap is stepped here (anything else: None at once, nothing done)."""
        call = self.call
        if (
            self.decision is not None
            or self.permit is not None
            or self._waiter is not None
            or call.governor.spend is not None
            or call.lane._shared  # Lane.shared without the property's call
        ):
            return None
        try:
            # _join, inlined: its admission at once is the common case, on every request
            cost = call.next_attempt()
            self._asked_at = asked_at = call.governor.clock()
            turn = call.lane.join(  # positionally (see Lane.join)
                cost,
                call.attempt > 1,
                AsyncWaiter,
                call.completion_tokens,
                call.priority,
                call.tenant,
                asked_at,
                call.deadline,
                self.permit_class,
            )
            if turn.__class__ not in _PERMITS:
                turn = self._queued(turn, cost, asked_at)
        except QueueTimeout as exc:
            self._left()
            raise call.gave_up_waiting(exc) from None
        except BaseException:
            self._left()
            raise
        if turn.__class__ not in _PERMITS:
            self._sleep_on = turn  # queued: the awaited loop sleeps on it first
            return None
        self._waiter = None
        self.permit = turn
        call.queued_s += turn.queued_s
        return turn

    def _waited(
        self, pending: AsyncWaiter | Coroutine[Any, Any, Permit], sleep_s: float | None
    ) -> Any:
        """A queued admission's step: its permit, or the future to sleep on (``sleep_s``:
        how long, before the look; None: look now)."""
        # Classes compared, not isinstance (a C call each): this runs on every wake.
        if pending.__class__ is not AsyncWaiter:
            try:
                return pending.send(None)  # type: ignore[union-attr]
            except StopIteration as done:
                return done.value
        call = self.call
        turn: Permit | float | None = sleep_s
        while turn.__class__ not in _PERMITS:
            if turn is not None:
                fut = pending.sleep(turn)  # type: ignore[arg-type]
                fut._asyncio_future_blocking = True  # as Future.__await__ yields it
                return fut
            turn = call.lane.turn(
                pending,
                call.charged or 0,
                call.deadline,
                self._asked_at,
                call.completion_tokens,
                prompt_tokens=call.prompt_tokens,
                prompt_cheap=call.prompt_cheap,
                permit_class=self.permit_class,
            )
        return turn

    def send(self, value: object) -> Any:
        return self.__next__()

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: BaseException | None = None,
        tb: object = None,
    ) -> Any:
        """The awaiting task was cancelled (or the await closed): leave the queue, and a
        cancellation is recorded (never retried)."""
        exc = typ if isinstance(typ, BaseException) else (val if val is not None else typ())
        pending = self._waiter
        if pending is not None and pending.__class__ is not AsyncWaiter:
            # A shared lane's wait: thrown into, as an awaited coroutine is (it leaves the
            # queue itself); should it still return its permit, the admission goes on.
            try:
                return pending.throw(exc)  # type: ignore[union-attr]
            except StopIteration as done:
                permit: Permit = done.value
                self._waiter = None
                self.permit = permit
                self.call.queued_s += permit.queued_s
                raise StopIteration(permit) from None
            except BaseException as raised:
                self._waiter = None
                if isinstance(raised, asyncio.CancelledError):
                    self.call.cancelled(None)
                raise
        self._left()
        if isinstance(exc, asyncio.CancelledError):
            self.call.cancelled(None)
        raise exc

    def close(self) -> None:
        self._left()

    def _left(self) -> None:
        """The admission ends without a permit: its waiter leaves the queue (a shared lane's
        wait, closed, leaves it itself)."""
        pending = self._waiter
        self._waiter = None
        if isinstance(pending, AsyncWaiter):
            self.call.lane.leave(pending)
        elif pending is not None:
            pending.close()

    async def _admit_after(self, delay_s: float) -> Permit:
        """An admission that pauses ``delay_s`` first, or waits for room in a spend cap."""
        call = self.call
        if delay_s > 0:
            try:
                await call.lane.sleep(delay_s)
            except asyncio.CancelledError:  # recorded as cancelled, as in the queue
                call.cancelled(None)
                raise
        if call.governor.spend is None:
            return await self
        cost = call.next_attempt()
        while True:
            try:
                permit = await call.lane.acquire(
                    cost,
                    front=call.attempt > 1,
                    deadline=call.deadline,
                    output_tokens=call.completion_tokens,
                    prompt_tokens=call.prompt_tokens,
                    prompt_cheap=call.prompt_cheap,
                    priority=call.priority,
                    tenant=call.tenant,
                    permit_class=self.permit_class,
                )
            except QueueTimeout as exc:
                raise call.gave_up_waiting(exc) from None
            except asyncio.CancelledError:
                call.cancelled(None)
                raise
            call.queued_s += permit.queued_s
            if call.reserve(permit):
                self.permit = permit
                return permit
            try:
                # Wait for room without taking a place in the pacing meanwhile: a permit taken
                # on each look would spend the lane's rate on requests that do not go.
                await call.lane.sleep(SPEND_POLL_S)
                while not call.spend_may_fit():
                    await call.lane.sleep(SPEND_POLL_S)
            except asyncio.CancelledError:
                call.cancelled(None)
                raise

    def __iter__(self) -> Iterator[Permit]:
        """The blocking loop (threads): each turn is :meth:`next_sync`."""
        while (permit := self.next_sync()) is not None:
            yield permit

    def next_sync(self) -> Permit | None:
        """The blocking twin of one turn of ``async for``: the next attempt's permit, or None
        when the loop is over."""
        call = self.call
        decision = self.decision
        if decision is not None:
            if not decision.retry:
                return None
            self.decision = None
            if decision.delay_s > 0 and not is_testing():
                try:
                    call.lane.sleep_sync(decision.delay_s)
                except BaseException:  # KeyboardInterrupt: recorded as cancelled
                    call.cancelled(None)
                    raise
        elif self.permit is not None:
            return self.permit
        cost = call.next_attempt()
        while True:
            try:
                permit = call.lane.acquire_sync(
                    cost,
                    front=call.attempt > 1,
                    deadline=call.deadline,
                    output_tokens=call.completion_tokens,
                    prompt_tokens=call.prompt_tokens,
                    prompt_cheap=call.prompt_cheap,
                    priority=call.priority,
                    tenant=call.tenant,
                    permit_class=self.permit_class,
                )
            except QueueTimeout as exc:
                raise call.gave_up_waiting(exc) from None
            call.queued_s += permit.queued_s
            if call.reserve(permit):
                self.permit = permit
                return permit
            call.lane.sleep_sync(SPEND_POLL_S)
            while not call.spend_may_fit():
                call.lane.sleep_sync(SPEND_POLL_S)

    # -- what the surface reports ---------------------------------------------------------

    def answered(
        self,
        verdict: Verdict,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        request_id: str | None = None,
        billed: BilledUsage | None = None,
    ) -> Decision:
        """The attempt got an answer (its ``verdict``, and usage when known): settled, its
        slot freed; the decision says whether the loop goes round again. (Positional or
        keyword: the transport passes them positionally, on every request.)"""
        return self._report(
            verdict, prompt_tokens, completion_tokens, request_id, billed, self.final
        )

    def raised(self, exc: BaseException, classify: Classify) -> bool:
        """The send raised ``exc``. True: retried (the loop goes round again). False: the
        surface re-raises; a cancellation (or KeyboardInterrupt) freed the slot and was
        recorded as cancelled, and an exception ``classify`` does not know was recorded (its
        decision carries no error: ``exc`` is the error); what it knows was settled, and the
        final decision's error is noted on ``exc`` (a surface may raise it instead, from
        ``exc``)."""
        permit = self._take()
        call = self.call
        if not isinstance(exc, Exception):
            self.decision = _OVER
            call.cancelled(permit)
            return False
        verdict = classify(exc)
        if verdict is None:  # not a failure the governor knows: recorded, never retried
            record = call.settle(
                permit,
                verdict_for_failure(OutcomeKind.OTHER, describe_exception(exc)),
                final=True,
            ).record
            self.decision = Decision(retry=False, record=record)  # ``exc`` is the error
            return False
        decision = self.decision = call.settle(permit, verdict, final=self.final)
        if decision.retry:
            return True
        if decision.error is not None and hasattr(exc, "add_note"):
            exc.add_note(f"pacekeeper: {decision.error}")
        return False

    def streaming(self, limits: RateLimitSnapshot | None = None) -> None:
        """The answer is a stream handed to the caller (``limits``: what its headers state,
        learned now): its attempt keeps the slot until :meth:`ended` reports how it ended;
        the loop is over (a stream is never retried)."""
        if self.permit is None:
            raise RuntimeError("no attempt in progress: its outcome was already reported")
        self.decision = _OVER
        if limits is not None:
            self.call.lane.learn(limits)

    def ended(
        self,
        verdict: Verdict,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        request_id: str | None = None,
        billed: BilledUsage | None = None,
    ) -> Decision:
        """A streamed answer ended (closed, broken, abandoned): settled as final, since its
        bytes reached the caller."""
        return self._report(verdict, prompt_tokens, completion_tokens, request_id, billed, True)

    def _report(  # noqa: PLR0917  # positional: every request's answer
        self,
        verdict: Verdict,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        request_id: str | None,
        billed: BilledUsage | None,
        final: bool | str,
    ) -> Decision:
        """Settle the attempt's answer: a success in one step, positionally (it ends the
        request whatever ``final`` says), anything else by the general settle."""
        permit = self.permit  # _take, inlined: once per request
        if permit is None:
            raise RuntimeError("no attempt in progress: its outcome was already reported")
        self.permit = None
        call = self.call
        if verdict.kind is OutcomeKind.OK:
            decision = call.settle_success(
                permit,
                verdict,
                prompt_tokens,
                completion_tokens,
                request_id,
                billed,
                False,
                self.decision_record,
            )
        else:
            decision = call.settle(
                permit,
                verdict,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                request_id=request_id,
                final=final,
                billed=billed,
                with_record=self.decision_record,
            )
        self.decision = decision
        return decision

    def _take(self) -> Permit:
        permit = self.permit
        if permit is None:
            raise RuntimeError("no attempt in progress: its outcome was already reported")
        self.permit = None
        return permit


class SurfaceAttempts(Attempts):
    """The loop of a surface that always reports its attempts' outcomes itself (the
    transports, ``Governor.run``, ``wrap()``, ``pacekeeper run``): no permit of its reaches
    user code, and each is released by an outcome, a cancellation or an abandoned stream's
    own finaliser, so it is a plain :class:`~pacekeeper.core.lane.Permit`, without the
    finaliser whose call every request's permit paid."""

    __slots__ = ()

    permit_class = Permit
    # Its decisions stay inside the surface: a success's record is built only when read.
    decision_record = False
