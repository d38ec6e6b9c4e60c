"""A queueing server that answers a waiting request at once and holds it open
(``Queueing.keep_alive_s``, DeepSeek's documented behaviour under load), over real HTTP on
loopback: the 200 and its headers come before the answer, blank lines (JSON) or
``: keep-alive`` comments (SSE) fill the wait, and an error found after the 200 cuts the line."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx2
import pytest

from pacekeeper.sim import Faults, Latency, Queueing, Scenario
from pacekeeper.sim._cli import build_scenario, configure_parser

from .helpers import StartSim, chat, sse_events

_HELD = Queueing(capacity=1, keep_alive_s=0.05)


async def _timed(
    http: httpx2.AsyncClient, body: dict[str, object]
) -> tuple[int, float, bytes, float]:
    """(status, seconds to the headers, the body, seconds to its end)."""
    started = time.monotonic()
    async with http.stream("POST", "/chat/completions", json=body) as response:
        headers_s = time.monotonic() - started
        raw = await response.aread()
    return response.status_code, headers_s, raw, time.monotonic() - started


async def test_a_request_that_waits_is_answered_at_once_and_held_open_with_blank_lines(
    start_sim: StartSim,
) -> None:
    sim = start_sim(Scenario(queueing=_HELD, latency=Latency(ttft_s=0.5)))
    async with httpx2.AsyncClient(base_url=sim.base_url, timeout=10) as http:
        first, second = await asyncio.gather(
            _timed(http, chat("first", max_tokens=1)),
            _timed(http, chat("second", max_tokens=1)),
        )
    served, waited = sorted((first, second), key=lambda answer: answer[3])
    # The one served at once: a plain answer, its headers with its body.
    assert served[0] == 200
    assert served[2].startswith(b"{")
    assert served[1] >= 0.4
    # The one that waited for the server's only slot: 200 at once, then blank lines until its
    # answer, whole and parseable after them.
    assert waited[0] == 200
    assert waited[1] < served[1]
    assert waited[3] >= 0.9
    blank = len(waited[2]) - len(waited[2].lstrip(b"\n"))
    assert blank >= 5  # every 0.05 s for about 0.5 s (fewer on a loaded machine)
    assert json.loads(waited[2])["choices"][0]["message"]["role"] == "assistant"


async def test_a_stream_that_waits_is_held_open_with_keep_alive_comments(
    start_sim: StartSim,
) -> None:
    sim = start_sim(Scenario(queueing=_HELD, latency=Latency(ttft_s=0.4)))
    body = chat("s", max_tokens=5, stream=True, stream_options={"include_usage": True})
    async with httpx2.AsyncClient(base_url=sim.base_url, timeout=10) as http:
        answers = await asyncio.gather(_timed(http, body), _timed(http, body))
    waited = max(answers, key=lambda answer: answer[3])
    assert waited[0] == 200
    text = waited[2].decode()
    assert text.startswith(": keep-alive\n\n")
    assert text.count(": keep-alive") >= 3
    # Comments aside, the same stream as ever: its events, usage and [DONE] at the end.
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == 5


async def test_a_request_served_at_once_is_never_held_open(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(queueing=Queueing(capacity=4, keep_alive_s=0.05)))
    async with httpx2.AsyncClient(base_url=sim.base_url, timeout=10) as http:
        answers = await asyncio.gather(*(_timed(http, chat(f"{i}")) for i in range(4)))
    assert all(raw.startswith(b"{") for _, _, raw, _ in answers)


async def test_an_error_after_the_200_is_sent_cuts_the_connection(start_sim: StartSim) -> None:
    # Every request hangs 0.3 s and then gets a 504; the one that waited for the first has
    # its 200 already: it can only be cut, as a real server's must (its client sees a broken
    # answer, never a 200 that is not one).
    sim = start_sim(
        Scenario(
            queueing=Queueing(capacity=1, keep_alive_s=0.05), faults=Faults(hang=1.0, hang_s=0.3)
        )
    )
    async with httpx2.AsyncClient(base_url=sim.base_url, timeout=10) as http:

        async def one(content: str) -> int | str:
            try:
                async with http.stream("POST", "/chat/completions", json=chat(content)) as response:
                    await response.aread()
                    status: int = response.status_code
                    return status
            except httpx2.TransportError as exc:
                return type(exc).__name__

        first = asyncio.ensure_future(one("first"))
        await asyncio.sleep(0.1)  # the first holds the server's only slot
        second = await one("second")
        assert await first == 504
    assert second == "RemoteProtocolError"


def test_the_command_line_sets_and_checks_the_keep_alive() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--queue-capacity", "4", "--queue-keep-alive-s", "0.5"])
    assert build_scenario(args).queueing == Queueing(capacity=4, keep_alive_s=0.5)
    args = parser.parse_args(["--profile", "deepseek", "--seed", "1", "--queue-capacity", "9"])
    queueing = build_scenario(args).queueing
    assert queueing is not None
    assert queueing.capacity == 9
    assert queueing.keep_alive_s is not None  # the profile's own, kept
    with pytest.raises(ValueError, match="--queue-keep-alive-s needs --queue-capacity"):
        build_scenario(parser.parse_args(["--queue-keep-alive-s", "1"]))
    with pytest.raises(ValueError, match="keep_alive_s: must be a positive number"):
        Queueing(capacity=1, keep_alive_s=0.0)
