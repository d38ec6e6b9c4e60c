"""The proxy's own metrics, beside the governor's: what it answered and what it refused."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pacekeeper.core.governor import Governor

__all__ = ["Metrics", "ProxyCounters", "build_metrics"]

logger = logging.getLogger("pacekeeper.proxy")


BACK_PRESSURE = frozenset(
    {
        "proxy_queue_full",
        "proxy_queue_timeout",
        "proxy_buffer_full",
        "proxy_shutting_down",
        "request_timeout",
        "request_evicted",
    }
)
"""Refusals that mean the proxy is turning work away (not a client's mistake)."""


class RecentCounts:
    """Requests received and refused (for back-pressure) per second, over the last
    ``window_s`` seconds: what /healthz judges the proxy's health by."""

    __slots__ = ("_clock", "_received", "_refused", "_seconds", "window_s")

    def __init__(self, window_s: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._seconds = [-1] * window_s
        self._received = [0] * window_s
        self._refused = [0] * window_s

    def _slot(self) -> int:
        second = int(self._clock())
        i = second % self.window_s
        if self._seconds[i] != second:
            self._seconds[i] = second
            self._received[i] = self._refused[i] = 0
        return i

    def received(self) -> None:
        self._received[self._slot()] += 1

    def refused(self) -> None:
        self._refused[self._slot()] += 1

    def totals(self, last_s: int) -> tuple[int, int]:
        """(received, refused) over the last ``last_s`` whole seconds and this one."""
        now = int(self._clock())
        received = refused = 0
        for i, second in enumerate(self._seconds):
            if 0 <= now - second <= last_s:
                received += self._received[i]
                refused += self._refused[i]
        return received, refused


class ProxyCounters:
    """Counts kept on the proxy's event loop (plain ints: read from any thread)."""

    __slots__ = (
        "buffered_bytes",
        "disconnected",
        "draining",
        "in_progress",
        "recent",
        "refused",
        "responses",
        "upstream_errors",
    )

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.recent = RecentCounts(clock=clock)
        """Requests received and refused lately (for /healthz)."""
        self.responses: dict[int, int] = {}
        """Responses sent to clients, by status (the upstream's and the proxy's own)."""
        self.refused: dict[str, int] = {}
        """Requests the proxy answered itself instead of forwarding, by reason (error code)."""
        self.upstream_errors: dict[str, int] = {}
        """Requests that failed for want of an upstream answer, by kind."""
        self.disconnected = 0
        """Requests whose client left before the answer was complete (the request was
        cancelled wherever it was: queued, sent or streaming)."""
        self.in_progress = 0
        self.buffered_bytes = 0
        self.draining = False

    def responded(self, status: int) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if reason in BACK_PRESSURE:
            self.recent.refused()

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1


class _ProxyCollector:
    def __init__(self, core: Any, counters: ProxyCounters, namespace: str) -> None:
        self._core = core
        self._counters = counters
        self._ns = namespace

    def describe(self) -> list[Metric]:
        return list(self._families(samples=False))

    def collect(self) -> Iterator[Metric]:
        return self._families(samples=True)

    def _families(self, *, samples: bool) -> Iterator[Metric]:
        core, c, ns = self._core, self._counters, self._ns
        responses = core.CounterMetricFamily(
            f"{ns}_proxy_responses",
            "Responses the proxy sent to its clients, by HTTP status.",
            labels=("status",),
        )
        refused = core.CounterMetricFamily(
            f"{ns}_proxy_refused",
            "Requests the proxy answered itself instead of forwarding, by reason.",
            labels=("reason",),
        )
        upstream = core.CounterMetricFamily(
            f"{ns}_proxy_upstream_errors",
            "Requests that got no usable upstream answer (unreachable, timeout, broken stream).",
            labels=("kind",),
        )
        disconnected = core.CounterMetricFamily(
            f"{ns}_proxy_client_disconnects",
            "Requests whose client left before the answer was complete (then cancelled).",
        )
        in_progress = core.GaugeMetricFamily(
            f"{ns}_proxy_requests_in_progress", "Requests being forwarded now."
        )
        buffered = core.GaugeMetricFamily(
            f"{ns}_proxy_buffered_bytes", "Request body bytes held by the proxy now."
        )
        draining = core.GaugeMetricFamily(
            f"{ns}_proxy_draining", "1 while the proxy shuts down (draining), else 0."
        )
        if samples:
            for status, count in sorted(dict(c.responses).items()):
                responses.add_metric((str(status),), count)
            for reason, count in sorted(dict(c.refused).items()):
                refused.add_metric((reason,), count)
            for kind, count in sorted(dict(c.upstream_errors).items()):
                upstream.add_metric((kind,), count)
            disconnected.add_metric((), c.disconnected)
            in_progress.add_metric((), c.in_progress)
            buffered.add_metric((), c.buffered_bytes)
            draining.add_metric((), 1 if c.draining else 0)
        yield from (responses, refused, upstream, disconnected, in_progress, buffered, draining)


class Metrics:
    """The proxy's CollectorRegistry (the governor's and the proxy's own metrics)."""

    def __init__(self, registry: Any, collector: Any, encoder: Callable[[str], Any]) -> None:
        self.registry = registry
        self._collector = collector
        self._choose_encoder = encoder

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scrape's Accept header: (body, content type)."""
        encode, content_type = self._choose_encoder(accept or "")
        body: bytes = encode(self.registry)
        return body, content_type

    def detach(self) -> None:
        """Stop feeding the governor's records to the collector."""
        self._collector.detach()


def build_metrics(
    governor: Governor,
    counters: ProxyCounters,
    *,
    namespace: str = "pacekeeper",
    tenants: Iterable[str] = (),
) -> Metrics | None:
    """The proxy's metrics; None (with a warning) without prometheus_client. ``tenants``
    (the configured ones) always get their own series; others share the bounded rest."""
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder

        from pacekeeper.report.prometheus import GovernorCollector, require_prometheus_client
    except ImportError:
        logger.warning(
            "GET /metrics is off: prometheus_client is not installed "
            "(pip install 'pacekeeper[prometheus]')"
        )
        return None
    registry = CollectorRegistry(auto_describe=True)
    collector = GovernorCollector(governor, namespace=namespace, tenants=tenants)
    registry.register(collector)
    registry.register(_ProxyCollector(require_prometheus_client(), counters, namespace))
    return Metrics(registry, collector, choose_encoder)
