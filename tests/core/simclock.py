"""The clock the simulated-time tests drive (set ``clock.now``, and the lane reads it), and
the pieces of their loop: the steps of the run, the answers on their way back, and what a
lane with a backlog admits at a step."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from pacekeeper.core.lane import Lane, Permit

T = TypeVar("T")


class SimClock:
    """A clock that stands still until the test moves it.

    >>> clock = SimClock()
    >>> clock.now = 2.5
    >>> clock()
    2.5
    """

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def steps(clock: SimClock, *, until_s: float, step_s: float) -> Iterator[float]:
    """Each step's time until ``until_s``; the clock moves on when the loop's body is done
    (rounded, so that a thousand steps of 0.01 s land on 10.0).

    >>> clock = SimClock()
    >>> [now for now in steps(clock, until_s=0.03, step_s=0.01)], clock.now
    ([0.0, 0.01, 0.02], 0.03)
    """
    while clock.now < until_s:
        now = clock.now
        yield now
        clock.now = round(now + step_s, 6)


class Answers(Generic[T]):
    """Answers on their way back, each due at a time: they come back in the order they are
    due (a refusal overtakes earlier answers), ties in the order they were sent.

    >>> answers: Answers[str] = Answers()
    >>> answers.add(0.5, "slow"); answers.add(0.1, "refused"); answers.add(0.5, "next")
    >>> list(answers.due(0.5)), len(answers)
    (['refused', 'slow', 'next'], 0)
    """

    __slots__ = ("_heap", "_sent")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._sent = 0

    def add(self, due_s: float, answer: T) -> None:
        self._sent += 1
        heapq.heappush(self._heap, (due_s, self._sent, answer))

    def due(self, now: float) -> Iterator[T]:
        heap = self._heap
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)[2]

    def __len__(self) -> int:
        return len(self._heap)


def admitted(lane: Lane, now: float) -> Iterator[Permit]:
    """Every request (of no tokens) that ``lane``, with a backlog, admits at ``now``."""
    while lane._try_admit(now, 0) == 0.0:
        yield lane._grant(now, 0, now)


class ProviderWindow:
    """A provider's request counter: a refilling bucket of ``window_s`` of the limit, or fixed
    windows of ``window_s`` that start full (``fixed``)."""

    def __init__(self, rpm: float, window_s: float, fixed: bool) -> None:
        self.rate_per_s = rpm / 60.0
        self.capacity = self.rate_per_s * window_s
        self.window_s = window_s
        self.fixed = fixed
        self.level = self.capacity
        self.window_start = 0.0
        self.updated = 0.0

    def remaining(self, now: float) -> int:
        if self.fixed:
            if now - self.window_start >= self.window_s:
                self.window_start = now - (now - self.window_start) % self.window_s
                self.level = self.capacity
        else:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
            self.updated = now
        return max(0, math.floor(self.level))

    def take(self, now: float) -> bool:
        """Count a request that arrives at ``now``; False: refused (429)."""
        if self.remaining(now) < 1:
            return False
        self.level -= 1
        return True
