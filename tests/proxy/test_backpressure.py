"""Back-pressure, clients that leave, and graceful shutdown.

The upstream is the simulator with its own limits; the proxy's governor must hold it to them
however many clients come, refuse honestly (429 + retry-after + x-pacekeeper-refused) what its
bounds cannot hold, never send what nobody waits for, and drain on shutdown.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx2
import openai
import pytest

from pacekeeper import Governor, Limits
from pacekeeper.proxy import REFUSED_HEADER
from pacekeeper.sim import Latency, ModelLimits, Scenario

from .conftest import StartProxy, StartSim

MODEL = "gpt-4o-mini"


def body(i: int) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}


async def post_all(
    client: httpx2.AsyncClient, url: str, indices: range, *, gap_s: float = 0.0
) -> list[httpx2.Response]:
    async def one(i: int) -> httpx2.Response:
        await asyncio.sleep(gap_s * (i - indices.start))
        return await client.post(url, json=body(i))

    return list(await asyncio.gather(*(one(i) for i in indices)))


async def test_500_concurrent_clients_all_answered_upstream_held_to_its_limit(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    # The upstream takes 16 at once (beyond: 429) and 50 ms per answer.
    sim = start_sim(Scenario(default=ModelLimits(max_in_flight=16), latency=Latency(ttft_s=0.05)))
    # 500 connections open at once, from this process: on a busy machine the last requests
    # arrive over a second after the first connections opened, and the slow-client guard's
    # default bound (256 unfinished) would evict the oldest, which is not what this tests.
    proxy = start_proxy(sim, Governor(limits=Limits(concurrency=16)), max_unfinished=1024)
    client = openai.AsyncOpenAI(
        base_url=proxy.base_url, api_key="sk-test", max_retries=0, timeout=60
    )
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"client {i}"}]
            )
            for i in range(500)
        )
    )
    await client.close()
    assert len({r.id for r in replies}) == 500
    seen = sim.stats()
    assert seen["by_status"] == {"200": 500}  # not one 429: the queue held them
    assert seen["peak_in_flight"] <= 16
    assert seen["duplicates"] == {}
    assert proxy.app.counters.refused == {}


async def test_a_full_queue_is_refused_at_once_with_an_honest_retry_after(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.3)))
    proxy = start_proxy(sim, Governor(limits=Limits(concurrency=1)), max_queue=2)
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=10) as client:
        # One in flight, two queued; the fourth finds the queue full.
        first = asyncio.gather(*(client.post(url, json=body(i)) for i in range(3)))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        refused = await client.post(url, json=body(3))
        assert time.monotonic() - started < 0.25  # at once, not after the 0.9 s it would wait
        answered = await first
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.headers[REFUSED_HEADER] == "proxy"
    assert refused.headers["x-pacekeeper-error"] == "proxy_queue_full"
    # Nothing observed yet: one second. Two queued at 1 at a time, 0.3 s each would be 0.6 s.
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "proxy_queue_full"
    assert "--max-queue" in error["message"]
    assert sim.stats()["requests_received"] == 3
    assert proxy.app.counters.refused == {"proxy_queue_full": 1}

    # With a rate observed, retry-after is the time the queue takes to drain.
    async with httpx2.AsyncClient(timeout=10) as client:
        pending = asyncio.gather(*(client.post(url, json=body(i)) for i in range(10, 13)))
        await asyncio.sleep(0.1)
        again = await client.post(url, json=body(13))
        await pending
    assert again.status_code == 429
    assert 0.5 <= int(again.headers["retry-after-ms"]) / 1000 <= 2.0


async def test_the_queue_deadline_refuses_what_waited_too_long(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.6)))
    proxy = start_proxy(sim, Governor(limits=Limits(concurrency=1)), queue_timeout_s=0.2)
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=10) as client:
        first = asyncio.create_task(client.post(url, json=body(0)))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        late = await client.post(url, json=body(1))
        waited = time.monotonic() - started
        assert (await first).status_code == 200
    assert late.status_code == 429
    assert late.headers["x-pacekeeper-error"] == "proxy_queue_timeout"
    assert late.headers[REFUSED_HEADER] == "proxy"
    assert 0.15 < waited < 0.5
    assert "--queue-timeout" in late.json()["error"]["message"]
    assert sim.stats()["requests_received"] == 1  # the refused one never reached it
    lane = proxy.governor.lane("/v1/chat/completions", MODEL)
    assert lane.queued == 0


async def test_a_known_wait_past_the_deadline_is_refused_without_waiting(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim()
    # 60 rpm, no burst: one request per second.
    gov = Governor(limits=Limits(rpm=60, burst_s=0.01, concurrency=4))
    proxy = start_proxy(sim, gov, queue_timeout_s=1.5)
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=10) as client:
        assert (await client.post(url, json=body(0))).status_code == 200
        queued = asyncio.create_task(client.post(url, json=body(1)))  # waits about 1 s
        await asyncio.sleep(0.05)
        started = time.monotonic()
        refused = await client.post(url, json=body(2))  # would wait about 2 s
        assert time.monotonic() - started < 0.3
        assert (await queued).status_code == 200
    assert refused.status_code == 429
    assert refused.headers["x-pacekeeper-error"] == "proxy_queue_timeout"
    assert "60 requests per minute" in refused.json()["error"]["message"]
    assert 0.3 <= int(refused.headers["retry-after-ms"]) / 1000 <= 1.0


async def test_buffered_bodies_are_bounded(start_sim: StartSim, start_proxy: StartProxy) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.3)))
    proxy = start_proxy(
        sim, Governor(limits=Limits(concurrency=1)), max_body_bytes=4000, max_buffered_bytes=5000
    )
    url = proxy.base_url + "/chat/completions"
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 3000}]}
    async with httpx2.AsyncClient(timeout=10) as client:
        first = asyncio.create_task(client.post(url, json=big))
        deadline = time.monotonic() + 5  # until the first body is held (a loaded machine is slow)
        while proxy.app.counters.buffered_bytes == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        refused = await client.post(url, json={**big, "n": 2})
        assert (await first).status_code == 200
    assert refused.status_code == 429
    assert refused.headers["x-pacekeeper-error"] == "proxy_buffer_full"
    assert proxy.app.counters.buffered_bytes == 0


async def test_a_client_that_leaves_cancels_its_request(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.5)))
    proxy = start_proxy(sim, Governor(limits=Limits(concurrency=1)))
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=10) as client:
        first = asyncio.create_task(client.post(url, json=body(0)))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx2.ReadTimeout):
            await client.post(url, json=body(1), timeout=0.15)  # gives up while queued
        assert (await first).status_code == 200
    await asyncio.sleep(0.1)
    assert sim.stats()["requests_received"] == 1  # the abandoned one was never sent
    assert proxy.app.counters.disconnected == 1
    assert proxy.governor.lane("/v1/chat/completions", MODEL).queued == 0
    assert proxy.app.counters.in_progress == 0


async def test_a_client_that_leaves_a_stream_frees_the_slot(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.01, per_token_s=0.02)))
    gov = Governor(limits=Limits(concurrency=1))
    proxy = start_proxy(sim, gov)
    url = proxy.base_url + "/chat/completions"
    async with httpx2.AsyncClient(timeout=10) as client:
        async with client.stream("POST", url, json={**body(0), "stream": True}) as response:
            async for _ in response.aiter_raw():
                break  # leave after the first chunk
        await asyncio.sleep(0.2)
        lane = gov.lane("/v1/chat/completions", MODEL)
        assert lane.slots.in_flight == 0
        assert (await client.post(url, json=body(1))).status_code == 200
    assert proxy.app.counters.disconnected == 1


def test_stop_drains_in_flight_refuses_queued_and_new(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.6)))
    proxy = start_proxy(sim, Governor(limits=Limits(concurrency=2)), drain_timeout_s=5)
    url = proxy.base_url + "/chat/completions"

    async def scenario() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(timeout=10) as client:
            requests = asyncio.gather(*(client.post(url, json=body(i)) for i in range(5)))
            await asyncio.sleep(0.2)  # two in flight, three queued
            stopping = asyncio.create_task(asyncio.to_thread(proxy.stop))
            await asyncio.sleep(0.2)
            async with httpx2.AsyncClient() as other:
                with pytest.raises(httpx2.ConnectError):  # no longer accepting
                    await other.post(url, json=body(9))
            answers = await requests
            await stopping
            return answers

    started = time.monotonic()
    answers = asyncio.run(scenario())
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200, 200, 503, 503, 503]
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers[REFUSED_HEADER] == "proxy"
        assert refused.headers["x-pacekeeper-error"] == "proxy_shutting_down"
        assert "retry-after" in refused.headers
    assert time.monotonic() - started < 2.5
    assert sim.stats()["requests_received"] == 2


def test_the_drain_deadline_cuts_what_is_still_running(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.05, per_token_s=0.05)))
    proxy = start_proxy(sim, drain_timeout_s=1)
    url = proxy.base_url + "/chat/completions"
    with httpx2.Client(timeout=10) as client:
        request = {**body(0), "stream": True, "max_tokens": 200}
        with client.stream("POST", url, json=request) as response:
            chunks = response.iter_raw()
            next(chunks)
            started = time.monotonic()
            proxy.begin_stop()
            with pytest.raises(httpx2.RemoteProtocolError):
                for _ in chunks:
                    pass
            cut_after = time.monotonic() - started
    assert proxy.wait(5)
    assert 0.9 < cut_after < 3
    assert proxy.app.counters.upstream_errors == {"cut_at_drain_deadline": 1}


def test_a_port_in_use_is_an_oserror(start_proxy: StartProxy) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            start_proxy("http://127.0.0.1:9/v1", port=taken.getsockname()[1])


def test_an_answer_cut_at_the_drain_deadline_is_not_called_a_refusal(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=3.0)))
    proxy = start_proxy(sim, drain_timeout_s=1)
    answers: list[httpx2.Response] = []
    asking = threading.Thread(
        target=lambda: answers.append(
            httpx2.post(proxy.base_url + "/chat/completions", json=body(0), timeout=10)
        )
    )
    asking.start()
    # Stop once the upstream holds it (a fixed sleep raced a busy machine: the request had
    # not reached the proxy, so the proxy rightly called it refused).
    deadline = time.monotonic() + 10
    while sim.stats()["requests_received"] < 1:
        assert time.monotonic() < deadline, "the request never reached the upstream"
        time.sleep(0.01)
    proxy.begin_stop()
    asking.join(5)
    assert proxy.wait(5)
    [cut] = answers
    assert cut.status_code == 503
    assert cut.headers["x-pacekeeper-error"] == "proxy_shutting_down"
    assert REFUSED_HEADER not in cut.headers  # it was sent: the upstream may have done it
    assert "may have processed" in cut.json()["error"]["message"]
    assert proxy.app.counters.upstream_errors == {"cut_at_drain_deadline": 1}
