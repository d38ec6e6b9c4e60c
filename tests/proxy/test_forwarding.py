"""The proxy forwards transparently: unmodified openai clients, streams, headers, errors, keys.

Real servers on loopback (the simulator upstream, uvicorn serving the proxy) and real clients;
where the test must see exactly what reached the upstream, the upstream is an httpx2
MockTransport under the proxy's governor.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from pacekeeper import Governor, RetryPolicy
from pacekeeper.proxy import REFUSED_HEADER, TOKEN_HEADER, ProxyApp, ProxyConfig
from pacekeeper.sim import Faults, Latency, Scenario, Simulator

from .conftest import StartProxy, StartSim

MODEL = "gpt-4o-mini"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello"}]
FAST_RETRIES = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.02)


class Recorder:
    """An upstream that records what reached it and answers with a canned response."""

    def __init__(self, response: httpx2.Response | None = None) -> None:
        self.requests: list[httpx2.Request] = []
        self.bodies: list[bytes] = []
        self.response = response or httpx2.Response(200, json={"ok": True})
        self.transport = httpx2.MockTransport(self.handle)

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(await request.aread())
        self.requests.append(request)
        return self.response


def raw_http(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client normalising paths or headers); the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def error_of(response: httpx2.Response) -> dict[str, object]:
    error: dict[str, object] = response.json()["error"]
    return error


# -- unmodified openai clients ------------------------------------------------------------


def test_sync_openai_client_through_the_proxy(
    plain_sim: Simulator, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(plain_sim)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-test")
    reply = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0
    embedding = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(embedding.data) == 2
    assert MODEL in {m.id for m in client.models.list().data}
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


async def test_async_openai_client_through_the_proxy(
    plain_sim: Simulator, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(plain_sim)
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-test")
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}]
            )
            for i in range(20)
        )
    )
    assert all(r.choices[0].message.content for r in replies)
    await client.close()


async def test_streamed_chunks_arrive_as_the_upstream_sends_them(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    # 4 tokens per chunk every 40 ms: 12 chunks over about half a second.
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.05, per_token_s=0.01)))
    proxy = start_proxy(sim)

    async def arrivals(base_url: str) -> list[float]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test")
        start = time.monotonic()
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            stream=True,
            max_tokens=48,
        )
        times = [time.monotonic() - start async for _ in stream]
        await client.close()
        return times

    direct = await arrivals(sim.base_url)
    proxied = await arrivals(proxy.base_url)
    assert len(proxied) == len(direct) >= 12
    # Incremental: the first chunk long before the last, and chunks spread over the stream.
    assert proxied[-1] - proxied[0] > 0.35
    gaps = [b - a for a, b in itertools.pairwise(proxied) if b - a > 0.02]
    assert len(gaps) >= 8
    # Time to first byte close to the upstream's: far under the half second a buffered
    # answer would take (the margin is for a loaded machine, not a speed claim).
    assert proxied[0] - direct[0] < 0.3


def test_a_stream_that_breaks_upstream_breaks_for_the_client(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(faults=Faults(drop=1.0), latency=Latency(per_token_s=0.001)))
    proxy = start_proxy(sim, Governor(retry=FAST_RETRIES))
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    with (
        httpx2.Client() as client,
        client.stream("POST", proxy.base_url + "/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx2.RemoteProtocolError):
            response.read()  # never a clean end of an incomplete answer
    assert proxy.app.counters.upstream_errors == {"broken_stream": 1}


# -- what passes and what does not --------------------------------------------------------


def test_headers_path_query_and_body_pass_except_hop_by_hop(start_proxy: StartProxy) -> None:
    upstream = Recorder(
        httpx2.Response(
            201,
            headers={
                "x-upstream": "yes",
                "connection": "x-hop-up",
                "x-hop-up": "secret",
                "keep-alive": "timeout=5",
                "set-cookie": "a=b",
            },
            content=b'{"created": true}',
        )
    )
    proxy = start_proxy("https://api.example.com/base/v1", transport=upstream.transport)
    response = httpx2.put(
        proxy.base_url + "/files/ab%2Fc/content?limit=2&after=x%20y",
        content=b'{"model": "m", "x": 1}',
        headers={
            "content-type": "application/json",
            "authorization": "Bearer sk-client",
            "connection": "keep-alive, x-hop",
            "x-hop": "1",
            "te": "trailers",
            "proxy-authorization": "Basic abc",
            "x-custom": "kept",
            TOKEN_HEADER: "not-forwarded",
        },
    )
    assert response.status_code == 201
    assert response.json() == {"created": True}
    assert response.headers["x-upstream"] == "yes"
    assert response.headers["set-cookie"] == "a=b"
    assert "x-hop-up" not in response.headers
    assert "keep-alive" not in response.headers
    [sent] = upstream.requests
    assert sent.method == "PUT"
    assert (
        str(sent.url) == "https://api.example.com/base/v1/files/ab%2Fc/content?limit=2&after=x%20y"
    )
    assert upstream.bodies == [b'{"model": "m", "x": 1}']
    assert sent.headers["authorization"] == "Bearer sk-client"  # the client's own key
    assert sent.headers["x-custom"] == "kept"
    assert sent.headers["host"] == "api.example.com"
    for name in ("x-hop", "te", "proxy-authorization", "connection", TOKEN_HEADER):
        assert name not in sent.headers


def test_upstream_errors_pass_as_the_upstream_sent_them(start_proxy: StartProxy) -> None:
    body = {"error": {"message": "bad model", "type": "invalid_request_error", "code": "x"}}
    upstream = Recorder(httpx2.Response(404, json=body, headers={"x-request-id": "req-1"}))
    proxy = start_proxy("https://api.example.com/v1", transport=upstream.transport)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.body == body["error"]
    assert caught.value.response.headers["x-request-id"] == "req-1"
    assert REFUSED_HEADER not in caught.value.response.headers
    assert len(upstream.requests) == 1  # a 404 is never retried


def test_upstream_5xx_are_retried_then_answered(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(faults=Faults(http_503=0.5), seed=3))
    proxy = start_proxy(sim, Governor(retry=replace(FAST_RETRIES, max_attempts=8)))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0)
    for i in range(10):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"q{i}"}],
        )
    assert sim.stats()["by_status"]["503"] > 0  # the client never saw them


def test_the_proxy_can_hold_the_key_and_require_a_client_token(start_proxy: StartProxy) -> None:
    upstream = Recorder()
    proxy = start_proxy(
        "https://api.example.com/v1",
        transport=upstream.transport,
        api_key="sk-upstream",
        client_token="proxy-token",
    )
    url = proxy.base_url + "/chat/completions"
    body = {"model": MODEL, "messages": HELLO}
    for headers in ({}, {"authorization": "Bearer wrong"}, {TOKEN_HEADER: "proxy-tokeN"}):
        refused = httpx2.post(url, json=body, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["x-pacekeeper-error"] == "invalid_proxy_token"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "proxy-token" not in refused.text
    assert upstream.requests == []
    # The token as the API key (what an SDK sends) or in its own header.
    client = openai.OpenAI(base_url=proxy.base_url, api_key="proxy-token", max_retries=0)
    client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert httpx2.post(url, json=body, headers={TOKEN_HEADER: "proxy-token"}).status_code == 200
    assert [r.headers["authorization"] for r in upstream.requests] == ["Bearer sk-upstream"] * 2
    assert all(TOKEN_HEADER not in r.headers for r in upstream.requests)


def test_a_client_token_alone_leaves_the_clients_key_in_place(start_proxy: StartProxy) -> None:
    upstream = Recorder()
    proxy = start_proxy(
        "https://api.example.com/v1", transport=upstream.transport, client_token="tok"
    )
    url = proxy.base_url + "/models"
    assert httpx2.get(url, headers={"authorization": "Bearer tok"}).status_code == 401
    ok = httpx2.get(url, headers={"authorization": "Bearer sk-own", TOKEN_HEADER: "tok"})
    assert ok.status_code == 200
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-own"


# -- the proxy's own 4xx and 5xx ----------------------------------------------------------


def test_oversized_bodies_get_413_declared_or_streamed(start_proxy: StartProxy) -> None:
    upstream = Recorder()
    proxy = start_proxy(
        "https://api.example.com/v1", transport=upstream.transport, max_body_bytes=1000
    )
    url = proxy.base_url + "/chat/completions"
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 2000}]})
    declared = httpx2.post(url, content=big.encode(), headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert error_of(declared)["code"] == "request_too_large"
    assert "1000 bytes" in str(error_of(declared)["message"])

    def chunks() -> Iterator[bytes]:  # no content-length: chunked upload
        for _ in range(20):
            yield b"x" * 100

    streamed = httpx2.post(url, content=chunks(), headers={"content-type": "text/plain"})
    assert streamed.status_code == 413
    assert upstream.requests == []
    assert httpx2.post(url, json={"model": MODEL, "messages": HELLO}).status_code == 200
    assert proxy.app.counters.buffered_bytes == 0


def test_malformed_requests_get_a_clear_400(start_proxy: StartProxy) -> None:
    upstream = Recorder()
    proxy = start_proxy("https://api.example.com/v1", transport=upstream.transport)
    bad_json = httpx2.post(
        proxy.base_url + "/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400
    assert error_of(bad_json)["code"] == "invalid_json"
    assert error_of(bad_json)["type"] == "invalid_request_error"
    assert "not valid JSON" in str(error_of(bad_json)["message"])
    dots = raw_http(
        proxy.port, b"GET /v1/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert dots.startswith(b"HTTP/1.1 400")
    assert b"invalid_path" in dots
    garbage = raw_http(proxy.port, b"NONSENSE\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400")  # the HTTP parser's own answer
    trailing = httpx2.post(
        proxy.base_url + "/chat/completions",
        content=b'{"model": "gpt-4o-mini"} {"a": 1}',  # an object, then more: not JSON
        headers={"content-type": "application/json"},
    )
    assert trailing.status_code == 400
    assert "Extra data" in str(error_of(trailing)["message"])
    outside = httpx2.get(proxy.url + "/v2/models")
    assert outside.status_code == 404
    assert "base_url" in str(error_of(outside)["message"])
    beside = httpx2.get(proxy.url + "/v1x/models")  # the base path as a prefix, not a segment
    assert beside.status_code == 404
    assert upstream.requests == []


def test_an_unreachable_upstream_is_a_502_naming_the_cause(start_proxy: StartProxy) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = start_proxy(f"http://127.0.0.1:{port}/v1", Governor(retry=FAST_RETRIES))
    response = httpx2.post(proxy.base_url + "/chat/completions", json={"model": MODEL})
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_unreachable"
    assert "ConnectError" in str(error["message"])
    assert f"127.0.0.1:{port}" in str(error["message"])
    assert "3 attempts" in str(error["message"])


def test_an_upstream_that_times_out_is_a_504(start_proxy: StartProxy) -> None:
    def hang(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ReadTimeout("no answer", request=request)

    proxy = start_proxy(
        "https://api.example.com/v1",
        Governor(retry=FAST_RETRIES),
        transport=httpx2.MockTransport(hang),
    )
    response = httpx2.get(proxy.base_url + "/models")
    assert response.status_code == 504
    assert error_of(response)["code"] == "upstream_timeout"


# -- metrics and health -------------------------------------------------------------------


def test_metrics_and_healthz(start_sim: StartSim, start_proxy: StartProxy) -> None:
    sim = start_sim(Scenario(faults=Faults(http_500=0.3), seed=1))
    proxy = start_proxy(sim, Governor(retry=replace(FAST_RETRIES, max_attempts=8)))
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-secret-key", max_retries=0)
    for i in range(10):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"q{i}"}],
        )
    httpx2.post(
        proxy.base_url + "/chat/completions",
        content=b"{",
        headers={"content-type": "application/json"},
    )

    scraped = httpx2.get(proxy.url + "/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert "sk-secret-key" not in scraped.text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    lane = (("model", MODEL), ("outcome", "ok"), ("route", "/v1/chat/completions"))
    assert samples[("pacekeeper_requests_total", (*lane, ("status", "200")))] == 10
    retries = samples[("pacekeeper_retries_total", lane[:1] + lane[2:])]
    assert retries == sim.stats()["by_status"]["500"] > 0
    assert samples[("pacekeeper_proxy_responses_total", (("status", "200"),))] == 10
    assert samples[("pacekeeper_proxy_responses_total", (("status", "400"),))] == 1
    assert samples[("pacekeeper_proxy_refused_total", (("reason", "invalid_json"),))] == 1
    assert samples[("pacekeeper_queue_depth", lane[:1] + lane[2:])] == 0
    assert ("pacekeeper_concurrency_limit", lane[:1] + lane[2:]) in samples
    assert samples[("pacekeeper_proxy_draining", ())] == 0
    openmetrics = httpx2.get(
        proxy.url + "/metrics", headers={"accept": "application/openmetrics-text"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")

    health = httpx2.get(proxy.url + "/healthz")
    assert health.status_code == 200
    doc = health.json()
    assert doc["status"] == "ok"
    assert doc["reasons"] == []
    assert (doc["in_flight"], doc["queued"], doc["in_progress"]) == (0, 0, 0)
    assert (doc["refused_recently"], doc["unfinished_connections"]) == (0, 0)


def test_requests_run_concurrently_from_many_threads(
    plain_sim: Simulator, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(plain_sim)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"t{i}"}],
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


async def test_metrics_without_prometheus_client_say_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.setitem(sys.modules, name, None)
    app = ProxyApp(ProxyConfig(upstream="http://127.0.0.1:9/v1"), Governor())
    assert app.metrics is None
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "headers": []}
    await app(scope, receive, send)
    await app.aclose()
    assert sent[0]["status"] == 501
    assert b"pacekeeper[prometheus]" in sent[1]["body"]


def test_object_ids_share_one_lane_but_reach_the_upstream(start_proxy: StartProxy) -> None:
    upstream = Recorder()
    gov = Governor()
    proxy = start_proxy("https://api.example.com/v1", gov, transport=upstream.transport)
    ids = ["file-AbC123dEf456GhI789", "file-ZyX987wVu654TsR321"]
    for file_id in ids:
        assert httpx2.get(f"{proxy.base_url}/files/{file_id}/content?x=1").status_code == 200
    assert [str(r.url) for r in upstream.requests] == [
        f"https://api.example.com/v1/files/{file_id}/content?x=1" for file_id in ids
    ]
    assert [lane.key for lane in gov.lanes] == [("/v1/files/{id}/content", None)]
    metrics = httpx2.get(proxy.url + "/metrics").text
    assert 'route="/v1/files/{id}/content"' in metrics
    assert "AbC123" not in metrics
