"""Admission on one lane: FIFO, slots, cooldown, deadlines, cancellation, threads."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.core.concurrency import Signal
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane, QueueTimeout


def make_lane(**limits: object) -> Lane:
    return Lane(
        ("/v1/chat/completions", "m"),
        limits=Limits(**limits),  # type: ignore[arg-type]
        retry=RetryPolicy(),
        clock=time.monotonic,
    )


async def test_first_come_first_served() -> None:
    lane = make_lane(concurrency=1)
    first = await lane.acquire(0)
    order: list[int] = []

    async def waiter(i: int) -> None:
        permit = await lane.acquire(0)
        order.append(i)
        await asyncio.sleep(0)
        permit.release(Signal.SUCCESS)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # join the queue in order
    assert lane.queued == 5
    first.release(Signal.SUCCESS)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_retries_join_at_the_front() -> None:
    lane = make_lane(concurrency=1)
    held = await lane.acquire(0)
    order: list[str] = []

    async def waiter(name: str, front: bool) -> None:
        permit = await lane.acquire(0, front=front)
        order.append(name)
        permit.release()

    late = asyncio.create_task(waiter("new", False))
    await asyncio.sleep(0)
    retry = asyncio.create_task(waiter("retry", True))
    await asyncio.sleep(0)
    held.release()
    await asyncio.gather(late, retry)
    assert order == ["retry", "new"]


@given(
    limit=st.integers(1, 6),
    holds_ms=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    seed=st.integers(0, 1000),
)
@settings(max_examples=25, deadline=None)
def test_never_more_in_flight_than_the_limit(limit: int, holds_ms: list[int], seed: int) -> None:
    async def main() -> int:
        lane = make_lane(concurrency=limit)
        rng = random.Random(seed)
        in_flight = peak = 0

        async def one(hold_ms: int) -> None:
            nonlocal in_flight, peak
            permit = await lane.acquire(0)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(hold_ms / 1000)
            in_flight -= 1
            permit.release(rng.choice(list(Signal)))

        await asyncio.gather(*(one(h) for h in holds_ms))
        assert lane.slots.in_flight == 0
        return peak

    assert asyncio.run(main()) <= limit


async def test_nothing_is_admitted_before_the_cooldown_ends() -> None:
    lane = make_lane(concurrency=10)
    lane.close_gate(0.3)
    closed_until = lane.cooldown.until
    admitted_at: list[float] = []

    async def one() -> None:
        permit = await lane.acquire(0)
        admitted_at.append(time.monotonic())
        permit.release()

    await asyncio.gather(*(one() for _ in range(5)))
    assert min(admitted_at) >= closed_until


async def test_pacing_spaces_requests_evenly() -> None:
    lane = make_lane(rpm=1200, burst_s=0.05)  # 20/s, burst of 1
    times: list[float] = []

    async def one() -> None:
        permit = await lane.acquire(0)
        times.append(time.monotonic())
        permit.release()

    await asyncio.gather(*(one() for _ in range(11)))
    assert times[-1] - times[0] == pytest.approx(0.5, abs=0.05)


async def test_cancelled_waiter_frees_its_place_at_once() -> None:
    lane = make_lane(concurrency=1)
    held = await lane.acquire(0)
    got: list[str] = []

    async def waiter(name: str) -> None:
        permit = await lane.acquire(0)
        got.append(name)
        permit.release()

    a = asyncio.create_task(waiter("a"))
    b = asyncio.create_task(waiter("b"))
    c = asyncio.create_task(waiter("c"))
    await asyncio.sleep(0)
    assert lane.queued == 3
    b.cancel()
    a.cancel()  # the head leaves too: the next one must take over
    await asyncio.sleep(0)
    assert lane.queued == 1
    held.release()
    await c
    assert got == ["c"]
    assert lane.slots.in_flight == 0
    assert lane.queued == 0


async def test_deadline_fails_fast_when_the_known_wait_is_longer() -> None:
    lane = make_lane(concurrency=5)
    lane.close_gate(10.0)
    started = time.monotonic()
    with pytest.raises(QueueTimeout) as info:
        await lane.acquire(0, deadline=time.monotonic() + 1.0)
    assert time.monotonic() - started < 0.5  # did not sleep the cooldown out
    assert "cooldown" in info.value.reason
    assert lane.queued == 0


async def test_deadline_while_waiting_for_a_slot() -> None:
    lane = make_lane(concurrency=1)
    held = await lane.acquire(0)
    with pytest.raises(QueueTimeout, match="free slot"):
        await lane.acquire(0, deadline=time.monotonic() + 0.1)
    held.release()
    permit = await lane.acquire(0)  # the queue still works
    permit.release()


async def test_threads_and_tasks_share_one_lane() -> None:
    lane = make_lane(concurrency=1)
    held = await lane.acquire(0)
    got = threading.Event()

    def in_thread() -> None:
        permit = lane.acquire_sync(0)
        got.set()
        time.sleep(0.05)
        permit.release()

    thread = threading.Thread(target=in_thread)
    thread.start()
    await asyncio.sleep(0.05)
    assert not got.is_set()
    held.release()
    # the thread's release must wake this task, across threads
    permit = await asyncio.wait_for(lane.acquire(0), timeout=2)
    assert got.is_set()
    permit.release()
    await asyncio.to_thread(thread.join)


async def test_a_dropped_permit_gives_its_slot_back() -> None:
    lane = make_lane(concurrency=1)
    permit = await lane.acquire(0)
    del permit  # nobody released it (an abandoned stream, say)
    again = await asyncio.wait_for(lane.acquire(0), timeout=1)
    again.release()


async def test_tokens_are_paced_and_an_oversize_request_still_goes() -> None:
    lane = make_lane(tpm=60_000, burst_s=0.1)  # 1000 tokens/s, burst 100
    permit = await lane.acquire(1000)  # far beyond the burst: admitted from a full bucket
    permit.release()
    started = time.monotonic()
    permit = await asyncio.wait_for(lane.acquire(10), timeout=15)
    # the 1000-token debt is repaid down to the burst before the next one goes
    assert time.monotonic() - started == pytest.approx(0.91, abs=0.1)
    permit.release()


def test_repr_shows_live_state() -> None:
    lane = make_lane(rpm=60, concurrency=3)
    text = repr(lane)
    assert "queued=0" in text
    assert "FixedLimit 0/3" in text
    assert "rpm=60" in text


def test_a_hintless_429_teaches_a_rate_that_then_grows_while_used() -> None:
    lane = make_lane()
    assert lane.discovered_rpm is None
    for i in range(40):  # 8 successes per second for 5 s (times exact in binary)
        lane.note_success(i * 0.125)
    lane.throttled_without_hint(sent_at=4.9, now=5.0)
    assert lane.rpm == pytest.approx(0.9 * 480, rel=0.05)
    first = lane.rpm
    assert first is not None
    lane.throttled_without_hint(sent_at=4.95, now=5.05)  # sent before the cut: no second cut
    assert lane.rpm == first
    lane.throttled_without_hint(sent_at=5.5, now=6.0)
    assert lane.rpm == pytest.approx(0.85 * first)


def test_a_known_rate_is_not_replaced_by_a_discovered_one() -> None:
    lane = make_lane(rpm=600)
    lane.throttled_without_hint(sent_at=0.0, now=1.0)
    assert lane.rpm == 600
    assert lane.discovered_rpm is None


async def test_closing_cuts_a_retry_wait_short() -> None:
    from pacekeeper.core.errors import AdmissionClosed

    lane = make_lane()
    sleeper = asyncio.create_task(lane.sleep(30.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    lane.close()
    with pytest.raises(AdmissionClosed):
        await sleeper
    assert time.monotonic() - started < 0.5
