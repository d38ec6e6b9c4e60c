"""Slow and stalled clients cannot lock the proxy (raw sockets against a real proxy).

Sockets that send headers and then nothing, half a body, or a chunk of a chunked body then
nothing: they hold no buffer, they get a 408 and are closed after the header or body timeout,
at most ``max_unfinished`` of them sit at once, and meanwhile every other client is served.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx2
import pytest

from pacekeeper.proxy import Proxy

from .conftest import StartProxy, StartSim

MODEL = "gpt-4o-mini"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
MIB = 1024 * 1024


def head(proxy: Proxy, *lines: str) -> bytes:
    request = [f"POST {proxy.config.base_path}/chat/completions HTTP/1.1", "Host: localhost"]
    request += ["Content-Type: application/json", *lines]
    return ("\r\n".join(request) + "\r\n\r\n").encode()


@pytest.fixture
def sockets() -> Iterator[Callable[[Proxy], socket.socket]]:
    opened: list[socket.socket] = []

    def connect(proxy: Proxy) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


def read_until_closed(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def ask(proxy: Proxy) -> httpx2.Response:
    return httpx2.post(
        proxy.base_url + "/chat/completions",
        content=BODY,
        headers={"content-type": "application/json"},
        timeout=10,
    )


def healthz(proxy: Proxy) -> httpx2.Response:
    return httpx2.get(proxy.url + "/healthz", timeout=10)


def test_16_stalled_32mib_requests_do_not_lock_the_proxy(
    start_sim: StartSim, start_proxy: StartProxy, sockets: Callable[[Proxy], socket.socket]
) -> None:
    # As reported: 16 connections announce 32 MiB bodies and send nothing; with 512 MiB of
    # buffer, reserving the declared lengths refused everyone else (proxy_buffer_full).
    sim = start_sim()
    proxy = start_proxy(sim, max_body_bytes=32 * MIB, max_buffered_bytes=512 * MIB)
    stalled = [sockets(proxy) for _ in range(16)]
    for sock in stalled:
        sock.sendall(head(proxy, f"Content-Length: {32 * MIB}"))
    wait_for(lambda: proxy.app.guard.unfinished >= 16)
    statuses = [ask(proxy).status_code for _ in range(20)]
    assert statuses == [200] * 20
    assert proxy.app.counters.buffered_bytes == 0
    health = healthz(proxy).json()
    assert health["unfinished_connections"] == 16


@pytest.mark.parametrize(
    ("what", "first", "then"),
    [
        ("headers only", "Content-Length: 1000", b""),
        ("half a body", "Content-Length: 1000", b"x" * 500),
        ("chunked, then stall", "Transfer-Encoding: chunked", b"100\r\n" + b"x" * 256 + b"\r\n"),
    ],
)
def test_a_slow_body_gets_a_408_and_is_closed(
    start_sim: StartSim,
    start_proxy: StartProxy,
    sockets: Callable[[Proxy], socket.socket],
    what: str,
    first: str,
    then: bytes,
) -> None:
    sim = start_sim()
    proxy = start_proxy(sim, body_timeout_s=0.5)
    sock = sockets(proxy)
    started = time.monotonic()
    sock.sendall(head(proxy, first) + then)
    answer = read_until_closed(sock)
    took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), (what, answer)
    assert b"x-pacekeeper-error: request_timeout" in answer
    assert b"--body-timeout" in answer
    assert 0.4 < took < 5
    assert proxy.app.counters.buffered_bytes == 0
    assert proxy.app.guard.unfinished == 0
    assert sim.stats()["requests_received"] == 0  # nothing half-received was forwarded


def test_slow_headers_get_a_408_and_are_closed(
    start_sim: StartSim, start_proxy: StartProxy, sockets: Callable[[Proxy], socket.socket]
) -> None:
    sim = start_sim()
    proxy = start_proxy(sim, header_timeout_s=0.5)
    silent = sockets(proxy)  # connects, sends nothing
    partial = sockets(proxy)
    partial.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n")
    for sock in (silent, partial):
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"--header-timeout" in answer
    assert proxy.app.guard.unfinished == 0
    assert proxy.app.guard.timed_out == 2


def test_a_kept_alive_connection_is_not_timed_out_between_requests(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    sim = start_sim()
    proxy = start_proxy(sim, header_timeout_s=0.3)
    with httpx2.Client(base_url=proxy.base_url, timeout=10) as client:
        headers = {"content-type": "application/json"}
        assert client.post("/chat/completions", content=BODY, headers=headers).status_code == 200
        time.sleep(0.6)  # idle on the kept-alive connection longer than the header timeout
        assert client.post("/chat/completions", content=BODY, headers=headers).status_code == 200
    assert proxy.app.guard.timed_out == 0


def test_beyond_max_unfinished_the_oldest_stalled_connections_are_closed(
    start_sim: StartSim, start_proxy: StartProxy, sockets: Callable[[Proxy], socket.socket]
) -> None:
    sim = start_sim()
    proxy = start_proxy(sim, max_unfinished=4, header_timeout_s=0.4)  # grace: 0.2 s
    stalled = [sockets(proxy) for _ in range(8)]
    for sock in stalled:
        sock.sendall(head(proxy, "Content-Length: 1000"))
    wait_for(lambda: proxy.app.guard.unfinished == 8)  # a burst evicts nobody
    assert proxy.app.guard.evicted == 0
    wait_for(lambda: proxy.app.guard.stalled(0.3) == 8)
    health = healthz(proxy)  # its connection makes room: four are closed
    assert proxy.app.guard.evicted == 5
    assert health.json()["unfinished_connections"] == 3
    for sock in stalled[:5]:  # the oldest were answered and closed
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"--max-unfinished" in answer
    assert [ask(proxy).status_code for _ in range(5)] == [200] * 5


def test_bytes_are_counted_as_they_arrive(
    start_sim: StartSim, start_proxy: StartProxy, sockets: Callable[[Proxy], socket.socket]
) -> None:
    sim = start_sim()
    proxy = start_proxy(sim, max_body_bytes=MIB, max_buffered_bytes=MIB)
    sock = sockets(proxy)
    sock.sendall(head(proxy, f"Content-Length: {MIB}") + b"x" * 1000)
    wait_for(lambda: proxy.app.counters.buffered_bytes == 1000)
    assert ask(proxy).status_code == 200  # the announced MiB reserved nothing


def test_the_new_bounds_are_flags() -> None:
    import argparse

    from pacekeeper.proxy._cli import build_config, configure_parser
    from pacekeeper.settings import Settings

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    flags = ["--header-timeout", "3", "--body-timeout", "7", "--max-unfinished", "9"]
    args = parser.parse_args(["--upstream", "http://127.0.0.1:9/v1", *flags])
    config = build_config(Settings(), args)
    assert (config.header_timeout_s, config.body_timeout_s, config.max_unfinished) == (3, 7, 9)


async def test_healthz_is_degraded_503_while_the_proxy_refuses_most_work(
    start_sim: StartSim, start_proxy: StartProxy
) -> None:
    import asyncio

    from pacekeeper import Governor, Limits
    from pacekeeper.sim import Latency, Scenario

    sim = start_sim(Scenario(latency=Latency(ttft_s=0.5)))
    proxy = start_proxy(sim, Governor(limits=Limits(concurrency=1)), max_queue=1)
    assert healthz(proxy).status_code == 200
    async with httpx2.AsyncClient(timeout=10) as client:
        replies = await asyncio.gather(
            *(
                client.post(
                    proxy.base_url + "/chat/completions",
                    content=BODY,
                    headers={"content-type": "application/json"},
                )
                for _ in range(12)
            )
        )
        statuses = sorted(r.status_code for r in replies)
        assert statuses.count(429) >= 6, statuses
        health = await client.get(proxy.url + "/healthz")
    assert health.status_code == 503
    doc = health.json()
    assert doc["status"] == "degraded"
    assert doc["refused_recently"] == statuses.count(429)
    assert doc["received_recently"] == 12
    assert "refused" in doc["reasons"][0]
    proxy.app.health_window_s = 0  # the refusals are now in the past
    wait_for(lambda: healthz(proxy).status_code == 200, timeout_s=5)


def test_a_refusal_before_the_body_is_read_closes_the_connection(
    start_sim: StartSim, start_proxy: StartProxy, sockets: Callable[[Proxy], socket.socket]
) -> None:
    # A 401 answered before the body was read: the rest of the body must not stay on a
    # kept-alive connection (where it would be taken for the next, never finished, request).
    sim = start_sim()
    proxy = start_proxy(sim, client_token="t0ken-secret", header_timeout_s=0.3)
    sock = sockets(proxy)
    sock.sendall(head(proxy, "Content-Length: 1000"))
    answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert b"t0ken-secret" not in answer
    assert proxy.app.guard.timed_out == 0
