"""The proxy's plain-HTTP upstream transport against a real HTTP/1.1 server on loopback:
keep-alive reuse, the framings an answer may have, timeouts, and what it leaves to httpx2."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from pacekeeper.transports._httpx2 import sending_transport
from pacekeeper.transports._upstream import UpstreamTransport


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: set[int] = set()  # noqa: RUF012 - shared by the test and the server
    first_read = threading.Event()
    opened = 0

    def setup(self) -> None:
        Handler.opened += 1
        super().setup()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        Handler.connections.add(id(self.connection))
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b"one ", b"two ", b"three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/pieces":
            # Three chunks in one write, then (once the client has the first piece) two more.
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"a", b"b", b"c")))
            if not Handler.first_read.wait(5.0):
                return
            self.wfile.write(b"1\r\nd\r\n1\r\ne\r\n0\r\n\r\n")
        elif self.path == "/until-close":
            self.send_response(200)
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b"all of it")
            self.close_connection = True
        elif self.path == "/idle-close":
            # Kept alive by the answer, then closed while idle (uvicorn, as under vLLM,
            # closes idle keep-alive connections after 5 s).
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.wfile.flush()
            threading.Event().wait(0.1)
            self.close_connection = True
        elif self.path == "/slow":
            threading.Event().wait(1.0)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    Handler.connections = set()
    Handler.opened = 0
    Handler.first_read = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def send(transport: UpstreamTransport, url: str, body: bytes = b"hello") -> bytes:
    request = httpx2.Request("POST", url, content=body, extensions={"timeout": {"read": 0.5}})
    response = await transport.handle_async_request(request)
    stream = response.stream
    assert isinstance(stream, httpx2.AsyncByteStream)
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()


async def test_one_keep_alive_connection_carries_sequential_requests(server: str) -> None:
    transport = UpstreamTransport(httpx2.AsyncHTTPTransport())
    for i in range(20):
        assert await send(transport, server + "/echo", b"body %d" % i) == b"body %d" % i
    assert len(Handler.connections) == 1
    await transport.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(server: str) -> None:
    transport = UpstreamTransport(httpx2.AsyncHTTPTransport())
    assert await send(transport, server + "/idle-close") == b"ok"
    await asyncio.sleep(0.5)  # the server has closed it by now
    assert await send(transport, server + "/echo", b"next") == b"next"
    assert Handler.opened == 2
    await transport.aclose()


def test_pacekeepers_own_clients_send_through_the_lean_transport_when_httptools_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert isinstance(sending_transport(), UpstreamTransport)
    monkeypatch.setitem(sys.modules, "httptools", None)  # as if the fast extra were missing
    assert isinstance(sending_transport(), httpx2.AsyncHTTPTransport)


async def test_chunked_and_read_until_close_answers(server: str) -> None:
    transport = UpstreamTransport(httpx2.AsyncHTTPTransport())
    assert await send(transport, server + "/chunked") == b"one two three"
    assert await send(transport, server + "/until-close") == b"all of it"
    assert await send(transport, server + "/echo") == b"hello"  # a new connection
    await transport.aclose()


async def test_a_slow_answer_times_out_as_httpx2_does(server: str) -> None:
    transport = UpstreamTransport(httpx2.AsyncHTTPTransport())
    with pytest.raises(httpx2.ReadTimeout):
        await send(transport, server + "/slow")
    assert await send(transport, server + "/echo") == b"hello"  # the broken one is not reused
    await transport.aclose()


async def test_an_unreachable_upstream_is_a_connect_error(server: str) -> None:
    transport = UpstreamTransport(httpx2.AsyncHTTPTransport())
    with pytest.raises(httpx2.ConnectError):
        await send(transport, "http://127.0.0.1:9/echo")  # the discard port: nothing listens


async def test_https_and_head_go_through_httpx2() -> None:
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(f"{request.method} {request.url}")
        return httpx2.Response(200, content=b"from httpx2")

    transport = UpstreamTransport(httpx2.MockTransport(handler))
    assert await send(transport, "https://api.example.test/v1/x") == b"from httpx2"
    head = httpx2.Request("HEAD", "http://127.0.0.1:9/v1/x")
    assert (await transport.handle_async_request(head)).status_code == 200
    assert seen == ["POST https://api.example.test/v1/x", "HEAD http://127.0.0.1:9/v1/x"]


async def test_what_has_arrived_is_handed_over_in_one_piece_without_waiting_for_more(
    server: str,
) -> None:
    transport = UpstreamTransport(httpx2.AsyncHTTPTransport())
    request = httpx2.Request("POST", server + "/pieces", content=b"x")
    response = await asyncio.wait_for(transport.handle_async_request(request), 5.0)
    stream = response.stream
    assert isinstance(stream, httpx2.AsyncByteStream)
    pieces = aiter(stream)
    try:
        # The three chunks written at once (one segment on loopback) come as one piece.
        assert await asyncio.wait_for(anext(pieces), 5.0) == b"abc"
        Handler.first_read.set()  # only now does the server send the rest
        rest = [piece async for piece in pieces]
        assert b"".join(rest) == b"de"
    finally:
        Handler.first_read.set()
        await stream.aclose()
    await transport.aclose()
