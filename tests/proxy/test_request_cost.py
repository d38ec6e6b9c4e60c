"""The proxy's work per request, counted in operations (never timed): a budget that fails
when a change quietly gives the gains of issue 15 back."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any

import httpx2

from pacekeeper.sim import Simulator

from .conftest import StartProxy

MODEL = "gpt-4o-mini"
REQUESTS = 20


def _count_tasks(loop: asyncio.AbstractEventLoop, names: list[str]) -> None:
    """From now on, every task started on ``loop`` is named in ``names`` (set on the loop's
    own thread)."""

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        names.append(getattr(coro, "__qualname__", repr(coro)))
        if context is None:
            return asyncio.Task(coro, loop=loop)
        return context.run(asyncio.Task, coro, loop=loop)  # Python 3.10 has no context=

    installed = threading.Event()

    def install() -> None:
        loop.set_task_factory(factory)  # type: ignore[arg-type]
        installed.set()

    loop.call_soon_threadsafe(install)
    assert installed.wait(5)


def _ask(client: httpx2.Client, i: int, *, stream: bool = False) -> None:
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"question {i}"}],
    }
    if stream:
        body["stream"] = True
    response = client.post("/chat/completions", json=body)
    assert response.status_code == 200
    if stream:
        assert response.text.rstrip().endswith("data: [DONE]")


def test_a_request_on_a_kept_alive_connection_starts_one_task(
    plain_sim: Simulator, start_proxy: StartProxy
) -> None:
    # The server's task running the application, nothing else: no task per request waiting
    # for the client to leave (the connection reports it), none in the governed transport.
    proxy = start_proxy(plain_sim)
    loop = proxy._loop
    assert loop is not None
    names: list[str] = []
    with httpx2.Client(base_url=proxy.base_url, timeout=30) as client:
        _ask(client, -1)  # the lane, the upstream connection
        _ask(client, -2, stream=True)
        _count_tasks(loop, names)
        for i in range(REQUESTS):
            _ask(client, i, stream=i % 2 == 1)
    assert len(names) == REQUESTS, names
    assert set(names) == {"RequestResponseCycle.run_asgi"}, names
