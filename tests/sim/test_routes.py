"""Every route's shape, as raw HTTP (httpx2) and through the official openai SDK."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from typing import Any

import httpx2
import openai
import pytest

from pacekeeper.sim import DEFAULT_MAX_TOKENS, Latency, Scenario, Simulator

from .helpers import StartSim, chat, sse_events

# --- chat completions -------------------------------------------------------------------------


def test_chat_completion_via_sync_sdk(plain_sim: Simulator) -> None:
    client = openai.OpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    with client:
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Name three colours."}]
        )
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-4o-mini"
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert reply.usage is not None
    # Prompt estimate: 3 priming + 4 per message + ceil(19 chars / 4) = 12.
    assert reply.usage.prompt_tokens == 3 + 4 + math.ceil(len("Name three colours.") / 4)
    assert 16 <= reply.usage.completion_tokens <= 200
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    content = choice.message.content or ""
    # ~4 characters per token: the sim's own estimate of the reply is its completion_tokens.
    assert math.ceil(len(content) / 4) == reply.usage.completion_tokens


async def test_chat_completion_via_async_sdk_is_deterministic(plain_sim: Simulator) -> None:
    client = openai.AsyncOpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    async with client:
        messages: Any = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ]
        first = await client.chat.completions.create(model="m", messages=messages)
        second = await client.chat.completions.create(model="m", messages=messages)
        other = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Something else"}]
        )
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage == second.usage
    assert first.id != second.id
    assert other.choices[0].message.content != first.choices[0].message.content


def test_max_tokens_caps_the_reply_and_n_gives_choices(plain_sim: Simulator) -> None:
    with httpx2.Client(base_url=plain_sim.base_url) as http:
        capped = http.post("/chat/completions", json=chat(max_tokens=3, n=3)).json()
        newer = http.post("/chat/completions", json=chat(max_completion_tokens=5)).json()
    assert [c["index"] for c in capped["choices"]] == [0, 1, 2]
    assert {c["finish_reason"] for c in capped["choices"]} == {"length"}
    assert capped["usage"]["completion_tokens"] == 9  # 3 tokens x 3 choices
    assert newer["usage"]["completion_tokens"] == 5


def test_streamed_chat_matches_the_plain_reply(plain_sim: Simulator) -> None:
    client = openai.OpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    with client:
        plain = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream me"}]
        )
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream me"}], stream=True
        )
        chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


async def test_stream_include_usage_ends_with_a_usage_chunk(plain_sim: Simulator) -> None:
    client = openai.AsyncOpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Count"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=20,
        )
        chunks = [c async for c in stream]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == 3 + 4 + 2
    assert all(c.usage is None for c in chunks[:-1])
    content = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert math.ceil(len(content) / 4) == 20


def test_raw_stream_ends_with_done(plain_sim: Simulator) -> None:
    with httpx2.Client(base_url=plain_sim.base_url) as http:
        response = http.post("/chat/completions", json=chat(stream=True, n=2, max_tokens=10))
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    finishes = {
        e["choices"][0]["index"]: e["choices"][0]["finish_reason"]
        for e in events[:-1]
        if e["choices"][0]["finish_reason"]
    }
    assert finishes == {0: "length", 1: "length"}


def test_stream_chunks_arrive_paced_by_latency(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.2, per_token_s=0.01)))
    arrivals: list[float] = []
    with (
        httpx2.Client(base_url=sim.base_url) as http,
        http.stream("POST", "/chat/completions", json=chat(stream=True, max_tokens=40)) as resp,
    ):
        start = time.monotonic()
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                payload = json.loads(line[6:])
                if payload["choices"] and payload["choices"][0]["delta"].get("content"):
                    arrivals.append(time.monotonic() - start)
    # 40 tokens in 10 content chunks of 4 tokens: first after ttft, then one per 40 ms.
    assert len(arrivals) == 10
    assert 0.15 <= arrivals[0] < 0.35
    assert arrivals[-1] - arrivals[0] >= 9 * 0.04 * 0.8
    assert arrivals[-1] < 0.2 + 0.4 + 0.3


def test_non_streamed_latency_is_ttft_plus_tokens(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.1, per_token_s=0.005)))
    with httpx2.Client(base_url=sim.base_url) as http:
        start = time.monotonic()
        reply = http.post("/chat/completions", json=chat(max_tokens=40)).json()
        elapsed = time.monotonic() - start
    expected = 0.1 + 0.005 * reply["usage"]["completion_tokens"]
    assert expected * 0.95 <= elapsed < expected + 0.25


def test_latency_spread_is_reproducible_per_request(start_sim: StartSim) -> None:
    # Latencies long beside a loaded machine's scheduling delays: with a 0.05 s median, a
    # CI run beside three benchmarks read 0.068 s where the same request took 0.024 s.
    scenario = Scenario(latency=Latency(ttft_s=0.2, spread=0.8), seed=3)

    def durations(sim: Simulator) -> list[float]:
        out = []
        with httpx2.Client(base_url=sim.base_url) as http:
            for i in range(6):
                start = time.monotonic()
                http.post("/chat/completions", json=chat(f"prompt {i}"))
                out.append(time.monotonic() - start)
        return out

    first, second = durations(start_sim(scenario)), durations(start_sim(scenario))
    for a, b in zip(first, second, strict=True):
        assert abs(a - b) < 0.03 + 0.2 * max(a, b)
    assert max(first) > 1.5 * min(first)  # the spread actually spreads


# --- completions, embeddings, models ----------------------------------------------------------


def test_completions_via_sdk(plain_sim: Simulator) -> None:
    client = openai.OpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    with client:
        one = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon")
        many = client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt=["a", "bb", "ccc"], n=2, max_tokens=7
        )
        streamed = list(
            client.completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt="Once upon",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert one.object == "text_completion"
    assert one.usage is not None
    assert one.usage.prompt_tokens == 3  # ceil(9 / 4)
    assert one.choices[0].text
    assert len(many.choices) == 6
    assert many.usage is not None
    assert many.usage.completion_tokens == 6 * 7
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.completion_tokens == one.usage.completion_tokens
    assert "".join(c.choices[0].text for c in streamed if c.choices) == one.choices[0].text


def test_embeddings_via_sdk(plain_sim: Simulator) -> None:
    client = openai.OpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    with client:
        default = client.embeddings.create(model="text-embedding-3-small", input="hello")
        sized = client.embeddings.create(
            model="text-embedding-3-small", input=["hello", "world"], dimensions=16
        )
        tokens = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3]])
    assert len(default.data) == 1
    assert len(default.data[0].embedding) == 64
    assert math.isclose(sum(v * v for v in default.data[0].embedding), 1.0, abs_tol=1e-4)
    assert default.usage.prompt_tokens == 2
    assert [len(d.embedding) for d in sized.data] == [16, 16]
    assert [d.index for d in sized.data] == [0, 1]
    assert sized.data[0].embedding != sized.data[1].embedding
    assert tokens.usage.prompt_tokens == 3
    # Deterministic per text, independent of the batch it came in.
    again = openai.OpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    with again:
        single = again.embeddings.create(model="text-embedding-3-small", input="hello")
    assert single.data[0].embedding == default.data[0].embedding


def test_embeddings_base64_encoding(plain_sim: Simulator) -> None:
    with httpx2.Client(base_url=plain_sim.base_url) as http:
        floats = http.post("/embeddings", json={"model": "e", "input": "x", "dimensions": 8})
        b64 = http.post(
            "/embeddings",
            json={"model": "e", "input": "x", "dimensions": 8, "encoding_format": "base64"},
        )
    decoded = struct.unpack("<8f", base64.b64decode(b64.json()["data"][0]["embedding"]))
    expected = floats.json()["data"][0]["embedding"]
    assert decoded == pytest.approx(expected, abs=1e-6)


def test_models_list_and_retrieve(start_sim: StartSim) -> None:
    from pacekeeper.sim import ModelLimits

    sim = start_sim(Scenario(models={"my-model": ModelLimits(rpm=60)}))
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    with client:
        ids = [m.id for m in client.models.list()]
        model = client.models.retrieve("anything")
    assert ids[0] == "my-model"
    assert "gpt-4o-mini" in ids
    assert model.id == "anything"
    assert model.object == "model"


# --- errors ---------------------------------------------------------------------------------


def test_unknown_route_is_an_openai_404(plain_sim: Simulator) -> None:
    with httpx2.Client(base_url=plain_sim.base_url) as http:
        response = http.get("/nope")
        wrong_method = http.get("/chat/completions")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "GET /v1/nope" in response.json()["error"]["message"]
    assert wrong_method.status_code == 404


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/chat/completions", b"{not json", "JSON body"),
        ("/chat/completions", b"[1, 2]", "JSON object"),
        ("/chat/completions", json.dumps({"messages": []}).encode(), "'model'"),
        ("/chat/completions", json.dumps({"model": "m"}).encode(), "'messages'"),
        ("/chat/completions", json.dumps({"model": "m", "messages": []}).encode(), "'messages'"),
        ("/chat/completions", json.dumps(chat(max_tokens=0)).encode(), "'max_tokens'"),
        ("/chat/completions", json.dumps(chat(n=0)).encode(), "'n'"),
        ("/chat/completions", json.dumps(chat(stream="yes")).encode(), "'stream'"),
        ("/completions", json.dumps({"model": "m"}).encode(), "'prompt'"),
        ("/completions", json.dumps({"model": "m", "prompt": {}}).encode(), "'prompt'"),
        ("/embeddings", json.dumps({"model": "m"}).encode(), "'input'"),
        ("/embeddings", json.dumps({"model": "m", "input": ""}).encode(), "'input'"),
        (
            "/embeddings",
            json.dumps({"model": "m", "input": "x", "dimensions": 0}).encode(),
            "'dimensions'",
        ),
    ],
)
def test_invalid_requests_are_400s_naming_the_problem(
    plain_sim: Simulator, path: str, body: bytes, names: str
) -> None:
    with httpx2.Client(base_url=plain_sim.base_url) as http:
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert names in error["message"]


def test_sdk_sees_bad_request_error(plain_sim: Simulator) -> None:
    client = openai.OpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    with client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[], max_tokens=DEFAULT_MAX_TOKENS)
    assert "messages" in str(info.value)


def test_require_api_key(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(require_api_key=True))
    with httpx2.Client(base_url=sim.base_url) as http:
        anonymous = http.post("/chat/completions", json=chat())
        models = http.get("/models")
        keyed = http.post(
            "/chat/completions", json=chat(), headers={"authorization": "Bearer sk-test"}
        )
        stats = http.get(sim.url + "/_stats")  # the control routes need no key
    assert anonymous.status_code == 401
    assert "API key" in anonymous.json()["error"]["message"]
    assert models.status_code == 401
    assert keyed.status_code == 200
    assert stats.status_code == 200


async def test_async_context_manager_does_not_block_the_loop() -> None:
    async with Simulator(Scenario()) as sim:
        async with httpx2.AsyncClient(base_url=sim.base_url) as http:
            response = await http.post("/chat/completions", json=chat())
        assert response.status_code == 200
        assert sim.stats()["by_status"] == {"200": 1}
    assert not sim.running
