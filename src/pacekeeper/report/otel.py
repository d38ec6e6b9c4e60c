"""OpenTelemetry spans and metrics from pacekeeper's records, with the GenAI semantic
conventions (the ``pacekeeper[otel]`` extra).

:class:`OpenTelemetryHook` is a :class:`~pacekeeper.RecordHook`::

    from pacekeeper.report.otel import OpenTelemetryHook

    gov = Governor(hooks=[OpenTelemetryHook(server_address="api.openai.com")])

**Spans.** One span per request (kind CLIENT), named ``"{gen_ai.operation.name}
{gen_ai.request.model}"`` (e.g. ``chat gpt-4o-mini``), from the moment it asked for admission
to its final answer, so queueing and retries are inside it. It carries
``gen_ai.operation.name``, ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``http.response.status_code`` (of the final attempt),
``server.address``/``server.port``, ``pacekeeper.cost_usd`` (its cost at the model's price,
absent when unknown) and, when the request failed, ``error.type`` and an ERROR status. Each
attempt becomes a span event ``pacekeeper.attempt`` at its answer (or, with
``attempt_spans=True``, a child span over the time it was in flight). Spans are made after
the fact from the records' times, so they are exact however long a request queued.

**Metrics.** ``gen_ai.client.token.usage`` (histogram, ``{token}``, per successful request,
``gen_ai.token.type`` ``input``/``output``) and ``gen_ai.client.operation.duration``
(histogram, seconds, per request, queueing and retries included; ``error.type`` on failures),
with the bucket boundaries the conventions advise; and two of pacekeeper's own:
``pacekeeper.client.attempt.duration`` (seconds from sending to the answer, per attempt, with
``http.response.status_code`` and ``pacekeeper.outcome``) and
``pacekeeper.client.queue.duration`` (seconds each attempt waited for admission), and
``pacekeeper.client.cost`` (a counter of USD, per request whose model has a known price).

Records carry no request id, so attempts are matched to their request by the caller's tag
(the batch runner's custom_id) when there is one; without it, by thread and timing (a request's
last attempt is recorded just before it on the same thread; an earlier attempt ends
``retry_in_s`` before the next one asks for admission). Unmatched attempts are dropped after
``max_pending``. Records never contain prompts, answers, headers or keys, and neither do spans.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pacekeeper.core.records import AttemptRecord, RequestRecord
from pacekeeper.report._extras import require

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["OpenTelemetryHook", "operation_name"]

_PURPOSE = "OpenTelemetryHook"
_TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
_DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip


def operation_name(route: str) -> str:
    """``gen_ai.operation.name`` for an API route.

    >>> [operation_name(r) for r in ("/v1/chat/completions", "/v1/embeddings",
    ...     "/v1/completions", "/v1/messages", "/v1/responses", "/v1/images/generations")]
    ['chat', 'embeddings', 'text_completion', 'chat', 'chat', 'generations']
    """
    path = route.split("?", 1)[0].rstrip("/").lower()
    if "embedding" in path:
        return "embeddings"
    if path.endswith(("/chat/completions", "/messages", "/responses")):
        return "chat"
    if path.endswith("/completions"):
        return "text_completion"
    if ":generatecontent" in path or ":streamgeneratecontent" in path:
        return "generate_content"
    return path.rsplit("/", 1)[-1] or "chat"


def _server(address: str | None) -> tuple[str | None, int | None]:
    """(host, port) from a host, host:port or URL.

    >>> _server("https://api.openai.com/v1"), _server("localhost:8000"), _server(None)
    (('api.openai.com', None), ('localhost', 8000), (None, None))
    """
    if not address:
        return None, None
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname or address, port


def _ns(epoch_s: float) -> int:
    return round(epoch_s * 1e9)


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None}


_PendingKey = tuple[str, "str | None", "str | None"]


class OpenTelemetryHook:
    """Emits OpenTelemetry spans and metrics for every request (see the module docstring).

    ``tracer_provider`` and ``meter_provider`` default to the global ones. ``server_address``
    (a host, ``host:port`` or the base URL) fills ``server.address``/``server.port``;
    ``provider_name`` fills ``gen_ai.provider.name`` (e.g. ``"openai"``) when given.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        server_address: str | None = None,
        *,
        provider_name: str | None = None,
        attempt_spans: bool = False,
        max_pending: int = 10_000,
    ) -> None:
        trace = require("opentelemetry.trace", extra="otel", purpose=_PURPOSE)
        metrics = require("opentelemetry.metrics", extra="otel", purpose=_PURPOSE)
        from pacekeeper import __version__

        self._trace = trace
        self._tracer = trace.get_tracer("pacekeeper", __version__, tracer_provider)
        meter = metrics.get_meter("pacekeeper", __version__, meter_provider)
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration (queueing and retries included)",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._attempt_duration = meter.create_histogram(
            "pacekeeper.client.attempt.duration",
            unit="s",
            description="Time from sending an attempt to its answer",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._queue_duration = meter.create_histogram(
            "pacekeeper.client.queue.duration",
            unit="s",
            description="Time an attempt waited for admission (pacing, concurrency, cooldown)",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._cost = meter.create_counter(
            "pacekeeper.client.cost",
            unit="USD",
            description="What requests cost, from their usage at the model's price",
        )
        self.server_address, self.server_port = _server(server_address)
        self.provider_name = provider_name
        self.attempt_spans = attempt_spans
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pending: dict[_PendingKey, list[AttemptRecord]] = {}
        self._order: deque[tuple[_PendingKey, AttemptRecord]] = deque()

    # -- attributes -----------------------------------------------------------------------

    def _common(self, route: str, model: str | None) -> dict[str, Any]:
        return _clean(
            {
                "gen_ai.operation.name": operation_name(route),
                "gen_ai.request.model": model,
                "gen_ai.provider.name": self.provider_name,
                "server.address": self.server_address,
                "server.port": self.server_port,
            }
        )

    # -- hook -----------------------------------------------------------------------------

    def on_attempt(self, record: AttemptRecord) -> None:
        common = self._common(record.route, record.model)
        self._attempt_duration.record(
            record.latency_s,
            _clean(
                {
                    **common,
                    "http.response.status_code": record.status,
                    "pacekeeper.outcome": record.outcome,
                }
            ),
        )
        self._queue_duration.record(record.queued_s, common)
        if record.retry_in_s is None:
            self._local.last = record  # its request record follows on this thread
            return
        key = (record.route, record.model, record.tag)
        with self._lock:
            self._pending.setdefault(key, []).append(record)
            self._order.append((key, record))
            while len(self._order) > self.max_pending:
                old_key, old = self._order.popleft()
                waiting = self._pending.get(old_key)
                if waiting is not None and old in waiting:
                    waiting.remove(old)
                    if not waiting:
                        del self._pending[old_key]

    def on_request(self, record: RequestRecord) -> None:
        attempts = self._attempts_of(record)
        common = self._common(record.route, record.model)
        error_type = None if record.ok else (record.error_type or record.outcome)
        self._duration.record(record.total_s, _clean({**common, "error.type": error_type}))
        if record.cost_usd is not None:
            self._cost.add(record.cost_usd, common)
        if record.ok:
            if record.prompt_tokens is not None:
                self._token_usage.record(
                    record.prompt_tokens, {**common, "gen_ai.token.type": "input"}
                )
            if record.completion_tokens is not None:
                self._token_usage.record(
                    record.completion_tokens, {**common, "gen_ai.token.type": "output"}
                )
        self._span(record, attempts, common, error_type)

    # -- matching attempts to their request -----------------------------------------------

    def _attempts_of(self, record: RequestRecord) -> list[AttemptRecord]:
        last: AttemptRecord | None = getattr(self._local, "last", None)
        self._local.last = None
        final = (
            last
            if last is not None
            and (last.route, last.model, last.tag) == (record.route, record.model, record.tag)
            and last.attempt == record.attempts
            else None
        )
        chain = [final] if final is not None else []
        earlier = record.attempts - 1 if final is not None else record.attempts
        if earlier <= 0:
            return chain
        key = (record.route, record.model, record.tag)
        with self._lock:
            waiting = self._pending.get(key)
            if not waiting:
                return chain
            if record.tag is not None:
                found = [a for a in waiting if a.attempt <= earlier]
            else:
                found = _by_timing(waiting, earlier, final, record)
            for a in found:
                waiting.remove(a)
            if not waiting:
                del self._pending[key]
        return sorted(found, key=lambda a: a.attempt) + chain

    # -- spans ----------------------------------------------------------------------------

    def _span(
        self,
        record: RequestRecord,
        attempts: list[AttemptRecord],
        common: Mapping[str, Any],
        error_type: str | None,
    ) -> None:
        trace = self._trace
        operation = common["gen_ai.operation.name"]
        name = f"{operation} {record.model}" if record.model else operation
        attributes = _clean(
            {
                **common,
                "gen_ai.usage.input_tokens": record.prompt_tokens,
                "gen_ai.usage.output_tokens": record.completion_tokens,
                "http.response.status_code": record.status,
                "error.type": error_type,
                "pacekeeper.route": record.route,
                "pacekeeper.outcome": record.outcome,
                "pacekeeper.attempts": record.attempts,
                "pacekeeper.queued_s": record.queued_s,
                "pacekeeper.tokens_estimated": record.tokens_estimated,
                "pacekeeper.cost_usd": record.cost_usd,
                "pacekeeper.tag": record.tag,
                "pacekeeper.request_id": record.request_id,
            }
        )
        start = record.started_at
        end = start + record.total_s
        span: Span = self._tracer.start_span(
            name,
            kind=trace.SpanKind.CLIENT,
            attributes=attributes,
            start_time=_ns(start),
        )
        try:
            context = trace.set_span_in_context(span)
            for attempt in attempts:
                attempt_attributes = _clean(
                    {
                        "pacekeeper.attempt": attempt.attempt,
                        "pacekeeper.outcome": attempt.outcome,
                        "http.response.status_code": attempt.status,
                        "error.type": _attempt_error_type(attempt),
                        "pacekeeper.error": attempt.error,
                        "pacekeeper.queued_s": attempt.queued_s,
                        "pacekeeper.latency_s": attempt.latency_s,
                        "pacekeeper.retry_in_s": attempt.retry_in_s,
                        "pacekeeper.in_flight": attempt.in_flight,
                        "pacekeeper.concurrency_limit": attempt.concurrency_limit,
                        "pacekeeper.request_id": attempt.request_id,
                    }
                )
                answered = attempt.started_at + attempt.latency_s
                if self.attempt_spans:
                    child = self._tracer.start_span(
                        "pacekeeper.attempt",
                        context=context,
                        kind=trace.SpanKind.INTERNAL,
                        attributes=attempt_attributes,
                        start_time=_ns(attempt.started_at),
                    )
                    if attempt.outcome != "ok":
                        child.set_status(trace.Status(trace.StatusCode.ERROR, attempt.error))
                    child.end(end_time=_ns(answered))
                else:
                    span.add_event(
                        "pacekeeper.attempt", attempt_attributes, timestamp=_ns(answered)
                    )
            if not record.ok:
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, (record.error or record.outcome)[:500])
                )
        finally:
            span.end(end_time=_ns(end))


def _attempt_error_type(attempt: AttemptRecord) -> str | None:
    if attempt.outcome == "ok":
        return None
    return str(attempt.status) if attempt.status is not None else attempt.outcome


def _by_timing(
    waiting: list[AttemptRecord],
    earlier: int,
    final: AttemptRecord | None,
    record: RequestRecord,
) -> list[AttemptRecord]:
    """Untagged: walk back from the final attempt. Attempt k was retried after
    ``retry_in_s``, so it ended that long before attempt k+1 asked for admission."""
    found: list[AttemptRecord] = []
    if final is not None:
        next_ask = final.started_at - final.queued_s
    else:
        next_ask = record.started_at + record.total_s
    request_start = record.started_at - 0.5
    for k in range(earlier, 0, -1):
        best: AttemptRecord | None = None
        best_gap = math.inf
        for a in waiting:
            if a.attempt != k or a in found or a.started_at < request_start:
                continue
            gap = abs(a.started_at + a.latency_s + (a.retry_in_s or 0.0) - next_ask)
            if gap < best_gap:
                best, best_gap = a, gap
        if best is None or best_gap > max(1.0, 0.5 * (best.retry_in_s or 0.0)):
            break
        found.append(best)
        next_ask = best.started_at - best.queued_s
    return found
