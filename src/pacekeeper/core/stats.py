"""Aggregates per (route, model): counts, latency percentiles, tokens. Plain data out.

Percentiles come from a log-bucketed histogram (buckets 2% wide), so memory stays constant
however many requests pass and the reported p50/p95/p99 are within 2% of the exact ones.

Queue wait is also kept per priority class and per (class, tenant) (:class:`QueueWaits`).
Tenant names come from callers (``tenant=``, proxy tokens), so their number is bounded
(:class:`TenantNames`): past ``max_tenants`` distinct names, the rest count as ``"other"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pacekeeper.core.priority import Priority

if TYPE_CHECKING:
    from pacekeeper.core.records import RequestRecord

__all__ = [
    "DEFAULT_MAX_TENANTS",
    "OTHER_TENANTS",
    "KeyStats",
    "LatencyHistogram",
    "QueueWaitStats",
    "QueueWaits",
    "StatsSnapshot",
    "TenantNames",
]

DEFAULT_MAX_TENANTS = 32
"""Distinct tenant names tracked (per lane, per metrics exporter) before the rest fold."""
OTHER_TENANTS = "other"
"""The name the tenants past the cap are counted under."""

_GROWTH = 1.02
_FLOOR_S = 1e-4  # everything below 0.1 ms shares the first bucket
_log2 = math.log2
_LOG2_GROWTH = math.log2(_GROWTH)
_LOG2_FLOOR = math.log2(_FLOOR_S)


class LatencyHistogram:
    """Durations in seconds, bucketed geometrically.

    >>> h = LatencyHistogram()
    >>> for ms in range(1, 101):
    ...     h.add(ms / 1000)
    >>> round(h.quantile(0.5), 3), round(h.quantile(0.99), 3), h.count
    (0.05, 0.099, 100)
    """

    __slots__ = ("_buckets", "count", "max_s", "sum_s")

    def __init__(self) -> None:
        # A plain dict, not a Counter: every answer adds to three histograms, and a dict
        # subclass's subscripts take the interpreter's generic path (about 2.5 times a
        # dict's).
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def add(self, value_s: float) -> None:
        # log2 takes its one argument without an argument tuple (log() parses a tuple)
        index = int((_log2(value_s) - _LOG2_FLOOR) / _LOG2_GROWTH) + 1 if value_s > _FLOOR_S else 0
        buckets = self._buckets
        try:
            buckets[index] += 1
        except KeyError:  # the bucket's first value
            buckets[index] = 1
        self.count += 1
        self.sum_s += value_s
        # a statement, not max() (a call) nor a conditional (a store every time)
        if value_s > self.max_s:  # noqa: PLR1730
            self.max_s = value_s

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) in seconds; 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                if index == 0:
                    return _FLOOR_S
                # the bucket's geometric middle
                middle: float = _FLOOR_S * _GROWTH ** (index - 0.5)
                return min(self.max_s, middle)
        return self.max_s

    def merge(self, other: LatencyHistogram) -> None:
        buckets = self._buckets
        for index, count in other._buckets.items():
            buckets[index] = buckets.get(index, 0) + count
        self.count += other.count
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)


class TenantNames:
    """A bounded set of tenant names: each name as itself until ``max_tenants`` distinct names
    were seen, then every new one as :data:`OTHER_TENANTS` (so a caller inventing names cannot
    grow memory or metric series without end). Names in ``known`` (configured tenants) always
    count as themselves, whatever the cap.

    >>> names = TenantNames(max_tenants=2, known=["chat"])
    >>> [names.label(t) for t in ("chat", "a", "b", "a", None)]
    ['chat', 'a', 'other', 'a', None]
    """

    __slots__ = ("_known", "_seen", "max_tenants")

    def __init__(
        self, *, max_tenants: int = DEFAULT_MAX_TENANTS, known: Iterable[str] = ()
    ) -> None:
        if isinstance(max_tenants, bool) or not isinstance(max_tenants, int) or max_tenants < 1:
            raise ValueError(f"max_tenants must be a positive integer, got {max_tenants!r}")
        self.max_tenants = max_tenants
        self._known = frozenset(known)
        self._seen: set[str] = set(self._known)

    def label(self, tenant: str | None) -> str | None:
        """The name ``tenant`` is counted under (None stays None: no tenant named)."""
        if tenant is None or tenant in self._seen:
            return tenant
        if len(self._seen) < self.max_tenants:
            self._seen.add(tenant)
            return tenant
        return OTHER_TENANTS

    def __repr__(self) -> str:
        return f"<TenantNames {len(self._seen)} of {self.max_tenants}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueWaitStats:
    """How long the requests of one class (or of one tenant in it) waited for admission."""

    priority: str
    tenant: str | None
    """The tenant; None in per-class rows (every request of the class, tenant or not)."""
    requests: int
    p50_s: float
    p95_s: float
    p99_s: float
    max_s: float
    mean_s: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _class_order(priority: str) -> tuple[int, str]:
    try:
        return (Priority(priority).rank, priority)
    except ValueError:  # a class from a newer version's records: after the known ones
        return (len(Priority), priority)


class QueueWaits:
    """Queue wait per (priority class, tenant): one histogram each, tenants bounded by
    ``tenants`` (a :class:`TenantNames`). Classes are the three of
    :class:`~pacekeeper.Priority` (or what records say), so they need no bound.

    >>> waits = QueueWaits()
    >>> for s in (0.01, 0.02, 0.03):
    ...     waits.add(s, priority="interactive", tenant="chat")
    >>> waits.add(2.0, priority="batch", tenant=None)
    >>> [(w.priority, w.requests, round(w.p50_s, 2)) for w in waits.by_class()]
    [('interactive', 3, 0.02), ('batch', 1, 2.0)]
    >>> [(w.priority, w.tenant) for w in waits.by_tenant()]
    [('interactive', 'chat')]
    >>> waits.varied
    True
    """

    __slots__ = ("_untenanted", "_waits", "tenants")

    def __init__(self, *, tenants: TenantNames | None = None) -> None:
        self.tenants = tenants if tenants is not None else TenantNames()
        self._waits: dict[tuple[str, str | None], LatencyHistogram] = {}
        self._untenanted: dict[str, LatencyHistogram] = {}
        """``_waits[(priority, None)]`` by the class alone: what a request without a tenant
        (most) is counted in, found without a key tuple made for it."""

    def add(self, queued_s: float, *, priority: str, tenant: str | None) -> None:
        self.of(priority, tenant).add(queued_s)

    def of(self, priority: str, tenant: str | None) -> LatencyHistogram:
        """The histogram a request of ``priority`` and ``tenant`` is counted in."""
        # No tenant (most requests) needs no label: None stays None.
        if tenant is None:
            histogram = self._untenanted.get(priority)
            if histogram is None:
                histogram = self._untenanted[priority] = LatencyHistogram()
                self._waits[(priority, None)] = histogram
            return histogram
        key = (priority, self.tenants.label(tenant))
        histogram = self._waits.get(key)
        if histogram is None:
            histogram = self._waits[key] = LatencyHistogram()
        return histogram

    def merge(self, other: QueueWaits) -> None:
        for (priority, tenant), histogram in other._waits.items():
            self.of(priority, tenant).merge(histogram)

    def histograms(self) -> list[LatencyHistogram]:
        """One per (class, tenant) seen."""
        return list(self._waits.values())

    @property
    def varied(self) -> bool:
        """More than one class, or more than one tenant, was seen: worth showing apart."""
        return len({p for p, _ in self._waits}) > 1 or len({t for _, t in self._waits}) > 1

    def by_class(self) -> tuple[QueueWaitStats, ...]:
        """One row per class seen, highest first (all its tenants together)."""
        merged: dict[str, LatencyHistogram] = {}
        for (priority, _), histogram in self._waits.items():
            into = merged.get(priority)
            if into is None:
                into = merged[priority] = LatencyHistogram()
            into.merge(histogram)
        return tuple(_wait_stats(p, None, merged[p]) for p in sorted(merged, key=_class_order))

    def by_tenant(self) -> tuple[QueueWaitStats, ...]:
        """One row per (class, named tenant) seen, highest class first, then by name."""
        keys = sorted(
            (k for k in self._waits if k[1] is not None),
            key=lambda k: (_class_order(k[0]), k[1]),
        )
        return tuple(_wait_stats(p, t, self._waits[(p, t)]) for p, t in keys)

    def __repr__(self) -> str:
        rows = ", ".join(f"{w.priority} {w.requests}" for w in self.by_class())
        return f"<QueueWaits {rows or 'empty'} {self.tenants!r}>"


def _wait_stats(priority: str, tenant: str | None, h: LatencyHistogram) -> QueueWaitStats:
    return QueueWaitStats(
        priority=priority,
        tenant=tenant,
        requests=h.count,
        p50_s=h.quantile(0.5),
        p95_s=h.quantile(0.95),
        p99_s=h.quantile(0.99),
        max_s=h.max_s,
        mean_s=h.sum_s / h.count if h.count else 0.0,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsSnapshot:
    """What happened on one (route, model), as plain data."""

    route: str
    model: str | None
    requests: int
    ok: int
    failed: int
    attempts: int
    retries: int
    rate_limited: int
    """429s received (rate limits, not billing)."""
    by_status: dict[str, int]
    """Attempts by HTTP status; ``"none"`` for attempts that got no response."""
    by_outcome: dict[str, int]
    """Final outcomes by kind (``"ok"``, ``"rate_limited"``, ``"client_error"``...)."""
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    queued_p50_s: float
    queued_p95_s: float
    total_p50_s: float
    total_p95_s: float
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: int
    first_at: float
    last_at: float
    concurrency_limit: int
    peak_in_flight: int
    rpm_limit: float | None
    tpm_limit: float | None
    cooldowns: int
    cost_usd: float | None = None
    """What the finished requests cost; None when the model has no known price."""
    queue_wait_by_class: tuple[QueueWaitStats, ...] = ()
    """Queue wait per priority class seen, highest first."""
    queue_wait_by_tenant: tuple[QueueWaitStats, ...] = ()
    """Queue wait per (class, named tenant) seen (past the cap, tenants count as "other")."""

    @property
    def elapsed_s(self) -> float:
        return max(0.0, self.last_at - self.first_at)

    @property
    def throughput_rpm(self) -> float:
        """Successful requests per minute over the time this key was active."""
        return 60.0 * self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def queue_wait_varied(self) -> bool:
        """More than one class or tenant waited here: per-class rows are worth showing."""
        return len(self.queue_wait_by_class) > 1 or len(self.queue_wait_by_tenant) > 1

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("queue_wait_by_class", "queue_wait_by_tenant"):
            out[name] = [w.as_dict() for w in out[name]]
        return {
            **out,
            "elapsed_s": self.elapsed_s,
            "throughput_rpm": self.throughput_rpm,
        }


_STATUS_LABELS: dict[int | None, str] = {}
"""Each status's label in ``by_status``, made once (``str()`` is a call per answer)."""


@dataclass(slots=True)
class KeyStats:
    """The running aggregates of one key (mutable; read it through :meth:`snapshot`)."""

    route: str
    model: str | None
    requests: int = 0
    ok: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_estimated: int = 0
    first_at: float = math.inf
    last_at: float = 0.0
    cost_usd: float | None = 0.0
    # Plain dicts, not Counters: a dict subclass's subscripts take the interpreter's generic
    # path, and every answer counts in both (missing keys: read them with .get).
    by_status: dict[str, int] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    total: LatencyHistogram = field(default_factory=LatencyHistogram)
    queue_waits: QueueWaits = field(default_factory=QueueWaits)

    def on_attempt(
        self, *, status: int | None, rate_limited: bool, latency_s: float, retry: bool, at: float
    ) -> None:
        self.attempts += 1
        if retry:
            self.retries += 1
        if rate_limited:
            self.rate_limited += 1
        label = "none" if status is None else str(status)
        self.by_status[label] = self.by_status.get(label, 0) + 1
        self.latency.add(latency_s)
        self.first_at = min(self.first_at, at - latency_s)
        self.last_at = max(self.last_at, at)

    def on_request(
        self,
        *,
        ok: bool,
        outcome: str,
        total_s: float,
        queued_s: float,
        tokens_estimated: int,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        at: float,
        cost_usd: float | None = 0.0,
        priority: str = "interactive",
        tenant: str | None = None,
    ) -> None:
        self.requests += 1
        self.cost_usd = (
            None if cost_usd is None or self.cost_usd is None else self.cost_usd + cost_usd
        )
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1
        self.total.add(total_s)
        self.queue_waits.add(queued_s, priority=priority, tenant=tenant)
        self.tokens_estimated += tokens_estimated
        self.prompt_tokens += prompt_tokens or 0
        self.completion_tokens += completion_tokens or 0
        self.first_at = min(self.first_at, at - total_s)
        self.last_at = max(self.last_at, at)

    def on_answer(  # noqa: PLR0917  # positional on the hot path (below)
        self,
        status: int | None,
        total_s: float,
        queued_s: float,
        priority: str,
        tenant: str | None,
        tokens_estimated: int,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost_usd: float | None,
        latency_s: float,
        retry: bool,
        at: float,
    ) -> None:
        """:meth:`on_attempt` and :meth:`on_request` of an attempt that ended its request with
        a success, in one call: it runs on every request, from the settle's own values (its
        record is built only when something reads it). Positional on the hot path (the lane's
        settle): a dozen keywords bound by name cost as much as the counting."""
        self.attempts += 1
        self.requests += 1
        if retry:
            self.retries += 1
        try:  # the status's label, made once per status: str() is a call on every answer
            label = _STATUS_LABELS[status]
        except KeyError:
            label = _STATUS_LABELS[status] = "none" if status is None else str(status)
        by_status = self.by_status
        try:
            by_status[label] += 1
        except KeyError:  # the status's first answer
            by_status[label] = 1
        if cost_usd is None or self.cost_usd is None:
            self.cost_usd = None
        else:
            self.cost_usd += cost_usd
        self.ok += 1
        by_outcome = self.by_outcome
        try:
            by_outcome["ok"] += 1
        except KeyError:  # the first success
            by_outcome["ok"] = 1
        self.latency.add(latency_s)
        self.total.add(total_s)
        waits = self.queue_waits
        # QueueWaits.of, inlined for a request without a tenant (most): no label to look up
        queued = waits._untenanted.get(priority) if tenant is None else None
        if queued is None:
            queued = waits.of(priority, tenant)
        queued.add(queued_s)
        self.tokens_estimated += tokens_estimated
        if prompt_tokens:
            self.prompt_tokens += prompt_tokens
        if completion_tokens:
            self.completion_tokens += completion_tokens
        first_at = at - (total_s if total_s > latency_s else latency_s)
        if first_at < self.first_at:  # noqa: PLR1730  # as max_s in LatencyHistogram.add
            self.first_at = first_at
        self.last_at = at if at > self.last_at else self.last_at

    def on_record(self, record: RequestRecord, *, at: float) -> None:
        """:meth:`on_request` from the request's record."""
        self.on_request(
            ok=record.ok,
            outcome=record.outcome,
            total_s=record.total_s,
            queued_s=record.queued_s,
            tokens_estimated=record.tokens_estimated,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            at=at,
            cost_usd=record.cost_usd,
            priority=record.priority,
            tenant=record.tenant,
        )

    @property
    def queued(self) -> LatencyHistogram:
        """Queue wait of every request (the classes' and tenants' histograms together)."""
        merged = LatencyHistogram()
        for histogram in self.queue_waits.histograms():
            merged.merge(histogram)
        return merged

    def snapshot(
        self,
        *,
        concurrency_limit: int,
        peak_in_flight: int,
        rpm_limit: float | None,
        tpm_limit: float | None,
        cooldowns: int,
    ) -> StatsSnapshot:
        queued = self.queued
        return StatsSnapshot(
            route=self.route,
            model=self.model,
            requests=self.requests,
            ok=self.ok,
            failed=self.failed,
            attempts=self.attempts,
            retries=self.retries,
            rate_limited=self.rate_limited,
            by_status=dict(self.by_status),
            by_outcome=dict(self.by_outcome),
            latency_p50_s=self.latency.quantile(0.5),
            latency_p95_s=self.latency.quantile(0.95),
            latency_p99_s=self.latency.quantile(0.99),
            queued_p50_s=queued.quantile(0.5),
            queued_p95_s=queued.quantile(0.95),
            total_p50_s=self.total.quantile(0.5),
            total_p95_s=self.total.quantile(0.95),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens_estimated=self.tokens_estimated,
            first_at=self.first_at if math.isfinite(self.first_at) else 0.0,
            last_at=self.last_at,
            concurrency_limit=concurrency_limit,
            peak_in_flight=peak_in_flight,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            cooldowns=cooldowns,
            cost_usd=self.cost_usd,
            queue_wait_by_class=self.queue_waits.by_class(),
            queue_wait_by_tenant=self.queue_waits.by_tenant(),
        )
