"""The attempt loop (core/attempts.py) as the surfaces drive it: the governed transports,
``Governor.run`` and ``gov.admit``, against a real HTTP server on loopback that answers from
a script (a 503, then a 200; a 400; a dropped connection; a stream), so that each path of the
loop is taken on purpose. No mocks."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import pytest

import pacekeeper
from pacekeeper import (
    Attempts,
    Governor,
    Limits,
    NonRetryableError,
    RecordCollector,
    RetriesExhausted,
    RetryPolicy,
)
from pacekeeper.core.classify import OutcomeKind, classify_response, verdict_for_failure

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "max_tokens": 20, "messages": [{"role": "user", "content": "hello"}]}
ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
).encode()
EVENTS = (
    b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}}\n\n'
    b"data: [DONE]\n\n"
)

Step = Callable[[BaseHTTPRequestHandler], None]


def answer(status: int, body: bytes = ANSWER, **headers: str) -> Step:
    def step(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)

    return step


def error(status: int, **headers: str) -> Step:
    return answer(
        status, json.dumps({"error": {"message": f"status {status}"}}).encode(), **headers
    )


def drop(handler: BaseHTTPRequestHandler) -> None:
    """The connection is cut before any answer."""
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


def stream(gate: threading.Event) -> Step:
    """A server-sent event stream: its first event at once, the rest once ``gate`` is set."""

    def step(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()
        first, rest = EVENTS.split(b"\n\n", 1)
        handler.wfile.write(first + b"\n\n")
        handler.wfile.flush()
        gate.wait(10)
        handler.wfile.write(rest)
        handler.close_connection = True

    return step


class Scripted:
    """A loopback HTTP server answering each POST with the next step of its script."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.seen = 0
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                script.seen += 1
                script.steps.pop(0)(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Scripted:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def instant() -> Iterator[None]:
    pacekeeper.set_testing(True)
    yield
    pacekeeper.set_testing(False)


def governed(gov: Governor, server: Scripted) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=pacekeeper.Transport(gov), base_url=server.url)


def in_flight(gov: Governor) -> int:
    return sum(lane.slots.in_flight for lane in gov.lanes)


@pytest.mark.usefixtures("instant")
async def test_the_transport_retries_through_the_loop_until_an_answer() -> None:
    records = RecordCollector()
    gov = Governor(hooks=[records])
    with Scripted(error(503), drop, answer(200)) as server:
        async with governed(gov, server) as client:
            response = await client.post("/chat/completions", json=BODY)
    assert response.status_code == 200
    assert server.seen == 3
    assert [a.outcome for a in records.attempts] == ["overloaded", "connection_error", "ok"]
    [request] = records.requests
    assert (request.ok, request.attempts, request.completion_tokens) == (True, 3, 2)
    assert response.extensions[pacekeeper.RECORD_EXTENSION] == request
    assert in_flight(gov) == 0


@pytest.mark.usefixtures("instant")
async def test_an_answer_a_retry_cannot_change_ends_the_loop_at_once() -> None:
    records = RecordCollector()
    gov = Governor(hooks=[records])
    with Scripted(error(400)) as server:
        async with governed(gov, server) as client:
            response = await client.post("/chat/completions", json=BODY)
    assert response.status_code == 400  # the provider's answer goes back as it is
    assert server.seen == 1
    [request] = records.requests
    assert (request.ok, request.attempts, request.error_type) == (False, 1, "NonRetryableError")


async def test_a_request_cancelled_in_its_retry_pause_frees_everything_and_is_recorded() -> None:
    records = RecordCollector()
    gov = Governor(hooks=[records])  # real pauses: the server asks for 30 s
    with Scripted(error(503, retry_after="30")) as server:
        async with governed(gov, server) as client:
            task = asyncio.create_task(client.post("/chat/completions", json=BODY))
            while not records.attempts:  # the attempt is settled: the loop is pausing
                await asyncio.sleep(0.01)
            assert records.attempts[0].retry_in_s is not None
            assert records.attempts[0].retry_in_s >= 30
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert server.seen == 1
    [request] = records.requests
    assert (request.outcome, request.attempts, request.error_type) == (
        "cancelled",
        1,
        "CancelledError",
    )
    assert in_flight(gov) == 0


@pytest.mark.usefixtures("instant")
async def test_a_dropped_connection_that_is_not_retried_carries_the_loops_reason() -> None:
    gov = Governor(retry=RetryPolicy(max_attempts=2))
    with Scripted(drop, drop) as server:
        async with governed(gov, server) as client:
            with pytest.raises(httpx2.TransportError) as info:
                await client.post("/chat/completions", json=BODY)
    assert server.seen == 2
    if sys.version_info >= (3, 11):  # exceptions carry notes
        notes = getattr(info.value, "__notes__", [])
        assert any("gave up after 2 attempts" in note for note in notes)
    assert in_flight(gov) == 0


async def test_a_stream_is_settled_when_it_ends_not_when_it_is_handed_over() -> None:
    records = RecordCollector()
    gov = Governor(hooks=[records])
    gate = threading.Event()
    body = {**BODY, "stream": True}
    with Scripted(stream(gate)) as server:
        async with (
            governed(gov, server) as client,
            client.stream("POST", "/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            # handed over: the attempt holds its slot, and nothing is recorded yet
            assert in_flight(gov) == 1
            assert records.requests == []
            gate.set()
            text = (await response.aread()).decode()
    assert text.endswith("data: [DONE]\n\n")
    assert in_flight(gov) == 0
    [request] = records.requests
    assert (request.ok, request.attempts, request.completion_tokens) == (True, 1, 7)


@pytest.mark.usefixtures("instant")
def test_the_sync_transport_drives_the_blocking_twin() -> None:
    records = RecordCollector()
    gov = Governor(hooks=[records])
    with Scripted(error(502), answer(200)) as server:
        transport = pacekeeper.SyncTransport(gov)
        with httpx2.Client(transport=transport, base_url=server.url) as client:
            response = client.post("/chat/completions", json=BODY)
    assert response.status_code == 200
    assert [r.attempts for r in records.requests] == [2]


class SdkError(Exception):
    """As an SDK raises for an HTTP error: a status code and the response."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code


@pytest.mark.usefixtures("instant")
async def test_run_maps_what_fn_raises_through_the_loop() -> None:
    records = RecordCollector()
    gov = Governor(hooks=[records])
    with Scripted(error(503), answer(200), error(400)) as server:
        async with httpx2.AsyncClient(base_url=server.url) as client:

            async def fn() -> Any:
                response = await client.post("/chat/completions", json=BODY)
                if response.status_code >= 400:
                    raise SdkError(response.status_code)
                return response

            # a 503 is retried, and the answer returned
            assert (await gov.run(fn, route=CHAT, model="m")).status_code == 200
            # a 400 is not: the governor's error, raised from the SDK's
            with pytest.raises(NonRetryableError) as info:
                await gov.run(fn, route=CHAT, model="m")
            assert isinstance(info.value.__cause__, SdkError)

        async def broken() -> None:
            raise ValueError("a bug in fn")

        # what the governor does not know propagates as it is, recorded, never retried
        with pytest.raises(ValueError, match="a bug in fn"):
            await gov.run(broken, route=CHAT, model="m")
    assert server.seen == 3
    assert [(r.ok, r.attempts, r.outcome) for r in records.requests] == [
        (True, 2, "ok"),
        (False, 1, "client_error"),
        (False, 1, "other"),
    ]
    assert in_flight(gov) == 0


@pytest.mark.usefixtures("instant")
async def test_an_admission_is_one_turn_of_the_loop() -> None:
    gov = Governor(limits=Limits(concurrency=2))
    with Scripted(error(503)) as server:
        async with (
            httpx2.AsyncClient(base_url=server.url) as client,
            gov.admit(route=CHAT, model="m", tokens=10) as admission,
        ):
            assert in_flight(gov) == 1
            response = await client.post("/chat/completions", json=BODY)
            decision = admission.report(
                status=response.status_code,
                headers=dict(response.headers),
                body=response.content,
            )
    assert not decision.retry  # a single admission never retries, though a 503 could
    assert isinstance(decision.error, RetriesExhausted)
    assert "a single admission does not retry" in str(decision.error)
    assert admission.decision is decision
    assert in_flight(gov) == 0


@pytest.mark.usefixtures("instant")
@pytest.mark.usefixtures("instant")
async def test_the_loop_alone_retries_and_stops() -> None:
    gov = Governor(retry=RetryPolicy(max_attempts=4))
    attempts = Attempts(gov.call(route=CHAT, model="m", tokens=10))
    assert repr(attempts).endswith("attempt 0, not admitted>")
    statuses = iter([502, 503, 200])
    seen = []
    async for permit in attempts:
        assert attempts.permit is permit
        status = next(statuses)
        seen.append(status)
        attempts.answered(classify_response(status, {}, None, now_wall_s=0.0))
    assert seen == [502, 503, 200]
    assert attempts.decision is not None
    assert attempts.decision.record is not None
    assert attempts.decision.record.attempts == 3
    assert repr(attempts).endswith("attempt 3, done>")
    with pytest.raises(RuntimeError, match="already reported"):
        attempts.answered(verdict_for_failure(OutcomeKind.TIMEOUT, "late"))


async def test_a_queued_admission_is_the_loop_itself_woken_in_turn_or_cancelled() -> None:
    """While it waits, a queued request's task awaits its Attempts (no coroutine of the loop's
    or of the lane's, whose frames would hold their locals); a release wakes the next in
    line, which is admitted; a cancelled one leaves the queue and is recorded once."""
    records = RecordCollector()
    gov = Governor(limits=Limits(concurrency=1), hooks=[records])
    first = Attempts(gov.call(route=CHAT, model="m", tokens=10))
    await anext(first)
    queued = [Attempts(gov.call(route=CHAT, model="m", tokens=10)) for _ in range(3)]
    admitted: list[Attempts] = []

    async def wait(attempts: Attempts) -> None:
        async for _ in attempts:
            admitted.append(attempts)
            return

    tasks = [asyncio.create_task(wait(a)) for a in queued]
    await asyncio.sleep(0.01)
    (lane,) = gov.lanes
    assert lane.queued == 3
    for task, attempts in zip(tasks, queued, strict=True):
        coro = task.get_coro()
        assert coro is not None
        assert getattr(coro, "cr_await", None) is attempts  # no frame between task and loop
        assert repr(attempts).endswith("attempt 1, queued>")
    tasks[1].cancel()
    await asyncio.gather(tasks[1], return_exceptions=True)
    assert lane.queued == 2
    assert [r.outcome for r in records.requests] == ["cancelled"]
    first.answered(classify_response(200, {}, None, now_wall_s=0.0))
    await asyncio.wait_for(tasks[0], 5)
    assert admitted == [queued[0]]
    assert queued[0].permit is not None
    assert queued[0].call.queued_s > 0
    assert lane.queued == 1
    queued[0].answered(classify_response(200, {}, None, now_wall_s=0.0))
    await asyncio.wait_for(tasks[2], 5)
    assert admitted == [queued[0], queued[2]]
    queued[2].answered(classify_response(200, {}, None, now_wall_s=0.0))
    assert lane.queued == 0
    assert in_flight(gov) == 0
    assert sorted(r.outcome for r in records.requests) == ["cancelled", "ok", "ok", "ok"]


async def test_user_permits_free_their_slot_when_dropped_and_a_surfaces_have_no_finaliser() -> None:
    """``Call.admit`` hands its permit to user code: dropped unreleased (at once, or after a
    wait in the queue), it frees its slot when collected. A surface's loop
    (``SurfaceAttempts``: the transports, ``Governor.run``, ``wrap()``) always reports its
    outcome, so its permits carry no finaliser (one call fewer on every request)."""
    from pacekeeper.core.attempts import SurfaceAttempts
    from pacekeeper.core.lane import Permit, UserPermit

    gov = Governor(limits=Limits(concurrency=1))

    async def admit_call() -> Permit:
        return await gov.call(route=CHAT, model="m", tokens=10).admit()

    permit = await asyncio.wait_for(admit_call(), 5)
    assert type(permit) is UserPermit
    queued = asyncio.create_task(admit_call())
    await asyncio.sleep(0.01)
    del permit  # never released: collected at once (no cycle holds it)
    again = await asyncio.wait_for(queued, 5)  # woken by the dropped permit's finaliser
    assert type(again) is UserPermit
    again.release()
    assert in_flight(gov) == 0

    surface = SurfaceAttempts(gov.call(route=CHAT, model="m", tokens=10))
    plain = await asyncio.wait_for(anext(surface), 5)
    assert type(plain) is Permit
    assert not hasattr(plain, "__del__")
    waiting = SurfaceAttempts(gov.call(route=CHAT, model="m", tokens=10))

    async def admit(attempts: Attempts) -> Permit:
        return await anext(attempts)

    queued_plain = asyncio.create_task(admit(waiting))
    await asyncio.sleep(0.01)
    surface.answered(classify_response(200, {}, None, now_wall_s=0.0))
    assert type(await asyncio.wait_for(queued_plain, 5)) is Permit  # granted on its turn
    waiting.answered(classify_response(200, {}, None, now_wall_s=0.0))
    assert in_flight(gov) == 0
