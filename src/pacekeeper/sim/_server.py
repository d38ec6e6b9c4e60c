"""Serving the simulator: uvicorn on its own event loop in a background thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import logging
import socket
import threading
from typing import Any

import uvicorn

from ._app import SimApp
from ._lifecycle import StartStop
from ._scenario import Scenario

__all__ = ["Simulator", "base_url_for"]

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 15.0
_THREAD_PREFIX = "pacekeeper-sim:"


class _QuietSimThreads(logging.Filter):
    """Drops uvicorn's info chatter ("Started server process", "Shutting down") when it comes
    from a simulator thread; warnings and errors pass, as do other servers' records.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        thread = record.threadName or ""
        return record.levelno >= logging.WARNING or not thread.startswith(_THREAD_PREFIX)


_QUIET = _QuietSimThreads()


def _quiet_uvicorn_logs() -> None:
    # A filter on the named logger, not a level: it must not silence other uvicorn servers
    # (e.g. pacekeeper's proxy) running in the same process.
    logger = logging.getLogger("uvicorn.error")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)


def _http_protocol() -> str:
    # httptools is several times faster than h11; both are supported.
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def base_url_for(host: str, port: int) -> str:
    """The OpenAI-style base URL (with /v1) of a simulator listening on host:port."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def uvicorn_config(app: SimApp, host: str, port: int) -> uvicorn.Config:
    """uvicorn settings for the simulator: fast protocol, quiet logs, no extras on the path."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_http_protocol(),
        ws="none",
        lifespan="off",
        # log_config None: leave the process's logging alone (no dictConfig), so uvicorn's
        # info messages fall to the root logger's default WARNING level and stay quiet.
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        # A backstop only: hung and sleeping requests end themselves when the app closes.
        timeout_graceful_shutdown=3,
        timeout_keep_alive=30,
    )


class _Server(uvicorn.Server):
    """uvicorn.Server that reports when it is listening."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._started_event.set()


class Simulator(StartStop):
    """The simulator served in a background thread with its own event loop.

    Usable as `with Simulator(scenario) as sim:` or `async with Simulator(scenario) as sim:`
    (the async form starts and stops in a worker thread, never blocking the caller's loop).
    Port 0 (the default) picks a free port; `base_url` is then known as soon as it started.
    """

    def __init__(self, scenario: Scenario | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self.scenario = scenario if scenario is not None else Scenario()
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._app: SimApp | None = None
        self._server: _Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind, start serving and return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("Simulator already started")
        sock = bind_socket(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        self._app = SimApp(self.scenario)
        started = threading.Event()
        self._server = _Server(uvicorn_config(self._app, self.host, self._port), started)
        self._loop = _new_event_loop()
        _quiet_uvicorn_logs()
        self._thread = threading.Thread(
            target=self._run,
            args=(sock, started),
            name=f"{_THREAD_PREFIX}{self._port}",
            daemon=True,
        )
        self._thread.start()
        if not started.wait(_START_TIMEOUT_S) or self._error is not None:
            self.stop()
            raise RuntimeError(f"simulator failed to start: {self._error!r}")
        return self

    def _run(self, sock: socket.socket, started: threading.Event) -> None:
        loop = self._loop
        server = self._server
        assert loop is not None
        assert server is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to the start() caller
            self._error = exc
        finally:
            started.set()  # unblock start() if serving never began
            try:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                sock.close()

    def stop(self) -> None:
        """Stop serving: open connections (hung ones included) are closed promptly."""
        thread, loop, server, app = self._thread, self._loop, self._server, self._app
        if thread is None or loop is None or server is None or app is None:
            return
        if thread.is_alive():

            def begin_shutdown() -> None:
                app.begin_close()
                server.should_exit = True

            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(begin_shutdown)
            thread.join(_STOP_TIMEOUT_S)
            if thread.is_alive():
                raise RuntimeError("simulator did not stop in time")
        self._thread = None

    @property
    def running(self) -> bool:
        """True while the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    # --- access -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port served (known once started)."""
        if self._port is None:
            raise RuntimeError("Simulator not started")
        return self._port

    @property
    def url(self) -> str:
        """The server root, e.g. http://127.0.0.1:8000 (stats live at {url}/_stats)."""
        return self.base_url[: -len("/v1")]

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:8000/v1."""
        return base_url_for(self.host, self.port)

    @property
    def app(self) -> SimApp:
        """The ASGI app being served (its state belongs to the server thread)."""
        if self._app is None:
            raise RuntimeError("Simulator not started")
        return self._app

    def _on_loop(self, fn: Any) -> Any:
        """Run `fn()` on the server's loop (its state is not thread-safe) and return its result."""
        app_loop = self._loop
        if not self.running or app_loop is None or threading.current_thread() is self._thread:
            return fn()
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:  # handed to the calling thread
                result.set_exception(exc)

        app_loop.call_soon_threadsafe(call)
        return result.result(timeout=_STOP_TIMEOUT_S)

    def stats(self) -> dict[str, Any]:
        """The /_stats document, read directly (a consistent snapshot)."""
        snapshot: dict[str, Any] = self._on_loop(self.app.snapshot)
        return snapshot

    def reset_stats(self) -> None:
        """Clear the stats (and the per-identity attempt numbers), as POST /_reset does."""
        self._on_loop(self.app.reset_stats)

    def restart(self) -> bool:
        """Start over as if just started, as POST /_restart does (False: busy, not restarted)."""
        restarted: bool = self._on_loop(self.app.restart)
        return restarted

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = base_url_for(self.host, self._port) if self._port is not None else "unbound"
        return f"Simulator({where}, {state})"
