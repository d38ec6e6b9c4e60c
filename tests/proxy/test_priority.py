"""Priority classes and tenants at the proxy: the header, tokens bound to a tenant and a class,
and back-pressure per class (a batch caller is refused long before an interactive one)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx2
import pytest

from pacekeeper import (
    ConfigurationError,
    Governor,
    Limits,
    Priority,
    RecordCollector,
)
from pacekeeper.core.records import AttemptRecord
from pacekeeper.proxy import ProxyConfig
from pacekeeper.proxy._cli import describe_classes
from pacekeeper.proxy._config import TenantToken
from pacekeeper.sim import Latency, Scenario

from .conftest import StartProxy, StartSim

MODEL = "gpt-4o-mini"


def body(i: int) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}


async def test_interactive_overtakes_a_queue_of_batch_requests(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.1)))
    records = RecordCollector()
    gov = Governor(limits=Limits(concurrency=1, min_share=0.0), hooks=[records])
    proxy = start_proxy(sim, gov)
    url = proxy.base_url + "/chat/completions"
    batch = {"x-pacekeeper-priority": "batch"}
    async with httpx2.AsyncClient(timeout=20) as client:
        queued = [
            asyncio.create_task(client.post(url, json=body(i), headers=batch)) for i in range(6)
        ]
        await asyncio.sleep(0.15)  # one in flight, five queued
        chat = await client.post(url, json=body(99))  # no header: interactive
        assert chat.status_code == 200
        done_before_chat = sum(t.done() for t in queued)
        answers = await asyncio.gather(*queued)
    assert all(a.status_code == 200 for a in answers)
    assert done_before_chat <= 2  # it went before the batch queued ahead of it
    by_class = {r.priority for r in records.requests}
    assert by_class == {"interactive", "batch"}
    # the header is the proxy's own: not forwarded
    assert sim.stats()["requests_received"] == 7


async def test_a_batch_caller_is_refused_long_before_an_interactive_one(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim()
    # 60 rpm, no burst: one a second; the proxy waits at most 2.5 s.
    gov = Governor(limits=Limits(rpm=60, burst_s=0.01, concurrency=8))
    proxy = start_proxy(sim, gov, queue_timeout_s=2.5)
    url = proxy.base_url + "/chat/completions"
    batch = {"x-pacekeeper-priority": "batch"}
    async with httpx2.AsyncClient(timeout=20) as client:
        assert (await client.post(url, json=body(0), headers=batch)).status_code == 200
        waiting = [
            asyncio.create_task(client.post(url, json=body(i), headers=batch)) for i in (1, 2)
        ]
        await asyncio.sleep(0.1)
        refused = await client.post(url, json=body(3), headers=batch)  # 3 s away: refused
        chat = await client.post(url, json=body(4))  # interactive: next in line
        answers = await asyncio.gather(*waiting)
    assert refused.status_code == 429
    assert refused.headers["x-pacekeeper-error"] == "proxy_queue_timeout"
    assert "class batch" in refused.json()["error"]["message"]
    assert chat.status_code == 200
    # the interactive request took the second batch request's turn (2 s), which then passed
    # the 2.5 s deadline: the batch caller pays for the interactive one, never the reverse
    assert [a.status_code for a in answers] == [200, 429]


async def test_a_token_binds_its_tenant_and_its_highest_class(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim()
    records = RecordCollector()
    gov = Governor(hooks=[records])
    tenants = (
        TenantToken(tenant="nightly", token="tok-nightly", priority=Priority.BATCH),
        TenantToken(tenant="chat", token="tok-chat"),
    )
    proxy = start_proxy(sim, gov, tenants=tenants)
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=20) as client:
        none = await client.post(url, json=body(0))
        wrong = await client.post(url, json=body(1), headers={"x-pacekeeper-token": "nope"})
        # a batch token asking for interactive stays batch; asking lower is allowed
        up = await client.post(
            url,
            json=body(2),
            headers={"x-pacekeeper-token": "tok-nightly", "x-pacekeeper-priority": "interactive"},
        )
        down = await client.post(
            url,
            json=body(3),
            headers={"x-pacekeeper-token": "tok-chat", "x-pacekeeper-priority": "background"},
        )
        bad = await client.post(
            url,
            json=body(4),
            headers={"x-pacekeeper-token": "tok-chat", "x-pacekeeper-priority": "urgent"},
        )
    assert none.status_code == wrong.status_code == 401
    assert up.status_code == down.status_code == 200
    assert bad.status_code == 400
    assert bad.headers["x-pacekeeper-error"] == "invalid_priority"
    seen = sorted((r.tenant, r.priority) for r in records.requests)
    assert seen == [("chat", "background"), ("nightly", "batch")]
    assert "tok-" not in repr(proxy.app.config)


def test_tenants_are_checked_and_listed_at_start() -> None:
    with pytest.raises(ConfigurationError, match="own name and its own token"):
        ProxyConfig(
            upstream="http://x",
            tenants=(
                TenantToken(tenant="a", token="same"),
                TenantToken(tenant="b", token="same"),
            ),
        )
    with pytest.raises(ConfigurationError, match="priority must be one of"):
        TenantToken(tenant="a", token="t", priority="urgent")  # type: ignore[arg-type]
    config = ProxyConfig(
        upstream="http://x",
        tenants=(TenantToken(tenant="nightly", token="sekret-9", priority=Priority.BATCH),),
    )
    text = describe_classes(config, 0.1)
    assert "tenant nightly: class batch or lower" in text
    assert "10%" in text
    assert "sekret" not in text


async def test_each_class_has_its_own_queue_timeout(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    """Batch waits up to 5 s, interactive up to 20 s: a batch request whose known wait is 10 s
    is refused at once (429, retry-after the difference), where an interactive one would wait;
    the same queue at the same moment admits an interactive request."""
    sim = start_sim()
    # 60 rpm, no burst: one a second; batch keeps 30% of admissions while interactive waits
    gov = Governor(limits=Limits(rpm=60, burst_s=0.01, concurrency=8, min_share=0.3))
    proxy = start_proxy(sim, gov, queue_timeout_s=20.0, queue_timeouts_s={"batch": 5.0})
    assert proxy.app.config.queue_timeout_for(Priority.BACKGROUND) == 5.0  # never above batch
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=30) as client:
        assert (await client.post(url, json=body(0))).status_code == 200
        waiting = [asyncio.create_task(client.post(url, json=body(i))) for i in (1, 2)]
        await asyncio.sleep(0.2)  # two interactive requests queued: 1 s and 2 s away
        batch = await client.post(url, json=body(3), headers={"x-pacekeeper-priority": "batch"})
        chat = asyncio.create_task(client.post(url, json=body(4)))  # 3 s away: it waits
        answers = await asyncio.gather(*waiting, chat)
    assert batch.status_code == 429
    assert batch.headers["x-pacekeeper-error"] == "proxy_queue_timeout"
    message = batch.json()["error"]["message"]
    assert "class batch" in message
    assert "(5s, --queue-timeout batch=S)" in message
    # 3 ahead of it at 30% of one a second: about 10 s, 5 s more than it may wait
    assert 4 <= int(batch.headers["retry-after"]) <= 7
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert sim.stats()["requests_received"] == 4


async def test_a_batch_request_past_its_timeout_is_told_when_its_class_drains(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    """Admitted to the queue, a batch request overtaken by interactive work is refused at its
    class's timeout (not the interactive one's), with a retry-after for its class."""
    sim = start_sim()
    gov = Governor(limits=Limits(rpm=60, burst_s=0.01, concurrency=8, min_share=0.0))
    proxy = start_proxy(sim, gov, queue_timeout_s=30.0, queue_timeouts_s={"batch": 1.5})
    url = proxy.base_url + "/chat/completions"
    batch = {"x-pacekeeper-priority": "batch"}
    async with httpx2.AsyncClient(timeout=30) as client:
        assert (await client.post(url, json=body(0))).status_code == 200
        late = asyncio.create_task(client.post(url, json=body(1), headers=batch))
        await asyncio.sleep(0.1)
        chats = [asyncio.create_task(client.post(url, json=body(i))) for i in (2, 3)]
        await asyncio.sleep(0.1)
        # strict priority (min_share 0): behind waiting interactive work its known wait is
        # unbounded; it is refused at once (never a division by a zero share)
        behind = await client.post(url, json=body(5), headers=batch)
        refused = await late
        answers = await asyncio.gather(*chats)
    assert behind.status_code == 429
    assert behind.headers["x-pacekeeper-error"] == "proxy_queue_timeout"
    assert refused.status_code == 429
    assert refused.headers["x-pacekeeper-error"] == "proxy_queue_timeout"
    assert "not sent after waiting 1.5s" in refused.json()["error"]["message"]
    assert "class batch: --queue-timeout batch=S" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert [a.status_code for a in answers] == [200, 200]


def test_queue_timeouts_from_the_command_line() -> None:
    import argparse

    from pacekeeper.proxy._cli import build_config, configure_parser
    from pacekeeper.settings import Settings

    parser = argparse.ArgumentParser()
    configure_parser(parser)

    def config(*flags: str) -> ProxyConfig:
        return build_config(Settings(), parser.parse_args(["--upstream", "http://x/v1", *flags]))

    defaults = config()
    assert [defaults.queue_timeout_for(p) for p in Priority] == [60.0, 30.0, 10.0]
    short = config("--queue-timeout", "8")  # lower classes never default above it
    assert [short.queue_timeout_for(p) for p in Priority] == [8.0, 8.0, 8.0]
    given = config("--queue-timeout", "45", "--queue-timeout", "batch=9,background=2")
    assert [given.queue_timeout_for(p) for p in Priority] == [45.0, 9.0, 2.0]
    assert "interactive 45s, batch 9s, background 2s" in describe_classes(given, 0.1)
    with pytest.raises(SystemExit):
        parser.parse_args(["--queue-timeout", "batch=0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--queue-timeout", "urgent=3"])
    with pytest.raises(ConfigurationError, match="queue timeout of class batch"):
        ProxyConfig(upstream="http://x", queue_timeouts_s={"batch": -1.0})


async def test_tenant_weights_bound_to_tokens_share_a_class_2_to_1(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.05)))
    order: list[str | None] = []

    class Order(RecordCollector):
        def on_attempt(self, record: AttemptRecord) -> None:
            order.append(record.tenant)

    gov = Governor(limits=Limits(concurrency=1), hooks=[Order()])
    tenants = (
        TenantToken(tenant="chat", token="tok-chat", priority=Priority.BATCH, weight=2),
        TenantToken(tenant="etl", token="tok-etl", priority=Priority.BATCH),
    )
    proxy = start_proxy(sim, gov, tenants=tenants)
    assert gov.tenant_weights == {"chat": 2.0}
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=30) as client:
        first = asyncio.create_task(
            client.post(url, json=body(0), headers={"x-pacekeeper-token": "tok-etl"})
        )
        await asyncio.sleep(0.02)  # it holds the one slot while the others queue
        rest = [
            asyncio.create_task(
                client.post(url, json=body(i), headers={"x-pacekeeper-token": f"tok-{who}"})
            )
            for i in range(1, 13)
            for who in ("chat", "etl")
        ]
        answers = await asyncio.gather(first, *rest)
    assert all(a.status_code == 200 for a in answers)
    # while both have work: two chat admissions for each etl one
    both = Counter(order[1:16])
    assert abs(both["chat"] - 10) <= 1, order


def test_tenant_weights_from_the_command_line_and_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from pacekeeper.proxy._cli import build_config, build_governor, configure_parser
    from pacekeeper.settings import load_settings

    monkeypatch.setenv("CHAT_TOKEN", "c-1")
    monkeypatch.setenv("ETL_TOKEN", "e-1")
    toml = tmp_path / "pacekeeper.toml"
    toml.write_text("[tenants.etl]\nweight = 0.5\n", encoding="utf-8")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(
        [
            "--upstream",
            "http://x/v1",
            "--tenant",
            "chat:interactive:CHAT_TOKEN:3",
            "--tenant",
            "etl:batch:ETL_TOKEN",
        ]
    )
    settings = load_settings(toml)
    assert settings.tenant_weights == {"etl": 0.5}
    config = build_config(settings, args)
    gov = build_governor(settings, args)
    assert [t.weight for t in config.tenants] == [3.0, None]
    assert gov.tenant_weights == {"etl": 0.5}
    text = describe_classes(config, 0.1, gov.tenant_weights)
    assert "tenant chat: class interactive or lower (fair share, weight 3)" in text
    assert "tenant etl: class batch or lower (fair share, weight 0.5)" in text
    bad = parser.parse_args(["--upstream", "http://x/v1", "--tenant", "chat:batch:CHAT_TOKEN:-1"])
    with pytest.raises(ConfigurationError, match="tenant chat: its weight must be a positive"):
        build_config(settings, bad)
    toml.write_text('[tenants.etl]\nweight = "heavy"\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"tenants\.etl\.weight: expected a number"):
        load_settings(toml)
