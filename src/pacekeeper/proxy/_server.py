"""Serving the proxy: uvicorn on its own event loop in a background thread.

The same :class:`Proxy` runs under ``pacekeeper proxy`` (the main thread waits for signals)
and in tests and benchmarks (``with Proxy(...) as proxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import threading
from types import TracebackType

import httpx2
import uvicorn

from pacekeeper.core.governor import Governor
from pacekeeper.core.tokens import warm_up
from pacekeeper.proxy._app import ProxyApp
from pacekeeper.proxy._config import ProxyConfig
from pacekeeper.proxy._guard import ConnectionGuard, guarded_protocol
from pacekeeper.transports._httpx2 import httptools_available

__all__ = ["Proxy"]

_START_TIMEOUT_S = 30.0
_THREAD_PREFIX = "pacekeeper-proxy:"
# uvicorn notices should_exit within 0.1 s, then waits up to the drain timeout for tasks,
# then cancels them; this is what the joining thread allows on top of that.
_STOP_MARGIN_S = 10.0


def _http_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's fastest HTTP protocol, reporting to ``guard`` (slow and stalled clients)."""
    base: type[asyncio.Protocol]
    if httptools_available():
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    protocol: type[asyncio.Protocol] = guarded_protocol(base, guard)
    return protocol


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


class _Server(uvicorn.Server):
    """uvicorn.Server that reports when it is listening."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._started_event.set()


class Proxy:
    """The proxy served in a background thread with its own event loop.

    ``config`` is a :class:`ProxyConfig` or just the upstream's base URL; ``governor`` governs
    every forwarded request (default: a new one, limits learned from the upstream's headers).
    ``transport`` is the httpx2 transport that really sends (for tests).

    ::

        with Proxy(ProxyConfig(upstream="https://api.openai.com/v1", port=0)) as proxy:
            client = openai.OpenAI(base_url=proxy.base_url)

    ``stop()`` drains: new requests are refused, queued ones get a 503, requests in flight get
    up to ``drain_timeout_s`` to finish. It closes the governor to new admissions.
    """

    def __init__(
        self,
        config: ProxyConfig | str,
        governor: Governor | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config if isinstance(config, ProxyConfig) else ProxyConfig(upstream=config)
        self.governor = governor if governor is not None else Governor()
        self._transport = transport
        self._port: int | None = None
        self._app: ProxyApp | None = None
        self._server: _Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Proxy:
        """Bind, start serving, and return once connections are accepted. Raises OSError
        when the address cannot be bound."""
        if self._thread is not None:
            raise RuntimeError("Proxy already started")
        config = self.config
        # Loaded on the first request instead, an encoding would stall every request on the
        # event loop for a third of a second. The models named in the configuration when there
        # are any (only their encodings are loaded), else every encoding: clients pick models.
        warm_up(list(self.governor.models) or None)
        sock = _bind(config.host, config.port)
        self._port = sock.getsockname()[1]
        self._loop = _new_event_loop()
        self._app = ProxyApp(config, self.governor, transport=self._transport)
        started = threading.Event()
        self._server = _Server(
            uvicorn.Config(
                self._app,
                host=config.host,
                port=self._port,
                http=_http_protocol(self._app.guard),
                ws="none",
                lifespan="off",
                # Leave the process's logging alone (no dictConfig).
                log_config=None,
                access_log=False,
                server_header=False,
                date_header=False,  # the upstream's date passes through
                proxy_headers=False,
                timeout_graceful_shutdown=max(1, math.ceil(config.drain_timeout_s)),
                # Longer than clients' idle pools keep connections (httpx: 5 s), so a client
                # never sends on a connection the server is closing.
                timeout_keep_alive=65,
                backlog=2048,
            ),
            started,
        )
        self._thread = threading.Thread(
            target=self._run,
            args=(sock, started),
            name=f"{_THREAD_PREFIX}{self._port}",
            daemon=True,
        )
        self._thread.start()
        if not started.wait(_START_TIMEOUT_S) or self._error is not None:
            self.stop()
            raise RuntimeError(f"proxy failed to start: {self._error!r}")
        return self

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        loop, server, app = self._loop, self._server, self._app
        assert loop is not None
        assert server is not None
        assert app is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to the start() caller
            self._error = exc
        finally:
            started.set()
            try:
                loop.run_until_complete(app.aclose())
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                sock.close()

    def begin_stop(self) -> None:
        """Start a graceful shutdown and return at once (see :meth:`stop`)."""
        loop, server, app = self._loop, self._server, self._app
        if self._thread is None or loop is None or server is None or app is None:
            return

        def begin() -> None:
            app.begin_drain()
            server.should_exit = True

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(begin)

    def force_stop(self) -> None:
        """Stop waiting for requests in flight: they are cut now."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        def force() -> None:
            server.should_exit = True
            server.force_exit = True
            for task in list(server.server_state.tasks):
                task.cancel()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(force)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until serving ended; True if it did within ``timeout_s``."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def stop(self) -> None:
        """Graceful shutdown: stop accepting, refuse queued requests (503), give requests in
        flight up to ``config.drain_timeout_s`` to finish, then cut the rest."""
        if self._thread is None:
            return
        if self._thread.is_alive():
            self.begin_stop()
            if not self.wait(self.config.drain_timeout_s + _STOP_MARGIN_S):
                self.force_stop()
                if not self.wait(_STOP_MARGIN_S):
                    raise RuntimeError("proxy did not stop in time")
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Proxy:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- access ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Proxy not started")
        return self._port

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:8787`` (``/metrics``, ``/healthz``)."""
        return f"http://{_url_host(self.config.host)}:{self.port}"

    @property
    def base_url(self) -> str:
        """What clients use as their base_url, e.g. ``http://127.0.0.1:8787/v1``."""
        return self.url + self.config.base_path

    @property
    def app(self) -> ProxyApp:
        if self._app is None:
            raise RuntimeError("Proxy not started")
        return self._app

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = self.base_url if self._port is not None else "unbound"
        return f"Proxy({where} -> {self.config.upstream}, {state})"
