"""One lane per (route, model): its limits, its state, and the queue of requests waiting for it.

Admission is all-or-nothing at one instant: a request leaves when the cooldown gate is open,
the request and token buckets both have room, and a concurrency slot is free. Only then are the
buckets charged and the slot taken, so a request that waits for a slot does not hold budget.

Waiting is first come, first served. Only the head of the queue evaluates the state; the rest
sleep until they become the head. So a release wakes one waiter, not ten thousand, and pacing
is exact because nobody races the head. Retries join at the front: they are the oldest work.

The lane is thread-safe (one lock around the pure state), and its waiters may be asyncio
tasks on any event loop or plain threads: a wake from another thread goes through
``call_soon_threadsafe``. That is what lets the async and sync transports share one governor.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from typing import TYPE_CHECKING

from pacekeeper.core.bucket import TokenBucket
from pacekeeper.core.budget import RetryBudget
from pacekeeper.core.concurrency import AimdLimit, FixedLimit, Signal
from pacekeeper.core.cooldown import CooldownGate
from pacekeeper.core.errors import AdmissionClosed
from pacekeeper.core.stats import KeyStats, StatsSnapshot

if TYPE_CHECKING:
    from collections.abc import Callable

    from pacekeeper.core.config import Limits, RetryPolicy
    from pacekeeper.core.headers import RateLimitSnapshot

__all__ = ["Lane", "LaneKey", "Permit", "QueueTimeout"]

LaneKey = tuple[str, "str | None"]
"""(route, model): providers limit per model, and routes (chat, embeddings) differ in cost."""

_SCALE_ALPHA = 0.1  # weight of the newest actual/estimated prompt ratio
# The heuristic counts English at about 2x its real tokens (it must never undercount other
# scripts), so the learned scale may go well below 1.
_SCALE_MIN, _SCALE_MAX = 0.3, 3.0
_LIMITS_READ_EVERY_S = 0.1
_RATE_WINDOW_S = 5.0  # successes counted for the accepted rate
_DISCOVERY_GROWTH_RPM = 1.2  # per success: +2% of the rate per second at any rate
_DISCOVERY_RECOVERY_RPM = 6.0  # per success: +10% per second, back towards the last 429
_MIN_DISCOVERED_RPM = 6.0


class QueueTimeout(Exception):
    """The waiter's deadline would pass before admission; ``wait_s`` says how long it would be."""

    def __init__(self, wait_s: float, reason: str) -> None:
        super().__init__(reason)
        self.wait_s = wait_s
        self.reason = reason


class _AsyncWaiter:
    __slots__ = ("_fut", "_loop", "_thread", "cancelled")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._fut: asyncio.Future[None] | None = None
        self.cancelled = False

    def arm(self) -> asyncio.Future[None]:
        self._fut = fut = self._loop.create_future()
        return fut

    async def sleep(self, wait_s: float) -> None:
        """Until woken, or ``wait_s`` passed (inf: until woken). Call after :meth:`arm`."""
        fut = self._fut
        assert fut is not None
        timer = self._loop.call_later(wait_s, _resolve, fut) if wait_s != math.inf else None
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()

    def wake(self) -> None:
        fut = self._fut
        if fut is None or fut.done():
            return
        if threading.get_ident() == self._thread:
            fut.set_result(None)
        else:
            self._loop.call_soon_threadsafe(_resolve, fut)


class _ThreadWaiter:
    __slots__ = ("_event", "cancelled")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.cancelled = False

    def arm(self) -> threading.Event:
        self._event.clear()
        return self._event

    def sleep(self, wait_s: float) -> None:
        self._event.wait(None if wait_s == math.inf else wait_s)

    def wake(self) -> None:
        self._event.set()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Permit:
    """An admitted attempt: holds one concurrency slot until released.

    Release it exactly once with the outcome's :class:`Signal`; further releases are ignored,
    so a ``finally`` can always release without double-counting.
    """

    __slots__ = (
        "_lane",
        "in_flight_at_send",
        "lease",
        "queued_s",
        "released",
        "sent_at",
        "tokens",
    )

    def __init__(
        self,
        lane: Lane,
        *,
        sent_at: float,
        in_flight_at_send: int,
        tokens: int,
        queued_s: float,
        lease: object = None,
    ) -> None:
        self._lane = lane
        self.lease = lease
        """A shared backend's handle on the slot (None for local slots)."""
        self.sent_at = sent_at
        self.in_flight_at_send = in_flight_at_send
        self.tokens = tokens
        self.queued_s = queued_s
        self.released = False

    def release(self, signal: Signal = Signal.NEUTRAL) -> None:
        if not self.released:
            self.released = True
            self._lane.release(self, signal)

    def __del__(self) -> None:
        # A permit dropped without release (an abandoned stream nobody closed) must not hold
        # its slot forever.
        if not getattr(self, "released", True):
            self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"<Permit {state} tokens={self.tokens} queued={self.queued_s:.3f}s>"


class Lane:
    """The admission state and waiting queue of one (route, model)."""

    __slots__ = (
        "_cancelled_waiting",
        "_clock",
        "_configured",
        "_discovery_cut_at",
        "_lock",
        "_next_limits_read",
        "_queue",
        "_rpm_at_loss",
        "_sleepers",
        "_successes",
        "budget",
        "closed",
        "cooldown",
        "discovered_rpm",
        "key",
        "learned_rpm",
        "learned_tpm",
        "local_share",
        "prompt_scale",
        "requests",
        "slots",
        "stats",
        "tokens",
    )

    def __init__(
        self,
        key: LaneKey,
        *,
        limits: Limits,
        retry: RetryPolicy,
        clock: Callable[[], float],
    ) -> None:
        self.key = key
        self._configured = limits
        self._clock = clock
        # Re-entrant: a Permit dropped without release is released from __del__, which the garbage
        # collector may run while this thread already holds the lock.
        self._lock = threading.RLock()
        self._queue: deque[_AsyncWaiter | _ThreadWaiter] = deque()
        self._cancelled_waiting = 0
        self._sleepers: set[_AsyncWaiter | _ThreadWaiter] = set()
        self._next_limits_read = -math.inf
        self.closed = False
        self.cooldown = CooldownGate()
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.learned_rpm: float | None = None
        self.learned_tpm: float | None = None
        self.prompt_scale = 1.0
        self.discovered_rpm: float | None = None
        self._discovery_cut_at = -math.inf
        self._rpm_at_loss = math.inf
        self._successes: deque[float] = deque()
        self.local_share = 1.0
        """The share of the limits this process may use on its own (a shared backend that
        lost its store gives each of N live processes 1/N)."""
        adaptive = limits.adaptive
        self.slots: FixedLimit = (
            AimdLimit(adaptive) if adaptive is not None else FixedLimit(int(limits.concurrency))  # type: ignore[arg-type]
        )
        self.budget = RetryBudget(
            ratio=retry.retry_budget_ratio,
            initial=retry.retry_budget_initial,
            maximum=retry.retry_budget_max,
        )
        self.stats = KeyStats(route=key[0], model=key[1])
        self._apply_rates(now=clock())

    # -- limits ---------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self._configured

    @property
    def rpm(self) -> float | None:
        """The requests-per-minute limit in force: configured, learned from headers (the lower
        of both), else discovered from 429s that came without any hint."""
        known = _lower(self._configured.rpm, self.learned_rpm)
        return known if known is not None else self.discovered_rpm

    @property
    def tpm(self) -> float | None:
        return _lower(self._configured.tpm, self.learned_tpm)

    def _apply_rates(self, *, now: float) -> None:
        share = self._configured.utilisation * self.local_share
        burst_s = self._configured.burst_s
        rpm, tpm = self.rpm, self.tpm
        if rpm is not None:
            rate = rpm * share / 60.0
            burst = max(1.0, rate * burst_s)
            if self.requests is None:
                self.requests = TokenBucket(rate_per_s=rate, burst=burst)
            elif rate != self.requests.rate_per_s:
                self.requests.set_rate(rate_per_s=rate, burst=burst, now=now)
        if tpm is not None:
            rate = tpm * share / 60.0
            burst = max(1.0, rate * burst_s)
            if self.tokens is None:
                self.tokens = TokenBucket(rate_per_s=rate, burst=burst)
            elif rate != self.tokens.rate_per_s:
                self.tokens.set_rate(rate_per_s=rate, burst=burst, now=now)

    def limits_due(self, now: float) -> bool:
        """Whether a successful answer's rate-limit headers should be read now: at most every
        0.1 s per lane, because parsing them on every answer of a busy lane costs more than
        the little they change in between."""
        if now >= self._next_limits_read:
            self._next_limits_read = now + _LIMITS_READ_EVERY_S
            return True
        return False

    def note_success(self, now: float, latency_s: float = 0.0) -> None:
        """A success: counted for the accepted rate; a discovered rate grows by 2% per second
        of successes while requests are queued behind it (the limit is really used); and with
        a known rate, an adaptive limit still in slow start opens to what the rate needs
        (rate x latency, with half again for the spread of latencies)."""
        with self._lock:
            rpm = self.rpm
            if rpm is not None and isinstance(self.slots, AimdLimit):
                self.slots.open_to(
                    math.ceil(rpm * self._configured.utilisation / 60.0 * latency_s * 1.5)
                )
            successes = self._successes
            successes.append(now)
            while successes and now - successes[0] > _RATE_WINDOW_S:
                successes.popleft()
            if self.discovered_rpm is not None and self._queue:
                # Back quickly to just under the rate of the last 429, then probe slowly.
                fast = self.discovered_rpm < 0.95 * self._rpm_at_loss
                self.discovered_rpm += _DISCOVERY_RECOVERY_RPM if fast else _DISCOVERY_GROWTH_RPM
                self._apply_rates(now=now)

    def throttled_without_hint(self, *, sent_at: float, now: float) -> None:
        """A 429 that says nothing (no limit, no reset, no retry-after), as many gateways send.

        With no known rate, the lane discovers one: the first time, 90% of the highest rate
        accepted over one second lately (what the server was letting through just before it
        refused); after that, a cut to 85% at most once per round trip (answers to requests
        sent before the last cut say nothing new). Successes raise it again: quickly (+10% a
        second) back to just under the rate of the last 429, slowly (+2%) beyond it.
        """
        with self._lock:
            if _lower(self._configured.rpm, self.learned_rpm) is not None:
                return  # a known limit: pacing is right, the cooldown and backoff handle it
            if self.discovered_rpm is None:
                self._rpm_at_loss = 60.0 * _peak_per_second(self._successes)
                self.discovered_rpm = max(_MIN_DISCOVERED_RPM, 0.9 * self._rpm_at_loss)
            elif sent_at >= self._discovery_cut_at:
                self._rpm_at_loss = self.discovered_rpm
                self.discovered_rpm = max(_MIN_DISCOVERED_RPM, 0.85 * self.discovered_rpm)
            else:
                return
            self._discovery_cut_at = now
            self._apply_rates(now=now)

    def learn(self, snapshot: RateLimitSnapshot) -> None:
        """Adopt the limits a response's headers state (when learning is on), and drain our
        buckets to the provider's reported level when it is lower than ours."""
        if not self._configured.learn_from_headers:
            return
        rpm = snapshot.limit_requests
        # Anthropic states input and output token limits separately; without a combined one,
        # pace the whole cost against the input limit (the stricter reading).
        tpm = snapshot.limit_tokens or snapshot.limit_input_tokens
        remaining_tokens = (
            snapshot.remaining_tokens if snapshot.limit_tokens else snapshot.remaining_input_tokens
        )
        with self._lock:
            now = self._clock()
            changed = False
            if rpm and rpm > 0 and rpm != self.learned_rpm:
                self.learned_rpm = float(rpm)
                changed = True
            if tpm and tpm > 0 and tpm != self.learned_tpm:
                self.learned_tpm = float(tpm)
                changed = True
            if changed:
                self._apply_rates(now=now)
                self._wake_head()
            _sync_level(self.requests, now, snapshot.remaining_requests, rpm)
            _sync_level(self.tokens, now, remaining_tokens, tpm)

    # -- admission ------------------------------------------------------------------------

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The token cost charged at admission: the prompt estimate corrected by what usage
        has shown about our estimates on this lane, plus the answer's reserve."""
        return math.ceil(prompt_tokens * self.prompt_scale) + completion_tokens

    def _try_admit(self, now: float, tokens: int) -> float:
        """0.0 when admitted (buckets charged, slot taken); else seconds to wait (inf: a slot)."""
        wait = self.cooldown.remaining_s(now=now)
        if self.requests is not None:
            wait = max(wait, self.requests.wait_s(now=now, cost=1))
        if self.tokens is not None and tokens:
            wait = max(wait, self.tokens.wait_s(now=now, cost=tokens))
        if wait > 0.0:
            return wait
        if not self.slots.has_room():
            return math.inf
        if self.requests is not None:
            self.requests.spend(now=now, cost=1)
        if self.tokens is not None and tokens:
            self.tokens.spend(now=now, cost=tokens)
        return 0.0

    def _waiting_for_slot(self) -> bool:
        """Whether the head of the queue is held back by the concurrency limit alone (not by
        the cooldown or pacing): only then is the limit really in use."""
        if not self._queue or self.slots.has_room():
            return False
        now = self._clock()
        if self.cooldown.remaining_s(now=now) > 0:
            return False
        return self.requests is None or self.requests.wait_s(now=now, cost=1) == 0.0

    def _pop_head(self) -> None:
        self._queue.popleft()
        while self._queue and self._queue[0].cancelled:
            self._queue.popleft()
            self._cancelled_waiting -= 1

    def _wake_head(self) -> None:
        if self._queue:
            self._queue[0].wake()

    def _grant(self, now: float, tokens: int, asked_at: float) -> Permit:
        in_flight = self.slots.acquire(now=now)
        return Permit(
            self, sent_at=now, in_flight_at_send=in_flight, tokens=tokens, queued_s=now - asked_at
        )

    def _leave(self, waiter: _AsyncWaiter | _ThreadWaiter) -> None:
        """A waiter gives up (cancelled, deadline): forget it, and hand the head on."""
        with self._lock:
            if self._queue and self._queue[0] is waiter:
                self._pop_head()
                self._wake_head()
            elif not waiter.cancelled:
                waiter.cancelled = True
                self._cancelled_waiting += 1

    def _bounded_by_deadline(self, now: float, wait_s: float, deadline: float) -> float:
        """Fail now when the known wait passes the deadline; never sleep past it."""
        if wait_s == math.inf:
            if now >= deadline:
                raise QueueTimeout(now - deadline, self._waiting_for(now))
            return deadline - now
        if now + wait_s > deadline:
            raise QueueTimeout(wait_s, self._waiting_for(now))
        return wait_s

    def _waiting_for(self, now: float) -> str:
        if self.cooldown.remaining_s(now=now) > 0:
            return "the cooldown after a 429"
        if not self.slots.has_room():
            return f"a free slot ({self.slots.in_flight} in flight, limit {self.slots.limit})"
        return "pacing to the rpm/tpm limits"

    def _join(
        self, tokens: int, *, front: bool, waiter: _AsyncWaiter | _ThreadWaiter
    ) -> Permit | None:
        """Admit at once when nobody waits and the state allows; else queue ``waiter``."""
        now = self._clock()
        with self._lock:
            if self.closed:
                raise AdmissionClosed(self._closed_message())
            if not self._queue and self._try_admit(now, tokens) == 0.0:
                return self._grant(now, tokens, now)
            if front:
                self._queue.appendleft(waiter)
            else:
                self._queue.append(waiter)
        return None

    def _turn(
        self,
        waiter: _AsyncWaiter | _ThreadWaiter,
        tokens: int,
        deadline: float | None,
        asked_at: float,
    ) -> Permit | float:
        """One look at the state by a queued waiter: its permit, or how long to sleep (inf:
        until woken). The waiter is armed before the lock is released, so a wake between
        this look and the sleep is not lost."""
        with self._lock:
            if self.closed:
                raise AdmissionClosed(self._closed_message())
            now = self._clock()
            if self._queue and self._queue[0] is waiter:
                wait = self._try_admit(now, tokens)
                if wait == 0.0:
                    self._pop_head()
                    self._wake_head()
                    return self._grant(now, tokens, asked_at)
            else:
                wait = math.inf
            if deadline is not None:
                wait = self._bounded_by_deadline(now, wait, deadline)
            waiter.arm()
        return wait

    async def acquire(
        self, tokens: int, *, front: bool = False, deadline: float | None = None
    ) -> Permit:
        """Wait for admission (cooldown, pacing, a slot), FIFO, and return the permit."""
        asked_at = self._clock()
        waiter = _AsyncWaiter()
        permit = self._join(tokens, front=front, waiter=waiter)
        if permit is not None:
            return permit
        try:
            while True:
                turn = self._turn(waiter, tokens, deadline, asked_at)
                if isinstance(turn, Permit):
                    return turn
                await waiter.sleep(turn)
        except BaseException:
            self._leave(waiter)
            raise

    def acquire_sync(
        self, tokens: int, *, front: bool = False, deadline: float | None = None
    ) -> Permit:
        """The blocking twin of :meth:`acquire`, for threads."""
        asked_at = self._clock()
        waiter = _ThreadWaiter()
        permit = self._join(tokens, front=front, waiter=waiter)
        if permit is not None:
            return permit
        try:
            while True:
                turn = self._turn(waiter, tokens, deadline, asked_at)
                if isinstance(turn, Permit):
                    return turn
                waiter.sleep(turn)
        except BaseException:
            self._leave(waiter)
            raise

    def close(self) -> None:
        """Stop admitting: every queued request fails with AdmissionClosed (it was not sent);
        requests in flight are not touched."""
        with self._lock:
            self.closed = True
            for waiter in [*self._queue, *self._sleepers]:
                waiter.wake()

    async def sleep(self, delay_s: float) -> None:
        """Wait before a retry; :meth:`close` cuts the wait short with AdmissionClosed, so a
        request waiting to retry does not hold up a shutdown."""
        waiter = _AsyncWaiter()
        with self._lock:
            if self.closed:
                raise AdmissionClosed(self._closed_message())
            fut = waiter.arm()
            self._sleepers.add(waiter)
        timer = waiter._loop.call_later(delay_s, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            with self._lock:
                self._sleepers.discard(waiter)
        if self.closed:
            raise AdmissionClosed(self._closed_message())

    def sleep_sync(self, delay_s: float) -> None:
        """The blocking twin of :meth:`sleep`."""
        waiter = _ThreadWaiter()
        with self._lock:
            if self.closed:
                raise AdmissionClosed(self._closed_message())
            event = waiter.arm()
            self._sleepers.add(waiter)
        try:
            event.wait(delay_s)
        finally:
            with self._lock:
                self._sleepers.discard(waiter)
        if self.closed:
            raise AdmissionClosed(self._closed_message())

    def _closed_message(self) -> str:
        route, model = self.key
        return f"{route} model={model}: the governor was closed; this request was not sent"

    def release(self, permit: Permit, signal: Signal) -> None:
        with self._lock:
            self.slots.release(
                now=self._clock(),
                sent_at=permit.sent_at,
                in_flight_at_send=permit.in_flight_at_send,
                signal=signal,
                backlog=self._waiting_for_slot(),
            )
            self._wake_head()

    # -- outcomes -------------------------------------------------------------------------

    def close_gate(self, wait_s: float) -> None:
        """After a 429 with a hint: nobody on this lane goes before the hinted time."""
        with self._lock:
            self.cooldown.close_until(self._clock() + wait_s)

    def reconcile(
        self,
        *,
        prompt_estimated: int,
        prompt_actual: int | None,
        completion_reserved: int,
        completion_actual: int | None,
    ) -> None:
        """Correct the token bucket once the response's usage says what was really spent,
        and learn how our prompt estimates compare with the provider's counts."""
        if prompt_actual is None:
            return
        with self._lock:
            charged_prompt = math.ceil(prompt_estimated * self.prompt_scale)
            if prompt_estimated > 0:
                ratio = min(_SCALE_MAX, max(_SCALE_MIN, prompt_actual / prompt_estimated))
                self.prompt_scale += _SCALE_ALPHA * (ratio - self.prompt_scale)
            delta = float(prompt_actual - charged_prompt)
            if self._configured.refund_unused_completion and completion_actual is not None:
                delta += min(0, completion_actual - completion_reserved)
            if delta:
                self._charge_tokens(delta)

    def _charge_tokens(self, delta: float) -> None:
        """Charge (or give back) tokens after the fact; called with the lock held. A shared
        lane also sends the correction to the shared bucket."""
        if self.tokens is not None:
            self.tokens.adjust(now=self._clock(), delta=delta)

    # -- reading --------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Requests waiting for admission."""
        return len(self._queue) - self._cancelled_waiting

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return self.stats.snapshot(
                concurrency_limit=self.slots.limit,
                peak_in_flight=self.slots.peak_in_flight,
                rpm_limit=self.rpm,
                tpm_limit=self.tpm,
                cooldowns=self.cooldown.times_closed,
            )

    def __repr__(self) -> str:
        route, model = self.key
        return (
            f"<Lane {route} model={model} queued={self.queued} {self.slots!r} "
            f"rpm={self.rpm} tpm={self.tpm} {self.cooldown!r}>"
        )


def _peak_per_second(times: deque[float]) -> float:
    """The most events in any one-second window of ``times`` (sorted), per second."""
    ts = list(times)  # a deque indexes in O(n)
    peak, start = 0, 0
    for end, t in enumerate(ts):
        while t - ts[start] >= 1.0:  # the window [t - 1 s, t], half-open at the old end
            start += 1
        peak = max(peak, end - start + 1)
    return float(peak)


def _sync_level(
    bucket: TokenBucket | None, now: float, remaining: int | None, limit: int | None
) -> None:
    # The provider's remaining/limit is the fill of its own bucket; ours is smaller (a shorter
    # burst), so we apply the same fraction to it.
    if bucket is not None and remaining is not None and limit:
        bucket.drain_to(now=now, level=bucket.burst * max(0.0, min(1.0, remaining / limit)))


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
