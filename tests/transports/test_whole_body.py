"""What the transport hands back and reads on every request, without the objects it used to
make each time (issue 15): a whole body as the library's ``ByteStream`` without an async
generator, and a request's counts without a ``TokenEstimate``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import pytest

from pacekeeper.core.tokens import estimate_request_chars
from pacekeeper.transports._engine import facts_of
from pacekeeper.transports._flow import _whole_body_class


async def _chunks(stream: Any) -> list[bytes]:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("body", [b'{"a": 1}', b""])
def test_a_whole_body_iterates_as_a_byte_stream_does(body: bytes) -> None:
    whole = _whole_body_class(httpx2)(body)
    plain = httpx2.ByteStream(body)
    # The class the client and the proxy check for.
    assert isinstance(whole, httpx2.ByteStream)
    assert isinstance(whole, httpx2.AsyncByteStream)
    for _ in range(2):  # each iteration anew, as a ByteStream's
        assert asyncio.run(_chunks(whole)) == asyncio.run(_chunks(plain)) == [body]
        assert list(whole) == list(plain) == [body]
    # No async generator: nothing for the event loop's hooks to register or close.
    assert not hasattr(whole.__aiter__(), "aclose")


def test_the_client_reads_the_whole_body_through_the_transport() -> None:
    import pacekeeper

    answer = b'{"usage": {"prompt_tokens": 3, "completion_tokens": 2}}'

    class _Answering(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(
                200,
                headers={"content-type": "application/json"},
                stream=httpx2.ByteStream(answer),
                request=request,
            )

    async def go() -> httpx2.Response:
        transport = pacekeeper.Transport(pacekeeper.Governor(), transport=_Answering())
        async with httpx2.AsyncClient(transport=transport, base_url="http://a/v1") as client:
            answered: httpx2.Response = await client.post(
                "/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            )
            return answered

    response = asyncio.run(go())
    assert response.content == answer
    assert response.is_closed
    assert response.elapsed.total_seconds() >= 0.0


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi there!"}]},
        {"model": "m", "messages": [{"role": "user", "content": "no budget"}]},
        {"model": "m", "input": "a Responses API body", "max_output_tokens": 9},  # walked in full
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
    ],
)
def test_the_facts_counts_are_the_estimates(body: dict[str, Any]) -> None:
    facts = facts_of("POST", "/v1/chat/completions", body)
    estimate = estimate_request_chars(body)
    assert facts.estimate == estimate
    assert (facts.prompt, facts.completion) == (
        estimate.prompt_tokens,
        estimate.max_completion_tokens,
    )
