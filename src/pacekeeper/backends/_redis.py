"""One quota, many processes: lanes whose limits live in Redis.

Every process that uses the same ``namespace`` shares, per (route, model): the rpm/tpm pacing
(GCRA, one atomic script call per admission, on the Redis server's clock), the concurrency
limit (slots are leases that expire unless renewed, so a dead process's slots come back within
the lease time), the cooldown after a 429, the adaptive limit and the learned limits, and the
retry budget.

Admission is the only call made on the request's path. Releases, cooldowns, learned limits,
lease renewals, heartbeats and the retry budget go through one maintenance thread per backend,
so nothing on an event loop ever blocks on Redis.

When Redis is unreachable the lanes fall back to their local machinery, each process taking
1/N of every limit (N: the live processes at the last heartbeat), log one warning, and return
to the shared limits once Redis answers again. A request admitted locally is released locally:
nothing is lost or sent twice because of it. Keys hold no secrets and no prompt text (only
routes, model names and numbers) and expire when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pacekeeper.backends import _scripts
from pacekeeper.core.budget import RetryBudget
from pacekeeper.core.concurrency import FixedLimit, Signal
from pacekeeper.core.config import AdaptiveConcurrency, Limits, RetryPolicy
from pacekeeper.core.errors import AdmissionClosed, ConfigurationError
from pacekeeper.core.lane import (
    Lane,
    LaneKey,
    Permit,
    _AsyncWaiter,
    _ThreadWaiter,
)

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from pacekeeper.core.headers import RateLimitSnapshot

__all__ = ["RedisBackend", "SharedLane"]

logger = logging.getLogger("pacekeeper.redis")

_SLOT_POLL_S = 0.02
"""How often the head of a lane's queue asks again when every shared slot is taken (other
processes' releases cannot wake it)."""
_SIGNAL_CODES = {Signal.NEUTRAL: 0, Signal.SUCCESS: 1, Signal.BACKPRESSURE: 2}


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class _Admission:
    admitted: bool
    wait_s: float
    """Seconds until the limits allow it; -1: every slot is taken."""
    in_flight: int
    limit: int
    now: float
    """The Redis server's clock at the decision."""


class _SharedSlots(FixedLimit):
    """Counts this process's requests in flight; reports the shared limit while Redis is
    reachable, and limits locally (to 1/N of it) while it is not."""

    __slots__ = ("ceiling", "shared_limit", "shared_mode")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.shared_limit = limit
        self.shared_mode = True
        self.ceiling: int | None = None

    @property
    def limit(self) -> int:
        return self.shared_limit if self.shared_mode else self._limit

    def set_local_limit(self, limit: int) -> None:
        self._limit = max(1, limit if self.ceiling is None else min(limit, self.ceiling))

    def cap(self, ceiling: int) -> None:
        self.ceiling = ceiling if self.ceiling is None else min(ceiling, self.ceiling)
        self._limit = min(self._limit, ceiling)

    def __repr__(self) -> str:
        where = "shared" if self.shared_mode else "local fallback"
        return f"<SharedSlots {self.in_flight} here, limit {self.limit} ({where})>"


class _SharedBudget(RetryBudget):
    """The retry budget, mirrored locally and settled with Redis by the maintenance thread:
    deposits and spends are decided on the last known shared balance, then summed in."""

    __slots__ = ("_lock", "initial", "pending")

    def __init__(self, *, ratio: float, initial: float, maximum: float) -> None:
        super().__init__(ratio=ratio, initial=initial, maximum=maximum)
        self.initial = initial
        self.pending = 0.0
        self._lock = threading.Lock()

    @property
    def maximum(self) -> float:
        return self._maximum

    def deposit(self) -> None:
        with self._lock:
            before = self._balance
            super().deposit()
            self.pending += self._balance - before

    def try_spend(self) -> bool:
        with self._lock:
            ok = super().try_spend()
            if ok:
                self.pending -= 1.0
            return ok

    def take_pending(self) -> float:
        with self._lock:
            delta, self.pending = self.pending, 0.0
            return delta

    def settle(self, shared_balance: float) -> None:
        with self._lock:
            # what this process did since the delta was taken stays on top of the new balance
            self._balance = max(0.0, min(self._maximum, shared_balance + self.pending))


class SharedLane(Lane):
    """A lane that admits through Redis (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_backend",
        "_hash_key",
        "_held",
        "_pushed_limits",
        "_slot_key",
        "_token_delta",
        "fallback",
    )

    def __init__(
        self,
        key: LaneKey,
        *,
        limits: Limits,
        retry: RetryPolicy,
        clock: Callable[[], float],
        backend: RedisBackend,
    ) -> None:
        super().__init__(key, limits=limits, retry=retry, clock=clock)
        adaptive = limits.adaptive
        initial = adaptive.initial if adaptive is not None else int(limits.concurrency)  # type: ignore[arg-type]
        self.slots = _SharedSlots(initial)
        self.budget = _SharedBudget(
            ratio=retry.retry_budget_ratio,
            initial=retry.retry_budget_initial,
            maximum=retry.retry_budget_max,
        )
        self._backend = backend
        lane_id = f"{key[0]}|{key[1] or '-'}"
        self._hash_key = f"{backend.namespace}:lane:{lane_id}"
        self._slot_key = f"{backend.namespace}:slots:{lane_id}"
        self._held: set[str] = set()
        self._pushed_limits: tuple[float | None, float | None] = (None, None)
        self._token_delta = 0.0
        self.fallback = False

    # -- the shared decision ----------------------------------------------------------------

    def _admit_args(self, tokens: int, lease: str) -> list[Any]:
        limits = self._configured
        adaptive = limits.adaptive or AdaptiveConcurrency()
        fixed = 0 if limits.adaptive is not None else int(limits.concurrency)  # type: ignore[arg-type]
        ceiling = self.slots.ceiling  # type: ignore[attr-defined]
        hi = adaptive.max if ceiling is None else min(adaptive.max, ceiling)
        if fixed and ceiling is not None:
            fixed = min(fixed, ceiling)
        return [
            tokens,
            limits.rpm or self.discovered_rpm or 0,
            limits.tpm or 0,
            limits.burst_s,
            limits.utilisation,
            fixed,
            min(adaptive.initial, hi),
            min(adaptive.min, hi),
            hi,
            lease,
            self._backend.lease_ttl_s,
            self._backend.key_ttl_s,
        ]

    @staticmethod
    def _parse(raw: list[Any]) -> _Admission:
        return _Admission(
            admitted=int(raw[0]) == 1,
            wait_s=float(raw[1]),
            in_flight=int(raw[2]),
            limit=int(raw[3]),
            now=float(raw[4]),
        )

    def _granted(self, admission: _Admission, tokens: int, lease: str, asked_at: float) -> Permit:
        with self._lock:
            self.slots.acquire(now=self._clock())  # counts this process's in-flight requests
            self.slots.shared_limit = admission.limit  # type: ignore[attr-defined]
            self._held.add(lease)
        now = self._clock()
        return Permit(
            self,
            sent_at=now,
            in_flight_at_send=admission.in_flight,
            tokens=tokens,
            queued_s=now - asked_at,
            # the server's clock at admission: the shared AIMD compares these, never ours
            lease=(lease, admission.now),
        )

    def _enter_fallback(self, exc: BaseException) -> None:
        self._backend.lost(exc)

    def _sync_mode(self) -> None:
        """Follow the backend's health: on loss, local limits at 1/N; on return, shared."""
        healthy = self._backend.healthy
        if healthy == (not self.fallback):
            return
        with self._lock:
            self.fallback = not healthy
            self.slots.shared_mode = healthy  # type: ignore[attr-defined]
            if not healthy:
                share = 1.0 / max(1, self._backend.live_processes)
                self.local_share = share
                self.slots.set_local_limit(  # type: ignore[attr-defined]
                    math.floor(self.slots.shared_limit * share)  # type: ignore[attr-defined]
                )
            else:
                self.local_share = 1.0
            self._apply_rates(now=self._clock())
            self._wake_head()

    # -- admission ------------------------------------------------------------------------

    def _enqueue(self, waiter: _AsyncWaiter | _ThreadWaiter, *, front: bool) -> None:
        with self._lock:
            if self.closed:
                raise AdmissionClosed(self._closed_message())
            if front:
                self._queue.appendleft(waiter)
            else:
                self._queue.append(waiter)

    def _is_head(self, waiter: _AsyncWaiter | _ThreadWaiter) -> bool:
        """Only the head asks Redis; the others are armed to sleep until they become it."""
        with self._lock:
            if self.closed:
                raise AdmissionClosed(self._closed_message())
            if self._queue and self._queue[0] is waiter:
                return True
            waiter.arm()
            return False

    def _after_admit(
        self,
        raw: list[Any],
        waiter: _AsyncWaiter | _ThreadWaiter,
        *,
        tokens: int,
        lease: str,
        asked_at: float,
        deadline: float | None,
    ) -> Permit | float:
        """Redis's answer: the permit, or how long to sleep (the waiter is armed) before
        asking again. With every slot taken, ask again soon: other processes' releases
        cannot wake this one."""
        admission = self._parse(raw)
        if admission.admitted:
            with self._lock:
                self._pop_head()
                self._wake_head()
            return self._granted(admission, tokens, lease, asked_at)
        self.slots.shared_limit = admission.limit  # type: ignore[attr-defined]
        no_slot = admission.wait_s < 0
        with self._lock:
            wait = _SLOT_POLL_S if no_slot else admission.wait_s
            if deadline is not None:
                bounded = self._bounded_by_deadline(
                    self._clock(), math.inf if no_slot else wait, deadline
                )
                wait = min(wait, bounded)
            waiter.arm()
        return wait

    def _fall_back(self, exc: BaseException, waiter: _AsyncWaiter | _ThreadWaiter) -> None:
        self._enter_fallback(exc)
        self._leave(waiter)
        self._sync_mode()

    async def acquire(
        self,
        tokens: int,
        *,
        front: bool = False,
        deadline: float | None = None,
        output_tokens: int = 0,
    ) -> Permit:
        self._sync_mode()
        if self.fallback:
            return await super().acquire(
                tokens, front=front, deadline=deadline, output_tokens=output_tokens
            )
        asked_at = self._clock()
        waiter = _AsyncWaiter()
        self._enqueue(waiter, front=front)
        client = self._backend.async_client()
        try:
            while True:
                if not self._is_head(waiter):
                    await waiter.sleep(math.inf)
                    continue
                lease = uuid.uuid4().hex
                try:
                    raw = await client.evalsha_admit(  # type: ignore[attr-defined]
                        keys=[self._hash_key, self._slot_key], args=self._admit_args(tokens, lease)
                    )
                except _redis_errors() as exc:
                    self._fall_back(exc, waiter)
                    return await super().acquire(
                        tokens, front=front, deadline=deadline, output_tokens=output_tokens
                    )
                turn = self._after_admit(
                    raw, waiter, tokens=tokens, lease=lease, asked_at=asked_at, deadline=deadline
                )
                if isinstance(turn, Permit):
                    return turn
                await waiter.sleep(turn)
        except BaseException:
            self._leave(waiter)
            raise

    def acquire_sync(
        self,
        tokens: int,
        *,
        front: bool = False,
        deadline: float | None = None,
        output_tokens: int = 0,
    ) -> Permit:
        self._sync_mode()
        if self.fallback:
            return super().acquire_sync(
                tokens, front=front, deadline=deadline, output_tokens=output_tokens
            )
        asked_at = self._clock()
        waiter = _ThreadWaiter()
        self._enqueue(waiter, front=front)
        client = self._backend.sync_client()
        try:
            while True:
                if not self._is_head(waiter):
                    waiter.sleep(math.inf)
                    continue
                lease = uuid.uuid4().hex
                try:
                    raw = client.evalsha_admit(  # type: ignore[attr-defined]
                        keys=[self._hash_key, self._slot_key], args=self._admit_args(tokens, lease)
                    )
                except _redis_errors() as exc:
                    self._fall_back(exc, waiter)
                    return super().acquire_sync(
                        tokens, front=front, deadline=deadline, output_tokens=output_tokens
                    )
                turn = self._after_admit(
                    raw, waiter, tokens=tokens, lease=lease, asked_at=asked_at, deadline=deadline
                )
                if isinstance(turn, Permit):
                    return turn
                waiter.sleep(turn)
        except BaseException:
            self._leave(waiter)
            raise

    # -- outcomes -------------------------------------------------------------------------

    def release(self, permit: Permit, signal: Signal) -> None:
        if not isinstance(permit.lease, tuple):  # admitted locally, during a fallback
            super().release(permit, signal)
            return
        lease, server_sent_at = permit.lease
        with self._lock:
            backlog = bool(self._queue)
            self.slots.in_flight -= 1
            self._held.discard(lease)
            delta, self._token_delta = self._token_delta, 0.0
            self._wake_head()
        limits = self._configured
        adaptive = limits.adaptive or AdaptiveConcurrency()
        self._backend.submit(
            "release",
            [self._hash_key, self._slot_key],
            [
                lease,
                _SIGNAL_CODES[signal],
                server_sent_at,
                permit.in_flight_at_send,
                0 if limits.adaptive is not None else 1,
                adaptive.initial,
                adaptive.min,
                adaptive.max,
                adaptive.decrease_factor,
                adaptive.utilisation_to_grow,
                delta,
                limits.tpm or 0,
                limits.utilisation,
                1 if backlog else 0,
            ],
        )

    def close_gate(self, wait_s: float) -> None:
        super().close_gate(wait_s)
        self._backend.submit("gate", [self._hash_key], [wait_s, self._backend.key_ttl_s])

    def learn(self, snapshot: RateLimitSnapshot, permit: Permit | None = None) -> None:
        super().learn(snapshot, permit)
        learned = (self.learned_rpm, self.learned_tpm)
        if learned != self._pushed_limits and self._configured.learn_from_headers:
            self._pushed_limits = learned
            self._backend.submit(
                "learn",
                [self._hash_key],
                [learned[0] or 0, learned[1] or 0, self._backend.key_ttl_s],
            )

    def _charge_tokens(self, delta: float) -> None:
        super()._charge_tokens(delta)
        self._token_delta += delta  # sent to the shared bucket with the next release

    def held_leases(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def __repr__(self) -> str:
        mode = "local fallback" if self.fallback else f"shared via {self._backend.namespace}"
        return f"{super().__repr__()[:-1]} ({mode})>"


class RedisBackend:
    """Shares every lane's limits through Redis.

    ``RedisBackend("redis://localhost:6379/0", namespace="my-key")``: every process that uses
    the same namespace (one per API key, say) shares the quota. ``lease_ttl_s`` is how soon a
    dead process's slots come back; ``key_ttl_s`` how long an idle lane's keys stay.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        namespace: str = "pacekeeper",
        lease_ttl_s: float = 15.0,
        heartbeat_s: float = 1.0,
        key_ttl_s: int = 3600,
        socket_timeout_s: float = 1.0,
    ) -> None:
        try:
            import redis
            import redis.asyncio
        except ImportError:  # pragma: no cover (the extra is installed in tests)
            raise ConfigurationError(
                "RedisBackend needs redis-py: pip install 'pacekeeper[redis]'"
            ) from None
        if not namespace or any(c.isspace() for c in namespace):
            raise ConfigurationError(f"namespace must be a non-empty word, got {namespace!r}")
        if lease_ttl_s <= 0 or heartbeat_s <= 0:
            raise ConfigurationError("lease_ttl_s and heartbeat_s must be positive")
        self.url = url
        self.namespace = namespace
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_s = heartbeat_s
        self.key_ttl_s = key_ttl_s
        self._socket_timeout_s = socket_timeout_s
        self._process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sync = self._configure(
            redis.Redis.from_url(
                url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
            )
        )
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, redis.asyncio.Redis
        ] = weakref.WeakKeyDictionary()
        self._lanes: weakref.WeakSet[SharedLane] = weakref.WeakSet()
        self._ops: queue.SimpleQueue[tuple[str, list[str], list[Any]] | None] = queue.SimpleQueue()
        self.healthy = True
        self.live_processes = 1
        self._lost_at: float | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._maintain, name=f"pacekeeper-redis-{namespace}", daemon=True
        )
        self._thread.start()

    # -- clients --------------------------------------------------------------------------

    def _configure(self, client: Any) -> Any:
        """Attach the registered scripts to a client (sync or asyncio)."""
        client.evalsha_admit = client.register_script(_scripts.ADMIT)
        client.script_release = client.register_script(_scripts.RELEASE)
        client.script_gate = client.register_script(_scripts.GATE)
        client.script_learn = client.register_script(_scripts.LEARN)
        client.script_renew = client.register_script(_scripts.RENEW)
        client.script_budget = client.register_script(_scripts.BUDGET)
        client.script_heartbeat = client.register_script(_scripts.HEARTBEAT)
        return client

    def sync_client(self) -> redis.Redis:
        client: redis.Redis = self._sync
        return client

    def async_client(self) -> redis.asyncio.Redis:
        """A client bound to the running event loop (redis-py's asyncio pools are per loop)."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._configure(
                redis.asyncio.Redis.from_url(
                    self.url,
                    socket_timeout=self._socket_timeout_s,
                    socket_connect_timeout=self._socket_timeout_s,
                )
            )
            self._async_clients[loop] = client
        return client

    # -- lanes ----------------------------------------------------------------------------

    def make_lane(
        self,
        key: LaneKey,
        *,
        limits: Limits,
        retry: RetryPolicy,
        clock: Callable[[], float],
    ) -> Lane:
        lane = SharedLane(key, limits=limits, retry=retry, clock=clock, backend=self)
        self._lanes.add(lane)
        return lane

    # -- health ---------------------------------------------------------------------------

    def lost(self, exc: BaseException) -> None:
        """Redis did not answer: every lane falls back to 1/N of its limits (one warning)."""
        if self.healthy:
            self.healthy = False
            self._lost_at = time.monotonic()
            logger.warning(
                "Redis at %s is unreachable (%s): falling back to local limits, 1/%d of each "
                "(the live processes at the last heartbeat); retrying every %.1fs",
                _safe_url(self.url),
                type(exc).__name__,
                self.live_processes,
                self.heartbeat_s,
            )

    def _recovered(self) -> None:
        if not self.healthy:
            self.healthy = True
            lost_for = time.monotonic() - (self._lost_at or time.monotonic())
            logger.warning(
                "Redis at %s answers again after %.1fs: shared limits restored",
                _safe_url(self.url),
                lost_for,
            )

    # -- the maintenance thread -----------------------------------------------------------

    def submit(self, op: str, keys: list[str], args: list[Any]) -> None:
        """Hand a write to the maintenance thread (never blocks the caller)."""
        if not self._closed:
            self._ops.put((op, keys, args))

    def _maintain(self) -> None:
        next_tick = 0.0
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                item = self._ops.get(timeout=timeout)
            except queue.Empty:
                item = ("tick", [], [])
            if item is None:
                return
            try:
                if item[0] == "tick" or time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.heartbeat_s
                    self._tick()
                if item[0] != "tick":
                    self._run(item)
                    while True:  # drain what queued up meanwhile
                        try:
                            more = self._ops.get_nowait()
                        except queue.Empty:
                            break
                        if more is None:
                            return
                        self._run(more)
            except _redis_errors() as exc:
                self.lost(exc)
            except Exception:  # pragma: no cover (a bug must not kill the thread)
                logger.exception("pacekeeper redis maintenance failed")

    def _run(self, item: tuple[str, list[str], list[Any]]) -> None:
        op, keys, args = item
        if not self.healthy:
            return  # shared state is not reachable; leases expire by themselves
        client = self._sync
        script = {
            "release": client.script_release,
            "gate": client.script_gate,
            "learn": client.script_learn,
        }[op]
        script(keys=keys, args=args)

    def _tick(self) -> None:
        client = self._sync
        try:
            self.live_processes = int(
                client.script_heartbeat(
                    keys=[f"{self.namespace}:procs"],
                    args=[self._process_id, max(3 * self.heartbeat_s, 2.0)],
                )
            )
        except _redis_errors() as exc:
            self.lost(exc)
            return
        self._recovered()
        for lane in list(self._lanes):
            leases = lane.held_leases()
            if leases:
                client.script_renew(keys=[lane._slot_key], args=[self.lease_ttl_s, *leases])
            budget = lane.budget
            if isinstance(budget, _SharedBudget):
                delta = budget.take_pending()
                balance = client.script_budget(
                    keys=[lane._hash_key],
                    args=[delta, budget.initial, budget.maximum, self.key_ttl_s],
                )
                budget.settle(float(balance))

    def close(self) -> None:
        """Stop the maintenance thread (after the writes already handed to it)."""
        if self._closed:
            return
        self._closed = True
        self._ops.put(None)
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._sync.close()

    def __repr__(self) -> str:
        state = "healthy" if self.healthy else "unreachable: local fallback"
        return (
            f"<RedisBackend {_safe_url(self.url)} namespace={self.namespace} {state}, "
            f"{self.live_processes} live processes>"
        )


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
