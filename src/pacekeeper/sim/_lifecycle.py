"""``with`` and ``async with`` for the simulator's two runners, from their start() and stop()."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TypeVar

__all__ = ["StartStop"]

S = TypeVar("S", bound="StartStop")


class StartStop:
    """Mixin: ``start()`` on entry, ``stop()`` on exit; the async forms run both in a worker
    thread, so the caller's event loop is never blocked while a server starts or drains."""

    def start(self: S) -> S:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self: S) -> S:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
