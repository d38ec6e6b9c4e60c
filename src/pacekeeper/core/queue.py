"""The waiting queue of a lane: who goes next, and waking waiters one at a time.

The queue names one waiter, the **head**. Only the head looks at the lane's state (cooldown,
pacing, slots); the others sleep until they become it. So an admission wakes one waiter, not
ten thousand, and pacing is exact because nobody races the head.

Who is the head:

* **classes** (:class:`~pacekeeper.core.priority.Priority`): the highest class with work goes
  first, but a lower class is never starved. While it has work, each admission of the lane
  credits it ``min_share``; once its credit reaches one admission it goes next, and spends one.
  So under any load above it, it keeps at least ``min_share`` of the admissions (10% by
  default); credit is not banked while it has no work;
* **tenants**, within a class: weighted fair queuing by start tags (one request costs
  ``1/weight``; a tenant that comes back from idle starts at the class's virtual time, not at
  its old tag), so one tenant's burst cannot hold the others back;
* **order**, within a tenant: first come, first served; retries join at the front (they are the
  oldest work).

The queue is guarded by the lane's lock (re-entrant: the lane holds it while it decides), and
its waiters may be asyncio tasks on any event loop or threads (see
:mod:`pacekeeper.core.waiting`).

>>> from pacekeeper.core.waiting import ThreadWaiter
>>> q = WaitQueue(name="chat model=m")
>>> a, b, c = ThreadWaiter(), ThreadWaiter(), ThreadWaiter()
>>> q.join(a, priority=Priority.BATCH)
>>> q.join(b)
>>> q.head is b  # interactive before batch
True
>>> q.admitted(b); q.head is a
True
>>> q.join(c, priority=Priority.BATCH, front=True)  # a retry: the oldest work of its class
>>> q.head is c, len(q)
(True, 2)
>>> q
<WaitQueue chat model=m waiting=2 (batch 2) admitted=1 (interactive 1)>
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from pacekeeper.core.errors import AdmissionClosed, ConfigurationError
from pacekeeper.core.priority import Priority
from pacekeeper.core.waiting import AsyncWaiter, QueueTimeout, ThreadWaiter, Waiter, _resolve

__all__ = ["DEFAULT_MIN_SHARE", "WaitQueue", "bounded_by_deadline", "check_weight"]

DEFAULT_MIN_SHARE = 0.1
_CLASSES = tuple(Priority)
_OWED = 1.0 - 1e-9  # a credit of one admission, give or take float error


def check_weight(tenant: object, weight: object) -> None:
    """A clear error unless ``tenant`` is a name and ``weight`` a positive, finite number.

    >>> check_weight("nightly", 0)
    Traceback (most recent call last):
    ...
    pacekeeper.core.errors.ConfigurationError: tenant nightly: its weight must be a positive \
number (its share against the other tenants of its class), got 0
    """
    if not isinstance(tenant, str) or not tenant.strip():
        raise ConfigurationError(f"a tenant's name must be a non-empty string, got {tenant!r}")
    if (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise ConfigurationError(
            f"tenant {tenant}: its weight must be a positive number (its share against the "
            f"other tenants of its class), got {weight!r}"
        )


def bounded_by_deadline(
    now: float, wait_s: float, deadline: float, waiting_for: Callable[[], str]
) -> float:
    """How long to sleep: ``wait_s``, never past ``deadline``; a :class:`QueueTimeout` now when
    the known wait already passes it (``inf``: unknown, e.g. until a slot frees).

    >>> bounded_by_deadline(10.0, 1.0, 20.0, lambda: "pacing")
    1.0
    >>> bounded_by_deadline(10.0, math.inf, 12.5, lambda: "a slot")
    2.5
    >>> bounded_by_deadline(10.0, 5.0, 12.0, lambda: "pacing")
    Traceback (most recent call last):
    ...
    pacekeeper.core.waiting.QueueTimeout: pacing
    """
    if wait_s == math.inf:
        if now >= deadline:
            raise QueueTimeout(now - deadline, waiting_for())
        return deadline - now
    if now + wait_s > deadline:
        raise QueueTimeout(wait_s, waiting_for())
    return wait_s


class _Tenant:
    """One tenant's waiters in one class, and its place in the fair order."""

    __slots__ = ("admitted", "live", "name", "order", "rank", "start", "waiters", "weight")

    def __init__(self, name: str | None, rank: int, weight: float) -> None:
        self.name = name
        self.rank = rank
        self.weight = weight
        self.waiters: deque[Waiter] = deque()  # may hold waiters that left (skipped lazily)
        self.live = 0
        self.start = 0.0
        """The virtual start tag of its next admission (smallest goes first)."""
        self.order = 0
        """When it last became active: breaks ties between equal tags."""
        self.admitted = 0


class _Class:
    __slots__ = ("active", "admitted", "credit", "live", "priority", "share", "tenants", "vtime")

    def __init__(self, priority: Priority, share: float) -> None:
        self.priority = priority
        self.share = share
        self.credit = 0.0
        self.live = 0
        self.admitted = 0
        self.vtime = 0.0
        self.tenants: dict[str | None, _Tenant] = {}
        self.active: list[_Tenant] = []


class WaitQueue:
    """Requests waiting for one lane, in classes and tenants (see the module docstring).

    ``min_share`` is the share of admissions each class below ``interactive`` keeps while it
    has work; ``weights`` gives tenants other than 1.0 their weight within their class.
    """

    __slots__ = (
        "_activations",
        "_class_of",
        "_classes",
        "_head",
        "_lock",
        "_lower",
        "_name",
        "_sleepers",
        "closed",
        "members",
        "weights",
    )

    def __init__(
        self,
        *,
        name: str = "lane",
        min_share: float = DEFAULT_MIN_SHARE,
        weights: Mapping[str, float] | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        if not 0.0 <= min_share <= 1.0 / len(_CLASSES):
            raise ConfigurationError(
                f"min_share must be in [0, {1.0 / len(_CLASSES):.3g}] (every class below "
                f"interactive keeps it), got {min_share!r}"
            )
        self._name = name
        self._lock = lock if lock is not None else threading.RLock()
        self._classes = tuple(_Class(p, 0.0 if p.rank == 0 else min_share) for p in _CLASSES)
        self._lower = self._classes[1:]
        # Looked up by the class itself (a str's hash, in C): Priority.rank is a Python call,
        # and joining and admitting run on every request.
        self._class_of = dict(zip(_CLASSES, self._classes, strict=True))
        self.members: dict[Waiter, _Tenant] = {}
        """The waiters queued now (read it, never change it: a lane reads its truthiness on
        every answer, where ``len()`` would be a Python call)."""
        self._head: Waiter | None = None
        self._sleepers: set[Waiter] = set()
        self._activations = 0
        self.weights: dict[str, float] = dict(weights or {})
        self.closed = False

    @property
    def lock(self) -> threading.RLock:
        """The lock that guards this queue (and, held by the lane, its decisions)."""
        return self._lock

    # -- joining and leaving ------------------------------------------------------------

    def join(
        self,
        waiter: Waiter,
        *,
        front: bool = False,
        priority: Priority = Priority.INTERACTIVE,
        tenant: str | None = None,
    ) -> None:
        """Queue ``waiter`` (``front``: a retry, before the others of its class and tenant).
        A waiter joins once."""
        with self._lock:
            self.join_held(waiter, front, priority, tenant)

    # The *_held methods are what the lane calls, deciding under the lock it shares with its
    # queue: re-entering the lock would cost two C calls each, on every request.

    def join_held(
        self, waiter: Waiter, front: bool, priority: Priority, tenant: str | None
    ) -> None:
        """:meth:`join`, by a caller that holds :attr:`lock`."""
        if self.closed:
            self.check_open()
        cls = self._class_of[priority]
        t = cls.tenants.get(tenant)
        if t is None:
            t = cls.tenants[tenant] = _Tenant(tenant, cls.priority.rank, self._weight(tenant))
        if t.live == 0:
            # Back from idle: it starts now, not where it stopped (no banked turns).
            t.start = max(t.start, cls.vtime)
            self._activations += 1
            t.order = self._activations
            cls.active.append(t)
        if front:
            t.waiters.appendleft(waiter)
        else:
            t.waiters.append(waiter)
        t.live += 1
        cls.live += 1
        self.members[waiter] = t
        self._choose()

    def leave(self, waiter: Waiter) -> None:
        """``waiter`` gives up (cancelled, deadline, closed): forget it, hand the head on."""
        with self._lock:
            self._remove(waiter)

    def admitted(self, waiter: Waiter) -> None:
        """``waiter`` was admitted: it leaves, and its class and tenant are charged for it."""
        with self._lock:
            self.admitted_held(waiter)

    def admitted_held(self, waiter: Waiter) -> None:
        """:meth:`admitted`, by a caller that holds :attr:`lock`."""
        t = self.members.get(waiter)
        if t is None:
            return
        cls = self._classes[t.rank]
        # Every class with work earns its share of this admission (owed classes are chosen
        # first, so credit never runs away); the admitted one pays for it.
        for other in self._lower:
            if other.live:
                other.credit += other.share
            else:
                other.credit = 0.0  # no work at this admission: nothing banked
        if cls.priority.rank:
            cls.credit = max(0.0, cls.credit - 1.0)
        cls.admitted += 1
        t.admitted += 1
        cls.vtime = max(cls.vtime, t.start)
        t.start += 1.0 / t.weight
        self._remove(waiter)

    def count_admission(self, priority: Priority, tenant: str | None = None) -> None:
        """An admission that never waited (nobody was queued): counted for its class and
        tenant, owing nothing to anyone."""
        with self._lock:
            self.count_admission_held(priority, tenant)

    def count_admission_held(self, priority: Priority, tenant: str | None) -> None:
        """:meth:`count_admission`, by a caller that holds :attr:`lock`."""
        cls = self._class_of[priority]
        cls.admitted += 1
        t = cls.tenants.get(tenant)
        if t is None:
            t = cls.tenants[tenant] = _Tenant(tenant, cls.priority.rank, self._weight(tenant))
        t.admitted += 1

    def _remove(self, waiter: Waiter) -> None:
        t = self.members.pop(waiter, None)
        if t is None:
            return
        t.live -= 1
        cls = self._classes[t.rank]
        cls.live -= 1
        if t.waiters and t.waiters[0] is waiter:
            t.waiters.popleft()
        if t.live == 0:
            t.waiters.clear()
            cls.active.remove(t)
        self._choose()

    # -- the head -----------------------------------------------------------------------

    @property
    def head(self) -> Waiter | None:
        """The waiter whose turn it is (None: nobody waits)."""
        return self._head

    def turn(self, waiter: Waiter) -> bool:
        """Whether ``waiter`` is the head; if not, it is armed to sleep until woken (before
        the lock is released, so a wake in between is not lost). Raises
        :class:`~pacekeeper.AdmissionClosed` once the queue is closed."""
        with self._lock:
            return self.turn_held(waiter)

    def turn_held(self, waiter: Waiter) -> bool:
        """:meth:`turn`, by a caller that holds :attr:`lock`."""
        if self.closed:
            self.check_open()
        if self._head is waiter:
            return True
        waiter.arm()
        return False

    def wake_head(self) -> None:
        """The lane's state changed (a release, new limits): the head looks again."""
        head = self._head
        if head is not None:
            head.wake()

    def _choose(self) -> None:
        """Name the head; wake it when it changed (a waiter that is not armed yet ignores
        the wake and looks at once)."""
        before = self._head
        cls = None
        # Only while a lower class waits can one be owed (read without len(): a C call, and
        # this runs at every join and admission).
        for lower in self._lower:
            if lower.live:
                cls = self._owed()
                break
        if cls is None:
            # A loop, not next() over a generator: this runs at every join and admission.
            for first in self._classes:
                if first.live:
                    cls = first
                    break
        head: Waiter | None = None
        if cls is not None:
            active = cls.active
            t = active[0] if len(active) == 1 else min(active, key=_fair_key)
            waiters, where = t.waiters, self.members
            while where.get(waiters[0]) is not t:
                waiters.popleft()  # left while not at the front
            head = waiters[0]
        self._head = head
        if head is not None and head is not before:
            head.wake()

    def _owed(self) -> _Class | None:
        """The lower class owed an admission, if any (the most owed; ties to the higher)."""
        best: _Class | None = None
        for cls in self._lower:
            if cls.live and cls.credit >= _OWED and (best is None or cls.credit > best.credit):
                best = cls
        return best

    def set_weight(self, tenant: str, weight: float) -> None:
        """Give ``tenant`` ``weight`` (its share against the other tenants of a class is
        proportional to it); from its next admission on if it already waits."""
        check_weight(tenant, weight)
        with self._lock:
            self.weights[tenant] = float(weight)
            for cls in self._classes:
                t = cls.tenants.get(tenant)
                if t is not None:
                    t.weight = float(weight)

    def _weight(self, tenant: str | None) -> float:
        weight = self.weights.get(tenant, 1.0) if tenant is not None else 1.0
        return weight if weight > 0 else 1.0

    # -- closing and pauses -------------------------------------------------------------

    def check_open(self) -> None:
        if self.closed:
            raise AdmissionClosed(
                f"{self._name}: the governor was closed; this request was not sent"
            )

    def close(self) -> None:
        """Every waiter (and every retry pause) wakes, to find the queue closed."""
        with self._lock:
            self.closed = True
            for waiter in [*self.members, *self._sleepers]:
                waiter.wake()

    async def pause(self, delay_s: float) -> None:
        """Sleep before a retry; :meth:`close` cuts it short with AdmissionClosed."""
        waiter = AsyncWaiter()
        with self._lock:
            self.check_open()
            fut = waiter.arm()
            self._sleepers.add(waiter)
        timer = waiter._loop.call_later(delay_s, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            with self._lock:
                self._sleepers.discard(waiter)
        self.check_open()

    def pause_sync(self, delay_s: float) -> None:
        """The blocking twin of :meth:`pause`."""
        waiter = ThreadWaiter()
        with self._lock:
            self.check_open()
            event = waiter.arm()
            self._sleepers.add(waiter)
        try:
            event.wait(delay_s)
        finally:
            with self._lock:
                self._sleepers.discard(waiter)
        self.check_open()

    # -- reading ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[Waiter]:
        return iter(list(self.members))

    def waiting(self, priority: Priority) -> int:
        """Waiters in class ``priority``."""
        return self._classes[priority.rank].live

    def ahead_of(self, priority: Priority) -> int:
        """Waiters that go before a newcomer of class ``priority`` (its class and those above,
        the owed turns of the classes below aside)."""
        return sum(c.live for c in self._classes[: priority.rank + 1])

    def share_of(self, priority: Priority) -> float:
        """The least share of admissions a newcomer of class ``priority`` gets while every
        class waits: the classes below keep theirs, the classes above take the rest."""
        below = sum(c.share for c in self._classes[priority.rank + 1 :] if c.live)
        if priority.rank == 0:
            return 1.0 - below
        others_live = any(c.live for c in self._classes[: priority.rank])
        return self._classes[priority.rank].share if others_live else 1.0 - below

    def admissions(self) -> dict[Priority, int]:
        """Admissions so far per class."""
        return {c.priority: c.admitted for c in self._classes}

    def tenants(self) -> dict[tuple[Priority, str | None], tuple[int, int]]:
        """(waiting, admitted) per (class, tenant) seen."""
        return {
            (c.priority, name): (t.live, t.admitted)
            for c in self._classes
            for name, t in c.tenants.items()
        }

    def __repr__(self) -> str:
        def per_class(counts: list[tuple[Priority, int]]) -> str:
            parts = [f"{p.value} {n}" for p, n in counts if n]
            return f" ({', '.join(parts)})" if parts else ""

        waiting = [(c.priority, c.live) for c in self._classes]
        admitted = [(c.priority, c.admitted) for c in self._classes]
        return (
            f"<WaitQueue {self._name} waiting={len(self)}{per_class(waiting)} "
            f"admitted={sum(n for _, n in admitted)}{per_class(admitted)}>"
        )


def _fair_key(t: _Tenant) -> tuple[float, int]:
    return (t.start, t.order)
