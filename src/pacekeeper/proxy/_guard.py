"""Slow and stalled clients: connections whose request has not fully arrived.

A connection is **unfinished** from the moment its request begins (the connection opens, or
the first byte of the next request on a kept-alive connection) until its body has arrived
whole (or the proxy answered it). Unfinished connections are bounded two ways:

- **in time**: the headers must arrive within ``header_timeout_s`` (else a 408 written by the
  server, then the connection is closed), the body within ``body_timeout_s`` after them (the
  application answers 408, then the connection is closed);
- **in number**: at most ``max_unfinished`` at once over all clients (on loopback every local
  program shares one address, so the bound is not per address). One more arriving evicts the
  one unfinished the longest (a 408, then closed) if it has been unfinished for more than a
  second: stalled sockets can never lock the proxy, a client that sends its request at once is
  never the oldest, and a burst of new connections evicts nobody.

The guard is fed by :func:`guarded_protocol`, a subclass of uvicorn's HTTP protocol (httptools
or h11) that reports when a connection opens, receives bytes and closes; the application
reports when it received a request's headers (it is called) and its whole body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "CONNECTION_KEY",
    "Connection",
    "ConnectionGuard",
    "CorkedTransport",
    "guarded_protocol",
]

CONNECTION_KEY = "pacekeeper.connection"
"""The ASGI scope's key for the request's :class:`Connection`, where the guarded protocol
sets it (uvicorn's httptools protocol; under h11 the application asks
:meth:`ConnectionGuard.find`)."""

logger = logging.getLogger("pacekeeper.proxy")

_HEADERS, _BODY, _DONE = 0, 1, 2
_SLACK_S = 0.002  # a timer firing this close to its deadline has reached it (ms timers)


def _timeout_response(message: str) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "request_timeout",
            }
        }
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"x-pacekeeper-error: request_timeout\r\nconnection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class Connection:
    """One client connection as the guard sees it."""

    __slots__ = (
        "deadline",
        "loop",
        "lost",
        "on_lost",
        "on_timeout",
        "phase",
        "protocol",
        "since",
        "timer",
        "timer_at",
        "transport",
    )

    def __init__(
        self, protocol: Any, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.loop = loop  # kept: asyncio.get_running_loop() costs a getpid() on Python 3.11
        self.phase = _DONE
        self.since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0  # when the timer fires (loop time)
        self.deadline = 0.0  # when the current phase times out (loop time)
        self.on_timeout: Callable[[str], None] | None = None
        """Set by the application while it reads the body: answers the 408 itself."""
        self.lost = False
        self.on_lost: Callable[[], None] | None = None
        """Set by the application while it answers: called when the connection is lost (the
        client left), in place of a task per request waiting for ASGI's ``http.disconnect``."""


class ConnectionGuard:
    """Tracks the unfinished connections of one server (all on its event loop)."""

    def __init__(
        self,
        *,
        header_timeout_s: float,
        body_timeout_s: float,
        max_unfinished: int,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_unfinished = max_unfinished
        self.grace_s = min(1.0, header_timeout_s / 2)
        """Only connections unfinished for longer than this are evicted."""
        self._clock = clock
        self._on_refused = on_refused
        self._unfinished: dict[Connection, None] = {}  # oldest first
        self._by_transport: dict[int, Connection] = {}
        self.timed_out = 0
        """Connections answered 408 because their headers or body came too slowly."""
        self.evicted = 0
        """Connections cut (408) to make room under ``max_unfinished``."""

    # -- what the protocol reports --------------------------------------------------------

    def opened(
        self, protocol: Any, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> Connection:
        conn = Connection(protocol, transport, loop)
        self._by_transport[id(transport)] = conn
        self._begin(conn)
        return conn

    def received(self, conn: Connection) -> None:
        if conn.phase == _DONE:  # the first bytes of the next request
            self._begin(conn)

    def closed(self, conn: Connection) -> None:
        self._by_transport.pop(id(conn.transport), None)
        self._finish(conn)
        self._cancel_timer(conn)
        conn.lost = True
        on_lost, conn.on_lost = conn.on_lost, None
        if on_lost is not None:
            on_lost()

    # -- what the application reports ----------------------------------------------------

    def find(self, transport: Any) -> Connection | None:
        return self._by_transport.get(id(transport)) if transport is not None else None

    def headers_done(self, conn: Connection, on_timeout: Callable[[str], None]) -> None:
        """The request's headers are in; its body now has ``body_timeout_s`` to arrive."""
        if conn.phase == _DONE:
            return
        if conn not in self._unfinished:  # pipelined: its bytes came with the previous one
            self._cancel_timer(conn)
            return
        conn.phase = _BODY
        conn.on_timeout = on_timeout
        self._arm(conn, self.body_timeout_s)

    def body_done(self, conn: Connection) -> None:
        if conn.phase != _DONE:  # told twice a request: after the body, and at its end
            self._finish(conn)

    # -- state ----------------------------------------------------------------------------

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    def stalled(self, older_than_s: float = 1.0) -> int:
        """Unfinished connections whose request began more than ``older_than_s`` ago."""
        cutoff = self._clock() - older_than_s
        count = 0
        for conn in self._unfinished:  # oldest first
            if conn.since > cutoff:
                break
            count += 1
        return count

    @property
    def full(self) -> bool:
        return len(self._unfinished) >= self.max_unfinished

    # -- internals ------------------------------------------------------------------------

    def _begin(self, conn: Connection) -> None:
        conn.phase = _HEADERS
        conn.since = self._clock()
        conn.on_timeout = None
        self._unfinished[conn] = None
        self._arm(conn, self.header_timeout_s)
        while len(self._unfinished) > self.max_unfinished:
            oldest = next(iter(self._unfinished))
            if conn.since - oldest.since < self.grace_s:
                break  # a burst of new connections, not stalled ones: the timeouts bound them
            self.evicted += 1
            self._cut(
                oldest,
                "request_evicted",
                f"pacekeeper proxy: this request had not fully arrived after "
                f"{self._clock() - oldest.since:.1f}s while {self.max_unfinished} connections "
                "were unfinished (--max-unfinished); the oldest is closed to make room. Send "
                "the request at once, or raise --max-unfinished",
            )

    def _arm(self, conn: Connection, timeout_s: float) -> None:
        """The phase ends in ``timeout_s``. A timer already set to fire sooner is kept (it sets
        itself again when it finds the deadline later), so the requests of a kept-alive
        connection do not each start and cancel two timers."""
        loop = conn.loop
        conn.deadline = deadline = loop.time() + timeout_s
        if conn.timer is not None:
            if conn.timer_at <= deadline:
                return
            conn.timer.cancel()
        conn.timer_at = deadline
        conn.timer = loop.call_at(deadline, self._fire, conn)

    def _fire(self, conn: Connection) -> None:
        conn.timer = None
        if conn.phase == _DONE:
            return
        loop = conn.loop
        if loop.time() < conn.deadline - _SLACK_S:  # the phase began again since it was set
            conn.timer_at = conn.deadline
            conn.timer = loop.call_at(conn.deadline, self._fire, conn)
            return
        self._expire(conn)

    def _expire(self, conn: Connection) -> None:
        conn.timer = None
        if conn.phase == _HEADERS:
            what, limit, flag = "headers", self.header_timeout_s, "--header-timeout"
        elif conn.phase == _BODY:
            what, limit, flag = "body", self.body_timeout_s, "--body-timeout"
        else:
            return
        self.timed_out += 1
        self._cut(
            conn,
            "request_timeout",
            f"pacekeeper proxy: the request's {what} did not arrive within {limit:g}s "
            f"({flag}); the connection is closed. Send the whole request at once",
        )

    def _cut(self, conn: Connection, reason: str, message: str) -> None:
        """Answer 408 and close: by the application when it is reading the body, else
        written here (no response has begun on this connection)."""
        on_timeout = conn.on_timeout if conn.phase == _BODY else None
        phase = conn.phase
        self._finish(conn)
        if self._on_refused is not None:
            self._on_refused(reason, phase == _HEADERS)
        logger.info("closed a slow connection (%s): %s", reason, message)
        if on_timeout is not None:
            on_timeout(message)
            return
        transport = conn.transport
        if transport.is_closing():
            return
        cycle = getattr(conn.protocol, "cycle", None)
        started = phase == _BODY and cycle is not None and getattr(cycle, "response_started", False)
        if not started:
            transport.write(_timeout_response(message))
        transport.close()

    def _finish(self, conn: Connection) -> None:
        # The timer stays (it finds the connection done when it fires): the next request on
        # this connection usually starts before it would fire.
        conn.phase = _DONE
        conn.on_timeout = None
        self._unfinished.pop(conn, None)

    @staticmethod
    def _cancel_timer(conn: Connection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None


class CorkedTransport:
    """A server connection's transport whose writes within one turn of the event loop leave
    in one system call: uvicorn writes an answer's head and its body separately, and on
    loopback every write is a trip through the kernel's network stack (a sixth of the proxy's
    CPU in the profile). The writes go out at the end of the turn, in order."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Write what is pending now (the proxy does when an answer's last byte is handed
        over, so that the bookkeeping after it does not delay the answer)."""
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    # Asked for every request (uvicorn, the flush): explicit rather than through __getattr__.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        return f"<CorkedTransport {len(self._pending)} writes pending over {self._transport!r}>"


def guarded_protocol(base: type[asyncio.Protocol], guard: ConnectionGuard) -> type[Any]:
    """``base`` (uvicorn's HttpToolsProtocol or H11Protocol) reporting to ``guard``."""
    base_any: Any = base

    class Guarded(base_any):  # type: ignore[misc]
        _pk_conn: Connection | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            loop = asyncio.get_running_loop()
            corked: Any = CorkedTransport(transport, loop)
            super().connection_made(corked)
            self._pk_conn = guard.opened(self, corked, loop)

        def on_message_begin(self) -> None:  # httptools only: h11's protocol has none
            super().on_message_begin()
            self.scope[CONNECTION_KEY] = self._pk_conn

        def data_received(self, data: bytes) -> None:
            conn = self._pk_conn
            # guard.received, inlined (every read): the first bytes of the next request
            if conn is not None and conn.phase == _DONE:
                guard._begin(conn)
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            conn = self._pk_conn
            if conn is not None:
                guard.closed(conn)
            super().connection_lost(exc)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded
