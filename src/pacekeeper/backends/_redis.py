"""One quota, many processes: lanes whose limits live in Redis.

Every process that uses the same ``namespace`` shares, per (route, model): the rpm/tpm pacing
(GCRA, one atomic script call per admission, on the Redis server's clock), the concurrency
limit (slots are leases that expire unless renewed, so a dead process's slots come back within
the lease time), the cooldown after a 429, the adaptive limit and the learned limits, what
the lane's controller learned (the pace in force, a rate discovered from bare 429s and the
rate it climbs back to, an in-flight cap, a floor: see
:meth:`RedisAdmissionPolicy.exchange_control`), and the retry budget.

The lanes are the core's :class:`~pacekeeper.core.lane.Lane` (one queue, one acquire loop, one
controller), built with a :class:`RedisAdmissionPolicy`: the lane's interface to where admission is
decided (:mod:`pacekeeper.core.admission`), implemented here around the store.

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
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from pacekeeper.backends import _scripts
from pacekeeper.core.admission import Deferred, Granted
from pacekeeper.core.budget import RetryBudget
from pacekeeper.core.concurrency import AimdLimit, FixedLimit, Signal
from pacekeeper.core.config import AdaptiveConcurrency, Limits, RetryPolicy
from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.lane import Lane, LaneKey
from pacekeeper.core.priority import Priority

if TYPE_CHECKING:
    import redis
    import redis.asyncio

    from pacekeeper.backends._spend import RedisSpendLedger
    from pacekeeper.core.admission import LocalAdmissionPolicy
    from pacekeeper.core.cost import SpendCap
    from pacekeeper.core.lane import Permit

__all__ = ["RedisAdmissionPolicy", "RedisBackend"]

logger = logging.getLogger("pacekeeper.redis")

_ADMIT_FIXED_ARGS = 34  # ARGV[1..34] of the ADMIT script (_scripts.py); the releases follow
_SLOT_POLL_S = 0.02
"""How often the head of a lane's queue asks again when every shared slot is taken (other
processes' releases cannot wake it)."""
_SIGNAL_CODES = {Signal.NEUTRAL: 0, Signal.SUCCESS: 1, Signal.BACKPRESSURE: 2}
_RATE_REFUSAL = 3
"""RELEASE's signal for a 429 about the rate: neutral, and counted on the key by when it was
sent (a discovery is measured on the key's admissions less these)."""
_REFUSALS_KEPT = 64
_PUSH_EVERY_S = 0.1
"""A controller that speeds up (recovery moves the rate on every success) is shared at most
this often; one that slows down is shared at once."""
_FLEET_WINDOW_MIN_S = 5.0
"""The fleet keeps to a provider's fixed request windows only when they are at least this long
(a gateway's 10 s). Each process reads the grid from its own answers, a few tens of ms apart,
and the shared count is not drained to what answers say is left, as a local bucket is: on
1-s windows that cost a fleet of three 14-15 429s a run where the shared pacing met 1-3."""
_SHARE_WINDOW_S = 5.0
"""Our share of the fleet's admissions is measured over this long."""
_MIN_SHARE = 0.02
_AHEADS_KEPT = 32
"""How many of the latest admissions' clock readings the server's clock less ours is read from."""


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


_Op = tuple[str, list[str], list[Any], "RedisAdmissionPolicy | None"]
"""A job for the maintenance thread: a script's name, keys and args (and for "release", the
lane's admission, told when its lease is freed); or a lane to exchange its controller's state
with the fleet ("control")."""


class _SyncScript(Protocol):
    """A script registered on a sync client (redis-py's ``Script``)."""

    def __call__(
        self, keys: Sequence[str] | None = None, args: Iterable[Any] | None = None
    ) -> Any: ...


class _AsyncScript(Protocol):
    """A script registered on an asyncio client (redis-py's ``AsyncScript``)."""

    def __call__(
        self, keys: Sequence[str] | None = None, args: Iterable[Any] | None = None
    ) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class _SyncScripts:
    admit: _SyncScript
    release: _SyncScript
    gate: _SyncScript
    learn: _SyncScript
    left: _SyncScript
    control: _SyncScript
    renew: _SyncScript
    budget: _SyncScript
    heartbeat: _SyncScript

    @classmethod
    def register(cls, client: redis.Redis) -> _SyncScripts:
        return cls(
            admit=client.register_script(_scripts.ADMIT),
            release=client.register_script(_scripts.RELEASE),
            gate=client.register_script(_scripts.GATE),
            learn=client.register_script(_scripts.LEARN),
            left=client.register_script(_scripts.LEFT),
            control=client.register_script(_scripts.CONTROL),
            renew=client.register_script(_scripts.RENEW),
            budget=client.register_script(_scripts.BUDGET),
            heartbeat=client.register_script(_scripts.HEARTBEAT),
        )


@dataclass(frozen=True, slots=True)
class _Admission:
    admitted: bool
    wait_s: float
    """Seconds until the limits allow it; -1: every slot is taken; -2: held back with a slot
    free (one more past the fleet's most in flight waits for an answer, or a stated budget
    is spent): not waiting for a slot."""
    in_flight: int
    limit: int
    now: float
    """The Redis server's clock at the decision."""
    admissions: int
    """The fleet's admissions on this lane so far, this one included (0: not admitted)."""
    tokens_admitted: float
    """The tokens of those admissions (0: not admitted)."""
    edge: bool = False
    """Admitted to the last slot of the fleet's window where a server's in-flight cap would
    refuse it: a step past the most the fleet has had in flight answered (the last it lets go
    before an answer) with more of the caller's waiting, the last slot under a learned cap,
    or a full window past that most (see ADMIT)."""
    in_second: int = -1
    """The key's admissions in the second up to this one, this one included (-1: not
    admitted)."""


class _Lease(NamedTuple):
    """A shared admission's hold on a slot (a permit's ``lease``)."""

    lease_id: str
    server_sent_at: float
    """The Redis server's clock at admission: the shared AIMD compares these, never ours."""
    admissions: int
    """The fleet's admissions up to this one, this one included."""
    tokens_admitted: float
    """Their tokens."""


@dataclass(frozen=True, slots=True)
class _Control:
    """What a lane's controller decided, as shared: the paces and the in-flight cap (and
    whether that cap is provisional: a hypothesis of bare 429s, tried within a round trip),
    and the rate a discovered pace climbs back to (``loss``)."""

    rpm: float | None
    tpm: float | None
    cap: int | None
    provisional: bool = False
    loss: float | None = None


class _SharedFixed(FixedLimit):
    """A fixed limit shared by the fleet: counts this process's requests in flight, reports
    the shared limit while Redis is reachable, and limits locally (to 1/N of it) while not."""

    __slots__ = ("ceiling", "local_limit", "shared_limit", "shared_mode")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.shared_limit = limit
        self.shared_mode = True
        self.local_limit = limit
        self.ceiling: int | None = None

    @property
    def limit(self) -> int:
        if self.shared_mode:
            return self.shared_limit
        # the configured limit, capped by the pool (FixedLimit.cap), and this process's share
        return max(1, min(super().limit, self.local_limit))

    def has_room(self) -> bool:
        return self.in_flight < self.limit

    def set_local_limit(self, limit: int) -> None:
        self.local_limit = max(1, limit)

    def cap(self, ceiling: int) -> None:
        self.ceiling = ceiling if self.ceiling is None else min(ceiling, self.ceiling)
        super().cap(ceiling)

    def __repr__(self) -> str:
        where = "shared" if self.shared_mode else "local fallback"
        return f"<SharedSlots {self.in_flight} here, limit {self.limit} ({where})>"


class _SharedAdaptive(AimdLimit):
    """An adaptive limit shared by the fleet. The shared window lives in Redis; this object
    is the lane's learner (the lane's ``settle`` and every release feed it, as they feed a
    local lane's limit): its learned in-flight cap and its floor bound the shared limit.
    It counts this process's requests in flight and reports the shared limit while Redis is
    reachable; while not, it limits locally, to at most 1/N of the last shared limit."""

    __slots__ = ("cut_to", "local_limit", "shared_limit", "shared_mode")

    def __init__(self, settings: AdaptiveConcurrency) -> None:
        super().__init__(settings)
        self.shared_limit = settings.initial
        self.shared_mode = True
        self.local_limit = settings.max
        self.cut_to: float | None = None
        """A cut on swollen answers (a queueing server) not yet sent: the fleet's window
        goes down to this with the next release."""

    @property
    def limit(self) -> int:
        if self.shared_mode:
            return self.shared_limit
        return max(1, min(super().limit, self.local_limit))

    def has_room(self) -> bool:
        return self.in_flight < self.limit

    def set_local_limit(self, limit: int) -> None:
        self.local_limit = max(1, limit)

    def queueing(self, *, capacity: float, now: float = 0.0) -> bool:
        """Swollen answers say the server queues past ``capacity``: the window to cut is the
        fleet's (the learner's own grows only with this process's answers), and the cut goes
        to Redis with the next release. Kept here alone, it cut nothing: the fleet's window
        grew on every answer not yet judged swollen, and three processes held a queue that
        one process cuts (`selfhosted` fleet3 0.75-0.84 of the reference, one process
        0.85-0.91)."""
        if self.shared_mode and self.shared_limit > self._window:
            self._window = float(self.shared_limit)
        cut = super().queueing(capacity=capacity, now=now)
        if cut and self.shared_mode:
            self.cut_to = self._window
        return cut

    def __repr__(self) -> str:
        where = "shared" if self.shared_mode else "local fallback"
        learned = f"cap {self.learned_cap}, floor {self.floor}"
        return f"<SharedSlots {self.in_flight} here, limit {self.limit} ({where}; {learned})>"


_SharedSlots = _SharedFixed | _SharedAdaptive


class _SharedBudget(RetryBudget):
    """The retry budget, mirrored locally and settled with Redis by the maintenance thread:
    deposits and spends are decided on the last known shared balance, then summed in."""

    __slots__ = ("_lock", "initial", "pending")

    def __init__(self, *, ratio: float, initial: float, maximum: float) -> None:
        super().__init__(ratio=ratio, initial=initial, maximum=maximum)
        self.initial = initial
        self.pending = 0.0
        self._lock = threading.Lock()

    def deposit(self) -> None:
        with self._lock:
            before = self.balance
            super().deposit()
            self.pending += self.balance - before

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
            self.set_balance(shared_balance + self.pending)


class _RedisAsk:
    """One ADMIT call, sent outside the lane's lock. Its reply is ``(lease, raw answer)``, or
    the error that kept Redis from answering (returned: the admission reads it and falls
    back)."""

    __slots__ = ("_args", "_backend", "_keys", "_lease")

    def __init__(self, backend: RedisBackend, keys: list[str], args: list[Any], lease: str) -> None:
        self._backend = backend
        self._keys = keys
        self._args = args
        self._lease = lease

    async def send(self) -> object:
        try:
            raw = await self._backend.async_admit()(keys=self._keys, args=self._args)
        except _redis_errors() as exc:
            return exc
        return self._lease, raw

    def send_sync(self) -> object:
        try:
            raw = self._backend.sync_scripts().admit(keys=self._keys, args=self._args)
        except _redis_errors() as exc:
            return exc
        return self._lease, raw


class RedisAdmissionPolicy:
    """A lane's admission through Redis (see the module docstring): one ADMIT script call
    per look of the queue's head, slots as leases, the gate, token corrections and what the
    lane's controller learned shared with the fleet.

    It composes the lane's :class:`~pacekeeper.core.admission.LocalAdmissionPolicy` (the buckets
    the controller shapes, at 1/N of the limits while Redis is unreachable) and reaches the
    lane only through its public methods. The lane's controller runs in this process as in a
    local lane (``settle`` cuts and recovers the pacing rates, the slots' learner finds an
    in-flight cap and a floor); what it decides is what the shared admission uses, and is
    shared with the fleet through the lane hash (CONTROL): a rate discovered or cut by one
    process paces all of them."""

    __slots__ = (
        "__weakref__",
        "_backend",
        "_clock",
        "_control_queued",
        "_epoch",
        "_fleet_marks",
        "_held",
        "_lane",
        "_local",
        "_lock",
        "_output_delta",
        "_pushed",
        "_pushed_at",
        "_pushed_floor",
        "_pushed_limits",
        "_refusals",
        "_releasing",
        "_server_aheads",
        "_shared_slots",
        "_slot_starved",
        "_token_delta",
        "budget",
        "fallback",
        "hash_key",
        "sent_key",
        "slot_key",
    )

    def __init__(
        self,
        lane: Lane,
        *,
        backend: RedisBackend,
        slots: _SharedSlots,
        budget: _SharedBudget,
        clock: Callable[[], float],
    ) -> None:
        self._lane = lane
        self._local = lane.local
        self._lock = lane.queue.lock
        self._clock = clock
        self._shared_slots = slots
        self.budget = budget
        self._backend = backend
        key = lane.key
        lane_id = f"{key[0]}|{key[1] or '-'}"
        self.hash_key = f"{backend.namespace}:lane:{lane_id}"
        self.slot_key = f"{backend.namespace}:slots:{lane_id}"
        self.sent_key = f"{backend.namespace}:sent:{lane_id}"
        """The lane's admissions of the last second, by time (ADMIT)."""
        self._held: set[str] = set()
        self._releasing: set[str] = set()
        """Leases released here whose RELEASE has not run yet: each ADMIT frees them first,
        so that the fleet's count in flight is not ahead of the server's by them."""
        self._pushed_limits: tuple[float | None, float | None] = (None, None)
        self._token_delta = 0.0
        self._output_delta = 0.0
        self.fallback = False
        self._slot_starved = False
        self._pushed = _Control(rpm=None, tpm=None, cap=None)
        self._pushed_at = -math.inf
        self._pushed_floor = 0
        self._control_queued = False
        self._epoch = 0
        """The fleet's pace epoch last adopted (CONTROL's ``pe``: a cut or a discovery)."""
        # What the store said at each of our admissions lately (`_Mark`): our share of the
        # fleet's traffic, which scales a rate discovered from our own acceptances, and what
        # the fleet sent before a 429 (key_sent_at_most).
        self._fleet_marks: deque[_Mark] = deque()
        # (our clock, the server's) when each of our recent 429s about the rate was sent:
        # the second before one is measured on the key, on the server's clock
        self._refusals: deque[tuple[float, float]] = deque(maxlen=_REFUSALS_KEPT)
        self._server_aheads: deque[float] = deque(maxlen=_AHEADS_KEPT)
        """The server's clock less ours, as of each of our latest admissions (the last is
        the newest): each is low by how late its reply was read (a busy event loop reads it
        tens to hundreds of ms late), so the highest is the nearest."""
        # What the fleet learned before this process started: start from it.
        with contextlib.suppress(*_redis_errors()):
            self.exchange_control(backend.sync_scripts().control, push=False)

    @property
    def local(self) -> LocalAdmissionPolicy:
        return self._local

    @property
    def sees_every_acceptance(self) -> bool:
        # Scaling a process's measurement by its share of the fleet's recent admissions was
        # too coarse: three processes ran at half the speed of one (tests/backends/
        # test_fleet.py). A fleet cuts by a fixed share, as before.
        return False

    @property
    def sees_token_level(self) -> bool:
        return False  # the fleet's token bucket lives in Redis

    # -- what the controller learned, shared ----------------------------------------------

    @property
    def learner(self) -> AimdLimit | None:
        """The adaptive slots' learner (its learned cap and floor bound the shared limit);
        None for a fixed limit."""
        shared = self._shared_slots
        return shared if isinstance(shared, _SharedAdaptive) else None

    def _control_now(self) -> _Control:
        learner = self.learner
        lane = self._lane
        cap = None if learner is None else learner.learned_cap
        rate = lane.request_rate
        return _Control(
            rpm=lane.rpm,
            tpm=lane.tpm,
            cap=cap,
            provisional=cap is not None and learner is not None and learner.cap_provisional,
            loss=rate.loss_rpm if rate.discovered else None,
        )

    def _fleet_share(self, now: float) -> float:
        """This process's share of the fleet's admissions over the last few seconds."""
        marks = self._fleet_marks
        if len(marks) < 2:
            return 1.0
        fleet = marks[-1][1] - marks[0][1] + 1
        return min(1.0, max(_MIN_SHARE, len(marks) / fleet))

    def key_sent_in_second_before(self, sent_at: float) -> int | None:
        """The fleet's admissions in the second up to ``sent_at``, as this process saw the
        count move across its own admissions then (a lower bound: others' admissions after
        our last one that second are not seen). A 429 after the fleet sent a second's worth
        of the stated rate is the rate, not an in-flight cap (read as a cap of 72 on slow
        answers, a process over Redis held 73 in flight where 170 were needed)."""
        before, first, last = _marks_around(self._fleet_marks, sent_at)
        if first is None or last is None:
            return 0
        # From our last admission before the second (else the one before our first inside
        # it) to our last inside it.
        start = before[1] if before is not None else first[1] - 1
        return last[1] - start

    def key_sent_at_most(self, sent_at: float) -> tuple[float, float] | None:
        """At most what the fleet sent in the second up to ``sent_at`` (requests, tokens
        admitted): :func:`_sent_at_most` over the store's running counts at our own
        admissions. In local fallback the lane counts its own: None."""
        if self.fallback:
            return None
        return _sent_at_most(self._fleet_marks, sent_at)

    def exchange_control(self, script: _SyncScript, *, push: bool = True) -> None:
        """Push what changed in the lane's controller since the last exchange, read what the
        fleet stored, and adopt it (called by the maintenance thread, and once at creation).

        Rates: the last writer wins among rises made since the latest cut or discovery (a
        rise from before it is dropped: its epoch is older), and a cut never raises the
        stored pace. A rate discovered here from our own acceptances, and the rate it
        climbs back to, are scaled up by our share of the fleet's traffic (the fleet was
        accepted at that rate divided by the share); a cut of the fleet's discovered pace
        is measured in Redis on the key's acceptances (see ``_scripts.CONTROL``). The cap:
        the lowest wins, except that a probing learner may raise it by one; a cap forgotten
        (refuted) here is forgotten by all. ``push`` False only reads (a lane just made: its
        configured limits must not overwrite what the fleet learned)."""
        with self._lock:
            self._control_queued = False
            now = self._clock()
            current, pushed = self._control_now(), self._pushed
            learner = self.learner
            probing = learner is not None and learner.probing
            floor = 0 if learner is None else learner.floor
            args: list[Any] = [
                *("", "", "", 1 if probing else 0, "", self._backend.key_ttl_s, 0, "", 0, 0),
                self._epoch,
                "",
            ]
            if not push:
                current = pushed
            # A rate discovered here measured our share of what the key took: the fleet's
            # is that divided by the share, and so is the rate it climbs back to. (Later
            # cuts here are of the fleet's pace, adopted: no scaling.)
            scale = 1.0
            discovering = pushed.rpm is None and self._lane.request_rate.discovered
            if discovering:
                scale = 1.0 / self._fleet_share(now)
                args[8] = 1
                # measured again on the key: what it took in the second before the 429
                args[11] = _wire(self._server_time_of_refusal())
            if current.rpm != pushed.rpm:
                rpm = current.rpm
                args[0] = _wire(None if rpm is None else rpm * scale)
            if current.loss != pushed.loss:
                loss = current.loss
                args[7] = _wire(None if loss is None else loss * scale)
                # a cut here of the fleet's discovered pace: the key's acceptances measure it
                cut = _lowered(pushed.rpm, current.rpm) and pushed.rpm is not None
                args[9] = 1 if cut and not discovering and loss is not None else 0
                if args[9]:  # measured again on the key (the second before the 429)
                    args[11] = _wire(self._server_time_of_refusal())
            if current.tpm != pushed.tpm:
                tpm = current.tpm
                # A token rate discovered here, as a request rate is: from our share.
                if pushed.tpm is None and self._lane.token_rate.discovered and tpm is not None:
                    tpm /= self._fleet_share(now)
                args[1] = _wire(tpm)
            if current.cap != pushed.cap or current.provisional != pushed.provisional:
                args[2] = current.cap or 0
                # A forgotten cap sends the flag of the one forgotten: a hypothesis refuted
                # here (its test succeeded) does not forget a cap the fleet has confirmed
                # since (CONTROL keeps it, and this process adopts it below).
                provisional = current.provisional if current.cap else pushed.provisional
                args[6] = 1 if provisional else 0
            if push and floor != self._pushed_floor:
                args[4] = floor
                self._pushed_floor = floor
            self._pushed_at = now
        stored = script(keys=[self.hash_key, self._backend.clock_key], args=args)
        self._adopt(stored, sent=current if push else None)

    def _server_time_of_refusal(self) -> float | None:
        """When the 429 that the lane's discovery measured was sent, on the server's clock
        (None: not one sent through this admission lately)."""
        sent_at = self._lane.request_rate.refused_sent_at
        if sent_at is None:
            return None
        for ours, server in reversed(self._refusals):
            if ours == sent_at:
                return server
        # Judged about the rate only later (a provisional cap refuted: ``refused_earlier``),
        # it was released as a refusal about a cap, uncounted: its second is measured all the
        # same, on the server's clock (a little high, by the refusals then read as the cap).
        aheads = self._server_aheads
        return sent_at + aheads[-1] if aheads else None

    def _adopt(self, stored: list[Any], *, sent: _Control | None) -> None:
        """Make what the fleet stored the lane's own state (rates and cap). ``sent`` is
        the state this exchange pushed: what the controller learned while the script ran
        (a rate discovered meanwhile) was not pushed, and is pushed next. None (a lane just
        made, which only reads): its configured state counts as known."""
        rpm, tpm, cap = (_number_or_none(v) for v in stored[:3])
        provisional = len(stored) > 4 and stored[4] is not None
        loss = _number_or_none(stored[5]) if len(stored) > 5 else None
        with self._lock:
            if len(stored) > 6 and stored[6] is not None:
                self._epoch = int(stored[6])
            now = self._clock()
            self._lane.adopt_rates(rpm=rpm, tpm=tpm, now=now, rpm_loss=loss)
            learner = self.learner
            if learner is not None:
                known = learner.learned_cap
                if cap is not None:
                    fleet_cap = int(cap)
                    if known is None or fleet_cap < known:
                        # A provisional cap stays one here, tried within a round trip as
                        # where it was taught: adopted as confirmed, it held every other
                        # process under a rate's burst mistaken for a cap for 10 s.
                        learner.learn_cap(
                            in_flight_at_send=fleet_cap + 1,
                            now=now,
                            provisional=provisional,
                            probe_after_s=self._lane.round_trip_s if provisional else None,
                        )
                    elif fleet_cap == known and learner.cap_provisional and not provisional:
                        # another process's test confirmed it
                        learner.learn_cap(in_flight_at_send=fleet_cap + 1, now=now)
                    # One above ours is another process's probe: not adopted, since a refusal
                    # there would read, to a learner that is not probing, as its cap refuted.
                    # Its own probe raises ours; until then its admissions use the lower cap.
                elif known is not None and known == self._pushed.cap:
                    learner.forget_cap()  # another process found it wrong
            # Known to the fleet: what it stored (now adopted), else what was sent. Taking the
            # whole current state instead marked a rate discovered during the exchange as
            # pushed, and the fleet never heard of it.
            after = self._control_now()
            self._pushed = (
                after
                if sent is None
                else _Control(
                    rpm=after.rpm if rpm is not None else sent.rpm,
                    tpm=after.tpm if tpm is not None else sent.tpm,
                    cap=after.cap if cap is not None else sent.cap,
                    provisional=after.provisional if cap is not None else sent.provisional,
                    loss=after.loss if loss is not None else sent.loss,
                )
            )
            self._lane.queue.wake_head()
        if sent is not None:
            self.settled(now)

    def settled(self, now: float) -> None:
        """After an outcome: hand the exchange to the maintenance thread when the controller
        moved: at once when it slowed down (a cut, a cap, a rate discovered), else at most
        every ``_PUSH_EVERY_S`` (recovery moves the rate on every success); the heartbeat
        exchanges what is left."""
        with self._lock:
            if self._control_queued:
                return
            current, pushed = self._control_now(), self._pushed
            if current == pushed:
                return
            slower = (
                _lowered(pushed.rpm, current.rpm)
                or _lowered(pushed.tpm, current.tpm)
                or _lowered(pushed.cap, current.cap)
            )
            if not slower and now - self._pushed_at < _PUSH_EVERY_S:
                return
            self._control_queued = True
        self._backend.submit_control(self)

    def budget_left(
        self, permit: Permit, *, requests_left: float | None, tokens_left: float | None
    ) -> None:
        """The fleet's budget: what the answer to ``permit`` says is left, counted from the
        fleet's admissions up to it (LEFT), so that every process holds to what the provider
        counts down for all of them (each holding to its own share, a fleet of three met four
        to six 429s a run on Azure's 10-s windows where one process met one)."""
        held = permit.lease
        if not isinstance(held, _Lease) or self.fallback:
            return
        forget = math.inf in (requests_left, tokens_left)
        self._backend.submit(
            "left",
            [self.hash_key],
            [
                held.admissions,
                _wire(held.tokens_admitted),
                "inf" if forget else "" if requests_left is None else _wire(requests_left),
                "inf" if forget else "" if tokens_left is None else _wire(tokens_left),
                self._backend.key_ttl_s,
            ],
        )

    def stated(self, rpm: float | None, tpm: float | None) -> None:
        learned = (rpm, tpm)
        if learned != self._pushed_limits:
            self._pushed_limits = learned
            self._backend.submit(
                "learn",
                [self.hash_key],
                [learned[0] or 0, learned[1] or 0, self._backend.key_ttl_s],
            )

    # -- the shared decision ----------------------------------------------------------------

    def ask(self, *, tokens: int, output_tokens: int, priority: Priority) -> _RedisAsk | None:
        """The head's ADMIT call (None while Redis is unreachable: the lane decides with its
        local state, at 1/N of the limits)."""
        self._sync_mode()
        if self.fallback:
            return None
        lease = uuid.uuid4().hex
        return _RedisAsk(
            self._backend,
            [self.hash_key, self.slot_key, self._backend.clock_key, self.sent_key],
            self._admit_args(tokens, lease, priority, output_tokens),
            lease,
        )

    def _admit_args(
        self,
        tokens: int,
        lease: str,
        priority: Priority = Priority.INTERACTIVE,
        output_tokens: int = 0,
    ) -> list[Any]:
        """The ADMIT script's arguments. Where output is limited apart (Anthropic's OTPM),
        ``output_tokens`` of the cost go to the shared output bucket and the rest to the
        input bucket, as in a local lane."""
        lane = self._lane
        limits = lane.limits
        adaptive = limits.adaptive or AdaptiveConcurrency()
        shared = self._shared_slots
        ceiling = shared.ceiling
        hi = adaptive.max if ceiling is None else min(adaptive.max, ceiling)
        fixed = 0
        if isinstance(shared, _SharedFixed):
            concurrency = limits.concurrency
            fixed = concurrency if isinstance(concurrency, int) else 1
            if ceiling is not None:
                fixed = min(fixed, ceiling)
        learner = self.learner
        otpm = lane.output_tpm or 0
        requests = lane.requests
        now = self._clock()
        grid = None if requests is None else requests.window_grid(now)
        if grid is not None and grid[1] < _FLEET_WINDOW_MIN_S:
            grid = None
        tokens_bucket = self._local.tokens
        token_grid = None if tokens_bucket is None else tokens_bucket.window_grid(now)
        token_grid_at = 0
        aheads = self._server_aheads
        if token_grid is not None and aheads:
            ahead_s = max(aheads)
            # When the window ends on the server's clock: the ask runs a moment after its
            # arguments are made (tens of ms on a busy loop), and seconds from then counted
            # from the script's time put the end that much late.
            token_grid = (now + token_grid[0] + ahead_s, *token_grid[1:])
            token_grid_at = 1
        args = [
            tokens - output_tokens if otpm else tokens,
            lane.rpm or 0,
            lane.tpm or 0,
            lane.burst_s("requests"),  # as a local lane's (a proven depth, halved by 429s)
            limits.utilisation,
            fixed,
            min(adaptive.initial, hi),
            min(adaptive.min, hi),
            hi,
            lease,
            self._backend.lease_ttl_s,
            self._backend.key_ttl_s,
            0 if learner is None else learner.learned_cap or 0,
            0 if learner is None else learner.floor,
            priority.rank,
            limits.min_share,
            *(lane.queue.waiting(p) for p in Priority),
            output_tokens if otpm else 0,
            otpm,
            0 if learner is None else learner.ramp_window,
            lane.burst_s("tokens"),
            lane.burst_s("output_tokens"),
            *(grid or (0, 0, 0, 0)),
            *(token_grid or (0, 0, 0, 0)),
            token_grid_at,
            lane.latency.mean_s,  # spaces the fleet's steps past its most in flight
        ]
        # ADMIT reads the releases in transit from ARGV[35] on: one argument more above,
        # and it would free the mean latency as a lease.
        assert len(args) == _ADMIT_FIXED_ARGS, len(args)
        args += self._releasing  # freed first: their answers are in, the server's slots free
        return args

    def answer(self, reply: object) -> Granted | Deferred | None:
        """Redis's answer: granted, or how long to sleep before asking again (with every slot
        taken, ask again soon: other processes' releases cannot wake this one); None when
        Redis did not answer (the lane looks again, locally)."""
        if isinstance(reply, BaseException):
            self._backend.lost(reply)
            self._sync_mode()
            return None
        assert isinstance(reply, tuple)
        lease, raw = reply
        admission = _parse(raw)
        shared = self._shared_slots
        if admission.admitted:
            self._slot_starved = False
            shared.shared_limit = admission.limit
            self._held.add(lease)
            now = self._clock()
            self._server_aheads.append(admission.now - now)
            marks = self._fleet_marks
            marks.append(
                (now, admission.admissions, admission.tokens_admitted, admission.in_second)
            )
            while now - marks[0][0] > _SHARE_WINDOW_S:
                marks.popleft()
            # The permit took the fleet's last slot (`Permit.filled_window`) only at its
            # edge (`_Admission.edge`). A full shared window below the fleet's most in flight
            # answered is not one: the fleet had as many in flight answered, and a bare 429
            # there (a busy provider's) taken as the last slot's was read as the rate's and
            # cut the fleet's pace (1 run in 8).
            limit = admission.in_flight if admission.edge else admission.in_flight + 1
            return Granted(
                in_flight=admission.in_flight,
                limit=limit,
                lease=_Lease(lease, admission.now, admission.admissions, admission.tokens_admitted),
            )
        if admission.limit:  # 0: held back for a higher class, the limit not read
            shared.shared_limit = admission.limit
        no_slot = admission.wait_s == -1.0
        self._slot_starved = no_slot
        if admission.wait_s == -2.0:
            # Held back with a slot free (a step past the fleet's most in flight, a budget):
            # the window is not what holds it, and grows on no answer for it, as a local
            # lane's. Others' answers cannot wake it: it asks again soon.
            return Deferred(sleep_s=_SLOT_POLL_S, wait_s=math.inf)
        if not no_slot:
            return Deferred(sleep_s=admission.wait_s, wait_s=admission.wait_s)
        learner = self.learner
        if learner is not None:
            # Before any answer, silence grows the window as in a local lane; the next
            # admission raises the shared window to it.
            learner.waiting_for_slot(self._clock())
        return Deferred(sleep_s=_SLOT_POLL_S, wait_s=math.inf)

    def _sync_mode(self) -> None:
        """Follow the backend's health: on loss, local limits at 1/N; on return, shared."""
        healthy = self._backend.healthy
        if healthy == (not self.fallback):
            return
        with self._lock:
            self.fallback = not healthy
            shared = self._shared_slots
            shared.shared_mode = healthy
            if not healthy:
                share = 1.0 / max(1, self._backend.live_processes)
                shared.set_local_limit(math.floor(shared.shared_limit * share))
                self._lane.set_local_share(share)
            else:
                self._lane.set_local_share(1.0)

    # -- outcomes -------------------------------------------------------------------------

    def release(self, permit: Permit, signal: Signal, *, now: float, backlog: bool) -> None:
        held = permit.lease
        assert isinstance(held, _Lease)
        lease, server_sent_at = held.lease_id, held.server_sent_at
        # requests wait for a slot, not for pacing: only then is the limit in use (and may
        # grow); a window grown while pacing holds requests back only inflates
        backlog = backlog and self._slot_starved
        # the learner hears every release, as a local lane's limit does
        self._shared_slots.release(
            now=now,
            sent_at=permit.sent_at,
            in_flight_at_send=permit.in_flight_at_send,
            signal=signal,
            backlog=backlog,
        )
        self._held.discard(lease)
        self._releasing.add(lease)
        code = _SIGNAL_CODES[signal]
        if signal is Signal.NEUTRAL and _refused_about_the_rate(self._lane, permit):
            code = _RATE_REFUSAL
            self._refusals.append((permit.sent_at, server_sent_at))
        shared = self._shared_slots
        cut_to: float | None = None
        if isinstance(shared, _SharedAdaptive) and shared.cut_to is not None:
            cut_to, shared.cut_to = shared.cut_to, None
            code = _SIGNAL_CODES[Signal.BACKPRESSURE]  # to the window it says, not a share
        delta, self._token_delta = self._token_delta, 0.0
        output_delta, self._output_delta = self._output_delta, 0.0
        self._lane.queue.wake_head()
        lane = self._lane
        limits = lane.limits
        adaptive = limits.adaptive or AdaptiveConcurrency()
        self._backend.submit(
            "release",
            [self.hash_key, self.slot_key, self._backend.clock_key],
            [
                lease,
                code,
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
                output_delta,
                lane.output_tpm or 0,
                _wire(cut_to) if cut_to is not None else 0,
            ],
            admission=self,
        )

    def close_gate(self, until: float, wait_s: float, *, tokens: bool = False) -> None:
        self._local.close_gate(until, wait_s)
        self._backend.submit(
            "gate",
            [self.hash_key, self._backend.clock_key],
            [wait_s, self._backend.key_ttl_s, 1 if tokens else 0],
        )

    def charge_tokens(self, delta: float) -> None:
        self._local.charge_tokens(delta)
        self._token_delta += delta  # sent to the shared bucket with the next release

    def charge_output(self, delta: float) -> None:
        self._local.charge_output(delta)
        self._output_delta += delta  # as for input tokens

    def freed(self, lease: str) -> None:
        """RELEASE ran for ``lease`` (or was dropped, Redis unreachable: then it expires)."""
        with self._lock:
            self._releasing.discard(lease)

    def held_leases(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def __repr__(self) -> str:
        mode = "local fallback" if self.fallback else f"shared via {self._backend.namespace}"
        return f"<RedisAdmissionPolicy {mode}>"


def _refused_about_the_rate(lane: Lane, permit: Permit) -> bool:
    """Whether the lane's request rate just heard ``permit`` refused by a 429 about the rate
    (its settle runs the rate before it releases the slot, under the lane's lock)."""
    return lane.request_rate.refused_sent_at == permit.sent_at


_Mark = tuple[float, int, float, int]
"""(our clock when the store's reply to one of our admissions was read, the store's count of
the fleet's admissions then, its tokens admitted then, its admissions in the second up to
that one: -1 not known)."""


def _marks_around(
    marks: Iterable[_Mark], sent_at: float
) -> tuple[_Mark | None, _Mark | None, _Mark | None]:
    """Of ``marks`` (oldest first), around the second up to ``sent_at``: our last mark before
    that second, our first inside it and our last inside it (None: no such mark). What the
    fleet sent in that second is read between them, as a bound from below
    (:meth:`RedisAdmissionPolicy.key_sent_in_second_before`) or from above
    (:func:`_sent_at_most`)."""
    start = sent_at - 1.0
    before: _Mark | None = None
    first: _Mark | None = None
    last: _Mark | None = None
    for mark in marks:
        t = mark[0]
        if t < start:
            before = mark
        elif t <= sent_at:
            if first is None:
                first = mark
            last = mark
        else:
            break
    return before, first, last


def _sent_at_most(marks: Iterable[_Mark], sent_at: float) -> tuple[float, float]:
    """At most how many requests, and tokens, a fleet admitted in the second up to
    ``sent_at`` (one of ours), from ``marks`` (:data:`_Mark`), oldest first, one per
    admission of ours. From our last mark before that second to our last one up to
    ``sent_at``: a mark is read after the store counted it, so the first counts nothing of
    the second, and the count between runs high (the fleet's admissions between that mark
    and the second's start), never low. With no mark of ours before the second (this
    process just started, or its marks were dropped), from nothing: all the key ever
    admitted (a fleet just started has sent little). With none inside it, not known: inf.
    Requests are also at most what the store counted in the second up to our last mark
    inside it: that second began no later than ``sent_at``'s, so it holds every admission
    of ``sent_at``'s second up to that mark (our last mark before the second may be long
    before it, and the count since then runs high by the gap)."""
    before, _, last = _marks_around(marks, sent_at)
    if last is None:
        return math.inf, math.inf
    if before is None:
        requests, tokens = float(last[1]), last[2]
    else:
        requests, tokens = float(last[1] - before[1]), last[2] - before[2]
    if last[3] >= 0:
        requests = min(requests, float(last[3]))
    return requests, tokens


def _parse(raw: list[Any]) -> _Admission:
    return _Admission(
        admitted=int(raw[0]) == 1,
        wait_s=float(raw[1]),
        in_flight=int(raw[2]),
        limit=int(raw[3]),
        now=float(raw[4]),
        admissions=int(raw[5]),
        tokens_admitted=float(raw[6]) if len(raw) > 6 else 0.0,
        edge=len(raw) > 7 and int(raw[7]) == 1,
        in_second=int(raw[8]) if len(raw) > 8 else -1,
    )


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
        self.clock_key = f"{namespace}:clock"
        """The namespace's clock in Redis: the server's, never running backwards (see _scripts)."""
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_s = heartbeat_s
        self.key_ttl_s = key_ttl_s
        self._socket_timeout_s = socket_timeout_s
        self._process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # One retry on a fresh connection: after Redis restarts, every pooled connection is
        # dead, and without it the first command on each fails and flaps the health (redis-py's
        # from_url retries nothing). A Redis that is really down fails both at once. Not on a
        # timeout: the script may have run (an ADMIT twice would hold two leases).
        self._sync: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._scripts = _SyncScripts.register(self._sync)
        # per event loop: its client, and the admission script registered on it
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[redis.asyncio.Redis, _AsyncScript]
        ] = weakref.WeakKeyDictionary()
        self._admissions: weakref.WeakSet[RedisAdmissionPolicy] = weakref.WeakSet()
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self.healthy = True
        # lost() runs on the event loop's thread and on the maintenance thread: one of them
        # turns the health over (and warns), not both
        self._health_lock = threading.Lock()
        self.live_processes = 1
        self._lost_at: float | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._maintain, name=f"pacekeeper-redis-{namespace}", daemon=True
        )
        self._thread.start()

    # -- clients --------------------------------------------------------------------------

    def sync_client(self) -> redis.Redis:
        return self._sync

    def sync_scripts(self) -> _SyncScripts:
        """The scripts registered on the sync client."""
        return self._scripts

    def async_client(self) -> redis.asyncio.Redis:
        """A client bound to the running event loop (redis-py's asyncio pools are per loop)."""
        return self._async_pair()[0]

    def async_admit(self) -> _AsyncScript:
        """The admission script, registered on the running event loop's client."""
        return self._async_pair()[1]

    def _async_pair(self) -> tuple[redis.asyncio.Redis, _AsyncScript]:
        import redis.asyncio

        loop = asyncio.get_running_loop()
        pair = self._async_clients.get(loop)
        if pair is None:
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self._socket_timeout_s,
                socket_connect_timeout=self._socket_timeout_s,
                # as the sync client's (see __init__)
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
            pair = (client, client.register_script(_scripts.ADMIT))
            self._async_clients[loop] = pair
        return pair

    # -- lanes ----------------------------------------------------------------------------

    def make_lane(
        self,
        key: LaneKey,
        *,
        limits: Limits,
        retry: RetryPolicy,
        clock: Callable[[], float],
    ) -> Lane:
        """A lane that admits through Redis: a core :class:`Lane` built with a
        :class:`RedisAdmissionPolicy`, the fleet's slots and its retry budget."""
        adaptive = limits.adaptive
        slots: _SharedSlots
        if adaptive is not None:
            slots = _SharedAdaptive(adaptive)
        else:
            concurrency = limits.concurrency
            slots = _SharedFixed(concurrency if isinstance(concurrency, int) else 1)
        budget = _SharedBudget(
            ratio=retry.retry_budget_ratio,
            initial=retry.retry_budget_initial,
            maximum=retry.retry_budget_max,
        )

        def admission(lane: Lane) -> RedisAdmissionPolicy:
            made = RedisAdmissionPolicy(lane, backend=self, slots=slots, budget=budget, clock=clock)
            self._admissions.add(made)
            return made

        return Lane(
            key,
            limits=limits,
            retry=retry,
            clock=clock,
            slots=slots,
            budget=budget,
            admission=admission,
        )

    def make_spend_ledger(self, cap: SpendCap) -> RedisSpendLedger:
        """The spend cap's ledger, shared by every process of this namespace: with it,
        ``Governor(budget=...)`` caps what the whole fleet spends (and what it spent within
        ``key_ttl_s`` before)."""
        from pacekeeper.backends._spend import RedisSpendLedger

        return RedisSpendLedger(self._sync, cap, namespace=self.namespace, key_ttl_s=self.key_ttl_s)

    # -- health ---------------------------------------------------------------------------

    def lost(self, exc: BaseException) -> None:
        """Redis did not answer: every lane falls back to 1/N of its limits (one warning)."""
        with self._health_lock:
            if not self.healthy:
                return
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
        with self._health_lock:
            if self.healthy:
                return
            self.healthy = True
        lost_for = time.monotonic() - (self._lost_at or time.monotonic())
        logger.warning(
            "Redis at %s answers again after %.1fs: shared limits restored",
            _safe_url(self.url),
            lost_for,
        )

    # -- the maintenance thread -----------------------------------------------------------

    def submit(
        self,
        op: str,
        keys: list[str],
        args: list[Any],
        *,
        admission: RedisAdmissionPolicy | None = None,
    ) -> None:
        """Hand a write to the maintenance thread (never blocks the caller); a release's
        ``admission`` is told when it ran (:meth:`RedisAdmissionPolicy.freed`)."""
        if not self._closed:
            self._ops.put((op, keys, args, admission))
        elif admission is not None and op == "release":
            admission.freed(args[0])

    def submit_control(self, admission: RedisAdmissionPolicy) -> None:
        """Have the maintenance thread exchange ``admission``'s learned state with the fleet."""
        if not self._closed:
            self._ops.put(("control", [], [], admission))

    def _maintain(self) -> None:
        next_tick = 0.0
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                item = self._ops.get(timeout=timeout)
            except queue.Empty:
                item = ("tick", [], [], None)
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

    def _run(self, item: _Op) -> None:
        op, keys, args, admission = item
        if op == "release" and admission is not None:
            try:
                self._run_script(op, keys, args)
            finally:
                admission.freed(args[0])
            return
        if op == "control" and admission is not None:
            if self.healthy:
                admission.exchange_control(self._scripts.control)
            return
        self._run_script(op, keys, args)

    def _run_script(self, op: str, keys: list[str], args: list[Any]) -> None:
        if not self.healthy:
            return  # shared state is not reachable; leases expire by themselves
        scripts = self._scripts
        script = {
            "release": scripts.release,
            "gate": scripts.gate,
            "learn": scripts.learn,
            "left": scripts.left,
        }[op]
        script(keys=keys, args=args)

    def _tick(self) -> None:
        scripts = self._scripts
        try:
            self.live_processes = int(
                scripts.heartbeat(
                    keys=[f"{self.namespace}:procs", self.clock_key],
                    args=[self._process_id, max(3 * self.heartbeat_s, 2.0)],
                )
            )
        except _redis_errors() as exc:
            self.lost(exc)
            return
        self._recovered()
        for admission in list(self._admissions):
            leases = admission.held_leases()
            if leases:
                scripts.renew(
                    keys=[admission.slot_key, self.clock_key], args=[self.lease_ttl_s, *leases]
                )
            budget = admission.budget
            delta = budget.take_pending()
            balance = scripts.budget(
                keys=[admission.hash_key],
                args=[delta, budget.initial, budget.maximum, self.key_ttl_s],
            )
            budget.settle(float(balance))
            # what the fleet learned since, and what this lane learned and has not pushed yet
            admission.exchange_control(scripts.control)

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


def _wire(value: float | None) -> str:
    """A rate for a script: 0 for none (floats as strings: Lua would truncate numbers)."""
    return "0" if value is None else f"{value:.6f}"


def _number_or_none(raw: Any) -> float | None:
    """A stored hash field: None when unset (or not positive)."""
    if raw is None:
        return None
    value = float(raw)
    return value if value > 0 else None


def _lowered(before: float | None, after: float | None) -> bool:
    """Whether a limit went down (None: no limit)."""
    if after is None:
        return False
    return before is None or after < before
