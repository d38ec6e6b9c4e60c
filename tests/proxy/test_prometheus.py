"""The Prometheus exporter: scraped with generate_latest, read back with the official parser.

Traffic is real (a wrapped openai client against the simulator); every number on the scrape is
checked against what the simulator saw or the governor recorded.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import pacekeeper
from pacekeeper import Governor, Limits, RetryPolicy
from pacekeeper.report.prometheus import DURATION_BUCKETS, GovernorCollector
from pacekeeper.sim import Faults, Latency, ModelLimits, Scenario

from .conftest import StartProxy, StartSim

CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
FAST_RETRIES = RetryPolicy(backoff_base_s=0.01, backoff_cap_s=0.02, hint_jitter_s=0.0)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of a scrape: (name, labels) -> value."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


ClientFor = Callable[[str, Governor], openai.AsyncOpenAI]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFor]:
    """Wrapped openai clients, closed at the end of the test."""
    made: list[openai.AsyncOpenAI] = []

    def make(base_url: str, gov: Governor) -> openai.AsyncOpenAI:
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="sk-test"), gov)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def chat(client: openai.AsyncOpenAI, i: int, **kwargs: Any) -> Any:
    return await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"question {i}"}], **kwargs
    )


async def test_counters_histograms_and_gauges_match_the_traffic(
    start_sim: StartSim, client_for: ClientFor
) -> None:
    sim = start_sim(Scenario(faults=Faults(http_500=0.3), seed=7))
    gov = Governor(limits=Limits(concurrency=4), retry=FAST_RETRIES)
    registry = CollectorRegistry()
    registry.register(GovernorCollector(gov))
    client = client_for(sim.base_url, gov)
    replies = await asyncio.gather(*(chat(client, i) for i in range(30)))

    samples = scrape(registry)
    lane = {"route": CHAT, "model": MODEL}
    seen = sim.stats()
    assert value(samples, "pacekeeper_requests_total", **lane, status="200", outcome="ok") == 30
    assert value(samples, "pacekeeper_attempts_total", **lane) == seen["requests_received"]
    assert value(samples, "pacekeeper_attempts_total", **lane, status="500") == seen[
        "by_status"
    ].get("500", 0)
    assert value(samples, "pacekeeper_retries_total", **lane) == seen["by_status"].get("500", 0)
    assert value(samples, "pacekeeper_retries_total", **lane) > 0
    prompt = sum(r.usage.prompt_tokens for r in replies)
    completion = sum(r.usage.completion_tokens for r in replies)
    assert value(samples, "pacekeeper_tokens_total", **lane, type="prompt") == prompt
    assert value(samples, "pacekeeper_tokens_total", **lane, type="completion") == completion

    # Histograms: one observation per request, cumulative buckets ending at +Inf == count.
    for name in ("pacekeeper_request_duration_seconds", "pacekeeper_queue_wait_seconds"):
        assert value(samples, f"{name}_count", **lane) == 30
        assert value(samples, f"{name}_bucket", **lane, le="+Inf") == 30
        assert value(samples, f"{name}_sum", **lane) >= 0
    assert (
        value(samples, "pacekeeper_attempt_duration_seconds_count", **lane)
        == seen["requests_received"]
    )
    buckets = [
        value(samples, "pacekeeper_request_duration_seconds_bucket", **lane, le=repr(b))
        for b in DURATION_BUCKETS
    ]
    assert buckets == sorted(buckets)

    # Gauges read the live lane.
    assert value(samples, "pacekeeper_queue_depth", **lane) == 0
    assert value(samples, "pacekeeper_in_flight", **lane) == 0
    assert value(samples, "pacekeeper_concurrency_limit", **lane) == 4
    assert value(samples, "pacekeeper_cooldown_remaining_seconds", **lane) == 0


async def test_upstream_429s_and_learned_limits_are_exported(
    start_sim: StartSim, client_for: ClientFor
) -> None:
    sim = start_sim(Scenario(default=ModelLimits(rpm=600, tpm=1_000_000, burst_s=0.5)))
    gov = Governor(limits=Limits(concurrency=20), retry=FAST_RETRIES)
    registry = CollectorRegistry()
    registry.register(GovernorCollector(gov))
    client = client_for(sim.base_url, gov)
    # 20 at once against a bucket of 5: the first answers teach the limit, the rest 429 first.
    await asyncio.gather(*(chat(client, i) for i in range(20)))

    samples = scrape(registry)
    lane = {"route": CHAT, "model": MODEL}
    rejected = sim.stats()["by_status"].get("429", 0)
    assert rejected > 0
    assert value(samples, "pacekeeper_rate_limited_total", **lane) == rejected
    assert value(samples, "pacekeeper_attempts_total", **lane, outcome="rate_limited") == rejected
    assert value(samples, "pacekeeper_requests_total", **lane, outcome="ok") == 20
    assert value(samples, "pacekeeper_limit_requests_per_minute", **lane) == 600
    assert value(samples, "pacekeeper_limit_tokens_per_minute", **lane) == 1_000_000


async def test_gauges_show_the_queue_while_it_is_there(
    start_sim: StartSim, client_for: ClientFor
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.3)))
    gov = Governor(limits=Limits(concurrency=1))
    registry = CollectorRegistry()
    registry.register(GovernorCollector(gov))
    client = client_for(sim.base_url, gov)
    tasks = [asyncio.create_task(chat(client, i)) for i in range(4)]
    await asyncio.sleep(0.15)
    samples = scrape(registry)
    lane = {"route": CHAT, "model": MODEL}
    assert value(samples, "pacekeeper_in_flight", **lane) == 1
    assert value(samples, "pacekeeper_queue_depth", **lane) == 3
    assert "pacekeeper_limit_requests_per_minute" not in names(samples)  # not known yet
    await asyncio.gather(*tasks)
    samples = scrape(registry)
    assert value(samples, "pacekeeper_queue_depth", **lane) == 0
    assert value(samples, "pacekeeper_queue_wait_seconds_sum", **lane) > 0.3


async def test_cancelled_requests_and_streams_are_counted(
    start_sim: StartSim, client_for: ClientFor
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.02, per_token_s=0.001)))
    gov = Governor(limits=Limits(concurrency=1))
    registry = CollectorRegistry()
    registry.register(GovernorCollector(gov))
    client = client_for(sim.base_url, gov)
    stream = await chat(client, 0, stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    slow = asyncio.create_task(chat(client, 1))
    queued = asyncio.create_task(chat(client, 2))
    await asyncio.sleep(0.005)
    queued.cancel()
    await slow
    with pytest.raises(asyncio.CancelledError):
        await queued

    samples = scrape(registry)
    lane = {"route": CHAT, "model": MODEL}
    assert value(samples, "pacekeeper_requests_total", **lane, outcome="ok") == 2
    assert value(samples, "pacekeeper_requests_total", **lane, status="none", outcome="cancelled")
    assert value(samples, "pacekeeper_tokens_total", **lane, type="completion") >= (
        usage[0].completion_tokens
    )


def test_register_on_the_global_registry_and_detach() -> None:
    gov = Governor()
    collector = GovernorCollector(gov, namespace="pktest")
    assert collector in gov.hooks
    prometheus_client.REGISTRY.register(collector)
    try:
        gov.lane(CHAT, None)
        text = generate_latest(prometheus_client.REGISTRY).decode()
        assert f'pktest_concurrency_limit{{model="",route="{CHAT}"}}' in text
        # A second collector under the same names is refused, as Prometheus requires...
        with pytest.raises(ValueError, match="Duplicated"):
            prometheus_client.REGISTRY.register(GovernorCollector(gov, namespace="pktest"))
    finally:
        prometheus_client.REGISTRY.unregister(collector)
    collector.detach()
    assert collector not in gov.hooks
    assert GovernorCollector(gov, attach=False) not in gov.hooks


def test_bad_buckets_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        GovernorCollector(Governor(), duration_buckets=(1.0, 0.5))
    with pytest.raises(ValueError, match="finite"):
        GovernorCollector(Governor(), queue_buckets=(1.0, float("inf")))


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'pacekeeper\[prometheus\]'"):
        GovernorCollector(Governor())


async def test_cost_is_counted_per_model_from_usage_at_its_price(
    start_sim: StartSim, client_for: ClientFor
) -> None:
    from pacekeeper import Price

    price = Price(input_usd_per_mtok=2.0, output_usd_per_mtok=8.0)
    sim = start_sim(Scenario())
    gov = Governor(prices=lambda model: price if model == MODEL else None)
    registry = CollectorRegistry()
    registry.register(GovernorCollector(gov))
    client = client_for(sim.base_url, gov)
    replies = await asyncio.gather(*(chat(client, i, max_tokens=50) for i in range(12)))
    await client.chat.completions.create(
        model="unpriced-model", messages=[{"role": "user", "content": "hi"}]
    )
    samples = scrape(registry)
    expected = sum(
        r.usage.prompt_tokens * 2.0 / 1e6 + r.usage.completion_tokens * 8.0 / 1e6 for r in replies
    )
    lane = {"route": CHAT, "model": MODEL}
    assert value(samples, "pacekeeper_cost_usd_total", **lane) == pytest.approx(expected)
    # a model without a price has no cost series (unknown, not zero)
    assert ("model", "unpriced-model") in {
        label
        for (name, labels) in samples
        if name == "pacekeeper_requests_total"
        for label in labels
    }
    assert not [
        labels
        for (name, labels) in samples
        if name == "pacekeeper_cost_usd_total" and ("model", "unpriced-model") in labels
    ]
    assert "pacekeeper_spend_usd" not in names(samples)  # no spend cap


def scrape_both(url: str) -> tuple[Samples, Samples]:
    """GET /metrics in the text format and in OpenMetrics, each read by its own parser."""
    import httpx2
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    out: list[Samples] = []
    for accept, parse in (
        ("text/plain", text_string_to_metric_families),
        ("application/openmetrics-text", openmetrics_families),
    ):
        response = httpx2.get(url + "/metrics", headers={"accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(accept)
        samples: Samples = {}
        for family in parse(response.text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        out.append(samples)
    return out[0], out[1]


async def test_queue_wait_per_class_and_tenant_at_the_proxy(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    """Through the proxy, tenants bound to tokens: /metrics (both formats) has the queue wait
    of each class and tenant, and the batch waited behind the interactive request."""
    import httpx2

    from pacekeeper import Priority
    from pacekeeper.proxy._config import TenantToken

    sim = start_sim(Scenario(latency=Latency(ttft_s=0.2)))
    gov = Governor(limits=Limits(concurrency=1, min_share=0.0))
    tenants = (
        TenantToken(tenant="nightly", token="tok-nightly", priority=Priority.BATCH),
        TenantToken(tenant="chat", token="tok-chat"),
    )
    proxy = start_proxy(sim, gov, tenants=tenants)
    url = proxy.base_url + "/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx2.AsyncClient(timeout=20) as client:
        batch = [
            asyncio.create_task(
                client.post(url, json=body, headers={"x-pacekeeper-token": "tok-nightly"})
            )
            for _ in range(4)
        ]
        await asyncio.sleep(0.1)  # one sent, three queued
        chat_answer = await client.post(url, json=body, headers={"x-pacekeeper-token": "tok-chat"})
        answers = await asyncio.gather(*batch)
    assert chat_answer.status_code == 200
    assert all(a.status_code == 200 for a in answers)
    for samples in scrape_both(proxy.url):
        lane = {"route": CHAT, "model": MODEL}
        nightly = {**lane, "priority": "batch", "tenant": "nightly"}
        chat_ = {**lane, "priority": "interactive", "tenant": "chat"}
        assert value(samples, "pacekeeper_queue_wait_seconds_count", **nightly) == 4
        assert value(samples, "pacekeeper_queue_wait_seconds_count", **chat_) == 1
        assert value(samples, "pacekeeper_queue_wait_seconds_count", **lane) == 5
        # the chat request went first: it waited for one answer, the batch for several
        assert value(samples, "pacekeeper_queue_wait_seconds_sum", **nightly) > value(
            samples, "pacekeeper_queue_wait_seconds_sum", **chat_
        )
        assert "tok-" not in repr(samples)


async def test_tenants_past_the_cap_are_counted_as_other(
    start_sim: StartSim, client_for: ClientFor
) -> None:
    sim = start_sim()
    gov = Governor()
    registry = CollectorRegistry()
    registry.register(GovernorCollector(gov, max_tenants=2, tenants=["chat"]))
    client = client_for(sim.base_url, gov)
    for i, tenant in enumerate(["t0", "t1", "t2", "chat", "t1"]):
        with pacekeeper.priority("batch", tenant=tenant):
            await chat(client, i)
    await chat(client, 9)  # no tenant: interactive, tenant label empty
    samples = scrape(registry)
    counts = {
        (dict(labels)["priority"], dict(labels)["tenant"]): v
        for (name, labels), v in samples.items()
        if name == "pacekeeper_queue_wait_seconds_count"
    }
    # "chat" is configured; one more name fits under the cap of 2; later ones are "other"
    assert counts == {
        ("batch", "chat"): 1,
        ("batch", "t0"): 1,
        ("batch", "other"): 3,
        ("interactive", ""): 1,
    }


def test_records_without_model_or_status_share_their_labels_and_bounds_count_below() -> None:
    """Records fed straight to the hooks: labels are looked up from a cache per (route,
    model, status, outcome), so the same labels must come out as the first time, and a
    value on a bucket's bound counts in that bucket."""
    from pacekeeper.core.records import AttemptRecord, RequestRecord

    registry = CollectorRegistry()
    collector = GovernorCollector(Governor(), attach=False)
    registry.register(collector)
    for attempt, status in ((1, None), (2, 429), (3, None)):
        collector.on_attempt(
            AttemptRecord(
                route=CHAT,
                model=None,
                attempt=attempt,
                outcome="timeout" if status is None else "rate_limited",
                status=status,
                started_at=0.0,
                queued_s=0.0,
                latency_s=DURATION_BUCKETS[0],
                tokens_estimated=1,
            )
        )
    for _ in range(2):
        collector.on_request(
            RequestRecord(
                route=CHAT,
                model=None,
                outcome="timeout",
                status=None,
                ok=False,
                attempts=3,
                started_at=0.0,
                total_s=1.0,
                queued_s=0.0,
                latency_s=1.0,
                tokens_estimated=1,
            )
        )
    samples = scrape(registry)
    lane = {("route", CHAT), ("model", "")}
    none = frozenset({*lane, ("status", "none"), ("outcome", "timeout")})
    assert samples[("pacekeeper_attempts_total", none)] == 2
    limited = frozenset({*lane, ("status", "429"), ("outcome", "rate_limited")})
    assert samples[("pacekeeper_attempts_total", limited)] == 1
    assert samples[("pacekeeper_requests_total", none)] == 2
    assert samples[("pacekeeper_retries_total", frozenset(lane))] == 2
    first_bucket = frozenset({*lane, ("le", repr(float(DURATION_BUCKETS[0])))})
    assert samples[("pacekeeper_attempt_duration_seconds_bucket", first_bucket)] == 3
    one_s = frozenset({*lane, ("le", "1.0")})
    assert samples[("pacekeeper_request_duration_seconds_bucket", one_s)] == 2
    queue = frozenset({*lane, ("priority", "interactive"), ("tenant", ""), ("le", "0.001")})
    assert samples[("pacekeeper_queue_wait_seconds_bucket", queue)] == 2
