"""Waiting for one's turn: the waiters a lane's queue holds, for asyncio tasks and for threads.

A waiter is armed before its owner releases the lane's lock and sleeps after, so a wake that
comes in between is not lost. A wake from another thread goes through ``call_soon_threadsafe``:
that is what lets async tasks on any event loop and plain threads wait on one lane.
"""

from __future__ import annotations

import asyncio
import math
import threading

__all__ = ["AsyncWaiter", "QueueTimeout", "ThreadWaiter", "Waiter"]


class QueueTimeout(Exception):
    """The waiter's deadline would pass before admission; ``wait_s`` says how long it would be."""

    def __init__(self, wait_s: float, reason: str) -> None:
        super().__init__(reason)
        self.wait_s = wait_s
        self.reason = reason


class AsyncWaiter:
    """An asyncio task waiting for its turn (woken from any thread)."""

    # No thread id of its own: its loop says whether a wake comes from its thread (a queue
    # of 100,000 holds an int fewer each).
    __slots__ = ("_fut", "_loop", "cancelled")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fut: asyncio.Future[None] | None = None
        self.cancelled = False

    def arm(self) -> asyncio.Future[None]:
        self._fut = fut = self._loop.create_future()
        return fut

    def sleep(self, wait_s: float) -> asyncio.Future[None]:
        """Await it: until woken, or ``wait_s`` passed (inf: until woken). Call after
        :meth:`arm`. The armed future itself, not a coroutine around it: a queued request
        holds one frame fewer (a queue of 100,000 holds 24 MB less)."""
        fut = self._fut
        if fut is None:
            # Woken (from another thread) between its arming and this sleep: it looks again.
            fut = self._loop.create_future()
            fut.set_result(None)
            return fut
        if wait_s != math.inf:
            timer = self._loop.call_later(wait_s, _resolve, fut)
            fut.add_done_callback(lambda _: timer.cancel())
        return fut

    def wake(self) -> None:
        fut = self._fut
        if fut is None:
            # Not armed, or woken since it was: it looks before it sleeps again. Most wakes of
            # a busy queue's head come to one already woken (the head just named, then a
            # release before it ran): they stop here, without asking the future.
            return
        self._fut = None
        if fut.done():  # its sleep ran out: it looks already
            return
        if asyncio._get_running_loop() is self._loop:  # its own thread
            fut.set_result(None)
        else:
            self._loop.call_soon_threadsafe(_resolve, fut)


class ThreadWaiter:
    """A thread waiting for its turn."""

    __slots__ = ("_event", "cancelled")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.cancelled = False

    def arm(self) -> threading.Event:
        self._event.clear()
        return self._event

    def sleep(self, wait_s: float) -> None:
        self._event.wait(None if wait_s == math.inf else wait_s)

    def wake(self) -> None:
        self._event.set()


def cancels_requested() -> int:
    """How many times the running task was asked to cancel (0 where asyncio cannot say:
    Python 3.10, or outside a task)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return 0 if cancelling is None else int(cancelling())


def cancelled_since(cancels: int) -> bool:
    """Whether the running task was asked to cancel since it counted ``cancels``
    (:func:`cancels_requested`): a store's client that finishes its command through a
    cancellation (redis-py can) must not turn a cancelled request into one that waits on."""
    return cancels_requested() > cancels


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


Waiter = AsyncWaiter | ThreadWaiter
