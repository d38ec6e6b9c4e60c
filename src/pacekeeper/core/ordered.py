"""Map an async function over many items: in input order, with bounded memory.

``asyncio.gather`` over a million items creates a million tasks up front; this keeps at most
``window`` started and not yet yielded, however long the input, and yields in input order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

__all__ = ["amap"]

T = TypeVar("T")
R = TypeVar("R")


async def amap(
    fn: Callable[[T], Awaitable[R]],
    items: Iterable[T] | AsyncIterable[T],
    *,
    window: int = 1000,
    return_exceptions: bool = False,
) -> AsyncIterator[R | BaseException]:
    """Yield ``await fn(item)`` for each item, in input order.

    At most ``window`` calls are started and not yet yielded. With ``return_exceptions`` an
    exception is yielded in its item's place; otherwise the first one (in input order) is
    raised and the calls still running are cancelled.

    >>> async def double(x: int) -> int:
    ...     return 2 * x
    >>> async def main() -> list[int]:
    ...     return [y async for y in amap(double, range(5), window=2)]  # type: ignore[misc]
    >>> asyncio.run(main())
    [0, 2, 4, 6, 8]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    pending: deque[asyncio.Task[R]] = deque()

    async def source() -> AsyncIterator[T]:
        if isinstance(items, AsyncIterable):
            async for item in items:
                yield item
        else:
            for item in items:
                yield item

    try:
        async for item in source():
            pending.append(asyncio.ensure_future(fn(item)))
            while len(pending) >= window:
                yield await _result(pending.popleft(), return_exceptions)
        while pending:
            yield await _result(pending.popleft(), return_exceptions)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def _result(task: asyncio.Task[R], return_exceptions: bool) -> R | BaseException:
    if not return_exceptions:
        return await task
    try:
        return await task
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return exc
