"""Connections to a plain-HTTP server for pacekeeper's own clients (the proxy, `pacekeeper run`):
HTTP/1.1 on asyncio, parsed by httptools.

httpx2's transport (httpcore2 over anyio) spent about 40% of the proxy's CPU per request in the
profile: cancel scopes, stream wrappers, and the request head and body sent in two writes (two
loopback round trips through the kernel). This transport keeps what the proxy needs, a pool of
keep-alive connections, one write per request, the answer handed over chunk by chunk as it
arrives (reading paused while the caller is behind), read and connect timeouts, and httpx2's
exceptions (so the governor classifies failures as before). Anything else goes to the httpx2
transport given as ``fallback``: https upstreams (certificates and TLS settings stay httpx2's),
HEAD requests, and bodies that are streamed rather than held.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, cast

import httptools
import httpx2

from pacekeeper.transports._objects import response_of, triples_of

__all__ = ["UpstreamTransport"]

_PAUSE_BYTES = 256 * 1024  # answer bytes held before reading from the upstream is paused
_MAX_IDLE = 512  # keep-alive connections kept per upstream
_IDLE_S = 60.0  # an idle connection older than this is closed rather than reused
_TIMER_SLACK_S = 0.002  # a timer firing this close to its deadline has reached it (ms timers)


class _Connection(asyncio.Protocol):
    """One upstream connection; carries one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        # Kept: asyncio.get_running_loop() costs a getpid() system call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        # The read timeout: one timer per connection, kept while it fires no later than the
        # wait's deadline (it sets itself again when it finds the deadline moved on), instead
        # of one started and cancelled per wait.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._waiting: tuple[asyncio.Future[Any], str, float] | None = None
        self._reset()

    def _reset(self) -> None:
        self.head: asyncio.Future[tuple[int, list[tuple[bytes, bytes, bytes]]]] | None = None
        self.headers: list[tuple[bytes, bytes, bytes]] = []  # name, lowercased, value
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.error: Exception | None = None
        self.status = 0
        self.keep_alive = True
        self.paused = False
        self._wake: asyncio.Future[None] | None = None

    def begin(self, loop: asyncio.AbstractEventLoop) -> None:
        self._reset()
        self.head = loop.create_future()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx2.RemoteProtocolError(f"malformed answer from the upstream: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head is not None and self.head.done() and not self.complete and not self._framed():
            self.on_message_complete()  # read until close: the close ends the answer
        elif not self.complete:
            self._fail(
                httpx2.RemoteProtocolError("the upstream closed the connection mid-answer")
                if self.head is not None and self.head.done()
                else httpx2.RemoteProtocolError("Server disconnected without sending a response.")
            )

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only kept: whether the answer is framed matters only if the upstream closes before
        # its end (_framed), not on each of its headers.
        self.headers.append((name, name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.status = status = parser.get_status_code()
        self.keep_alive = parser.should_keep_alive()
        if self.head is not None and not self.head.done():
            self.head.set_result((status, self.headers))

    def _framed(self) -> bool:
        """Whether the answer says where it ends (no body, a length, or chunked); else it
        ends when the upstream closes the connection."""
        status = self.status
        if status in (204, 304) or 100 <= status < 200:
            return True
        for _, lowered, value in self.headers:
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return True
        return False

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake_up()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake_up()

    # -- the exchange -------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        self._wake_up()

    def _wake_up(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def next_chunk(self, read_s: float | None) -> bytes | None:
        """What arrived of the answer since the last call, in one piece (never waiting for
        more once there is some); None at its end.

        One piece rather than one per parsed chunk: each piece costs the governor's stream,
        the proxy and the server a pass of their own (a zero-latency upstream's stream comes
        in three), and the client a write."""
        while True:
            chunks = self.chunks
            if chunks:
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.buffered = 0
                if self.paused and self.transport:
                    self.paused = False
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self._wake = self._loop.create_future()
            await self.within(self._wake, read_s, "reading the answer")

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()

    async def within(self, future: asyncio.Future[Any], seconds: float | None, doing: str) -> Any:
        """Await ``future``; past ``seconds`` it fails with httpx2.ReadTimeout (no task: this
        runs for every chunk)."""
        if seconds is None:
            return await future
        loop = self._loop
        self._deadline = deadline = loop.time() + seconds
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._on_timer)
        self._waiting = (future, doing, seconds)
        try:
            return await future
        finally:
            self._waiting = None

    def _on_timer(self) -> None:
        self._timer = None
        waiting = self._waiting
        if waiting is None or self.closed:
            return
        if self._loop.time() < self._deadline - _TIMER_SLACK_S:  # a later wait: its deadline
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        future, doing, seconds = waiting
        if not future.done():
            future.set_exception(httpx2.ReadTimeout(f"timed out {doing} ({seconds:g}s)"))


class _Answer(httpx2.AsyncByteStream):
    """The answer's body as it arrives; closing it returns a finished connection to the pool."""

    def __init__(self, pool: UpstreamTransport, key: tuple[str, int], conn: _Connection) -> None:
        self._pool = pool
        self._key = key
        self._conn: _Connection | None = conn
        self._read_s: float | None = None

    # An iterator object, not an async generator: the event loop's hooks register and
    # finalise every async generator (twice a request through a weak set).
    def __aiter__(self) -> _Answer:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        chunk = await conn.next_chunk(self._read_s)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.give_back(self._key, conn)


class UpstreamTransport(httpx2.AsyncBaseTransport):
    """Plain-HTTP/1.1 forwarding with a keep-alive pool; everything else through
    ``fallback`` (see the module's docstring)."""

    def __init__(self, fallback: httpx2.AsyncBaseTransport) -> None:
        self._fallback = fallback
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._targets: dict[int, tuple[httpx2.URL, bool, tuple[str, int], bytes]] = {}

    def __repr__(self) -> str:
        idle = sum(len(conns) for conns in self._idle.values())
        return f"<UpstreamTransport {idle} idle connections, else {self._fallback!r}>"

    def _target(self, url: httpx2.URL) -> tuple[httpx2.URL, bool, tuple[str, int], bytes]:
        """(url, plain HTTP?, (host, port), the request line's target), read once per URL
        object: the proxy sends every request to a path through one, and each of httpx2's
        URL properties is a call or two. The entry holds the URL, so its id is not reused."""
        target = self._targets.get(id(url))
        if target is None or target[0] is not url:
            target = (url, url.scheme == "http", (url.host, url.port or 80), url.raw_path)
            if len(self._targets) >= 1024:
                self._targets.clear()
            self._targets[id(url)] = target
        return target

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        _, plain, key, raw_path = self._target(request.url)
        if not plain or request.method == "HEAD":
            return await self._fallback.handle_async_request(request)
        try:
            body = request.content
        except httpx2.RequestNotRead:
            return await self._fallback.handle_async_request(request)
        timeout = request.extensions.get("timeout") or {}
        conn = self._take(key) or await self._connect(key, timeout.get("connect"))
        conn.begin(conn._loop)
        head = [request.method.encode(), b" ", raw_path, b" HTTP/1.1\r\n"]
        # The headers' own triples (headers.raw builds a list of pairs on every request).
        for name, _, value in triples_of(request.headers):
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        assert conn.transport is not None
        assert conn.head is not None
        try:
            conn.transport.write(b"".join(head) + body)  # one write: one trip through the kernel
            read_s = timeout.get("read")
            status, headers = await conn.within(
                conn.head, read_s, "waiting for the answer's headers"
            )
        except BaseException:
            conn.close()
            raise
        stream = _Answer(self, key, conn)
        stream._read_s = read_s
        return response_of(status, headers, stream, {"http_version": b"HTTP/1.1"})

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recent: the least likely to have been closed
            if not conn.closed and now - conn.idle_since < _IDLE_S:
                return conn
            conn.close()
        return None

    async def _connect(self, key: tuple[str, int], connect_s: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = key
        try:
            connecting = loop.create_connection(_Connection, host, port)
            _, conn = await asyncio.wait_for(connecting, connect_s)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # distinct in Python 3.10
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    def give_back(self, key: tuple[str, int], conn: _Connection) -> None:
        """A connection whose exchange ended: kept for the next request when its answer was
        read to the end and both sides keep it alive, else closed."""
        if conn.closed or not conn.complete or not conn.keep_alive or conn.error is not None:
            conn.close()
            return
        conn.head = None
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= _MAX_IDLE:
            conn.close()
            return
        idle.append(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        await self._fallback.aclose()
