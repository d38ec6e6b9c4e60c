"""OpenTelemetryHook against the SDK's in-memory exporter and reader: GenAI semantic-convention
attributes, spans at the records' own times, attempts matched to their request (by tag, and
by thread and timing through a real governor), and the token and duration histograms."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import pacekeeper
from pacekeeper import AttemptRecord, Governor, Limits, RequestRecord, RetryPolicy
from pacekeeper.report import MissingExtraError
from pacekeeper.report.otel import OpenTelemetryHook, operation_name

from .crafted import Run, simulate


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def hook(self, **kwargs: Any) -> OpenTelemetryHook:
        return OpenTelemetryHook(self.tracer_provider, self.meter_provider, **kwargs)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        assert data is not None
        points: list[HistogramDataPoint] = []
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        points.extend(p for p in metric.data.data_points)  # type: ignore[misc]
        return points


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def feed(hook: OpenTelemetryHook, records: list[AttemptRecord | RequestRecord]) -> None:
    for r in records:
        if isinstance(r, AttemptRecord):
            hook.on_attempt(r)
        else:
            hook.on_request(r)


def flaky(i: int, attempt: int) -> tuple[str, int | None, str] | None:
    if i % 4 == 0 and attempt == 1:
        return ("server_error", 500, "HTTP 500 server_error: boom")
    if i % 4 == 1 and attempt <= 2:
        return ("timeout", None, "ReadTimeout")
    if i == 2:
        return ("client_error", 400, "HTTP 400 invalid_request_error: bad")
    return None


def test_one_span_per_request_with_genai_attributes_and_the_attempts(otel: Otel) -> None:
    records = simulate(Run(requests=12, model="gpt-4o-mini", fault=flaky, concurrency=3))
    feed(otel.hook(server_address="https://api.openai.com/v1", provider_name="openai"), records)
    spans = {str(s.attributes["pacekeeper.tag"]): s for s in otel.finished() if s.attributes}
    requests = {str(r.tag): r for r in records if isinstance(r, RequestRecord)}
    assert spans.keys() == requests.keys()
    for tag, span in spans.items():
        request = requests[tag]
        assert span.name == "chat gpt-4o-mini"
        assert span.kind is SpanKind.CLIENT
        a = span.attributes or {}
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.request.model"] == "gpt-4o-mini"
        assert a["gen_ai.provider.name"] == "openai"
        assert a["server.address"] == "api.openai.com"
        assert a["http.response.status_code"] == request.status
        assert a["pacekeeper.attempts"] == request.attempts
        assert span.start_time == round(request.started_at * 1e9)
        assert span.end_time == round((request.started_at + request.total_s) * 1e9)
        events = [e for e in span.events if e.name == "pacekeeper.attempt"]
        assert [e.attributes["pacekeeper.attempt"] for e in events if e.attributes] == list(
            range(1, request.attempts + 1)
        )
        if request.ok:
            assert a["gen_ai.usage.input_tokens"] == request.prompt_tokens
            assert a["gen_ai.usage.output_tokens"] == request.completion_tokens
            assert "error.type" not in a
            assert span.status.status_code is StatusCode.UNSET
        else:
            assert a["error.type"] == "NonRetryableError"
            assert "gen_ai.usage.input_tokens" not in a
            assert span.status.status_code is StatusCode.ERROR
    first = spans["req-0"].events[0].attributes or {}
    assert first["error.type"] == "500"
    assert first["http.response.status_code"] == 500
    timeout = spans["req-1"].events[0].attributes or {}
    assert timeout["error.type"] == "timeout"
    assert "http.response.status_code" not in timeout


def test_attempts_as_child_spans(otel: Otel) -> None:
    records = simulate(Run(requests=4, fault=flaky))
    feed(otel.hook(attempt_spans=True), records)
    spans = otel.finished()
    parents = {s.context.span_id: s for s in spans if s.parent is None}
    children = [s for s in spans if s.parent is not None]
    assert len(parents) == 4
    assert len(children) == sum(1 for r in records if isinstance(r, AttemptRecord))
    for child in children:
        assert child.name == "pacekeeper.attempt"
        assert child.parent is not None
        parent = parents[child.parent.span_id]
        assert child.context.trace_id == parent.context.trace_id
        assert parent.start_time is not None
        assert parent.end_time is not None
        assert child.start_time is not None
        assert child.end_time is not None
        assert parent.start_time <= child.start_time <= child.end_time <= parent.end_time
        if (child.attributes or {})["pacekeeper.outcome"] != "ok":
            assert child.status.status_code is StatusCode.ERROR


def test_metrics_token_usage_and_durations(otel: Otel) -> None:
    records = simulate(Run(requests=10, prompt_tokens=100, completion_tokens=lambda i: 10 + i))
    feed(otel.hook(server_address="localhost:8000"), records)
    usage = otel.histogram("gen_ai.client.token.usage")
    by_type = {p.attributes["gen_ai.token.type"]: p for p in usage if p.attributes}
    assert by_type["input"].sum == 1000
    assert by_type["input"].count == 10
    assert by_type["output"].sum == sum(10 + i for i in range(10))
    assert by_type["input"].attributes is not None
    assert by_type["input"].attributes["server.address"] == "localhost"
    assert by_type["input"].attributes["server.port"] == 8000
    assert by_type["input"].attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert 64 in by_type["input"].explicit_bounds  # the conventions' advised buckets
    (duration,) = otel.histogram("gen_ai.client.operation.duration")
    assert duration.count == 10
    requests = [r for r in records if isinstance(r, RequestRecord)]
    assert duration.sum == pytest.approx(sum(r.total_s for r in requests))
    (attempts,) = otel.histogram("pacekeeper.client.attempt.duration")
    assert attempts.count == 10
    assert otel.histogram("pacekeeper.client.queue.duration")[0].count == 10


def test_failed_requests_carry_error_type_on_the_duration(otel: Otel) -> None:
    records = simulate(Run(requests=8, fault=flaky, max_attempts=2))
    feed(otel.hook(), records)
    types = {
        (p.attributes or {}).get("error.type"): p.count
        for p in otel.histogram("gen_ai.client.operation.duration")
    }
    assert types[None] == sum(1 for r in records if isinstance(r, RequestRecord) and r.ok)
    assert types["NonRetryableError"] == 1
    assert types["RetriesExhausted"] == 2  # i = 1 and 5: two timeouts, max_attempts 2


async def test_untagged_attempts_are_matched_by_thread_and_timing(otel: Otel) -> None:
    """Through a real governor: concurrent untagged requests with retries; every span gets
    exactly its own attempts."""

    class Overloaded(Exception):
        status_code = 503

    class Usage:
        prompt_tokens, completion_tokens = 20, 5

    class Reply:
        usage = Usage()

    failures = {i: i % 3 for i in range(24)}  # request i fails i % 3 times first

    def call_for(i: int) -> Any:
        async def call() -> Reply:
            await asyncio.sleep(0.001 * (i % 5))
            if failures[i]:
                failures[i] -= 1
                raise Overloaded("busy")
            return Reply()

        return call

    hook = otel.hook()
    gov = Governor(
        limits=Limits(concurrency=6),
        retry=RetryPolicy(max_attempts=5, retry_budget_initial=100, retry_budget_max=100),
        hooks=[hook],
    )
    pacekeeper.set_testing(True)
    try:
        await asyncio.gather(
            *(gov.run(call_for(i), route="/v1/chat/completions", model="m") for i in range(24))
        )
    finally:
        pacekeeper.set_testing(False)
    spans = otel.finished()
    assert len(spans) == 24
    for span in spans:
        attempts = (span.attributes or {})["pacekeeper.attempts"]
        numbers = [(e.attributes or {})["pacekeeper.attempt"] for e in span.events]
        assert numbers == list(range(1, int(str(attempts)) + 1))
        outcomes = [(e.attributes or {})["pacekeeper.outcome"] for e in span.events]
        assert outcomes == ["overloaded"] * (len(outcomes) - 1) + ["ok"]
    assert sorted(int(str((s.attributes or {})["pacekeeper.attempts"])) for s in spans) == sorted(
        i % 3 + 1 for i in range(24)
    )
    assert not hook._pending


def test_unmatched_attempts_do_not_pile_up(otel: Otel) -> None:
    hook = otel.hook(max_pending=10)
    for n in range(50):
        hook.on_attempt(
            AttemptRecord(
                route="/v1/chat/completions",
                model="m",
                attempt=1,
                outcome="server_error",
                status=500,
                started_at=1.0e9 + n,
                queued_s=0.0,
                latency_s=0.1,
                tokens_estimated=10,
                retry_in_s=1.0,
                tag=f"lost-{n}",
            )
        )
    assert sum(len(v) for v in hook._pending.values()) == 10
    assert len(hook._order) == 10


def test_operation_names_from_routes() -> None:
    assert operation_name("/v1/embeddings") == "embeddings"
    assert operation_name("/v1/chat/completions") == "chat"
    assert operation_name("/v1/completions") == "text_completion"
    assert operation_name("/v1beta/models/gemini-pro:generateContent") == "generate_content"


def test_embeddings_spans_are_named_for_their_operation(otel: Otel) -> None:
    records = simulate(Run(requests=2, route="/v1/embeddings", model="text-embedding-3-small"))
    feed(otel.hook(), records)
    assert {s.name for s in otel.finished()} == {"embeddings text-embedding-3-small"}


def test_a_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'pacekeeper\[otel\]'"):
        OpenTelemetryHook()


def test_cost_on_the_span_and_the_cost_counter(otel: Otel) -> None:
    price = pacekeeper.Price(input_usd_per_mtok=3.0, output_usd_per_mtok=15.0)
    gov = Governor(
        hooks=[otel.hook()], prices=lambda model: price if model == "gpt-4o-mini" else None
    )
    for model, prompt, completion in (("gpt-4o-mini", 1000, 100), ("gpt-4o-mini", 2000, 0)):
        with gov.admit(route="/v1/chat/completions", model=model, tokens=prompt) as a:
            a.report(status=200, prompt_tokens=prompt, completion_tokens=completion)
    with gov.admit(route="/v1/chat/completions", model="unpriced", tokens=10) as a:
        a.report(status=200, prompt_tokens=10, completion_tokens=10)
    costs = {
        span.attributes.get("gen_ai.request.model"): span.attributes.get("pacekeeper.cost_usd")
        for span in otel.finished()
        if span.attributes is not None and span.attributes.get("pacekeeper.cost_usd") is not None
    }
    assert set(costs) == {"gpt-4o-mini"}  # the unpriced model's cost is unknown: not on its span
    data = otel.reader.get_metrics_data()
    assert data is not None
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "pacekeeper.client.cost"
        for point in metric.data.data_points
    ]
    assert len(points) == 1
    assert points[0].value == pytest.approx((3000 * 3.0 + 100 * 15.0) / 1e6)  # type: ignore[union-attr]
