"""Usage per dialect, read the way each provider counts it: unit tests of the parsers, then
the unmodified openai and anthropic SDKs (sync and async) through ``wrap()`` against a real
server on loopback speaking each dialect."""

from __future__ import annotations

import json
import logging
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pacekeeper
from pacekeeper import Governor, RecordCollector
from pacekeeper.transports._engine import (
    _EMPTY_CHOICES,
    UsageScanner,
    _empty_choices,
    _is_usage_only,
    _with_usage_option,
    billed_usage_of,
    usage_from_json,
    usage_of,
)

from .conftest import StartUpstream
from .upstream import KEY, USAGE_ANTHROPIC, USAGE_OPENAI, USAGE_RESPONSES


def governed() -> tuple[Governor, RecordCollector]:
    records = RecordCollector()
    return Governor(hooks=[records]), records


ANTHROPIC_COUNTED = USAGE_ANTHROPIC["input_tokens"] + USAGE_ANTHROPIC["cache_creation_input_tokens"]


# --- the parsers ----------------------------------------------------------------------------


def test_openai_usage_counts_cached_tokens_unless_the_provider_does_not() -> None:
    body = {"usage": USAGE_OPENAI}
    assert usage_of(body) == (120, 30)  # reasoning is inside completion_tokens already
    assert usage_of(body, cache_reads_count=False) == (20, 30)  # Groq: cached tokens are free


def test_anthropic_usage_charges_cache_writes_not_cache_reads() -> None:
    assert usage_of({"usage": USAGE_ANTHROPIC}) == (211, 42)
    assert usage_of({"usage": {"input_tokens": 5, "output_tokens": 2}}) == (5, 2)


def test_responses_usage_top_level_and_in_the_completed_event() -> None:
    assert usage_of({"usage": USAGE_RESPONSES}) == (77, 33)
    event = {"type": "response.completed", "response": {"usage": USAGE_RESPONSES}}
    assert usage_of(event) == (77, 33)


def test_embeddings_and_gemini_usage() -> None:
    assert usage_of({"usage": {"prompt_tokens": 9, "total_tokens": 9}}) == (9, None)
    meta = {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 7}
    assert usage_of({"usageMetadata": meta}) == (10, 12)


_ANSWERS: list[dict[str, Any]] = [
    {
        "id": "c",
        "choices": [{"message": {"content": '"prompt_tokens": 999'}}],
        "usage": USAGE_OPENAI,
    },
    {"id": "m", "content": [{"type": "text", "text": "hi"}], "usage": USAGE_ANTHROPIC},
    {"id": "r", "output": [], "usage": USAGE_RESPONSES, "user": None, "metadata": {}},
    {"object": "list", "data": [{"embedding": [0.5] * 8}], "usage": {"prompt_tokens": 9}},
    {"candidates": [], "usageMetadata": {"promptTokenCount": 10, "thoughtsTokenCount": 7}},
    {"id": "no usage", "choices": []},
    {"usage": {"prompt_tokens": 4, "completion_tokens": 2}, "id": "usage first"},
]


@pytest.mark.parametrize("answer", _ANSWERS)
@pytest.mark.parametrize("cache_reads_count", [True, False])
def test_usage_read_off_a_whole_answer_is_what_parsing_it_gives(
    answer: dict[str, Any], cache_reads_count: bool
) -> None:
    """An answer's usage is read without parsing it where it can be (see usage_from_json):
    the same counts as the parsed answer gives, in every dialect, however it is spaced."""
    parsed = (*usage_of(answer, cache_reads_count=cache_reads_count), True)
    expected = (*parsed, billed_usage_of(answer))
    for raw in (json.dumps(answer), json.dumps(answer, separators=(",", ":")) + "\n"):
        assert usage_from_json(raw.encode(), cache_reads_count=cache_reads_count) == expected
    cut = json.dumps(answer).encode()[:-3]  # a truncated answer is not valid JSON
    assert usage_from_json(cut, cache_reads_count=cache_reads_count)[2] is False


def _sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)


@pytest.mark.parametrize("cut", [1, 7, 33, 64, 200])
def test_the_scanner_finds_counts_split_between_chunks(cut: int) -> None:
    stream = (
        b"event: message_start\n"
        + _sse(
            [
                {
                    "type": "message_start",
                    "message": {"usage": {**USAGE_ANTHROPIC, "output_tokens": 1}},
                }
            ]
        )
        + _sse([{"type": "message_delta", "usage": {"output_tokens": 42}}])
    )
    scanner = UsageScanner()
    for i in range(0, len(stream), cut):
        scanner.feed(stream[i : i + cut])
    assert (scanner.prompt_tokens, scanner.completion_tokens) == (211, 42)


_COUNT_NAMES = [
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
    "cachedContentTokenCount",
]


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(st.sampled_from(['"', '_tokens"', "TokenCount", "a", ":", " ", "\n\n"])),
    counts=st.lists(st.tuples(st.sampled_from(_COUNT_NAMES), st.integers(0, 10**9))),
    cuts=st.lists(st.integers(1, 400), max_size=6),
)
def test_the_scanner_reads_every_count_however_it_is_cut(
    text: list[str], counts: list[tuple[str, int]], cuts: list[int]
) -> None:
    # It searches from where a count can first be named, not from the start: the same
    # counts as a search of the whole stream (the last value of each name wins), with
    # quotes and names' pieces in the text before and the stream cut anywhere.
    body = "".join(text) + "".join(f'"{name}": {value}, "x_tokens": 1, ' for name, value in counts)
    stream = f"data: {body}\n\n".encode()
    scanner = UsageScanner()
    start = 0
    for cut in sorted(set(cuts)):
        scanner.feed(stream[start:cut])
        start = max(start, cut)
    scanner.feed(stream[start:])
    assert scanner._counts == {name.encode(): value for name, value in counts}


def test_the_filter_removes_only_the_usage_only_chunk_whatever_the_chunking() -> None:
    events: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"content": "hi"}}]},
        {"choices": [], "usage": USAGE_OPENAI},
    ]
    stream = _sse(events) + b"data: [DONE]\n\n"
    expected = _sse(events[:1]) + b"data: [DONE]\n\n"
    for cut in (1, 5, 50, len(stream)):
        flt = UsageScanner(strip=True)
        out = b"".join(flt.feed(stream[i : i + cut]) for i in range(0, len(stream), cut))
        assert out + flt.flush() == expected
        assert flt.removed == 1


def _filtered_event_by_event(stream: bytes) -> bytes:
    """The filter's answer worked out one event at a time, as it was before it passed runs
    of events whole (the reference its fast path must match)."""
    out, start = [], 0
    while True:
        lf, crlf = stream.find(b"\n\n", start), stream.find(b"\r\n\r\n", start)
        end, sep = (crlf, 4) if crlf >= 0 and (lf < 0 or crlf < lf) else (lf, 2)
        if end < 0:
            break
        event = stream[start : end + sep]
        if not _is_usage_only(event):
            out.append(event)
        start = end + sep
    rest = stream[start:]
    return b"".join(out) + (b"" if _is_usage_only(rest) else rest)


_PIECES = [
    b'data: {"choices": [{"delta": {"content": "a"}}]}',
    b'data: {"choices": [], "usage": {"prompt_tokens": 3}}',
    b'data: {"choices":[]}',
    b'"choices": [] "usage": {',
    b"data: [DONE]",
    b"x",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=24),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
)
# Runs of blank lines: where one event ends and the next begins must not move.
@example([_PIECES[0], b"\n\n\n", _PIECES[1], b"\n\n", _PIECES[4], b"\n\n"], [500])
@example([_PIECES[0], b"\n\r\n\r\n\r\n", _PIECES[1], b"\r\n\r\n"], [500])
def test_the_filter_cuts_events_as_one_event_at_a_time_would(
    pieces: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(pieces)
    flt = UsageScanner(strip=True)
    out, i, turn = [], 0, 0
    while i < len(stream):
        size = cuts[turn % len(cuts)]
        out.append(flt.feed(stream[i : i + size]))
        i, turn = i + size, turn + 1
    assert b"".join(out) + flt.flush() == _filtered_event_by_event(stream)


_CHOICES_PIECES = [b'"choices"', b'"choices', b'choices"', b":", b" ", b"\n", b"\x0b", b"["]
_CHOICES_PIECES += [b"]", b"[]", b'"', b"x", b"{"]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(_CHOICES_PIECES),
        max_size=16,
    ),
    st.integers(min_value=0, max_value=60),
)
def test_the_empty_choices_search_finds_where_the_pattern_first_matches(
    pieces: list[bytes], start: int
) -> None:
    data = b"".join(pieces)
    start = min(start, len(data))
    found = _EMPTY_CHOICES.search(data, start)
    assert _empty_choices(data, start) == (found.start() if found else -1)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(), _JSON_VALUES, min_size=1, max_size=5).filter(
        lambda d: "stream_options" not in d
    ),
    st.sampled_from([{}, {"indent": 2}, {"ensure_ascii": False}, {"separators": (",", ":")}]),
)
def test_the_usage_option_is_added_to_the_clients_bytes_as_encoding_again_would(
    body: dict[str, Any], style: dict[str, Any]
) -> None:
    content = json.dumps(body, **style).encode()
    added = _with_usage_option(content)
    assert added is not None
    assert added.startswith(content.rstrip()[:-1])  # the client's bytes, unchanged
    assert json.loads(added) == {**body, "stream_options": {"include_usage": True}}


def test_the_usage_option_is_not_spliced_into_what_is_not_a_utf8_object() -> None:
    assert _with_usage_option(json.dumps({"stream": True}).encode("utf-16-le")) is None
    assert _with_usage_option(b"[1, 2]") is None


# --- the SDKs through wrap() ----------------------------------------------------------------


async def test_async_openai_stream_is_reconciled_and_the_client_sees_no_extra_chunk(
    start_upstream: StartUpstream,
) -> None:
    server = start_upstream()
    gov, records = governed()
    client = pacekeeper.wrap(
        openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=KEY), gov, include_usage=True
    )
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["Hello", " there", None]
    assert all(c.choices for c in chunks), "the usage chunk the client did not ask for leaked"
    assert server.seen[-1].body["stream_options"] == {"include_usage": True}
    (record,) = records.requests
    assert (record.prompt_tokens, record.completion_tokens) == (120, 30)


def test_sync_openai_stream_keeps_the_usage_chunk_when_the_client_asked(
    start_upstream: StartUpstream,
) -> None:
    server = start_upstream()
    gov, records = governed()
    client = pacekeeper.wrap(
        openai.OpenAI(base_url=server.base + "/v1", api_key=KEY), gov, include_usage=True
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30
    (record,) = records.requests
    assert (record.prompt_tokens, record.completion_tokens) == (120, 30)


def test_without_the_option_a_stream_is_sent_unchanged(start_upstream: StartUpstream) -> None:
    server = start_upstream()
    gov, records = governed()
    client = pacekeeper.wrap(openai.OpenAI(base_url=server.base + "/v1", api_key=KEY), gov)
    list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "stream_options" not in server.seen[-1].body
    assert records.requests[0].completion_tokens is None


async def test_responses_api_plain_and_streamed_are_reconciled(
    start_upstream: StartUpstream,
) -> None:
    server = start_upstream()
    gov, records = governed()
    client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=KEY), gov)
    await client.responses.create(model="gpt-4.1-mini", input="hi", max_output_tokens=64)
    stream = await client.responses.create(model="gpt-4.1-mini", input="hi", stream=True)
    async for _ in stream:
        pass
    assert [(r.route, r.prompt_tokens, r.completion_tokens) for r in records.requests] == [
        ("/v1/responses", 77, 33),
        ("/v1/responses", 77, 33),
    ]
    # the estimate counted max_output_tokens as the reserve
    assert records.requests[0].tokens_estimated >= 64


def test_embeddings_of_token_arrays_are_estimated_and_reconciled(
    start_upstream: StartUpstream,
) -> None:
    server = start_upstream()
    gov, records = governed()
    client = pacekeeper.wrap(openai.OpenAI(base_url=server.base + "/v1", api_key=KEY), gov)
    client.embeddings.create(model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]])
    (record,) = records.requests
    assert 5 <= record.tokens_estimated < 10  # token arrays count as their length; no reserve
    assert record.prompt_tokens == 9


@pytest.mark.parametrize("stream", [False, True])
async def test_async_anthropic_messages_charge_cache_writes_not_reads(
    start_upstream: StartUpstream, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_upstream(auth="anthropic")
    gov, records = governed()
    client = pacekeeper.wrap(anthropic.AsyncAnthropic(base_url=server.base, api_key=KEY), gov)
    kwargs: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 500,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    if stream:
        async with client.messages.stream(**kwargs) as events:
            async for _ in events:
                pass
    else:
        message = await client.messages.create(**kwargs)
        assert message.usage.output_tokens == 42
    (record,) = records.requests
    assert record.ok
    assert record.route == "/v1/messages"
    assert (record.prompt_tokens, record.completion_tokens) == (ANTHROPIC_COUNTED, 42)
    assert record.tokens_estimated >= 500  # max_tokens reserved at admission
    assert KEY not in caplog.text
    assert all(KEY not in json.dumps(r.as_dict()) for r in records.attempts + records.requests)


def test_sync_anthropic_stream_is_reconciled(start_upstream: StartUpstream) -> None:
    server = start_upstream(auth="anthropic")
    gov, records = governed()
    client = pacekeeper.wrap(anthropic.Anthropic(base_url=server.base, api_key=KEY), gov)
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as events:
        assert events.get_final_text() == "Hello there"
    (record,) = records.requests
    assert (record.prompt_tokens, record.completion_tokens) == (ANTHROPIC_COUNTED, 42)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_azure_deployment_route_is_its_own_lane_and_sends_api_key(
    start_upstream: StartUpstream, is_async: bool
) -> None:
    server = start_upstream(auth="api-key")
    gov, records = governed()
    options: dict[str, Any] = {
        "azure_endpoint": server.base,
        "api_key": KEY,
        "api_version": "2024-10-21",
    }
    messages: Any = [{"role": "user", "content": "x"}]
    if is_async:
        async_client = pacekeeper.wrap(openai.AsyncAzureOpenAI(**options), gov)
        await async_client.chat.completions.create(model="prod-gpt4o", messages=messages)
        await async_client.close()
    else:
        client = pacekeeper.wrap(openai.AzureOpenAI(**options), gov)
        client.chat.completions.create(model="prod-gpt4o", messages=messages)
    assert server.seen[-1].headers["api-key"] == KEY
    seen = server.seen[-1]
    assert seen.path == "/openai/deployments/prod-gpt4o/chat/completions"
    assert seen.query == "api-version=2024-10-21"
    (record,) = records.requests
    assert record.model == "prod-gpt4o"
    assert record.route == "/openai/deployments/prod-gpt4o/chat/completions"
    assert (record.prompt_tokens, record.completion_tokens) == (120, 30)
    assert [lane.key for lane in gov.lanes] == [
        ("/openai/deployments/prod-gpt4o/chat/completions", "prod-gpt4o")
    ]


def test_groq_provider_leaves_cached_tokens_out(start_upstream: StartUpstream) -> None:
    server = start_upstream()
    gov, records = governed()
    client = pacekeeper.wrap(
        openai.OpenAI(base_url=server.base + "/openai/v1", api_key=KEY), gov, provider="groq"
    )
    client.chat.completions.create(model="llama", messages=[{"role": "user", "content": "x"}])
    assert records.requests[0].prompt_tokens == 20


@pytest.mark.parametrize(
    ("auth", "path", "expected_rpm", "expected_tpm"),
    [
        ("bearer", "/v1/chat/completions", 5000, 800_000),  # x-ratelimit-*
        ("anthropic", "/v1/messages", 4000, 400_000),  # anthropic-ratelimit-* (input tokens)
    ],
)
def test_limits_are_learned_from_each_dialects_headers(
    start_upstream: StartUpstream, auth: str, path: str, expected_rpm: int, expected_tpm: int
) -> None:
    server = start_upstream(auth=auth)
    gov, _ = governed()
    if auth == "anthropic":
        anthropic_client = pacekeeper.wrap(
            anthropic.Anthropic(base_url=server.base, api_key=KEY), gov
        )
        anthropic_client.messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    else:
        openai_client = pacekeeper.wrap(
            openai.OpenAI(base_url=server.base + "/v1", api_key=KEY), gov
        )
        openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    (lane,) = gov.lanes
    assert lane.key[0] == path
    assert lane.learned_rpm == expected_rpm
    assert lane.learned_tpm == expected_tpm
    # Anthropic's output tokens are a limit of their own (OTPM), paced by their own bucket.
    assert lane.learned_otpm == (80_000 if auth == "anthropic" else None)
    assert (lane.output_tokens is not None) == (auth == "anthropic")


def test_route_urls_per_provider() -> None:
    from pacekeeper.providers import get_provider

    azure = get_provider("azure")
    assert (
        azure.route_url("https://r.openai.azure.com/", "/v1/embeddings", model="emb 3")
        == "https://r.openai.azure.com/openai/deployments/emb%203/embeddings?api-version=2024-10-21"
    )
    assert (
        azure.route_url("https://r.openai.azure.com/openai/v1", "/v1/chat/completions", model="d")
        == "https://r.openai.azure.com/openai/v1/chat/completions"
    )
    assert (
        get_provider("gemini").route_url(
            "https://generativelanguage.googleapis.com/v1beta/openai", "/v1/chat/completions"
        )
        == "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    )
    assert (
        get_provider("anthropic").route_url("https://api.anthropic.com", "/v1/messages")
        == "https://api.anthropic.com/v1/messages"
    )


async def test_httpx_transport_asks_for_stream_usage_too(start_upstream: StartUpstream) -> None:
    import httpx

    server = start_upstream()
    gov, records = governed()
    transport = pacekeeper.HttpxTransport(gov, include_usage=True)
    async with httpx.AsyncClient(transport=transport) as client:
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        async with client.stream(
            "POST",
            server.base + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {KEY}"},
        ) as response:
            text = (await response.aread()).decode()
    assert '"usage"' not in text
    assert text.endswith("data: [DONE]\n\n")
    assert server.seen[-1].body["stream_options"] == {"include_usage": True}
    assert records.requests[0].completion_tokens == 30
