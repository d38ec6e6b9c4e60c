"""Prometheus metrics for a :class:`~pacekeeper.Governor`: a collector you register.

::

    import prometheus_client
    from pacekeeper.report.prometheus import GovernorCollector

    gov = pacekeeper.Governor()
    prometheus_client.REGISTRY.register(GovernorCollector(gov))   # or any CollectorRegistry
    prometheus_client.start_http_server(9464)

The collector is a :class:`~pacekeeper.RecordHook` (it adds itself to ``gov.hooks``): counters
and histograms are fed by the records of attempts and requests as they end. Gauges are read
from the governor's live lanes at each scrape. Every series is labelled by ``route`` (the URL
path) and ``model`` (empty when the request named none).

=================================================  ============================================
``pacekeeper_requests_total``                      requests ended, by ``status`` (the final
                                                   HTTP status, ``none`` without an answer) and
                                                   ``outcome`` (``ok``, ``rate_limited``,
                                                   ``deadline_exceeded``, ``cancelled``...)
``pacekeeper_attempts_total``                      attempts (sends), by ``status``, ``outcome``
``pacekeeper_retries_total``                       attempts after the first
``pacekeeper_rate_limited_total``                  429 rate limits received from the upstream
``pacekeeper_tokens_total``                        tokens the upstream reported, by ``type``
                                                   (``prompt``, ``completion``)
``pacekeeper_cost_usd_total``                      USD the answers cost at the model's price
                                                   (models without a known price are absent)
``pacekeeper_spend_usd``                           gauge, under a spend cap: USD by ``state``
                                                   (``spent``, ``reserved``, ``cap``)
``pacekeeper_request_duration_seconds``            histogram: arrival to final answer (streams:
                                                   to their end), queueing and retries included
``pacekeeper_attempt_duration_seconds``            histogram: one attempt, send to answer
``pacekeeper_queue_wait_seconds``                  histogram: time a request waited for
                                                   admission, over all its attempts, also by
                                                   ``priority`` (its class) and ``tenant``
                                                   (empty when none was named)
``pacekeeper_queue_depth``                         gauge: requests waiting for admission now
``pacekeeper_in_flight``                           gauge: requests sent and not yet answered
``pacekeeper_concurrency_limit``                   gauge: the concurrency limit in force
``pacekeeper_limit_requests_per_minute``           gauge: the rpm limit in force (configured or
                                                   learned; absent while unknown)
``pacekeeper_limit_tokens_per_minute``             gauge: the tpm limit in force
``pacekeeper_cooldown_remaining_seconds``          gauge: time until the gate closed by a 429
                                                   opens again (0 when open)
=================================================  ============================================

Tenant names come from callers (``tenant=``, the proxy's tokens), so the exporter tracks at
most ``max_tenants`` of them (32 by default; the names given in ``tenants=`` always): later
ones are counted under ``tenant="other"``, keeping the number of series bounded.

prometheus_client is an optional dependency (``pip install 'pacekeeper[prometheus]'``); it is
imported when a collector is made, and its absence is an ImportError that says so. Records
carry no keys, headers or prompts, so neither do the metrics.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pacekeeper.core.stats import DEFAULT_MAX_TENANTS, TenantNames

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pacekeeper.core.governor import Governor
    from pacekeeper.core.records import AttemptRecord, RequestRecord

__all__ = [
    "DURATION_BUCKETS",
    "QUEUE_BUCKETS",
    "GovernorCollector",
    "require_prometheus_client",
]

DURATION_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Bucket bounds (seconds) of the duration histograms: LLM answers take 0.1 s to minutes."""

QUEUE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Bucket bounds (seconds) of the queue-wait histogram: most requests wait not at all."""

_LANE = ("route", "model")
_LABELS_CACHED = 4096  # label sets of records kept (routes x models x statuses x outcomes)
_WAIT = (*_LANE, "priority", "tenant")


def require_prometheus_client() -> ModuleType:
    """``prometheus_client.core`` (the metric families), or an ImportError that says how to
    install it."""
    try:
        import prometheus_client.core
    except ImportError as exc:
        raise ImportError(
            "pacekeeper's Prometheus exporter needs prometheus_client: "
            "pip install 'pacekeeper[prometheus]'"
        ) from exc
    return prometheus_client.core


class _Histogram:
    """Cumulative-on-read bucket counts of one label set (the caller holds the lock and
    counts a value in ``counts[bisect_left(bounds, value)]``: Prometheus buckets are "less
    than or equal", a value on a bound belongs to it)."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)  # the last one is +Inf
        self.sum = 0.0

    def cumulative(self, bounds: Sequence[float]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*bounds, math.inf), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == math.inf else _float_text(bound), total))
        return out


def _float_text(value: float) -> str:
    return repr(float(value))


def _model(model: str | None) -> str:
    return model if model is not None else ""


def _status(status: int | None) -> str:
    return str(status) if status is not None else "none"


class GovernorCollector:
    """A Prometheus collector for one :class:`~pacekeeper.Governor`.

    Making it adds it to ``governor.hooks`` (``attach=False`` leaves that to you); register it
    with ``prometheus_client.REGISTRY.register(collector)`` or with your own
    ``CollectorRegistry``. ``namespace`` prefixes every metric name. Hooks run inline on the
    request path: each record costs a lock and a few dictionary updates. When it is the
    governor's only hook (and the ``pacekeeper`` log is below INFO), a successful request is
    counted from its values (:meth:`count_answer`) and no record is built for it.

    >>> from pacekeeper import Governor
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> gov = Governor()
    >>> registry.register(GovernorCollector(gov))
    >>> b"pacekeeper_requests_total{" in generate_latest(registry)  # nothing ended yet
    False
    >>> _ = gov.lane("/v1/chat/completions", "gpt-4o-mini")
    >>> text = generate_latest(registry).decode()
    >>> print(next(line for line in text.splitlines() if line.startswith("pacekeeper_in_flight")))
    pacekeeper_in_flight{model="gpt-4o-mini",route="/v1/chat/completions"} 0.0
    """

    def __init__(
        self,
        governor: Governor,
        *,
        namespace: str = "pacekeeper",
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        queue_buckets: Sequence[float] = QUEUE_BUCKETS,
        attach: bool = True,
        max_tenants: int = DEFAULT_MAX_TENANTS,
        tenants: Iterable[str] = (),
    ) -> None:
        self._core = require_prometheus_client()
        for name, bounds in (
            ("duration_buckets", duration_buckets),
            ("queue_buckets", queue_buckets),
        ):
            if not bounds or list(bounds) != sorted(set(bounds)) or not math.isfinite(bounds[-1]):
                raise ValueError(f"{name} must be finite, strictly increasing bounds")
        self.governor = governor
        self.namespace = namespace
        self._duration_bounds = tuple(float(b) for b in duration_buckets)
        self._queue_bounds = tuple(float(b) for b in queue_buckets)
        self._lock = threading.Lock()
        # (route, model, status, outcome) -> count
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self._attempts: dict[tuple[str, str, str, str], int] = {}
        # (route, model) -> count
        self._retries: dict[tuple[str, str], int] = {}
        self._rate_limited: dict[tuple[str, str], int] = {}
        self._prompt_tokens: dict[tuple[str, str], int] = {}
        self._completion_tokens: dict[tuple[str, str], int] = {}
        self._cost_usd: dict[tuple[str, str], float] = {}
        self._request_s: dict[tuple[str, str], _Histogram] = {}
        self._attempt_s: dict[tuple[str, str], _Histogram] = {}
        # (route, model, priority, tenant) -> histogram
        self._queue_s: dict[tuple[str, str, str, str], _Histogram] = {}
        # (route, model, status, outcome) as records carry them -> as labels
        self._label_cache: dict[
            tuple[str, str | None, int | None, str], tuple[str, str, str, str]
        ] = {}
        # The tenants configured on the governor (their weights) always get their own series.
        known = {*tenants, *getattr(governor, "tenant_weights", {})}
        self._tenants = TenantNames(max_tenants=max_tenants, known=known)
        if attach:
            governor.hooks.append(self)

    def detach(self) -> None:
        """Stop receiving records (the gauges still read the governor's lanes)."""
        if self in self.governor.hooks:
            self.governor.hooks.remove(self)

    # -- RecordHook ------------------------------------------------------------------------

    # Per record: one lookup of its labels (made once per route, model, status and outcome)
    # and the histograms' buckets counted inline; a hook runs inline on every request.

    def _labels(
        self, route: str, model: str | None, status: int | None, outcome: str
    ) -> tuple[str, str, str, str]:
        raw = (route, model, status, outcome)
        labels = self._label_cache.get(raw)
        if labels is None:
            labels = (route, _model(model), _status(status), outcome)
            if len(self._label_cache) < _LABELS_CACHED:
                self._label_cache[raw] = labels
        return labels

    def on_attempt(self, record: AttemptRecord) -> None:
        key = self._label_cache.get((record.route, record.model, record.status, record.outcome))
        if key is None:
            key = self._labels(record.route, record.model, record.status, record.outcome)
        with self._lock:
            self._add_attempt(key, record.attempt, record.latency_s)

    def on_request(self, record: RequestRecord) -> None:
        key = self._label_cache.get((record.route, record.model, record.status, record.outcome))
        if key is None:
            key = self._labels(record.route, record.model, record.status, record.outcome)
        with self._lock:
            self._add_request(
                key,
                total_s=record.total_s,
                queued_s=record.queued_s,
                prompt_tokens=record.prompt_tokens,
                completion_tokens=record.completion_tokens,
                cost_usd=record.cost_usd,
                priority=record.priority,
                tenant=record.tenant,
            )

    def count_answer(
        self,
        route: str,
        model: str | None,
        status: int | None,
        *,
        attempt: int,
        latency_s: float,
        total_s: float,
        queued_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost_usd: float | None,
        priority: str,
        tenant: str | None,
    ) -> None:
        """A successful request, counted as its attempt's record and its own would be
        (:class:`~pacekeeper.core.records.AnswerCounter`: the governor builds neither record
        when every hook counts this way)."""
        key = self._label_cache.get((route, model, status, "ok"))
        if key is None:
            key = self._labels(route, model, status, "ok")
        with self._lock:
            self._add_attempt(key, attempt, latency_s)
            self._add_request(
                key,
                total_s=total_s,
                queued_s=queued_s,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost_usd,
                priority=priority,
                tenant=tenant,
            )

    # Under the lock: one attempt or request counted, by its labels (route, model, status,
    # outcome).

    def _add_attempt(self, key: tuple[str, str, str, str], attempt: int, latency_s: float) -> None:
        lane = key[:2]
        self._attempts[key] = self._attempts.get(key, 0) + 1
        if attempt > 1:
            self._retries[lane] = self._retries.get(lane, 0) + 1
        if key[3] == "rate_limited":
            self._rate_limited[lane] = self._rate_limited.get(lane, 0) + 1
        histogram = self._attempt_s.get(lane)
        if histogram is None:
            histogram = self._attempt_s[lane] = _Histogram(len(self._duration_bounds))
        histogram.counts[bisect.bisect_left(self._duration_bounds, latency_s)] += 1
        histogram.sum += latency_s

    def _add_request(
        self,
        key: tuple[str, str, str, str],
        *,
        total_s: float,
        queued_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost_usd: float | None,
        priority: str,
        tenant: str | None,
    ) -> None:
        lane = key[:2]
        self._requests[key] = self._requests.get(key, 0) + 1
        if prompt_tokens:
            self._prompt_tokens[lane] = self._prompt_tokens.get(lane, 0) + prompt_tokens
        if completion_tokens:
            self._completion_tokens[lane] = self._completion_tokens.get(lane, 0) + completion_tokens
        if cost_usd is not None:
            self._cost_usd[lane] = self._cost_usd.get(lane, 0.0) + cost_usd
        histogram = self._request_s.get(lane)
        if histogram is None:
            histogram = self._request_s[lane] = _Histogram(len(self._duration_bounds))
        histogram.counts[bisect.bisect_left(self._duration_bounds, total_s)] += 1
        histogram.sum += total_s
        if tenant is not None:
            tenant = self._tenants.label(tenant)
        wait = (*lane, priority, tenant if tenant is not None else "")
        histogram = self._queue_s.get(wait)
        if histogram is None:
            histogram = self._queue_s[wait] = _Histogram(len(self._queue_bounds))
        histogram.counts[bisect.bisect_left(self._queue_bounds, queued_s)] += 1
        histogram.sum += queued_s

    # -- Collector -------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        """The metric families without samples (so registering never runs a collection)."""
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counters = (
                dict(self._requests),
                dict(self._attempts),
                dict(self._retries),
                dict(self._rate_limited),
                dict(self._prompt_tokens),
                dict(self._completion_tokens),
            )
            costs = dict(self._cost_usd)
            histograms = (
                {
                    k: (h.cumulative(self._duration_bounds), h.sum)
                    for k, h in self._request_s.items()
                },
                {
                    k: (h.cumulative(self._duration_bounds), h.sum)
                    for k, h in self._attempt_s.items()
                },
                {k: (h.cumulative(self._queue_bounds), h.sum) for k, h in self._queue_s.items()},
            )
        return self._families(counters, histograms, costs)

    def _families(
        self,
        counters: tuple[dict[Any, int], ...] | None = None,
        histograms: tuple[dict[Any, tuple[list[tuple[str, float]], float]], ...] | None = None,
        costs: dict[tuple[str, str], float] | None = None,
    ) -> Iterator[Metric]:
        core = self._core
        ns = self.namespace
        by_status = (*_LANE, "status", "outcome")
        requests = core.CounterMetricFamily(
            f"{ns}_requests", "Requests ended, by final HTTP status and outcome.", labels=by_status
        )
        attempts = core.CounterMetricFamily(
            f"{ns}_attempts", "Attempts sent, by HTTP status and outcome.", labels=by_status
        )
        retries = core.CounterMetricFamily(
            f"{ns}_retries", "Attempts after the first (retries).", labels=_LANE
        )
        rate_limited = core.CounterMetricFamily(
            f"{ns}_rate_limited", "429 rate limits received from the upstream.", labels=_LANE
        )
        tokens = core.CounterMetricFamily(
            f"{ns}_tokens",
            "Tokens the upstream reported in usage, by type (prompt, completion).",
            labels=(*_LANE, "type"),
        )
        cost = core.CounterMetricFamily(
            f"{ns}_cost_usd",
            "USD the answers cost, from their usage at the model's price (genai-prices or "
            "pacekeeper.toml); absent for models without a known price.",
            labels=_LANE,
        )
        spend = core.GaugeMetricFamily(
            f"{ns}_spend_usd",
            "Under a spend cap: USD spent, reserved for requests in flight, and the cap.",
            labels=("state",),
        )
        request_s = core.HistogramMetricFamily(
            f"{ns}_request_duration_seconds",
            "Time from arrival to the final answer (streams: to their end), queueing and "
            "retries included.",
            labels=_LANE,
        )
        attempt_s = core.HistogramMetricFamily(
            f"{ns}_attempt_duration_seconds",
            "Time of one attempt, from sending to the answer (streams: to their end).",
            labels=_LANE,
        )
        queue_s = core.HistogramMetricFamily(
            f"{ns}_queue_wait_seconds",
            "Time a request waited for admission (cooldown, pacing, a free slot), all attempts, "
            "by priority class and tenant.",
            labels=_WAIT,
        )
        depth = core.GaugeMetricFamily(
            f"{ns}_queue_depth", "Requests waiting for admission.", labels=_LANE
        )
        in_flight = core.GaugeMetricFamily(
            f"{ns}_in_flight",
            "Requests sent and not yet answered (streams: not yet ended).",
            labels=_LANE,
        )
        limit = core.GaugeMetricFamily(
            f"{ns}_concurrency_limit", "The concurrency limit in force.", labels=_LANE
        )
        rpm = core.GaugeMetricFamily(
            f"{ns}_limit_requests_per_minute",
            "The requests-per-minute limit in force (configured or learned from headers).",
            labels=_LANE,
        )
        tpm = core.GaugeMetricFamily(
            f"{ns}_limit_tokens_per_minute",
            "The tokens-per-minute limit in force (configured or learned from headers).",
            labels=_LANE,
        )
        cooldown = core.GaugeMetricFamily(
            f"{ns}_cooldown_remaining_seconds",
            "Time until the gate closed by a 429 opens again (0 when open).",
            labels=_LANE,
        )
        if counters is not None and histograms is not None:
            req, att, ret, lim, prompt, completion = counters
            for family, counts in (
                (requests, req),
                (attempts, att),
                (retries, ret),
                (rate_limited, lim),
            ):
                for labels, value in sorted(counts.items()):
                    family.add_metric(labels, value)
            for kind, counts in (("prompt", prompt), ("completion", completion)):
                for labels, value in sorted(counts.items()):
                    tokens.add_metric((*labels, kind), value)
            for labels, usd in sorted((costs or {}).items()):
                cost.add_metric(labels, usd)
            if self.governor.spend is not None:
                totals = self.governor.spend.totals()
                spend.add_metric(("spent",), totals.spent_usd)
                spend.add_metric(("reserved",), totals.reserved_usd)
                spend.add_metric(("cap",), totals.cap_usd)
            for family, series in zip((request_s, attempt_s, queue_s), histograms, strict=True):
                for labels, (buckets, total) in sorted(series.items()):
                    family.add_metric(labels, buckets, total)
            gov = self.governor
            now = gov.clock()
            for lane in sorted(gov.lanes, key=lambda lane: (lane.key[0], _model(lane.key[1]))):
                labels = (lane.key[0], _model(lane.key[1]))
                depth.add_metric(labels, max(0, lane.queued))
                in_flight.add_metric(labels, lane.slots.in_flight)
                limit.add_metric(labels, lane.slots.limit)
                if lane.rpm_limit is not None:
                    rpm.add_metric(labels, lane.rpm_limit)
                if lane.tpm_limit is not None:
                    tpm.add_metric(labels, lane.tpm_limit)
                cooldown.add_metric(labels, lane.cooldown.remaining_s(now=now))
        yield from (
            requests,
            attempts,
            retries,
            rate_limited,
            tokens,
            cost,
            spend,
            request_s,
            attempt_s,
            queue_s,
            depth,
            in_flight,
            limit,
            rpm,
            tpm,
            cooldown,
        )

    def __repr__(self) -> str:
        return f"<GovernorCollector namespace={self.namespace!r} {self.governor!r}>"
