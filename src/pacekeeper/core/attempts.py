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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pacekeeper.core.classify import OutcomeKind, Verdict, describe_exception, verdict_for_failure
from pacekeeper.core.testing import is_testing
from pacekeeper.core.waiting import QueueTimeout

if TYPE_CHECKING:
    from pacekeeper.core.cost import BilledUsage
    from pacekeeper.core.errors import RequestFailed
    from pacekeeper.core.governor import Call
    from pacekeeper.core.headers import RateLimitSnapshot
    from pacekeeper.core.lane import Permit
    from pacekeeper.core.records import RequestRecord

__all__ = ["Attempts", "Classify", "Decision"]

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

    # Three slots: one of these lives as long as each queued request.
    __slots__ = ("call", "decision", "permit")

    final: bool | str = False
    """Whether (and why) no outcome is retried."""

    def __init__(self, call: Call, *, permit: Permit | None = None) -> None:
        self.call = call
        self.permit = permit
        """The attempt in progress (or admitted ahead), until its outcome is reported."""
        self.decision: Decision | None = None
        """What the last reported outcome decided (None: nothing reported yet)."""

    def __repr__(self) -> str:
        call = self.call
        decision = self.decision
        if decision is _OVER and self.permit is not None:
            state = "streaming"
        elif decision is not None:
            state = "retrying" if decision.retry else "done"
        else:
            state = "admitted" if self.permit is not None else "not admitted"
        return f"<Attempts {call.route} model={call.model}: attempt {call.attempt}, {state}>"

    # -- the loop -------------------------------------------------------------------------

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Permit:
        call = self.call
        decision = self.decision
        if decision is not None:
            if not decision.retry:
                raise StopAsyncIteration
            self.decision = None
            if decision.delay_s > 0 and not is_testing():
                try:
                    await call.lane.sleep(decision.delay_s)
                except asyncio.CancelledError:  # recorded as cancelled, as in the queue
                    call.cancelled(None)
                    raise
        elif self.permit is not None:  # admitted ahead: its first attempt
            return self.permit
        # Admission, here rather than in a method of the call: one frame fewer on every
        # request, and on every wake of a queued one.
        cost = call._before_admit()
        while True:
            try:
                permit = await call.lane.acquire(
                    cost,
                    front=call.attempt > 1,
                    deadline=call._deadline,
                    output_tokens=call.completion_tokens,
                    prompt_tokens=call.prompt_tokens,
                    prompt_cheap=call._body is not None,
                    priority=call.priority,
                    tenant=call.tenant,
                )
            except QueueTimeout as exc:
                raise call._queue_timeout(exc) from None
            except asyncio.CancelledError:
                call.cancelled(None)
                raise
            call._queued_total += permit.queued_s
            if call._gov.spend is None or call._reserve(permit):
                self.permit = permit
                return permit
            try:
                # Wait for room without taking a place in the pacing meanwhile: a permit taken
                # on each look would spend the lane's rate on requests that do not go.
                await call.lane.sleep(SPEND_POLL_S)
                while not call._spend_may_fit():
                    await call.lane.sleep(SPEND_POLL_S)
            except asyncio.CancelledError:
                call.cancelled(None)
                raise

    def __iter__(self) -> Attempts:
        return self

    def __next__(self) -> Permit:
        call = self.call
        decision = self.decision
        if decision is not None:
            if not decision.retry:
                raise StopIteration
            self.decision = None
            if decision.delay_s > 0 and not is_testing():
                try:
                    call.lane.sleep_sync(decision.delay_s)
                except BaseException:  # KeyboardInterrupt: recorded as cancelled
                    call.cancelled(None)
                    raise
        elif self.permit is not None:
            return self.permit
        cost = call._before_admit()
        while True:
            try:
                permit = call.lane.acquire_sync(
                    cost,
                    front=call.attempt > 1,
                    deadline=call._deadline,
                    output_tokens=call.completion_tokens,
                    prompt_tokens=call.prompt_tokens,
                    prompt_cheap=call._body is not None,
                    priority=call.priority,
                    tenant=call.tenant,
                )
            except QueueTimeout as exc:
                raise call._queue_timeout(exc) from None
            call._queued_total += permit.queued_s
            if call._reserve(permit):
                self.permit = permit
                return permit
            call.lane.sleep_sync(SPEND_POLL_S)
            while not call._spend_may_fit():
                call.lane.sleep_sync(SPEND_POLL_S)

    # -- what the surface reports ---------------------------------------------------------

    def answered(
        self,
        verdict: Verdict,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        request_id: str | None = None,
        billed: BilledUsage | None = None,
    ) -> Decision:
        """The attempt got an answer (its ``verdict``, and usage when known): settled, its
        slot freed; the decision says whether the loop goes round again."""
        permit = self.permit  # _take, inlined: once per request
        if permit is None:
            raise RuntimeError("no attempt in progress: its outcome was already reported")
        self.permit = None
        decision = self.decision = self.call.settle(
            permit,
            verdict,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            request_id=request_id,
            final=self.final,
            billed=billed,
        )
        return decision

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
        permit = self.permit  # _take, inlined: once per stream
        if permit is None:
            raise RuntimeError("no attempt in progress: its outcome was already reported")
        self.permit = None
        decision = self.decision = self.call.settle(
            permit,
            verdict,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            request_id=request_id,
            final=True,
            billed=billed,
        )
        return decision

    def _take(self) -> Permit:
        permit = self.permit
        if permit is None:
            raise RuntimeError("no attempt in progress: its outcome was already reported")
        self.permit = None
        return permit
