"""The proxy as a raw ASGI 3 application (no framework: every request pays for the path).

For each request to ``{base_path}/...``, in this order:

1. draining? a 503 refusal; the client token (when one is set)? else a 401;
2. the body, read up to ``max_body_bytes`` (413 above it) while the bodies held by all
   requests stay under ``max_buffered_bytes`` (else a 429 refusal); a body declared JSON must
   parse (else a 400);
3. its lane's queue: full, or a known wait past its class's queue timeout
   (:meth:`ProxyConfig.queue_timeout_for`)? a 429 refusal, at once;
4. forwarded through the governed transport (queueing, pacing, retries), with hop-by-hop
   headers dropped and, when the proxy holds the key, the client's Authorization replaced;
   still not sent after its class's queue timeout? a 429 refusal;
5. the answer passed back as the upstream sent it, chunk by chunk (raw: still compressed when
   it was), or a 502/504 naming the cause when the upstream could not be reached.

A client that disconnects cancels its request wherever it is (queued, sent, streaming), so the
upstream is not asked for answers nobody will read. Refusals carry ``retry-after``,
``x-pacekeeper-refused: proxy`` and an OpenAI-shaped JSON body; every answer the proxy makes
itself carries ``x-pacekeeper-error: CODE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hmac
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import httpx2

from pacekeeper.core.classify import describe_exception
from pacekeeper.core.errors import (
    AdmissionClosed,
    ConfigurationError,
    DeadlineExceeded,
    PacekeeperError,
    RequestTooLarge,
)
from pacekeeper.core.governor import Governor
from pacekeeper.core.lane import Lane
from pacekeeper.core.priority import PRIORITY_VAR, TENANT_VAR, Priority
from pacekeeper.providers import get_provider
from pacekeeper.proxy._config import ProxyConfig
from pacekeeper.proxy._guard import CONNECTION_KEY, Connection, ConnectionGuard
from pacekeeper.proxy._metrics import ProxyCounters, build_metrics
from pacekeeper.transports import RECORD_EXTENSION, Transport
from pacekeeper.transports._engine import FACTS_EXTENSION, PRIORITY_HEADER, facts_of, route_of
from pacekeeper.transports._httpx2 import sending_transport
from pacekeeper.transports._objects import Triples, request_of, triples_of

__all__ = ["REFUSED_HEADER", "TOKEN_HEADER", "ProxyApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

logger = logging.getLogger("pacekeeper.proxy")

REFUSED_HEADER = "x-pacekeeper-refused"
"""On the proxy's own refusals (429, 503): ``proxy``, so the upstream is not blamed."""
ERROR_HEADER = "x-pacekeeper-error"
TOKEN_HEADER = "x-pacekeeper-token"  # noqa: S105 - a header name, not a secret
"""Where clients may present the proxy's client token (also Authorization when the proxy
holds the upstream key)."""

_SENT_EXTENSION = "pacekeeper.proxy.sent"
# The request being answered (method, path, arrival), for the proxy's own answers' log line.
_CURRENT: contextvars.ContextVar[tuple[str, str, float] | None] = contextvars.ContextVar(
    "pacekeeper_proxy_request", default=None
)
# Path segments that are ids of objects, not parts of a route: OpenAI-style prefixed ids
# (file-..., batch_..., resp_..., thread_..., chatcmpl-...: an alphanumeric tail of 16 or more
# with a digit), UUIDs, long hex or decimal numbers. Model and deployment names (dashes, short
# tails) are left alone.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Also not forwarded: the host (the upstream's is set), the length (recomputed from the body
# read), expect (answered by the server here) and the proxy's own token.
_REQUEST_DROP = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    TOKEN_HEADER.encode(),
    PRIORITY_HEADER.encode(),
}
_PRIORITY_HEADER = PRIORITY_HEADER.encode()
_Client = tuple["str | None", Priority]
"""Who sent a request: its tenant (None: none bound) and the highest class it may use."""
_ANYONE: _Client = (None, Priority.INTERACTIVE)
_Target = tuple[httpx2.URL, bytes, str]
"""An upstream URL, its Host header's value and its path."""
_JSON = (b"content-type", b"application/json")
_REFUSED = (REFUSED_HEADER.encode(), b"proxy")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_JSON_START = (b"{", b" ", b"\n")  # as the transport reads a model: the same lane
_JSON_SPACE = " \t\n\r"
# Set by JSONDecoder.__init__ (typeshed does not declare it): the C scanner json.loads ends in.
_SCAN_JSON: Callable[[str, int], tuple[object, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


_KEY_HEADERS = frozenset({b"api-key", b"x-api-key", b"x-goog-api-key"})
"""Headers other than Authorization that carry a client's key (Azure, Anthropic, Gemini)."""
# What the one pass over a request's headers (ProxyApp._head) does with each name; a name not
# listed is forwarded as it is.
_KIND_DROP, _KIND_TYPE, _KIND_LENGTH, _KIND_PRIORITY, _KIND_CONNECTION, _KIND_KEY = range(6)
_REQUEST_KIND: dict[bytes, int] = {
    **dict.fromkeys(_REQUEST_DROP, _KIND_DROP),
    b"content-type": _KIND_TYPE,  # forwarded
    b"content-length": _KIND_LENGTH,  # dropped: recomputed from the body read
    _PRIORITY_HEADER: _KIND_PRIORITY,  # dropped
    b"connection": _KIND_CONNECTION,  # dropped, and so are the headers it names
    b"authorization": _KIND_KEY,  # dropped when the proxy holds the key
    **dict.fromkeys(_KEY_HEADERS, _KIND_KEY),
}


def _error_body(message: str, error_type: str, code: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    ).encode()


def _json_of(body: bytes) -> object:
    """``json.loads(body)``, for a UTF-8 object without its four Python frames (``loads``,
    ``detect_encoding``, ``decode``, ``raw_decode``); anything else (another encoding, leading
    space, an error to describe) goes to ``json.loads`` itself.

    >>> _json_of(b'{"model": "m", "stream": true} ')
    {'model': 'm', 'stream': True}
    >>> _json_of(b'{"model": "m"} trailing')
    Traceback (most recent call last):
    ...
    json.decoder.JSONDecodeError: Extra data: line 1 column 16 (char 15)
    """
    if body[:1] == b"{":
        try:
            text = body.decode()
            doc, end = _SCAN_JSON(text, 0)
        except (ValueError, StopIteration, RecursionError):
            pass  # json.loads says what is wrong, below
        else:
            if end == len(text) or not text[end:].strip(_JSON_SPACE):
                return doc
    return json.loads(body)


def _notes(exc: BaseException) -> str:
    notes = [n for n in getattr(exc, "__notes__", ()) if isinstance(n, str)]
    return f" ({'; '.join(notes)})" if notes else ""


def _flush(exchange: _Exchange) -> None:
    """The answer is complete: its bytes leave now rather than at the end of the event loop's
    turn, after the bookkeeping that follows (settling a stream, counters, the server's own)."""
    conn = exchange.conn
    if conn is not None:
        flush = getattr(conn.transport, "flush", None)
        if flush is not None:
            flush()


def _transport_of(send: Send) -> Any:
    # ASGI cannot abort a connection; under uvicorn `send` is a bound method of the request
    # cycle, which holds the transport. Used only to cut a stream that broke midway.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if callable(getattr(transport, "close", None)) else None


class _OneLinePerRequest(logging.Filter):
    """At -v the proxy logs one line per request (its own, which also covers the requests
    it refused): the governor's per-request line, logged on the proxy's thread, is dropped
    (it stays at DEBUG level and for every other governor in the process)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread: int | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and record.thread == self.thread
            and hasattr(record, "pacekeeper")
        )


class _SentSignal(httpx2.AsyncBaseTransport):
    """Below the governor: tells the proxy when a request left the queue (was admitted)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    # A plain function returning the inner transport's coroutine, not a coroutine of its
    # own: the request's task resumes through every frame of its await chain at each wait.
    def handle_async_request(self, request: httpx2.Request) -> Coroutine[Any, Any, httpx2.Response]:
        signal = request.extensions.pop(_SENT_EXTENSION, None)
        if signal is not None:
            signal()
        return self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Exchange:
    """One forwarded request's state, shared with its timer and its disconnect watcher."""

    __slots__ = (
        "answered",
        "cancelled_by",
        "conn",
        "priority",
        "sent",
        "task",
        "timer",
        "watcher",
    )

    def __init__(self, task: asyncio.Task[Any], priority: Priority = Priority.INTERACTIVE) -> None:
        self.task = task
        self.priority = priority  # its queue timeout, and the retry-after it is told
        self.sent = False
        self.answered = False  # the response's last byte is on its way: nothing to cancel
        self.cancelled_by: str | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.conn: Connection | None = None  # served by the Proxy: it reports the client gone

    def on_sent(self) -> None:
        self.sent = True
        if self.timer is not None:
            self.timer.cancel()

    def on_queue_timeout(self) -> None:
        if not self.sent and self.cancelled_by is None:
            self.cancelled_by = "queue_timeout"
            self.task.cancel()

    def on_disconnect(self) -> None:
        if not self.answered and self.cancelled_by is None:
            self.cancelled_by = "disconnect"
            self.task.cancel()

    def uncancel(self) -> None:
        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()


_LEAST_SHARE = 0.01


def _share(lane: Lane, cls: Priority) -> float:
    """The share of the lane's admissions class ``cls`` gets now; under strict priority
    (``min_share=0``) a lower class waiting behind a higher one gets none, counted as 1% so
    that its wait is long and finite."""
    return max(_LEAST_SHARE, lane.queue.share_of(cls))


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _watch(receive: Receive, exchange: _Exchange) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    exchange.on_disconnect()


class ProxyApp:
    """The proxy's ASGI application: forwards through ``governor`` to ``config.upstream``.

    ``transport`` is what really sends (default: an httpx2 transport whose pool never
    queues); the governor's transport goes on top of it. Call :meth:`aclose` on the serving
    loop when done, :meth:`begin_drain` when shutting down.
    """

    def __init__(
        self,
        config: ProxyConfig,
        governor: Governor,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.governor = governor
        self.counters = ProxyCounters(clock)
        self.draining = False
        self._clock = clock
        inner = transport or sending_transport(keepalive=512)
        self._provider = get_provider(config.provider)
        self._transport = Transport(
            governor,
            transport=_SentSignal(inner),
            include_usage=config.include_usage,
            provider=self._provider,
        )
        self._prefix = config.upstream
        upstream = urlsplit(config.upstream)
        self._upstream_origin = f"{upstream.scheme}://{upstream.netloc}"
        self._base = config.base_path.encode()
        self._base_len = len(self._base)
        self._api_key = f"Bearer {config.api_key}".encode() if config.api_key else None
        # The held key, sent the provider's way (Bearer, api-key, x-api-key + version).
        self._key_headers: Headers = [
            (name.lower().encode(), value.encode())
            for name, value in self._provider.auth_headers(config.api_key).items()
        ]
        # Every accepted token, and who presents it.
        self._tokens: list[tuple[bytes, _Client]] = [
            (t.token.encode(), (t.tenant, t.priority)) for t in config.tenants
        ]
        if config.client_token:
            self._tokens.append((config.client_token.encode(), _ANYONE))
        self._timeout = {
            "connect": config.connect_timeout_s,
            "read": config.read_timeout_s,
            "write": config.read_timeout_s,
            "pool": None,
        }
        self._urls: dict[tuple[bytes, bytes], _Target] = {}
        # Recent answer times per lane: the observed rate, for honest retry-after values.
        self._answered: dict[tuple[str, str | None], deque[float]] = {}
        for t in config.tenants:
            if t.weight is not None:
                governor.weigh_tenant(t.tenant, t.weight)
        self.metrics = build_metrics(
            governor, self.counters, tenants=[t.tenant for t in config.tenants]
        )
        """The Prometheus registry behind GET /metrics (None without prometheus_client)."""
        self.guard = ConnectionGuard(
            header_timeout_s=config.header_timeout_s,
            body_timeout_s=config.body_timeout_s,
            max_unfinished=config.max_unfinished,
            clock=clock,
            on_refused=self._refused_connection,
        )
        """The connections whose request has not fully arrived (see _guard)."""
        self._log_filter = _OneLinePerRequest()
        logging.getLogger("pacekeeper").addFilter(self._log_filter)

    def _refused_connection(self, reason: str, before_headers: bool) -> None:
        if before_headers:  # the application never saw this request
            self.counters.recent.received()
        self.counters.refuse(reason)

    # -- lifecycle ------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Shutting down: refuse new requests (503), fail the queued ones (the governor is
        closed: they get a 503 refusal); requests in flight go on."""
        self.draining = True
        self.counters.draining = True
        self.governor.close()

    async def aclose(self) -> None:
        """Close the upstream connections and stop feeding the governor's metrics."""
        if self.metrics is not None:
            self.metrics.detach()
        logging.getLogger("pacekeeper").removeFilter(self._log_filter)
        await self._transport.aclose()

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if self._log_filter.thread is None:
            self._log_filter.thread = threading.get_ident()
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            return
        guard = self.guard
        conn: Connection | None = scope.get(_CONNECTION)  # set by the guarded protocol
        if conn is None:
            conn = guard.find(_transport_of(send))  # h11's protocol
            if conn is None:  # not served by the Proxy (another ASGI server)
                await self._http(scope, receive, send)
                return
            scope[_CONNECTION] = conn
        task = asyncio.current_task(conn.loop)  # the loop given: no get_running_loop()
        assert task is not None
        # The server read the request to its end already (its body came with its headers, as
        # clients send it): nothing to wait for, and no pass over the headers to know it. The
        # latest request's end means this one's too (requests arrive in order).
        try:
            whole = conn.protocol.cycle.more_body is False  # uvicorn's, either protocol
        except AttributeError:  # no cycle (yet), or another protocol
            whole = False
        if whole or not _has_body(scope):
            guard.body_done(conn)  # the request is whole: nothing to tell when it is read
            scope[_READING] = _Reading(task, conn.transport, None)
        else:
            reading = _Reading(task, conn.transport, lambda: guard.body_done(conn))
            scope[_READING] = reading
            guard.headers_done(conn, reading.on_timeout)
        try:
            await self._http(scope, receive, send)
        finally:
            guard.body_done(conn)

    def _http(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """What answers the request, to be awaited: a plain function returning the answering
        coroutine, so the request's task resumes through one frame fewer at every wait."""
        path: str = scope["path"]
        method: str = scope["method"]
        _CURRENT.set((method, path, self._clock()))
        raw_path: bytes = scope.get("raw_path") or path.encode()
        base = self._base
        if method == "GET" and path == "/metrics":
            return self._metrics(scope, send)
        if method == "GET" and path == "/healthz":
            return self._healthz(send)
        if raw_path.startswith(base) and raw_path[self._base_len : self._base_len + 1] in (
            b"",
            b"/",
        ):
            return self._forward(scope, receive, send, method, raw_path[self._base_len :])
        return self._error(
            send,
            404,
            "unknown_url",
            f"pacekeeper proxy: {path} is not under {self.config.base_path or '/'}, where "
            f"the upstream is served: set your client's base_url to "
            f"http://HOST:PORT{self.config.base_path}",
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the proxy's own answers ----------------------------------------------------------

    async def _respond(self, send: Send, status: int, headers: Headers, body: bytes) -> None:
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.counters.responded(status)

    async def _error(
        self,
        send: Send,
        status: int,
        code: str,
        message: str,
        *,
        retry_after_s: float | None = None,
        extra: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """An error the proxy makes itself: OpenAI's shape, a code saying what happened."""
        if status == 429:
            error_type = "rate_limit_error"
        elif status >= 500:
            error_type = "server_error"
        else:
            error_type = "invalid_request_error"
        headers: Headers = [_JSON, (ERROR_HEADER.encode(), code.encode()), *extra]
        if retry_after_s is not None:
            headers.append(_REFUSED)
            seconds = max(1, min(3600, math.ceil(retry_after_s)))
            headers.append((b"retry-after", str(seconds).encode()))
            headers.append((b"retry-after-ms", str(max(1, round(retry_after_s * 1000))).encode()))
            self.counters.refuse(code)
        await self._respond(send, status, headers, _error_body(message, error_type, code))
        if logger.isEnabledFor(logging.INFO):
            current = _CURRENT.get()
            if current is not None:
                method, path, started = current
                logger.info(
                    "%s %s -> %d %s (answered by the proxy) total=%.3fs",
                    method,
                    route_of(path),
                    status,
                    code,
                    self._clock() - started,
                )

    async def _metrics(self, scope: Scope, send: Send) -> None:
        if self.metrics is None:
            await self._error(
                send,
                501,
                "metrics_unavailable",
                "pacekeeper proxy: /metrics needs prometheus_client: "
                "pip install 'pacekeeper[prometheus]'",
            )
            return
        accept = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value.decode("latin-1")
        body, content_type = self.metrics.render(accept)
        await self._respond(send, 200, [(b"content-type", content_type.encode())], body)

    health_window_s = 10
    """/healthz says degraded when, over this many seconds, the proxy refused (for
    back-pressure) at least half of the requests it received."""

    def health(self) -> tuple[int, dict[str, Any]]:
        """What GET /healthz answers: (HTTP status, document)."""
        lanes = self.governor.lanes
        guard = self.guard
        received, refused = self.counters.recent.totals(self.health_window_s)
        reasons = []
        if refused and refused * 2 >= received:
            reasons.append(
                f"refused {refused} of {received} requests in the last {self.health_window_s}s"
            )
        if guard.full:
            reasons.append(
                f"{guard.unfinished} connections have not sent their whole request "
                f"(the limit, --max-unfinished)"
            )
        if self.counters.buffered_bytes >= self.config.max_buffered_bytes:
            reasons.append("the request bodies held reach --max-buffered-mb")
        status = "draining" if self.draining else "degraded" if reasons else "ok"
        doc: dict[str, Any] = {
            "status": status,
            "reasons": reasons,
            "in_flight": sum(lane.slots.in_flight for lane in lanes),
            "queued": sum(max(0, lane.queued) for lane in lanes),
            "in_progress": self.counters.in_progress,
            "window_s": self.health_window_s,
            "received_recently": received,
            "refused_recently": refused,
            "unfinished_connections": guard.unfinished,
            "stalled_connections": guard.stalled(1.0),
            "timed_out_connections": guard.timed_out,
            "evicted_connections": guard.evicted,
            "buffered_bytes": self.counters.buffered_bytes,
        }
        return (200 if status == "ok" else 503), doc

    async def _healthz(self, send: Send) -> None:
        status, doc = self.health()
        await self._respond(send, status, [_JSON], json.dumps(doc).encode())

    # -- forwarding -----------------------------------------------------------------------

    def _client(self, headers: Iterable[tuple[bytes, bytes]]) -> _Client | None:
        """Who presents this request's token (None: no valid token where one is required)."""
        if not self._tokens:
            return _ANYONE
        presented = bearer = None
        for name, value in headers:
            if name == b"x-pacekeeper-token":
                presented = value.strip()
            elif name == b"authorization" and self._api_key is not None:
                scheme, _, credentials = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    bearer = credentials.strip()
            elif name in _KEY_HEADERS and self._api_key is not None and bearer is None:
                bearer = value.strip()  # an SDK's own key header (Azure, Anthropic)
        candidate = presented if presented is not None else bearer
        if candidate is None:
            return None
        # Constant time in the tokens' content (the length of a wrong guess may show), and
        # every token compared, so which one matched does not show either.
        found: _Client | None = None
        for token, client in self._tokens:
            if hmac.compare_digest(candidate, token):
                found = client
        return found

    def _head(
        self, headers: Iterable[tuple[bytes, bytes]]
    ) -> tuple[Triples, int, bytes, bytes | None]:
        """One pass over the request's headers (each was read four times: its length, its
        type, its class, the copy): the headers forwarded, as httpx2 keeps them (name,
        lowercased name, value; the two names the same, ASGI gives them lowercased); the
        declared length (-1: none, or not a number; the last one counts); the content type
        (the last one); the x-pacekeeper-priority value (the first; None: absent)."""
        out: Triples = []
        listed: set[bytes] | None = None
        declared = -1
        content_type = b""
        asked: bytes | None = None
        held_key = self._api_key is not None
        for name, value in headers:
            if name not in _REQUEST_KIND:  # `in` and [], not .get(): no method call
                out.append((name, name, value))
                continue
            kind = _REQUEST_KIND[name]  # the kinds tested in the order requests carry them
            if kind == _KIND_DROP:  # hop-by-hop, host, expect, the proxy's token
                continue
            if kind == _KIND_LENGTH:
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
            elif kind == _KIND_TYPE:
                content_type = value
                out.append((name, name, value))
            elif kind == _KIND_KEY:
                if not held_key:  # the proxy holds no key: the client's goes on
                    out.append((name, name, value))
            elif kind == _KIND_PRIORITY:
                if asked is None:
                    asked = value
            else:  # _KIND_CONNECTION
                if listed is None:
                    listed = set()
                listed.update(t.strip().lower() for t in value.split(b","))
        if listed is not None and listed - {b"close", b"keep-alive"}:
            out = [header for header in out if header[1] not in listed]
        if held_key:
            present = {name for _, name, _ in out}
            out.extend((n, n, v) for n, v in self._key_headers if n not in present)
        return out, declared, content_type, asked

    async def _read_body(
        self, scope: Scope, receive: Receive, send: Send, declared: int
    ) -> tuple[bytes, int] | None:
        """The whole body and the bytes it holds in the buffer count; None when already
        answered (408, 413, 429) or the client left.

        Bytes are counted against ``max_buffered_bytes`` as they arrive (a declared length
        reserves nothing: a client announcing 32 MiB and sending nothing holds nothing), and
        the body must arrive within ``body_timeout_s`` (the guard's timer answers 408)."""
        limit = self.config.max_body_bytes
        if declared > limit:
            await self._too_large(send, declared)
            return None
        reading: _Reading | None = scope.get(_READING)
        counters = self.counters
        cap = self.config.max_buffered_bytes
        held = 0
        parts: list[bytes] = []
        if reading is not None:
            reading.active = True
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                part: bytes = message.get("body", b"")
                if part:
                    length = len(part)
                    size = held + length
                    if size > limit:
                        raise _TooLarge(size)
                    if counters.buffered_bytes + length > cap:
                        raise _BufferFull
                    counters.buffered_bytes += length
                    held = size
                    parts.append(part)
                if not message.get("more_body", False):
                    break
        except _ClientGone:
            counters.buffered_bytes -= held
            return None
        except _TooLarge as exc:
            counters.buffered_bytes -= held
            await self._too_large(send, exc.size)
            return None
        except _BufferFull:
            counters.buffered_bytes -= held
            await self._buffer_full(send)
            return None
        except asyncio.CancelledError:
            counters.buffered_bytes -= held
            if reading is None or reading.expired is None:
                raise
            reading.uncancel()
            await self._respond(
                send,
                408,
                [_JSON, (ERROR_HEADER.encode(), b"request_timeout"), (b"connection", b"close")],
                _error_body(reading.expired, "invalid_request_error", "request_timeout"),
            )
            return None
        except BaseException:
            counters.buffered_bytes -= held
            raise
        finally:
            if reading is not None:
                reading.active = False
                if reading.done is not None:
                    reading.done()
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body, held

    async def _too_large(self, send: Send, size: int) -> None:
        limit = self.config.max_body_bytes
        self.counters.refuse("request_too_large")
        await self._error(
            send,
            413,
            "request_too_large",
            f"pacekeeper proxy: the request body has {size if size >= 0 else 'more than'} "
            f"bytes, more than the {limit} bytes this proxy accepts (--max-body-mb)",
            extra=[(b"connection", b"close")],
        )

    async def _buffer_full(self, send: Send) -> None:
        await self._error(
            send,
            429,
            "proxy_buffer_full",
            "pacekeeper proxy: the request bodies held by this proxy already reach its limit "
            "(--max-buffered-mb); retry shortly",
            retry_after_s=1.0,
            extra=[(b"connection", b"close")],  # the rest of this body is not read
        )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, method: str, rest: bytes
    ) -> None:
        self.counters.recent.received()
        if self.draining:
            await self._error(
                send,
                503,
                "proxy_shutting_down",
                "pacekeeper proxy: shutting down; this request was not sent",
                retry_after_s=1.0,
                extra=_unread(scope),
            )
            return
        client = self._client(scope["headers"])
        if client is None:
            self.counters.refuse("invalid_proxy_token")
            await self._error(
                send,
                401,
                "invalid_proxy_token",
                "pacekeeper proxy: missing or wrong client token: send it as "
                f"'{TOKEN_HEADER}: TOKEN'"
                + (" or as the API key (Authorization: Bearer TOKEN)" if self._api_key else ""),
                extra=[(b"www-authenticate", b'Bearer realm="pacekeeper proxy"'), *_unread(scope)],
            )
            return
        # bytes.find, not `in`: a bytes needle `in` bytes first tries it as an int, and the
        # TypeError it makes and drops costs more than the search (about 1,800 instructions)
        if rest.find(b"/.") >= 0 and any(
            segment in (".", "..") for segment in scope["path"].split("/")
        ):
            self.counters.refuse("invalid_path")
            await self._error(
                send,
                400,
                "invalid_path",
                "pacekeeper proxy: '.' and '..' path segments are refused",
                extra=_unread(scope),
            )
            return
        headers, declared, content_type, asked = self._head(scope["headers"])
        cls = self._priority(asked, client)
        if cls is None:
            self.counters.refuse("invalid_priority")
            await self._error(
                send,
                400,
                "invalid_priority",
                f"pacekeeper proxy: {PRIORITY_HEADER} must be one of "
                f"{', '.join(p.value for p in Priority)}",
                extra=_unread(scope),
            )
            return
        read = await self._read_body(scope, receive, send, declared)
        if read is None:
            return
        body, reserved = read
        try:
            doc: object = None
            declared_json = content_type.find(b"json") >= 0  # not `in`: see the path check
            if body and (declared_json or (method == "POST" and body[:1] in _JSON_START)):
                try:
                    doc = _json_of(body)
                except (ValueError, RecursionError) as exc:
                    if declared_json and method in _BODY_METHODS:
                        self.counters.refuse("invalid_json")
                        await self._error(
                            send,
                            400,
                            "invalid_json",
                            "pacekeeper proxy: the request body is not valid JSON "
                            f"({describe_exception(exc)})",
                        )
                        return
                    doc = None
            if method != "POST" or body[:1] not in _JSON_START:
                doc = None  # read as the governed transport reads a body (parse_body)

            reading: _Reading | None = scope.get(_READING)
            task = reading.task if reading is not None else asyncio.current_task()
            assert task is not None
            exchange = _Exchange(task, cls)
            try:
                url, host, url_path = self._url(rest, scope.get("query_string", b""))
                # Host and length set here, the body given as a stream: httpx2 would otherwise
                # rebuild the headers once more to add them.
                headers.append((b"host", b"host", host))
                if body or method in _BODY_METHODS:
                    headers.append((b"content-length", b"content-length", str(len(body)).encode()))
                request = request_of(
                    method,
                    url,
                    headers,
                    body,  # held: request.content, as with content=
                    {"timeout": self._timeout, _SENT_EXTENSION: exchange.on_sent},
                )
            except (httpx2.InvalidURL, ValueError) as exc:
                self.counters.refuse("invalid_url")
                await self._error(
                    send,
                    400,
                    "invalid_url",
                    f"pacekeeper proxy: bad request URL ({describe_exception(exc)})",
                )
                return
            # The governed transport takes these facts instead of parsing the body again.
            facts = facts_of(method, url_path, doc)
            request.extensions[FACTS_EXTENSION] = facts
            lane = self.governor.lane(facts.route, facts.model)
            refusal = self._refusal(lane, cls)
            if refusal is not None:
                code, message, retry_after_s = refusal
                await self._error(send, 429, code, message, retry_after_s=retry_after_s)
                return

            counters = self.counters
            counters.in_progress += 1
            loop = task.get_loop()  # asyncio.get_running_loop() costs a getpid() on Python 3.11
            exchange.timer = loop.call_later(
                self.config.queue_timeout_for(cls), exchange.on_queue_timeout
            )
            conn: Connection | None = scope.get(_CONNECTION)
            if conn is not None:  # the guard reports the client gone: no task per request
                exchange.conn = conn
                if conn.lost:
                    exchange.on_disconnect()
                else:
                    conn.on_lost = exchange.on_disconnect
            else:  # another ASGI server: wait for its http.disconnect
                exchange.watcher = loop.create_task(_watch(receive, exchange))
            # Read by the governed transport's call; set here rather than with a priority()
            # block (this task's own context: nothing outside it sees them).
            priority_token = PRIORITY_VAR.set(cls)
            tenant = client[0]
            tenant_token = TENANT_VAR.set(tenant) if tenant is not None else None
            try:
                await self._exchange(send, request, lane, exchange)
            finally:
                if tenant_token is not None:
                    TENANT_VAR.reset(tenant_token)
                PRIORITY_VAR.reset(priority_token)
                counters.in_progress -= 1
                exchange.timer.cancel()
                if conn is not None:
                    conn.on_lost = None
                elif exchange.watcher is not None:
                    exchange.watcher.cancel()
        finally:
            self.counters.buffered_bytes -= reserved

    @staticmethod
    def _priority(asked: bytes | None, client: _Client) -> Priority | None:
        """The request's class: its header's (``asked``), never above the one its token is
        bound to (default: that one). None: a header naming no class."""
        ceiling = client[1]
        if asked is None:
            return ceiling
        try:
            cls = Priority.parse(asked.decode("latin-1"))
        except ConfigurationError:
            return None
        return cls if cls.rank >= ceiling.rank else ceiling

    def _url(self, rest: bytes, query: bytes) -> _Target:
        """The upstream URL of a request path, its Host header and its path: parsed once per
        distinct path (httpx2 parses and checks a URL string character by character, a tenth
        of the proxy's CPU)."""
        key = (rest, query)
        target = self._urls.get(key)
        if target is None:
            text = self._prefix + rest.decode("latin-1")
            if query:
                text += "?" + query.decode("latin-1")
            url = httpx2.URL(text)
            target = (url, url.netloc, url.path)
            if len(self._urls) >= 1024:  # paths with ids: keep the newest
                self._urls.pop(next(iter(self._urls)))
            self._urls[key] = target
        return target

    def _refusal(self, lane: Lane, cls: Priority) -> tuple[str, str, float] | None:
        """Refuse now when the lane's queue is full, or its known wait passes the deadline,
        for a request of class ``cls``: only what goes before it counts (its class and the
        classes above), at the share of the rate it gets while they all wait. So a batch
        request is refused long before an interactive one."""
        queued = lane.queue.ahead_of(cls)
        config = self.config
        if queued >= config.max_queue:
            return (
                "proxy_queue_full",
                f"pacekeeper proxy: {queued} requests of class {cls} or above already wait "
                f"for {lane.key[0]} model={lane.key[1]} (the limit is {config.max_queue}, "
                "--max-queue); retry after the time given in retry-after",
                self._drain_time(lane, queued, cls),
            )
        paced = lane.rpm
        if paced is not None and queued:
            rate = paced * lane.limits.utilisation / 60.0 * _share(lane, cls)
            cooldown = lane.cooldown.remaining_s(now=self.governor.clock())
            wait = cooldown + (queued + 1) / rate
            timeout_s = config.queue_timeout_for(cls)
            if wait > timeout_s:
                return (
                    "proxy_queue_timeout",
                    f"pacekeeper proxy: {queued} requests of class {cls} or above wait for "
                    f"{lane.key[0]} "
                    f"model={lane.key[1]}, about {wait:.0f}s at the {paced:g} requests per "
                    f"minute limit, longer than this proxy waits for class {cls} "
                    f"({timeout_s:g}s, --queue-timeout {cls}=S)",
                    wait - timeout_s,
                )
        return None

    def _drain_time(self, lane: Lane, queued: int, cls: Priority = Priority.INTERACTIVE) -> float:
        """Seconds for ``queued`` requests of class ``cls`` or above to leave the lane at its
        observed (or paced) rate, of which class ``cls`` gets its share."""
        now = self._clock()
        wait = lane.cooldown.remaining_s(now=self.governor.clock())
        rates = []
        if lane.rpm is not None:
            rates.append(lane.rpm * lane.limits.utilisation / 60.0)
        times = self._answered.get(lane.key)
        if times is not None and len(times) >= 2 and now - times[0] < 60.0:
            span = times[-1] - times[0]
            if span > 0:
                rates.append((len(times) - 1) / span)
        if rates:
            return wait + queued / (min(rates) * _share(lane, cls))
        return wait + 1.0

    async def _exchange(
        self, send: Send, request: httpx2.Request, lane: Lane, exchange: _Exchange
    ) -> None:
        started = self._clock()
        try:
            response = await self._transport.handle_async_request(request)
        except asyncio.CancelledError:
            if exchange.cancelled_by is None:
                if not self.draining:
                    raise
                exchange.uncancel()  # the drain deadline passed before the answer came
                if exchange.sent:  # not a refusal: the upstream may have done the work
                    self.counters.upstream_error("cut_at_drain_deadline")
                    await self._error(
                        send,
                        503,
                        "proxy_shutting_down",
                        "pacekeeper proxy: shut down before the upstream answered; the upstream "
                        "may have processed this request",
                    )
                else:
                    await self._error(
                        send,
                        503,
                        "proxy_shutting_down",
                        "pacekeeper proxy: shut down; this request was not sent",
                        retry_after_s=1.0,
                    )
                return
            exchange.uncancel()
            if exchange.cancelled_by == "queue_timeout":
                await self._queue_timeout(send, lane, exchange.priority)
            else:
                self.counters.disconnected += 1
            return
        except DeadlineExceeded as exc:
            await self._error(
                send,
                429,
                "proxy_queue_timeout",
                f"pacekeeper proxy: {exc}",
                retry_after_s=self._drain_time(lane, max(1, lane.queued)),
            )
            return
        except AdmissionClosed:
            await self._error(
                send,
                503,
                "proxy_shutting_down",
                "pacekeeper proxy: shutting down; this request was not sent",
                retry_after_s=1.0,
            )
            return
        except RequestTooLarge as exc:
            self.counters.refuse("tokens_exceed_limit")
            await self._error(send, 413, "tokens_exceed_limit", f"pacekeeper proxy: {exc}")
            return
        except httpx2.TimeoutException as exc:
            self.counters.upstream_error("timeout")
            await self._error(
                send,
                504,
                "upstream_timeout",
                f"pacekeeper proxy: the upstream {self._upstream_origin} did not answer in time: "
                f"{describe_exception(exc)}{_notes(exc)}",
            )
            return
        except httpx2.TransportError as exc:
            self.counters.upstream_error("unreachable")
            await self._error(
                send,
                502,
                "upstream_unreachable",
                f"pacekeeper proxy: could not get an answer from the upstream "
                f"{self._upstream_origin}: {describe_exception(exc)}{_notes(exc)}",
            )
            return
        except PacekeeperError as exc:
            await self._error(send, 502, "proxy_error", f"pacekeeper proxy: {exc}")
            return
        await self._relay(send, response, lane, exchange, started=started, method=request.method)

    async def _queue_timeout(self, send: Send, lane: Lane, cls: Priority) -> None:
        queued = max(1, lane.queue.ahead_of(cls))
        await self._error(
            send,
            429,
            "proxy_queue_timeout",
            f"pacekeeper proxy: not sent after waiting {self.config.queue_timeout_for(cls):g}s "
            f"for {lane.key[0]} model={lane.key[1]} (class {cls}: --queue-timeout {cls}=S); "
            f"{queued} requests of class {cls} or above wait",
            retry_after_s=self._drain_time(lane, queued, cls),
        )

    async def _relay(
        self,
        send: Send,
        response: httpx2.Response,
        lane: Lane,
        exchange: _Exchange,
        *,
        started: float,
        method: str,
    ) -> None:
        """Pass the answer on as it comes; close it (freeing its slot) whatever happens."""
        status = response.status_code
        triples = triples_of(response.headers)
        headers: Headers = [(n, v) for _, n, v in triples if n not in _HOP_BY_HOP]
        if len(headers) < len(triples):  # hop-by-hop headers came: Connection may name more
            listed: set[bytes] = set()
            for _, name, value in triples:
                if name == b"connection":
                    listed.update(t.strip().lower() for t in value.split(b","))
            if listed - {b"close", b"keep-alive"}:
                headers = [(n, v) for n, v in headers if n not in listed]
        stream: Any = response.stream  # typed Any: no cast() call per request
        whole = isinstance(stream, httpx2.ByteStream)  # read whole (and closed) by the governor
        sent_bytes = 0
        try:
            if whole:
                body = b"".join(stream)  # its one chunk, without an async generator
                exchange.answered = True
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                _flush(exchange)
            else:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                async for chunk in stream:
                    if chunk:
                        sent_bytes += len(chunk)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                exchange.answered = True
                await send({"type": "http.response.body", "body": b""})
                _flush(exchange)  # before the stream is settled
        except asyncio.CancelledError:
            if exchange.cancelled_by is None and not self.draining:
                raise
            exchange.uncancel()
            if exchange.cancelled_by is None:  # the drain deadline passed
                logger.warning(
                    "%s model=%s: answer cut at the drain deadline after %d bytes",
                    lane.key[0],
                    lane.key[1],
                    sent_bytes,
                )
                self.counters.upstream_error("cut_at_drain_deadline")
                await self._abort(send, exchange)
            else:
                self.counters.disconnected += 1
            return
        except Exception as exc:
            # The upstream broke off after the answer began: the status is gone, so the
            # client's connection is cut to show it an incomplete answer, never a clean end.
            self.counters.upstream_error("broken_stream")
            logger.warning(
                "%s model=%s: the upstream's answer broke off after %d bytes (%s); "
                "the client's connection was closed",
                lane.key[0],
                lane.key[1],
                sent_bytes,
                type(exc).__name__,
            )
            await self._abort(send, exchange)
            return
        finally:
            if not whole and not response.is_closed:
                # response.aclose() without its exception-mapping context manager (the
                # governor's stream raises none of httpx2's exceptions when closed).
                response.is_closed = True
                await stream.aclose()
        self.counters.responded(status)
        now = self._clock()
        times = self._answered.get(lane.key)
        if times is None:
            times = self._answered[lane.key] = deque(maxlen=64)
        times.append(now)
        if logger.isEnabledFor(logging.INFO):
            record = response.extensions.get(RECORD_EXTENSION)
            attempts = getattr(record, "attempts", None)
            queued_s = getattr(record, "queued_s", None)
            logger.info(
                "%s %s -> %d model=%s attempts=%s queued=%s total=%.3fs",
                method,
                lane.key[0],
                status,
                lane.key[1],
                attempts if attempts is not None else "-",
                f"{queued_s:.3f}s" if queued_s is not None else "-",
                now - started,
            )

    async def _abort(self, send: Send, exchange: _Exchange) -> None:
        """Cut the client's connection (what was sent is flushed first) and wait until the
        server saw it go, so it does not take the response for one left unfinished."""
        transport = _transport_of(send)
        if transport is None:
            return
        exchange.answered = True  # the watcher must not cancel this task when it sees the end
        gone: asyncio.Future[None] | None = None
        conn = exchange.conn
        if conn is not None and not conn.lost:
            gone = asyncio.get_running_loop().create_future()
            conn.on_lost = functools.partial(_settle, gone)
        transport.close()
        waited = gone if gone is not None else exchange.watcher
        if waited is not None and not waited.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(waited), 2.0)


_READING = "pacekeeper.reading"
_CONNECTION = CONNECTION_KEY


def _has_body(scope: Scope) -> bool:
    """Whether the request declares a body (a length other than 0, or a transfer coding)."""
    for name, value in scope["headers"]:
        if (name == b"content-length" and value.strip() not in (b"0", b"")) or (
            name == b"transfer-encoding"
        ):
            return True
    return False


def _unread(scope: Scope) -> Headers:
    """The headers of an answer made without reading the request's body: served by the Proxy,
    the connection is closed, or the rest of the body would sit on it (and count as the next
    request, never finished)."""
    if scope.get(_CONNECTION) is not None and _has_body(scope):
        return [(b"connection", b"close")]
    return []


class _Reading:
    """A request whose body is being read: the guard's timer ends it with a 408."""

    __slots__ = ("active", "done", "expired", "task", "transport")

    def __init__(
        self, task: asyncio.Task[Any], transport: Any, done: Callable[[], None] | None
    ) -> None:
        self.task = task
        self.transport = transport
        self.done = done
        """Told when the body has been read (None: nothing to tell)."""
        self.active = False
        self.expired: str | None = None

    def on_timeout(self, message: str) -> None:
        if self.active:
            self.expired = message
            self.task.cancel()
        else:  # not reading (answering without reading the body): just close
            self.transport.close()

    def uncancel(self) -> None:
        uncancel = getattr(self.task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()


class _ClientGone(Exception):
    pass


class _BufferFull(Exception):
    pass


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size
