"""A stream's usage read and its added usage-only chunk removed in one pass a chunk
(``UsageScanner(strip=True)``), whatever the chunking: checked against references that read
the whole stream at once (the counts: every count the stream names, the last of each
winning; the bytes: the stream cut one event at a time, each usage-only event dropped), on
their own and through the governed transport, events split anywhere across chunks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pacekeeper
from pacekeeper.transports._engine import _USAGE_NUMBER, UsageScanner, _is_usage_only

_DELTA = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"word "}}],"usage":null}'
_EVENTS = [
    _DELTA,
    b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    # the usage-only chunk include_usage adds, compact and spaced
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":14,"completion_tokens":64,'
    b'"total_tokens":78,"prompt_tokens_details":{"cached_tokens":3}}}',
    b'data: {"id": "c", "choices": [ ], "usage": {"prompt_tokens": 9, "completion_tokens": 7}}',
    # usage in a chunk that has choices too (some servers): counted, never removed
    b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":5,'
    b'"completion_tokens":1}}',
    # empty choices without usage, and a usage object that is not JSON: kept
    b'data: {"choices":[]}',
    b'data: {"choices": [], "usage": {"prompt_tokens": 2',
    # Anthropic's message_start and message_delta
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
    b'{"input_tokens":10,"cache_creation_input_tokens":200,"cache_read_input_tokens":50,'
    b'"output_tokens":1}}}',
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":42}}',
    # Gemini's usageMetadata
    b'data: {"candidates":[],"usageMetadata":{"promptTokenCount":12,'
    b'"candidatesTokenCount":3,"thoughtsTokenCount":40}}',
    b": a comment",
    b"data: [DONE]",
]
_BLANK = [b"\n\n", b"\r\n\r\n"]


def _reference_counts(stream: bytes) -> dict[bytes, int]:
    return {name: int(value) for name, value in _USAGE_NUMBER.findall(stream)}


def _reference_bytes(stream: bytes) -> tuple[bytes, int]:
    """The stream cut one event at a time, each usage-only event dropped; how many were."""
    out, start, removed = [], 0, 0
    while True:
        lf, crlf = stream.find(b"\n\n", start), stream.find(b"\r\n\r\n", start)
        end, sep = (crlf, 4) if crlf >= 0 and (lf < 0 or crlf < lf) else (lf, 2)
        if end < 0:
            break
        event = stream[start : end + sep]
        if _is_usage_only(event):
            removed += 1
        else:
            out.append(event)
        start = end + sep
    rest = stream[start:]
    if _is_usage_only(rest):
        return b"".join(out), removed + 1
    return b"".join(out) + rest, removed


def _chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    places = sorted({cut % (len(stream) + 1) for cut in cuts})
    chunks, start = [], 0
    for place in places:
        chunks.append(stream[start:place])
        start = place
    chunks.append(stream[start:])
    return chunks


_STREAMS = st.lists(
    st.tuples(st.sampled_from(_EVENTS), st.sampled_from(_BLANK), st.booleans()), max_size=12
).map(
    # an extra LF after some events: runs of blank lines, where events are cut must not move
    lambda parts: b"".join(
        event + blank + (b"\n" if extra else b"") for event, blank, extra in parts
    )
)
_CUTS = st.lists(st.integers(min_value=0, max_value=4000), max_size=10)


@settings(max_examples=400, deadline=None)
@given(_STREAMS, _CUTS, st.booleans())
@example(b"".join(e + b"\n\n" for e in (_DELTA, _EVENTS[2], b"data: [DONE]")), [], True)
@example(b"".join(e + b"\n\n" for e in (_DELTA, _EVENTS[2], b"data: [DONE]")), [70, 71], True)
def test_one_pass_reads_the_counts_and_drops_the_usage_chunk_however_the_stream_is_cut(
    stream: bytes, cuts: list[int], strip: bool
) -> None:
    reader = UsageScanner(strip=strip)
    chunks = _chunked(stream, cuts)
    passed = [reader.feed(chunk) for chunk in chunks]
    out = b"".join(passed) + (reader.flush() if strip else b"")
    if strip:
        assert (out, reader.removed) == _reference_bytes(stream)
    else:
        assert passed == chunks  # nothing held back, nothing copied
    assert reader._counts == _reference_counts(stream)
    whole = UsageScanner()
    whole.take(_reference_counts(stream))
    assert (reader.prompt_tokens, reader.completion_tokens, reader.billed) == (
        whole.prompt_tokens,
        whole.completion_tokens,
        whole.billed,
    )


class _Chunks(httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> Any:
        for chunk in self._chunks:
            await asyncio.sleep(0)
            yield chunk


class _Streaming(httpx2.AsyncBaseTransport):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.bodies.append(json.loads(request.content))
        return httpx2.Response(
            200,
            headers=[("content-type", "text/event-stream")],
            stream=_Chunks(self.chunks),
            request=request,
        )


async def _through_the_transport(chunks: list[bytes]) -> tuple[bytes, Any, dict[str, Any]]:
    records = pacekeeper.RecordCollector()
    inner = _Streaming(chunks)
    transport = pacekeeper.Transport(
        pacekeeper.Governor(hooks=[records]), transport=inner, include_usage=True
    )
    async with httpx2.AsyncClient(transport=transport, base_url="http://up/v1") as client:
        body = {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        async with client.stream("POST", "/chat/completions", json=body) as response:
            received = await response.aread()
    return received, records.requests[-1], inner.bodies[-1]


@settings(max_examples=60, deadline=None)
@given(_STREAMS, _CUTS)
def test_a_governed_stream_reaches_the_caller_without_the_usage_chunk_it_added(
    stream: bytes, cuts: list[int]
) -> None:
    received, record, sent = asyncio.run(_through_the_transport(_chunked(stream, cuts)))
    assert sent["stream_options"] == {"include_usage": True}  # asked for by pacekeeper
    assert received == _reference_bytes(stream)[0]
    whole = UsageScanner()
    whole.take(_reference_counts(stream))
    assert (record.prompt_tokens, record.completion_tokens) == (
        whole.prompt_tokens,
        whole.completion_tokens,
    )
