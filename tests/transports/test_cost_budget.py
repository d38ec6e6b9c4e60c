"""The governed transport's own work per request, counted in operations, against a budget.

Issue 15 brought what ``pacekeeper.Transport`` adds to a request from about twice the HTTP
client's own CPU to a fraction of it. Time is no measure in a test (machines differ, load
varies; ``python -m bench.hotpath`` measures it side by side), but the work is: the Python
and C functions called per request, counted with ``sys.setprofile`` over many requests through
the governed transport and through the bare client in the same test, against an inner
transport that answers at once (no sockets). A change that makes the hot path call more
than the budget below fails here; raise the budget only with a measured reason.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import deque
from types import FrameType
from typing import Any

import httpx2
import pytest

import pacekeeper

_ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 80}}],
        "usage": {"prompt_tokens": 60, "completion_tokens": 100, "total_tokens": 160},
    }
).encode()
_HEADERS = [
    ("content-type", "application/json"),
    ("x-request-id", "req_1"),
    ("x-ratelimit-limit-requests", "100000000"),
    ("x-ratelimit-remaining-requests", "99999999"),
    ("x-ratelimit-reset-requests", "1ms"),
    ("x-ratelimit-limit-tokens", "10000000000"),
    ("x-ratelimit-remaining-tokens", "9999999999"),
    ("x-ratelimit-reset-tokens", "1ms"),
]
_PROSE = "quarterly revenue grew across regions while margins narrowed on logistics costs "

# Function calls pacekeeper adds per request, on top of the bare client's (790 with httpx2
# 1.x), measured when the budget was set: 186 with a fixed concurrency, 283-287 adaptive (its
# window starts below the 16 workers, so requests queue and are woken). Before issue 15's
# work: 445 and 555; after its first round, 263 and 381. The budgets leave about 10% for
# noise (the adaptive window's ramp, the rate-limit headers read at most every 0.1 s, one
# exact token count in 64 requests). Issue 15's queued-memory work (no frame while queued,
# one attempt loop per request): fixed 194.8, adaptive 298-308 over four runs (one run in
# a loaded test session read 323, as main's tree can: the window's ramp); fixed lowered.
# Issue 15's third round (structural trims, and the governor run on a clock that ticks 20 µs
# a reading: the count no longer moves with the machine's load; identical from run to run):
# fixed 169.9, adaptive 268.5 (on the real clock, on a loaded machine, the same code read
# 190-201 and 292-301, main's 206-220 and 292-350). Budgets: about 2% over.
# Fourth round (no finaliser on the surfaces' permits, the queue's lock not re-entered, a
# waiter woken once not asked again, the head named without len()): fixed 164.9, adaptive
# 255.8; about 2% over.
# Raised knowingly to 172 at 168.9 (fixed; adaptive and stream still under theirs): a lane
# that discovers a token rate from token-scoped 429s (issue 10, Gemini) measures the tokens
# sent in the second before one, so every send's charge is kept beside its time (a deque's
# append and pop per request), and the success hands its charge to the token rate.
# The stated requests limit compared on every answer (a limit that changes is read at once,
# not up to 0.1 s later): one C call more (its header decoded), fixed 169.9, adaptive 259.9,
# stream 259.9 (was 258.9).
# Fifth round (issue 15, branch `hotpath`): the latency tracker merges a window's answered
# and unanswered requests instead of sorting them together (its extend and its list of the
# unanswered gone), the request's facts a plain class, the usage digits read without a
# comprehension, no BilledUsage for an answer without cache reads: fixed 168.9 -> 166.4,
# adaptive 258.7 -> 256.2, stream 259.0 -> 258.5. The frozen records' object.__setattr__
# calls (slot wrappers) are no profile events, so this count does not see most of the CPU
# saved (bench/results/hotpath.md). Fixed lowered to 1% over (the count is exact).
# Sixth round (branch `records15`): a success's frozen record built only when something
# reads it (a hook, the INFO log, the response's extension), the lane's stats fed from the
# call's fields, no Decision per answer for the surfaces, the usage reconciliation a slotted
# class: fixed 167.4 -> 165.4, adaptive 257.2 -> 255.2, stream 259.5 -> 255.5. Most of the
# CPU saved is again the record's object.__setattr__ calls, unseen here; the response's lazy
# extensions add 2 calls in this harness (httpx reads http_version and reason_phrase, which
# its inner transport does not set, as httpcore's does). Budgets: the count rounded up.
# Seventh round (issue 15, branch `s35-hotpath`): a success settled in one step
# (Call.settle_success -> Lane.settle_success: no Reconciliation, no branches for the other
# outcomes, positional arguments), the first admission stepped without an await
# (Attempts.first_turn: no StopIteration through three frames), the observers, the grant,
# the release and the stats called positionally: fixed 165.4 -> 160.4, adaptive 255.2 ->
# 252.2, stream 255.5 -> 254.5. Most of the work saved is keyword binding and the exception,
# which this count does not see (callgrind: 271,941 -> 237,842 instructions added a fixed
# request, bench/results/hotpath.md). Budgets: the count rounded up. Then one frame back
# (Attempts._report: an answer and a stream's end settled by one body, not two copies):
# fixed 161.4, adaptive 253.2, stream 255.4.
# Eighth round (issue 15, branch `s36-hotcpu`): the transport opens its call positionally
# from the facts' counts (Governor._open, no TokenEstimate made), the lane's stats count in
# plain dicts through LatencyHistogram.add (three calls, fewer instructions than the inline
# loop over a tuple of pairs), a whole body handed back without an async generator (its
# iterator's two __anext__ calls count here; the generator's hooks and close did not):
# fixed 159.4, adaptive 251.2 (callgrind: 241k -> 229k instructions added a fixed request,
# bench/results/hotpath.md). Budgets: the count rounded up, plus one.
# Ninth round (issue 15, branch `s37-hotcpu`): frames fused on the admission and the settle
# (the first turn steps Lane.join itself, cost_of and _count_admission inlined, a local
# slot released inline, the three PacedRate.succeeded one call, the transport settling
# through Attempts._report): fixed 159.4 -> 150.4, adaptive 251.2 -> 246.2 (bytecodes,
# bench.hotpath_ops: 3,626 -> 3,487 and 4,741 -> 4,682 in pacekeeper); adaptive 248.0 once
# merged with main's latency changes of the same session. Budgets: about 2% over.
_BUDGET = {"fixed": 154, "adaptive": 253}
_WORKERS = 16
_REQUESTS = 400


_EVENTS = (
    b"".join(
        b"data: "
        + json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}],
            }
        ).encode()
        + b"\n\n"
        for _ in range(16)
    )
    + b'data: {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 60, '
    b'"completion_tokens": 16, "total_tokens": 76}}\n\ndata: [DONE]\n\n'
)
_STREAM_HEADERS = [("content-type", "text/event-stream"), *_HEADERS[1:]]


class _Answering(httpx2.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0)
        if b'"stream": true' in request.content or b'"stream":true' in request.content:
            # A whole stream in one chunk, as a fast upstream on loopback sends it.
            return httpx2.Response(
                200, headers=_STREAM_HEADERS, stream=_OneChunk(_EVENTS), request=request
            )
        return httpx2.Response(
            200, headers=_HEADERS, stream=httpx2.ByteStream(_ANSWER), request=request
        )


class _OneChunk(httpx2.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> Any:
        yield self._body


def _ticking_clock() -> Any:
    """A monotonic clock that moves 20 µs at every reading, whatever the machine's load: the
    governor's timed choices (the rate-limit headers read at most every 0.1 s, the adaptive
    window's ramp, latency windows) then fall on the same requests from run to run, and the
    count does not move with the load (about 200 µs a request: a quiet machine's pace). A
    deque's popleft is a C call, as time.monotonic is: each reading counts as one."""
    # 100,000 readings: a run takes about 6,400 (fifteen times fewer)
    return deque(i * 20e-6 for i in range(100_000)).popleft


class _Calls:
    """Counts every Python and C function call while on."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            self.count += 1


async def _calls_per_request(kind: str, *, stream: bool = False) -> float:
    if kind == "bare":
        transport: httpx2.AsyncBaseTransport = _Answering()
    else:
        limits = pacekeeper.Limits(concurrency=64) if kind == "fixed" else None
        transport = pacekeeper.Transport(
            pacekeeper.Governor(limits=limits, clock=_ticking_clock()),
            transport=_Answering(),
            include_usage=stream,
        )
    client = httpx2.AsyncClient(transport=transport, base_url="http://answering/v1")
    bodies: list[dict[str, Any]] = [
        {
            "model": "gpt-4o-mini",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": f"Request {i}: " + _PROSE * (1 + i % 4)}],
        }
        for i in range(_REQUESTS * 2)
    ]
    for body in bodies if stream else ():
        body["stream"] = True

    async def send(indices: Any) -> None:
        for i in indices:
            if not stream:
                response = await client.post("/chat/completions", json=bodies[i])
                assert response.status_code == 200
                continue
            async with client.stream("POST", "/chat/completions", json=bodies[i]) as response:
                assert response.status_code == 200
                assert (await response.aread()).endswith(b"data: [DONE]\n\n")

    warm = iter(range(_REQUESTS))  # the same client first: lanes, limits, tokenizer learned
    await asyncio.gather(*(send(warm) for _ in range(_WORKERS)))
    counter = _Calls()
    measured = iter(range(_REQUESTS, 2 * _REQUESTS))
    sys.setprofile(counter)
    try:
        await asyncio.gather(*(send(measured) for _ in range(_WORKERS)))
    finally:
        sys.setprofile(None)
    await client.aclose()
    return counter.count / _REQUESTS


@pytest.mark.parametrize("kind", ["fixed", "adaptive"])
def test_the_governed_transport_adds_no_more_calls_per_request_than_its_budget(kind: str) -> None:
    bare = asyncio.run(_calls_per_request("bare"))
    governed = asyncio.run(_calls_per_request(kind))
    added = governed - bare
    assert added > 0  # the count is real: governing a request is not free
    assert added <= _BUDGET[kind], (
        f"pacekeeper.Transport ({kind} concurrency) now adds {added:.0f} function calls per "
        f"request to the bare client's {bare:.0f}; the budget is {_BUDGET[kind]}. Profile "
        "with `python -m bench.hotpath --profile out.md` and take the new work off the hot "
        "path (or raise the budget with the measured reason)."
    )


# Python and C function calls pacekeeper adds per streamed request (17 events in one chunk,
# the usage chunk asked for with include_usage and removed again), fixed concurrency: 702
# before the stream path was trimmed (a new Response per stream, every header decoded twice,
# every event checked one by one, the body encoded again), 495 after, 423 after the second
# round on the hot path (settle, admission, request reading); about 10% for noise. 464 when
# the transport's start was inlined for want of room; 462.4 with it a function again (the
# queue's class found without Priority.rank, the idle timeout read without a property).
# Third round: 397.2 (the include_usage copy no longer builds a second Request, the headers
# read from httpx's lower-cased entries, the usage-only event parsed by json's C scanner).
# Raised knowingly to 425 at 418.2: learning a token bucket's fixed windows (branch
# `windows`, issue 10) drains the token bucket and keeps its windows on each answer whose
# headers are read, 21 calls more a stream here (its answers' headers, limits and usage take
# 144 calls in this harness against a plain answer's 19, whose count is unmoved).
# Fourth round: 255.1, a stream's headers read at most every 0.1 s of its lane's clock as a
# complete answer's are (-140), one idle watch per event loop instead of a timer per stream
# (-20); about 2% over. Sixth round (the record built when read, no Decision per stream's
# end): 255.5, the count rounded up. Raised knowingly to 257 at 256.4 (issue 15, proxy
# round): the usage scanner finds where a count can first be named (one bytes.find, the
# call added) and searches from there, instead of trying its twelve names at every quote
# of the stream before: 31 -> 8 µs a 5-kB stream in one chunk (the regex's work, which no
# call counts, was a fifth of the proxy's instructions per stream).
# Raised knowingly to 260 at 258.5 (issue 15, branch `s33-stream`): the usage scanner and
# the usage-chunk filter read each chunk in one pass, the filter's empty arrays found by a
# memchr walk over "[" (one bytes.find per array, 18 in this stream) instead of a regular
# expression's search of every byte: more C calls, fewer instructions (callgrind, the
# simulator's 5.2-kB stream in one chunk: 215k -> 194k for both; the proxy's stream 868k ->
# 841k a request, bench/results/proxy-ab-2026-12-03-stream.md).
# Seventh round (branch `s35-hotpath`, the success settled in one step): 254.5; then 255.4
# (Attempts._report, above); rounded up.
# Eighth round (issue 15, branch `s36-hotcpu`): 256.6 (the stats' three add() calls, the
# facts' counts without a TokenEstimate); rounded up, plus one.
# Ninth round (issue 15, branch `s37-hotcpu`, the frames fused above): 248.5; about 2% over.
_STREAM_BUDGET = 254


def test_a_governed_stream_adds_no_more_calls_per_request_than_its_budget() -> None:
    bare = asyncio.run(_calls_per_request("bare", stream=True))
    governed = asyncio.run(_calls_per_request("fixed", stream=True))
    added = governed - bare
    assert added > 0
    assert added <= _STREAM_BUDGET, (
        f"a governed stream now adds {added:.0f} function calls per request to the bare "
        f"client's {bare:.0f}; the budget is {_STREAM_BUDGET}. Profile the stream path "
        "(transports/_flow.py, _stream_response) and take the new work off it."
    )
