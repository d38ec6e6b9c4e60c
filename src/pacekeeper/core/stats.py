"""Aggregates per (route, model): counts, latency percentiles, tokens. Plain data out.

Percentiles come from a log-bucketed histogram (buckets 2% wide), so memory stays constant
however many requests pass and the reported p50/p95/p99 are within 2% of the exact ones.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KeyStats", "LatencyHistogram", "StatsSnapshot"]

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_FLOOR_S = 1e-4  # everything below 0.1 ms shares the first bucket


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
        self._buckets: Counter[int] = Counter()
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def add(self, value_s: float) -> None:
        index = int(math.log(value_s / _FLOOR_S) / _LOG_GROWTH) + 1 if value_s > _FLOOR_S else 0
        self._buckets[index] += 1
        self.count += 1
        self.sum_s += value_s
        self.max_s = max(self.max_s, value_s)

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
        self._buckets.update(other._buckets)
        self.count += other.count
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)


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

    @property
    def elapsed_s(self) -> float:
        return max(0.0, self.last_at - self.first_at)

    @property
    def throughput_rpm(self) -> float:
        """Successful requests per minute over the time this key was active."""
        return 60.0 * self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in self.__dataclass_fields__},
            "elapsed_s": self.elapsed_s,
            "throughput_rpm": self.throughput_rpm,
        }


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
    by_status: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    queued: LatencyHistogram = field(default_factory=LatencyHistogram)
    total: LatencyHistogram = field(default_factory=LatencyHistogram)

    def on_attempt(
        self, *, status: int | None, rate_limited: bool, latency_s: float, retry: bool, at: float
    ) -> None:
        self.attempts += 1
        if retry:
            self.retries += 1
        if rate_limited:
            self.rate_limited += 1
        self.by_status["none" if status is None else str(status)] += 1
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
    ) -> None:
        self.requests += 1
        self.cost_usd = (
            None if cost_usd is None or self.cost_usd is None else self.cost_usd + cost_usd
        )
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self.by_outcome[outcome] += 1
        self.total.add(total_s)
        self.queued.add(queued_s)
        self.tokens_estimated += tokens_estimated
        self.prompt_tokens += prompt_tokens or 0
        self.completion_tokens += completion_tokens or 0
        self.first_at = min(self.first_at, at - total_s)
        self.last_at = max(self.last_at, at)

    def snapshot(
        self,
        *,
        concurrency_limit: int,
        peak_in_flight: int,
        rpm_limit: float | None,
        tpm_limit: float | None,
        cooldowns: int,
    ) -> StatsSnapshot:
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
            queued_p50_s=self.queued.quantile(0.5),
            queued_p95_s=self.queued.quantile(0.95),
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
        )
