"""``pacekeeper proxy --provider``: the unmodified openai and anthropic SDKs (sync and async)
through the proxy to a real server on loopback speaking each dialect. The held key is sent the
provider's way (and never logged); streams are reconciled with real usage, the usage chunk the
proxy asked for never reaching a client that did not ask for it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from pacekeeper import Governor, RecordCollector
from pacekeeper.proxy import Proxy, ProxyConfig
from pacekeeper.sim import Scenario

from .conftest import StartUpstream
from .upstream import KEY

CLIENT_TOKEN = "client-token-not-the-upstream-key"
#: The simulator answers (upstream.py only checks the key and records what came).
SIM = Scenario()


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def start_proxy(
    started: list[Proxy], upstream: str, provider: str, **options: Any
) -> tuple[Proxy, RecordCollector]:
    records = RecordCollector()
    config = ProxyConfig(
        upstream=upstream,
        port=0,
        provider=provider,
        api_key=KEY,
        drain_timeout_s=2.0,
        **options,
    )
    proxy = Proxy(config, Governor(hooks=[records])).start()
    started.append(proxy)
    return proxy, records


async def test_async_openai_stream_through_the_proxy_is_reconciled_without_a_visible_chunk(
    start_upstream: StartUpstream, proxies: list[Proxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_upstream(auth="bearer", sim=SIM)
    proxy, records = start_proxy(proxies, server.base + "/v1", "openai")
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=CLIENT_TOKEN, max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk reached the client
    assert server.seen[-1].body["stream_options"] == {"include_usage": True}
    assert server.seen[-1].headers["authorization"] == f"Bearer {KEY}"
    (record,) = records.requests
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    # The sim's counts: 3 + 4 + 1 prompt tokens, and 4 characters per completion token.
    assert (record.prompt_tokens, record.completion_tokens) == (8, -(-len(text) // 4))
    metrics = httpx2.get(proxy.url + "/metrics").text
    assert KEY not in caplog.text
    assert KEY not in metrics


def test_sync_openai_client_that_asks_for_usage_gets_it_through_the_proxy(
    start_upstream: StartUpstream, proxies: list[Proxy]
) -> None:
    server = start_upstream(auth="bearer", sim=SIM)
    proxy, records = start_proxy(proxies, server.base + "/v1", "openai")
    client = openai.OpenAI(base_url=proxy.base_url, api_key=CLIENT_TOKEN, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 8
    assert records.requests[0].completion_tokens == chunks[-1].usage.completion_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_async_anthropic_sdk_through_the_proxy_to_the_messages_api(
    start_upstream: StartUpstream,
    proxies: list[Proxy],
    stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_upstream(auth="x-api-key", sim=SIM)  # strictly Anthropic's way
    proxy, records = start_proxy(proxies, server.base + "/v1", "anthropic")
    client = anthropic.AsyncAnthropic(base_url=proxy.url, api_key=CLIENT_TOKEN, max_retries=0)
    kwargs: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 300,
        "system": "Be terse.",
        "messages": [{"role": "user", "content": "hi"}],
    }
    if stream:
        async with client.messages.stream(**kwargs) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**kwargs)
    assert message.content[0].type == "text"
    seen = server.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY
    assert "authorization" not in seen.headers
    assert "stream_options" not in (seen.body or {})  # Anthropic streams carry usage anyway
    (record,) = records.requests
    usage = message.usage
    counted = usage.input_tokens + (usage.cache_creation_input_tokens or 0)
    assert (record.prompt_tokens, record.completion_tokens) == (counted, usage.output_tokens)
    assert record.tokens_estimated >= 300
    assert KEY not in caplog.text


def test_sync_anthropic_sdk_through_the_proxy(
    start_upstream: StartUpstream, proxies: list[Proxy]
) -> None:
    server = start_upstream(auth="x-api-key", sim=SIM)
    proxy, records = start_proxy(proxies, server.base + "/v1", "anthropic")
    client = anthropic.Anthropic(base_url=proxy.url, api_key=CLIENT_TOKEN, max_retries=0)
    document = "word " * 800
    content: Any = [
        {"type": "text", "text": document, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "What is it about?"},
    ]
    for _ in range(2):  # a cache write, then a read
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": content}]
        )
    usage = message.usage
    assert usage.cache_read_input_tokens == 3 + 4 + 1000
    assert usage.input_tokens == 5
    first, second = records.requests
    assert first.prompt_tokens == 5 + 1007  # the write counts toward ITPM
    assert second.prompt_tokens == 5  # the read does not
    assert second.completion_tokens == usage.output_tokens


def test_azure_client_through_the_proxy_gets_api_key_auth_and_deployment_lanes(
    start_upstream: StartUpstream, proxies: list[Proxy]
) -> None:
    server = start_upstream(auth="api-key", sim=Scenario(rate_limit_headers="azure"))
    proxy, records = start_proxy(proxies, server.base, "azure", base_path="/")
    client = openai.AzureOpenAI(
        azure_endpoint=proxy.url, api_key=CLIENT_TOKEN, api_version="2024-10-21", max_retries=0
    )
    reply = client.chat.completions.create(
        model="prod-4o", messages=[{"role": "user", "content": "x"}]
    )
    assert reply.model == "prod-4o"  # the sim answers for the deployment
    seen = server.seen[-1]
    assert (seen.path, seen.query) == (
        "/openai/deployments/prod-4o/chat/completions",
        "api-version=2024-10-21",
    )
    assert seen.headers["api-key"] == KEY
    assert "authorization" not in seen.headers
    assert records.requests[0].model == "prod-4o"
    assert records.requests[0].prompt_tokens == 3 + 4 + 1


async def test_async_azure_client_through_the_proxy(
    start_upstream: StartUpstream, proxies: list[Proxy]
) -> None:
    server = start_upstream(auth="api-key", sim=Scenario(rate_limit_headers="azure"))
    proxy, records = start_proxy(proxies, server.base, "azure", base_path="/")
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=proxy.url, api_key=CLIENT_TOKEN, api_version="2024-10-21", max_retries=0
    )
    stream = await client.chat.completions.create(
        model="prod-4o", messages=[{"role": "user", "content": "x"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()
    assert text
    seen = server.seen[-1]
    assert seen.path == "/openai/deployments/prod-4o/chat/completions"
    assert seen.headers["api-key"] == KEY
    assert "authorization" not in seen.headers
    (record,) = records.requests
    assert record.model == "prod-4o"
    assert record.prompt_tokens == 3 + 4 + 1  # reconciled from the usage the proxy asked for
    assert record.completion_tokens


def test_a_client_token_may_come_in_the_sdks_own_key_header(
    start_upstream: StartUpstream, proxies: list[Proxy]
) -> None:
    server = start_upstream(auth="api-key", sim=SIM)
    proxy, _ = start_proxy(proxies, server.base, "azure", base_path="/", client_token=CLIENT_TOKEN)
    ok = openai.AzureOpenAI(
        azure_endpoint=proxy.url, api_key=CLIENT_TOKEN, api_version="2024-10-21", max_retries=0
    )
    ok.chat.completions.create(model="d", messages=[{"role": "user", "content": "x"}])
    wrong = openai.AzureOpenAI(
        azure_endpoint=proxy.url, api_key="wrong-token", api_version="2024-10-21", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="d", messages=[{"role": "user", "content": "x"}])
    assert len(server.seen) == 1


def _parse(*argv: str) -> Any:
    import argparse

    from pacekeeper.proxy._cli import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(argv)


def test_the_cli_takes_each_providers_default_upstream_and_base_path(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pacekeeper.core.errors import ConfigurationError
    from pacekeeper.proxy._cli import build_config
    from pacekeeper.settings import load_settings

    monkeypatch.chdir(tmp_path)
    for name in ("AZURE_OPENAI_ENDPOINT", "ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(None)
    anthropic_config = build_config(settings, _parse("--provider", "anthropic"))
    assert (anthropic_config.upstream, anthropic_config.base_path) == (
        "https://api.anthropic.com/v1",
        "/v1",
    )
    groq = build_config(settings, _parse("--provider", "groq"))
    assert groq.upstream == "https://api.groq.com/openai/v1"
    assert groq.include_usage
    assert not build_config(
        settings, _parse("--provider", "groq", "--no-stream-usage")
    ).include_usage
    with pytest.raises(ConfigurationError, match=r"RESOURCE\.openai\.azure\.com"):
        build_config(settings, _parse("--provider", "azure"))
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    azure = build_config(settings, _parse("--provider", "azure"))
    assert (azure.upstream, azure.base_path, azure.provider) == (
        "https://res.openai.azure.com",
        "",
        "azure",
    )
    (tmp_path / "pacekeeper.toml").write_text('provider = "mistral"\n')
    assert build_config(load_settings(None), _parse()).upstream == "https://api.mistral.ai/v1"
    (tmp_path / "pacekeeper.toml").write_text('provider = "nope"\n')
    with pytest.raises(ConfigurationError, match='unknown provider "nope"; known: openai'):
        load_settings(None)
