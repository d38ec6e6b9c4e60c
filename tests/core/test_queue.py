"""The waiting queue: priority classes with a floor for the lower ones, fair shares across
tenants, nothing lost or admitted twice; and a real lane's order under threads and tasks."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pacekeeper
from pacekeeper import ConfigurationError, Governor, Limits
from pacekeeper.core.priority import Priority
from pacekeeper.core.queue import WaitQueue
from pacekeeper.core.waiting import ThreadWaiter

INTERACTIVE, BATCH, BACKGROUND = Priority.INTERACTIVE, Priority.BATCH, Priority.BACKGROUND


def _admit_head(
    q: WaitQueue, where: dict[ThreadWaiter, tuple[Priority, str | None]]
) -> tuple[Priority, str | None]:
    head = q.head
    assert isinstance(head, ThreadWaiter)
    q.admitted(head)
    return where.pop(head)


@settings(max_examples=60, deadline=None)
@given(
    min_share=st.floats(min_value=0.02, max_value=1 / 3),
    admissions=st.integers(min_value=20, max_value=400),
    interactive_backlog=st.integers(min_value=1, max_value=50),
    with_background=st.booleans(),
)
def test_a_lower_class_keeps_its_minimum_share_under_constant_higher_load(
    min_share: float, admissions: int, interactive_backlog: int, with_background: bool
) -> None:
    q = WaitQueue(min_share=min_share)
    where: dict[ThreadWaiter, tuple[Priority, str | None]] = {}
    lower = [BATCH, BACKGROUND] if with_background else [BATCH]

    def top_up(cls: Priority, at_least: int) -> None:
        while q.waiting(cls) < at_least:
            w = ThreadWaiter()
            q.join(w, priority=cls)
            where[w] = (cls, None)

    got: Counter[Priority] = Counter()
    for _ in range(admissions):
        top_up(INTERACTIVE, interactive_backlog)  # constant interactive load
        for cls in lower:
            top_up(cls, 1)  # the lower classes always have work
        got[_admit_head(q, where)[0]] += 1
    for cls in lower:
        # at least its share, less the admission its credit is building up to (a credit
        # reaches one admission, give or take a share per class owed at the same time)
        assert got[cls] >= min_share * admissions - 1 - len(lower) * min_share, got
    # and interactive takes the rest: the floor is a floor, not a quota
    assert got[INTERACTIVE] >= (1 - min_share * len(lower)) * admissions - len(lower) - 1


@settings(max_examples=60, deadline=None)
@given(
    admissions=st.integers(min_value=10, max_value=300),
    ratio=st.integers(min_value=2, max_value=20),
    priority=st.sampled_from(list(Priority)),
)
def test_two_tenants_share_a_class_evenly_whatever_one_sends(
    admissions: int, ratio: int, priority: Priority
) -> None:
    """One tenant sends ``ratio`` times as much: while both have work, each gets half."""
    q = WaitQueue()
    where: dict[ThreadWaiter, tuple[Priority, str | None]] = {}
    got: Counter[str | None] = Counter()
    for _ in range(admissions):
        for tenant, n in (("loud", ratio), ("quiet", 1)):
            for _ in range(n):
                w = ThreadWaiter()
                q.join(w, priority=priority, tenant=tenant)
                where[w] = (priority, tenant)
        got[_admit_head(q, where)[1]] += 1
    assert abs(got["loud"] - got["quiet"]) <= 1, got


def test_weights_share_a_class_in_proportion() -> None:
    q = WaitQueue(weights={"big": 3.0})
    where: dict[ThreadWaiter, tuple[Priority, str | None]] = {}
    for tenant in ("big", "small"):
        for _ in range(200):
            w = ThreadWaiter()
            q.join(w, priority=BATCH, tenant=tenant)
            where[w] = (BATCH, tenant)
    got = Counter(_admit_head(q, where)[1] for _ in range(200))
    assert got["big"] == 150
    assert got["small"] == 50


def test_a_tenant_back_from_idle_gets_no_banked_turns() -> None:
    """A tenant idle while another was served starts at the class's virtual time: it goes
    next, but then alternates instead of taking every turn it 'missed'."""
    q = WaitQueue()
    where: dict[ThreadWaiter, tuple[Priority, str | None]] = {}
    for _ in range(50):
        w = ThreadWaiter()
        q.join(w, tenant="a")
        where[w] = (INTERACTIVE, "a")
    order = [_admit_head(q, where)[1] for _ in range(20)]
    for _ in range(10):
        w = ThreadWaiter()
        q.join(w, tenant="b")
        where[w] = (INTERACTIVE, "b")
    order = [_admit_head(q, where)[1] for _ in range(6)]
    assert order.count("b") == 3, order


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("join"),
            st.sampled_from(list(Priority)),
            st.sampled_from([None, "a", "b", "c"]),
            st.booleans(),
        ),
        st.tuples(st.just("admit")),
        st.tuples(st.just("leave"), st.integers(min_value=0, max_value=10_000)),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, min_share=st.sampled_from([0.0, 0.1, 1 / 3]))
def test_no_waiter_is_lost_or_admitted_twice(ops: list[tuple[Any, ...]], min_share: float) -> None:
    q = WaitQueue(min_share=min_share)
    live: list[ThreadWaiter] = []
    admitted: list[ThreadWaiter] = []
    left: list[ThreadWaiter] = []
    for op in ops:
        if op[0] == "join":
            w = ThreadWaiter()
            q.join(w, priority=op[1], tenant=op[2], front=op[3])
            live.append(w)
        elif op[0] == "admit" and live:
            head = q.head
            assert head in live
            q.admitted(head)
            live.remove(head)
            admitted.append(head)
        elif op[0] == "leave" and live:
            w = live.pop(op[1] % len(live))
            q.leave(w)
            left.append(w)
        assert len(q) == len(live)
        assert (q.head is None) == (not live)
        assert q.head is None or q.head in live
    while live:  # everyone still waiting is admitted, each exactly once
        head = q.head
        assert head in live
        q.admitted(head)
        live.remove(head)
        admitted.append(head)
    assert q.head is None
    assert len(q) == 0
    assert len(set(map(id, admitted))) == len(admitted)
    assert not set(map(id, admitted)) & set(map(id, left))
    q.leave(admitted[0]) if admitted else None  # leaving twice is harmless
    assert len(q) == 0


def test_min_share_is_checked_where_it_is_written() -> None:
    with pytest.raises(ConfigurationError, match="min_share"):
        Limits(min_share=0.5)
    with pytest.raises(ConfigurationError, match="priority must be one of"):
        Governor().call(route="/r", model="m", priority="urgent")


# -- a real lane ---------------------------------------------------------------------------


async def test_a_higher_class_goes_first_on_a_real_lane() -> None:
    gov = Governor(limits=Limits(concurrency=1, min_share=0.0))
    held = await gov.call(route="/r", model="m").admit()
    lane = gov.lane("/r", "m")
    order: list[str] = []

    async def one(name: str, cls: str) -> None:
        call = gov.call(route="/r", model="m", priority=cls)
        permit = await call.admit()
        order.append(name)
        permit.release()

    tasks = [asyncio.create_task(one(f"batch{i}", "batch")) for i in range(4)]
    await asyncio.sleep(0.01)
    with pacekeeper.priority("interactive"):
        tasks.append(asyncio.create_task(one("chat", "interactive")))
    await asyncio.sleep(0.01)
    assert lane.queued == 5
    held.release()
    await asyncio.gather(*tasks)
    assert order == ["chat", "batch0", "batch1", "batch2", "batch3"]
    assert lane.queue.admissions()[BATCH] == 4


def test_threads_and_tasks_of_every_class_share_one_lane() -> None:
    """Threads and tasks on two event loops, in every class and several tenants, all admitted
    once each (a small rate, so most of them queue)."""
    gov = Governor(limits=Limits(rpm=6000, concurrency=2, burst_s=0.01))
    admitted: list[tuple[str, int]] = []
    lock = threading.Lock()

    def in_thread(i: int) -> None:
        with pacekeeper.priority(list(Priority)[i % 3], tenant=f"t{i % 2}"):
            call = gov.call(route="/r", model="m")
            permit = call.admit_sync()
        with lock:
            admitted.append(("thread", i))
        permit.release()

    async def in_task(loop_id: int, i: int) -> None:
        call = gov.call(route="/r", model="m", priority=list(Priority)[i % 3], tenant=f"u{i % 3}")
        permit = await call.admit()
        with lock:
            admitted.append((f"loop{loop_id}", i))
        permit.release()

    async def loop_main(loop_id: int) -> None:
        await asyncio.gather(*(in_task(loop_id, i) for i in range(30)))

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(30)]
    threads += [threading.Thread(target=asyncio.run, args=(loop_main(k),)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert len(admitted) == 90
    assert len(set(admitted)) == 90
    lane = gov.lane("/r", "m")
    assert lane.queued == 0
    assert lane.queue.head is None
    assert sum(lane.queue.admissions().values()) == 90


@settings(max_examples=60, deadline=None)
@given(
    weight_a=st.integers(min_value=1, max_value=6),
    weight_b=st.integers(min_value=1, max_value=6),
    admissions=st.integers(min_value=1, max_value=120),
    priority=st.sampled_from(list(Priority)),
)
def test_weights_set_on_the_governor_share_a_class_in_proportion(
    weight_a: int, weight_b: int, admissions: int, priority: Priority
) -> None:
    """``Governor(tenant_weights=...)`` reaches every lane's queue: after any number of
    admissions while both wait, each tenant's count is its weight's share, within one turn
    of each."""
    gov = Governor(tenant_weights={"a": weight_a, "b": weight_b})
    q = gov.lane("/v1/chat/completions", "m").queue
    where: dict[ThreadWaiter, tuple[Priority, str | None]] = {}
    for tenant in ("a", "b"):
        for _ in range(admissions):  # both have work throughout
            w = ThreadWaiter()
            q.join(w, priority=priority, tenant=tenant)
            where[w] = (priority, tenant)
    got = Counter(_admit_head(q, where)[1] for _ in range(admissions))
    assert abs(got["a"] * weight_b - got["b"] * weight_a) <= weight_a + weight_b, got


def test_a_weight_given_later_applies_to_lanes_made_before_and_after() -> None:
    gov = Governor()
    before = gov.lane("/v1/chat/completions", "m").queue
    gov.weigh_tenant("a", 2)
    after = gov.lane("/v1/embeddings", "e").queue
    for q in (before, after):
        where: dict[ThreadWaiter, tuple[Priority, str | None]] = {}
        for tenant in ("a", "b"):
            for _ in range(30):
                w = ThreadWaiter()
                q.join(w, priority=BATCH, tenant=tenant)
                where[w] = (BATCH, tenant)
        got = Counter(_admit_head(q, where)[1] for _ in range(30))
        assert (got["a"], got["b"]) == (20, 10)
    with pytest.raises(ConfigurationError, match="tenant a: its weight must be a positive"):
        gov.weigh_tenant("a", 0)
    with pytest.raises(ConfigurationError, match="tenant x: its weight"):
        Governor(tenant_weights={"x": float("inf")})


async def test_two_tenants_at_weights_2_to_1_through_the_governor() -> None:
    """Real calls through one slot: while both tenants have work, the one of weight 2 gets
    two admissions for each of the other's."""
    order: list[str | None] = []

    class Hook:
        def on_attempt(self, record: Any) -> None:
            order.append(record.tenant)

        def on_request(self, record: Any) -> None:
            pass

    gov = Governor(limits=Limits(concurrency=1), tenant_weights={"chat": 2}, hooks=[Hook()])

    async def answer() -> None:
        await asyncio.sleep(0.005)

    calls = [
        gov.run(answer, model="m", priority="batch", tenant=tenant)
        for _ in range(12)
        for tenant in ("chat", "etl")
    ]
    await asyncio.gather(*calls)
    assert len(order) == 24
    # the first goes before anyone waits; then 2:1 while both have work (chat's other 11
    # against etl's first 6 or so), then etl alone
    both = Counter(order[1:16])
    assert (both["chat"], both["etl"]) == (10, 5), " ".join(map(str, order))
    assert order[-6:] == ["etl"] * 6
