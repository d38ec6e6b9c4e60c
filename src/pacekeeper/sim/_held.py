"""A request answered at once and held open while it waits (``Queueing.keep_alive_s``).

DeepSeek documents this for its servers under load: the HTTP request stays connected, a
non-streaming request receives empty lines and a stream receives SSE comments
(``: keep-alive``) until the answer comes. The status and headers therefore arrive at once,
whatever the load: only the end of the answer shows how long it waited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["HeldOpen"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_BEAT_JSON = b"\n"
_BEAT_SSE = b": keep-alive\n\n"


class HeldOpen:
    """One request's answer begun early: :meth:`open` sends status 200 and its headers, then a
    beat every ``every_s``; :meth:`send` stands in for the ASGI ``send`` from then on.

    The request's own ``http.response.start`` is dropped (its status and headers are out),
    and its body stops the beats. A start with another status (an error found later, a
    timeout) cannot be sent any more: the connection is cut instead, as a server must.
    ``transport`` is the connection's, so that whatever finds a transport through
    ``send.__self__.transport`` finds this one through :meth:`send`.
    """

    __slots__ = ("_beat", "_send", "_ticker", "cut", "transport")

    def __init__(self, send: Send, transport: Any, *, stream: bool) -> None:
        self._send = send
        self.transport = transport
        self._beat = _BEAT_SSE if stream else _BEAT_JSON
        self._ticker: asyncio.Task[None] | None = None
        self.cut = False
        """Whether a later error cut the connection (what follows is dropped)."""

    def __repr__(self) -> str:
        state = "cut" if self.cut else "beating" if self._ticker is not None else "answering"
        return f"<HeldOpen {state}>"

    async def open(self, headers: Headers, every_s: float) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        self._ticker = asyncio.get_running_loop().create_task(self._beats(every_s))

    async def _beats(self, every_s: float) -> None:
        message = {"type": "http.response.body", "body": self._beat, "more_body": True}
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._send(message)
            except (OSError, RuntimeError):
                # The connection is gone (or closing): the request's own send meets the same.
                return

    def stop(self) -> None:
        """No more beats (the answer begins, or the request ended)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()

    async def send(self, message: Message) -> None:
        self.stop()
        if self.cut:
            return
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                self.cut = True
                if self.transport is not None:
                    self.transport.close()
            return
        await self._send(message)
