"""Shared limits through a real redis-server: correctness under contention, across processes,
and through a Redis outage. No mocks."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pacekeeper
from pacekeeper import Governor, Limits, RetryPolicy
from pacekeeper.backends import RedisAdmissionPolicy, RedisBackend
from pacekeeper.core.concurrency import Signal
from pacekeeper.core.lane import Lane, QueueTimeout
from pacekeeper.sim import Latency, ModelLimits, Scenario, Simulator

from .redis_server import RedisServer

CHAT = "/v1/chat/completions"
WORKER = Path(__file__).with_name("worker.py")


def shared_gov(server: RedisServer, namespace: str, **kwargs: object) -> Governor:
    backend = RedisBackend(server.url, namespace=namespace, lease_ttl_s=2.0, heartbeat_s=0.3)
    return Governor(backend=backend, **kwargs)  # type: ignore[arg-type]


async def written(server: RedisServer, key: str, field: str) -> None:
    """Wait until the maintenance thread has written ``field`` (at most 10 s)."""
    client = server.client()
    deadline = time.monotonic() + 10
    while client.hget(key, field) is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    client.close()


def close(*govs: Governor) -> None:
    for gov in govs:
        if isinstance(gov.backend, RedisBackend):
            gov.backend.close()


async def test_two_governors_share_one_request_rate(
    redis_server: RedisServer, namespace: str
) -> None:
    """Two 'processes' (governors) pacing to 600 rpm together, not 600 each."""
    a = shared_gov(redis_server, namespace, limits=Limits(rpm=600, burst_s=0.1))
    b = shared_gov(redis_server, namespace, limits=Limits(rpm=600, burst_s=0.1))
    sent_at: list[float] = []

    async def one(gov: Governor) -> None:
        permit = await gov.lane(CHAT, "m").acquire(0)
        sent_at.append(permit.sent_at)  # the Redis server's clock
        permit.release(Signal.SUCCESS)

    await asyncio.gather(*(one(a if i % 2 else b) for i in range(31)))
    close(a, b)
    elapsed = max(sent_at) - min(sent_at)
    # Never faster than 600 together (each alone would allow 1,200); a busy machine can only
    # make it slower, so the floor is loose.
    rpm = 60 * 30 / elapsed
    assert rpm <= 600 * 1.02
    assert rpm >= 600 * 0.8


@given(
    rpm=st.sampled_from([600, 1200, 3000]),
    burst_s=st.sampled_from([0.05, 0.2, 0.5]),
    tasks=st.integers(5, 40),
)
@settings(max_examples=8, deadline=None)
def test_admissions_never_exceed_burst_plus_rate_under_concurrent_callers(
    redis_server: RedisServer, rpm: int, burst_s: float, tasks: int
) -> None:
    namespace = f"prop-{rpm}-{burst_s}-{tasks}-{time.monotonic_ns()}"

    async def main() -> list[float]:
        govs = [
            shared_gov(redis_server, namespace, limits=Limits(rpm=rpm, burst_s=burst_s))
            for _ in range(3)
        ]
        times: list[float] = []

        async def one(i: int) -> None:
            permit = await govs[i % 3].lane(CHAT, "m").acquire(0)
            # Redis's clock at the decision: local times add this busy machine's jitter.
            assert isinstance(permit.lease, tuple)
            times.append(permit.lease[1])
            permit.release(Signal.SUCCESS)

        await asyncio.gather(*(one(i) for i in range(tasks)))
        close(*govs)
        return sorted(times)

    times = asyncio.run(main())
    rate = rpm / 60
    burst = max(1.0, rate * burst_s)
    start = times[0]
    for n, t in enumerate(
        times, start=1
    ):  # GCRA: n admissions by t need t - start >= (n - burst)/rate
        assert n <= burst + rate * (t - start) + 1e-3


async def test_the_concurrency_limit_holds_across_processes(
    redis_server: RedisServer, namespace: str
) -> None:
    govs = [shared_gov(redis_server, namespace, limits=Limits(concurrency=3)) for _ in range(3)]
    in_flight = peak = 0

    async def one(i: int) -> None:
        nonlocal in_flight, peak
        permit = await govs[i % 3].lane(CHAT, "m").acquire(0)
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        permit.release(Signal.SUCCESS)

    await asyncio.gather(*(one(i) for i in range(30)))
    close(*govs)
    assert peak == 3


def test_threads_share_the_fleets_slots_through_the_blocking_path(
    redis_server: RedisServer, namespace: str
) -> None:
    """The sync mirror of the acquire loop asks Redis as the async one does: threads of two
    processes never hold more than the fleet's concurrency limit, and every permit is a
    shared lease (none admitted locally)."""
    govs = [shared_gov(redis_server, namespace, limits=Limits(concurrency=2)) for _ in range(2)]
    lanes = [gov.lane(CHAT, "m") for gov in govs]
    assert all(
        type(lane) is Lane and isinstance(lane.admission, RedisAdmissionPolicy) for lane in lanes
    )
    lock = threading.Lock()
    in_flight = peak = 0
    leases: list[object] = []

    def work(i: int) -> None:
        nonlocal in_flight, peak
        for _ in range(4):
            permit = lanes[i % 2].acquire_sync(0, deadline=time.monotonic() + 30)
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
                leases.append(permit.lease)
            time.sleep(0.02)
            with lock:
                in_flight -= 1
            permit.release(Signal.SUCCESS)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    close(*govs)
    assert peak == 2
    assert len(leases) == 24
    assert all(isinstance(lease, tuple) for lease in leases)


async def test_a_request_queued_behind_the_head_fails_at_its_deadline(
    redis_server: RedisServer, namespace: str
) -> None:
    """One acquire loop for every admission: a request queued behind the head of a Redis
    lane is held to its deadline as in memory. It used to sleep until it became the head,
    past its deadline (here: for as long as the slot stayed taken)."""
    gov = shared_gov(redis_server, namespace, limits=Limits(concurrency=1))
    lane = gov.lane(CHAT, "m")
    held = await lane.acquire(0)
    head = asyncio.ensure_future(lane.acquire(0))  # polls Redis for the one slot
    while lane.queued < 1:
        await asyncio.sleep(0.01)
    behind = lane.acquire(0, deadline=time.monotonic() + 0.3)
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(behind, timeout=10.0)  # a guard against a hang, not a timing
    assert lane.queued == 1  # the head still waits; the one behind it left
    # Cancelled while it asks Redis, redis-py may finish the command through the cancellation:
    # the head must still end (it polled on for ever, about one run in ten on a busy machine).
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(head, timeout=10.0)  # a guard against a hang, not a timing
    held.release()
    close(gov)


async def test_one_processes_429_pauses_all(redis_server: RedisServer, namespace: str) -> None:
    from pacekeeper.core.classify import classify_response

    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    lane = a.lane(CHAT, "m")
    # a 429 asking for a second's wait, taken as any outcome is (not by closing the gate by
    # hand: a settle that closed only its own gate went unseen that way)
    verdict = classify_response(429, {"retry-after": "1"}, b"", now_wall_s=time.time())
    assert verdict.hint_s == 1.0
    permit = await lane.acquire(0)
    lane.settle(permit, verdict, now=a.clock(), max_hint_s=60, retry=False)
    await written(redis_server, f"{namespace}:lane:{CHAT}|m", "cd")  # by the maintenance thread
    started = time.monotonic()
    permit = await b.lane(CHAT, "m").acquire(0)
    permit.release()
    assert time.monotonic() - started >= 0.6
    close(a, b)


async def test_learned_limits_are_shared(redis_server: RedisServer, namespace: str) -> None:
    from pacekeeper.core.headers import RateLimitSnapshot

    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    a.lane(CHAT, "m").learn(RateLimitSnapshot(limit_requests=120))  # 2/s
    await written(redis_server, f"{namespace}:lane:{CHAT}|m", "lr")
    lane = b.lane(CHAT, "m")  # never saw a header
    times = []
    for _ in range(4):
        permit = await lane.acquire(0)
        times.append(permit.sent_at)
        permit.release()
    assert times[-1] - times[0] >= 1.0  # paced at 2/s with a burst of 1
    close(a, b)


async def test_tokens_are_charged_at_admission_not_after_success(
    redis_server: RedisServer, namespace: str
) -> None:
    a = shared_gov(redis_server, namespace, limits=Limits(tpm=60_000, burst_s=0.5))  # 1000/s
    b = shared_gov(redis_server, namespace, limits=Limits(tpm=60_000, burst_s=0.5))
    # The bucket holds 500 tokens at most, refilled at 1000/s: 750 admitted take 0.25 s from
    # the first admission, however slowly (a busy machine) the first two were admitted. Timed
    # from the first acquire, not the third: the refill during the first two counts.
    started = time.monotonic()
    held = [await (a if i % 2 else b).lane(CHAT, "m").acquire(250) for i in range(2)]
    # 500 tokens in flight, none finished: a third 250-token request must wait for the bucket
    third = await a.lane(CHAT, "m").acquire(250)
    assert time.monotonic() - started >= 0.2
    for permit in [*held, third]:
        permit.release()
    close(a, b)


async def test_output_limited_apart_is_shared_and_given_back(
    redis_server: RedisServer, namespace: str
) -> None:
    """Where output is limited apart (Anthropic's OTPM), the fleet shares an output bucket:
    each request's reserve is charged to it at admission (it was not charged anywhere, and a
    fleet met 14% 429s on a binding OTPM), and what an answer did not generate is given
    back to all."""
    limits = Limits(output_tpm=60_000, burst_s=0.5)  # 1000 output tokens/s, 500 at once
    a = shared_gov(redis_server, namespace, limits=limits)
    b = shared_gov(redis_server, namespace, limits=limits)
    lane_a, lane_b = a.lane(CHAT, "m"), b.lane(CHAT, "m")
    started = time.monotonic()
    held = [await lane.acquire(300, output_tokens=250) for lane in (lane_a, lane_b)]
    third = await lane_a.acquire(300, output_tokens=250)  # 500 reserved: waits for refill
    assert time.monotonic() - started >= 0.2
    assert third.output_tokens == 250
    client = redis_server.client()
    key = f"{namespace}:lane:{CHAT}|m"
    reserved_until = float(client.hget(key, "to") or 0)
    # The three answers generated nothing: their reserves go back to the fleet's bucket (sent
    # with the releases by the maintenance thread), which moves the bucket's clock back.
    for lane, permit in ((lane_a, held[0]), (lane_b, held[1]), (lane_a, third)):
        lane.output_not_generated(permit)
        permit.release()
    deadline = time.monotonic() + 5
    while float(client.hget(key, "to") or 0) == reserved_until and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert float(client.hget(key, "to") or 0) < reserved_until
    client.close()
    close(a, b)


async def test_a_request_rejected_locally_spends_no_quota(
    redis_server: RedisServer, namespace: str
) -> None:
    gov = shared_gov(redis_server, namespace, limits=Limits(rpm=60, burst_s=1.0))
    lane = gov.lane(CHAT, "m")
    first = await lane.acquire(0)
    first.release()
    client = redis_server.client()
    before = client.hget(f"{namespace}:lane:{CHAT}|m", "tr")
    with pytest.raises(QueueTimeout):
        await lane.acquire(0, deadline=time.monotonic() + 0.1)  # would wait ~1 s
    assert client.hget(f"{namespace}:lane:{CHAT}|m", "tr") == before
    close(gov)


async def test_a_cancelled_task_gives_its_shared_slot_back_at_once(
    redis_server: RedisServer, namespace: str
) -> None:
    with Simulator(Scenario(latency=Latency(ttft_s=5))) as sim:
        gov = shared_gov(redis_server, namespace, limits=Limits(concurrency=1))
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="x"), gov)
        task = asyncio.create_task(
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        )
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        other = shared_gov(redis_server, namespace, limits=Limits(concurrency=1))
        permit = await asyncio.wait_for(other.lane(CHAT, "m").acquire(0), timeout=1.0)
        permit.release()
        close(gov, other)


def test_slots_of_a_killed_process_come_back_within_the_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "hold",
            "--redis",
            redis_server.url,
            "--namespace",
            namespace,
            "--slots",
            "2",
            "--lease-ttl",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("holding")
        gov = shared_gov(redis_server, namespace, limits=Limits(concurrency=2))

        async def probe() -> None:
            with pytest.raises(QueueTimeout):  # both slots are held and renewed
                await gov.lane(CHAT, "m").acquire(0, deadline=time.monotonic() + 2.5)

        asyncio.run(probe())
        holder.kill()  # kill -9: no release, no goodbye
        holder.wait()
        killed_at = time.monotonic()

        async def reacquire() -> float:
            lane = gov.lane(CHAT, "m")
            permits = [await lane.acquire(0) for _ in range(2)]
            waited = time.monotonic() - killed_at
            for p in permits:
                p.release()
            return waited

        waited = asyncio.run(reacquire())
        assert waited <= 2.0 + 0.5
        close(gov)
    finally:
        holder.kill()


@pytest.mark.slow
def test_four_processes_share_one_simulator_limit(
    redis_server: RedisServer, namespace: str
) -> None:
    rpm, per_process = 2400, 100  # 40/s for all four together: 400 requests take ~10 s
    with Simulator(
        Scenario(models={"m": ModelLimits(rpm=rpm)}, latency=Latency(ttft_s=0.05))
    ) as sim:
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    "send",
                    "--redis",
                    redis_server.url,
                    "--namespace",
                    namespace,
                    "--base-url",
                    sim.base_url,
                    "--count",
                    str(per_process),
                    "--tag",
                    f"p{k}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for k in range(4)
        ]
        for w in workers:
            assert w.stdout is not None
            assert w.stdout.readline().strip() == "ready"
        started = time.monotonic()
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = []
        for w in workers:
            out, _ = w.communicate(timeout=60)
            results.append(json.loads(out.strip().splitlines()[-1]))
        elapsed = time.monotonic() - started
        stats = sim.stats()
    total = 4 * per_process
    assert sum(r["ok"] for r in results) == total
    assert stats["duplicates"] == {}
    throttled = stats["by_status"].get("429", 0)
    assert throttled <= 0.01 * total
    # the aggregate accepted rate, all processes together, between the 10th and the 90th
    # percentile of send times (so that the start-up burst does not count), within 5%
    times = sorted(t for r in results for t in r["sent_at"])
    low, high = times[len(times) // 10], times[len(times) * 9 // 10]
    achieved_rpm = 60 * (len(times) * 8 // 10) / (high - low)
    assert elapsed < 30
    # Never faster than the shared limit; slower only as far as a busy machine makes it.
    assert achieved_rpm <= rpm * 1.05
    assert achieved_rpm >= rpm * 0.8


async def test_a_redis_outage_mid_run_loses_nothing(
    own_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Simulator(
        Scenario(models={"m": ModelLimits(rpm=6000)}, latency=Latency(ttft_s=0.02))
    ) as sim:
        backend = RedisBackend(
            own_redis.url, namespace=namespace, heartbeat_s=0.2, socket_timeout_s=0.3
        )
        gov = Governor(backend=backend, limits=Limits(rpm=3000), retry=RetryPolicy(max_attempts=3))
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="x"), gov)

        async def one(i: int) -> None:
            await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"outage {i}"}],
                extra_headers={"x-client-request-id": f"o-{i}"},
            )

        with caplog.at_level(logging.WARNING, logger="pacekeeper.redis"):
            run = asyncio.gather(*(one(i) for i in range(300)))
            await asyncio.sleep(1.0)
            own_redis.stop()
            await asyncio.sleep(1.5)
            admission = gov.lane(CHAT, "m").admission
            assert isinstance(admission, RedisAdmissionPolicy)
            assert admission.fallback
            own_redis.start()
            await run
            deadline = time.monotonic() + 10
            while not backend.healthy and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # a heartbeat notices the return
            assert backend.healthy
        stats = sim.stats()
        backend.close()
    assert stats["by_status"].get("200") == 300
    assert stats["duplicates"] == {}
    warnings = [r.getMessage() for r in caplog.records]
    # One warning, not one per request, and no second one just after the recovery: the
    # connections pooled before the restart are dead, and the clients retry once on a fresh
    # connection instead of reading the first failure as another outage.
    assert sum("unreachable" in m for m in warnings) == 1, warnings
    assert any("restored" in m for m in warnings)


async def test_keys_are_namespaced_expire_and_hold_no_secrets(
    redis_server: RedisServer, namespace: str
) -> None:
    secret = "sk-THE-SECRET-KEY-123"
    with Simulator(Scenario()) as sim:
        gov = shared_gov(redis_server, namespace)
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key=secret), gov)
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "PROMPT-TEXT-XYZ"}]
        )
        await asyncio.sleep(0.5)
        close(gov)
    redis = redis_server.client()
    keys = [k.decode() if isinstance(k, bytes) else k for k in redis.keys(f"{namespace}*")]
    assert keys
    assert all(k.startswith(f"{namespace}:") for k in keys)
    for key in keys:
        assert redis.ttl(key) > 0
        kind_raw = redis.type(key)
        kind = kind_raw.decode() if isinstance(kind_raw, bytes) else kind_raw
        dump = (
            repr(redis.hgetall(key))
            if kind == "hash"
            else repr(redis.zrange(key, 0, -1, withscores=True))
        )
        assert secret not in dump
        assert "PROMPT-TEXT" not in dump


async def test_an_abandoned_stream_gives_its_shared_slot_back(
    redis_server: RedisServer, namespace: str
) -> None:
    backend = RedisBackend(redis_server.url, namespace=namespace, lease_ttl_s=30.0)
    with Simulator(Scenario(latency=Latency(per_token_s=0.01))) as sim:
        gov = Governor(limits=Limits(concurrency=1), backend=backend, stream_idle_timeout_s=0.5)
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="x"), gov)
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=200
        )
        async for _chunk in stream:
            break  # walked away without closing: the lease (30 s) must not be what frees it
        other = shared_gov(redis_server, namespace, limits=Limits(concurrency=1))
        permit = await asyncio.wait_for(other.lane(CHAT, "m").acquire(0), timeout=5.0)
        permit.release()
        close(gov, other)


async def test_an_admitted_head_leaves_as_itself_when_a_retry_joined_the_front(
    redis_server: RedisServer, namespace: str
) -> None:
    """Regression: the head asks Redis outside the lock; a retry may join the front while it
    waits for the answer. The admitted waiter must leave the queue itself: popping the front
    instead removed the retry and left the admitted waiter at the head for good, so every
    other request slept forever (seen as a 3-process fleet run that never finished)."""
    from pacekeeper.core.waiting import AsyncWaiter

    gov = shared_gov(redis_server, namespace)
    lane = gov.lane(CHAT, "m")
    assert isinstance(lane.admission, RedisAdmissionPolicy)
    head, retry = AsyncWaiter(), AsyncWaiter()
    lane.queue.join(head, front=False)
    lane.queue.join(retry, front=True)  # joined the front while the head's Redis call ran
    admitted = [1, "0", "1", "4", "0", "1"]  # as ADMIT answers an admission
    reply = ("lease", admitted)  # as RedisAdmissionPolicy's ask returns it
    permit = lane._answered(head, reply, 0, asked_at=0.0, output_tokens=0, deadline=None)
    assert not isinstance(permit, float)
    assert lane.queue.turn(retry)  # the retry is at the front, the admitted head is gone
    assert lane.queued == 1
    lane.queue.leave(retry)
    permit.release()
    close(gov)


async def test_a_burst_queued_before_the_first_answer_is_charged_in_tokens_not_characters(
    redis_server: RedisServer, namespace: str
) -> None:
    """Requests queued at start, before any limit is known, go out charged at the scale the
    first answers taught, as in a local lane: they were charged their character counts (about
    four times their tokens), and a fleet paced a binding tpm at a quarter of it."""
    charged: list[tuple[int, int]] = []

    class Charges:
        def on_attempt(self, record: pacekeeper.AttemptRecord) -> None:
            if record.status == 200 and record.prompt_tokens is not None:
                charged.append((record.tokens_estimated, record.prompt_tokens))

        def on_request(self, record: pacekeeper.RequestRecord) -> None:
            pass

    scenario = Scenario(
        models={"m": ModelLimits(rpm=6000, tpm=600_000)}, latency=Latency(ttft_s=0.05)
    )
    with Simulator(scenario) as sim:
        gov = shared_gov(redis_server, namespace, hooks=[Charges()])
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="x"), gov)
        prompt = "pacekeeper paces requests to the limits a provider states. " * 30

        async def one(i: int) -> None:
            await client.chat.completions.create(
                model="m", max_tokens=16, messages=[{"role": "user", "content": f"{i} {prompt}"}]
            )

        await asyncio.gather(*(one(i) for i in range(40)))
        close(gov)
    assert len(charged) == 40
    # Every prompt here is about 360 tokens and 1,800 characters: charged 16 + tokens x the
    # learned scale (around 1), never the characters.
    worst = max(tokens_charged / (actual + 16) for tokens_charged, actual in charged)
    assert worst < 2.0, f"charged {worst:.1f} x the prompt's tokens"


async def test_a_429_at_the_paced_rate_halves_the_fleets_burst(
    redis_server: RedisServer, namespace: str
) -> None:
    """A 429 at or under the rate in force says the provider counts in windows our burst
    overfills: a local lane halves its burst, and so must the shared admission (it kept the
    configured burst, and a process over Redis met twice the 429s of one in memory)."""
    from pacekeeper.core.classify import classify_response

    gov = shared_gov(redis_server, namespace, limits=Limits(rpm=600, burst_s=2.0))  # 20 at once
    lane = gov.lane(CHAT, "m")

    async def at_once() -> int:
        """How many go without waiting for the pace (one each 0.1 s), from a full bucket."""
        await asyncio.sleep(2.5)  # the bucket refills
        n = 0
        while True:
            asked = time.monotonic()
            permit = await lane.acquire(0)
            permit.release()
            if time.monotonic() - asked > 0.06:
                return n
            n += 1

    before = await at_once()
    permit = await lane.acquire(0)
    # Its headers show the budget spent: the rate (a bare 429 alone, far under 600/min, is a
    # busy provider's noise, in a fleet as in one process: core/lane.py Lane._unexplained).
    spent = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0"}
    refused = classify_response(429, spent, None, now_wall_s=0.0)
    lane.settle(permit, refused, now=time.monotonic(), max_hint_s=600.0, retry=False)
    after = await at_once()
    assert before >= 15
    assert after <= before // 2 + 1, f"{after} at once after the 429, {before} before"
    close(gov)


async def test_a_429_after_the_fleet_sent_a_seconds_worth_is_the_rate_not_a_cap(
    redis_server: RedisServer, namespace: str
) -> None:
    """The fleet (not this process alone) sent a second's worth of the stated rate just
    before a bare 429 that took the window's last slot: the rate explains it, as in a local
    lane. A shared lane kept no send times, so it read the 429 as an in-flight cap (a cap of 72
    held a process to 73 in flight on 5-15 s answers where 170 were needed)."""
    from pacekeeper import AdaptiveConcurrency
    from pacekeeper.core.classify import classify_response

    limits = Limits(rpm=180, burst_s=1.0, concurrency=AdaptiveConcurrency(initial=3))
    a = shared_gov(redis_server, namespace, limits=limits)  # 3 a second, a window of 3
    b = shared_gov(redis_server, namespace, limits=limits)
    lane_a, lane_b = a.lane(CHAT, "m"), b.lane(CHAT, "m")
    admission = lane_a.admission
    assert isinstance(admission, RedisAdmissionPolicy)
    first = await lane_a.acquire(0)
    other = await lane_b.acquire(0)
    last = await lane_a.acquire(0)  # the fleet's third this second; this process's second
    assert last.filled_window
    refused = classify_response(429, {}, None, now_wall_s=0.0)
    lane_a.settle(last, refused, now=time.monotonic(), max_hint_s=600.0, retry=False)
    assert admission.learner is not None
    assert admission.learner.learned_cap is None, repr(lane_a)
    for permit in (first, other):
        permit.release()
    close(a, b)


async def test_before_any_answer_silence_grows_the_fleets_window(
    redis_server: RedisServer, namespace: str
) -> None:
    """No answer yet (slow answers, a reasoning model): silence grows a local lane's window
    (x2 a second after the first two), and so must the shared one, which grew only with
    answers: a process over Redis held its initial window until the first 5-15 s answer."""
    from pacekeeper import AdaptiveConcurrency

    gov = shared_gov(
        redis_server, namespace, limits=Limits(concurrency=AdaptiveConcurrency(initial=2))
    )
    lane = gov.lane(CHAT, "m")
    held = [await lane.acquire(0) for _ in range(2)]
    # Held forever on the old code: nothing is ever answered.
    held.append(await asyncio.wait_for(lane.acquire(0), timeout=10.0))
    client = redis_server.client()
    assert float(client.hget(f"{namespace}:lane:{CHAT}|m", "cw") or 0) >= 3
    client.close()
    for permit in held:
        permit.release()
    close(gov)


async def test_a_fleet_spends_each_fixed_window_from_its_start(
    redis_server: RedisServer, namespace: str
) -> None:
    """A provider that counts requests in fixed windows lets each window's budget go at its
    start, and a lane that has seen the windows keeps to them (its request bucket's
    ``set_windows``). Shared through Redis the fleet paced them evenly instead: a fleet of
    three took 0.82-0.91 of one process's efficiency on the gateway profile's 10-s windows.
    (Windows under 5 s stay paced: each process reads the grid a little apart.)"""
    limits = Limits(rpm=120, burst_s=0.1, concurrency=50)  # 2 a second, 10 a 5-s window
    a = shared_gov(redis_server, namespace, limits=limits)
    b = shared_gov(redis_server, namespace, limits=limits)
    lanes = [a.lane(CHAT, "m"), b.lane(CHAT, "m")]
    now = time.monotonic()
    for lane in lanes:
        assert lane.requests is not None
        lane.requests.set_windows(start_s=now + 0.05, length_s=5.0, now=now)
    sent_at: list[float] = []
    for k in range(21):
        permit = await lanes[k % 2].acquire(0)
        sent_at.append(permit.sent_at)  # the Redis server's clock
        permit.release(Signal.SUCCESS)
    close(a, b)
    sent_at.sort()
    shown = [round(t - sent_at[0], 3) for t in sent_at]
    # The switch lets through what the paced bucket would have until the first window ends
    # (its burst of 1): then each window's 10 at its start.
    first, second = sent_at[1:11], sent_at[11:21]
    assert first[-1] - first[0] < 0.15, shown
    assert second[-1] - second[0] < 0.15, shown
    assert 4.8 < second[0] - first[0] < 5.2, shown  # never two windows' worth in one


async def test_a_budget_stated_without_a_limit_holds_the_whole_fleet(
    redis_server: RedisServer, namespace: str
) -> None:
    """Azure states what is left of a 10-s window and no limit: what an answer says is left,
    less what the fleet admitted after it, is all the fleet sends (then one at a time). Each
    process held only to its own sends, and a fleet of three met 4-6 429s a run where one
    process met one. A 429 ends the window: the fleet's budget is forgotten with it."""
    from pacekeeper.core.classify import classify_response
    from pacekeeper.core.headers import RateLimitSnapshot

    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    lane_a, lane_b = a.lane(CHAT, "m"), b.lane(CHAT, "m")
    admission = lane_a.admission
    assert isinstance(admission, RedisAdmissionPolicy)
    first = await lane_a.acquire(0)
    lane_a.learn(RateLimitSnapshot(remaining_requests=1), first)  # one more may go
    await written(redis_server, admission.hash_key, "bq")
    second = await lane_b.acquire(0)  # the one left: the other process's
    with pytest.raises(QueueTimeout):
        await lane_b.acquire(0, deadline=time.monotonic() + 0.5)
    # The window ends with a 429 (its hint says when the next begins): the budget goes.
    refused = classify_response(
        429, {"x-ratelimit-remaining-requests": "0", "retry-after": "0"}, None, now_wall_s=0.0
    )
    lane_a.settle(first, refused, now=time.monotonic(), max_hint_s=600.0, retry=False)
    third = await lane_b.acquire(0, deadline=time.monotonic() + 5.0)
    for permit in (second, third):
        permit.release(Signal.SUCCESS)
    close(a, b)


# -- the Redis server's wall clock steps back ------------------------------------------------

_TIME = "redis.call('TIME')"


@pytest.fixture
def step_back(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, namespace: str
) -> Iterator[Callable[[int], None]]:
    """Steps the Redis server's clock back, as NTP at boot or a resumed VM does, by reading
    ``TIME`` in the scripts as ``TIME`` minus a number of seconds kept in Redis.

    This is the one substitute in these tests: a real step needs root over the machine's
    clock, and libfaketime cannot be preloaded into Debian's redis-server (its jemalloc calls
    ``clock_gettime`` while libfaketime initialises). Everything but the clock's source runs as
    it does in production."""
    from pacekeeper.backends import _scripts

    step_key = f"{namespace}:test-step-back"
    stepped = (
        f"(function() local t = redis.call('TIME'); local back = tonumber("
        f"redis.call('GET', '{step_key}') or '0'); return {{tostring(tonumber(t[1]) - back), "
        f"t[2]}} end)()"
    )
    timed = [name for name in _scripts.__all__ if "clock(KEYS" in getattr(_scripts, name)]
    assert len(timed) == 8  # every script that reads the clock
    for name in timed:
        text = getattr(_scripts, name)
        assert text.count(_TIME) == 1
        monkeypatch.setattr(_scripts, name, text.replace(_TIME, stepped))
    client = redis_server.client()

    def step(seconds: int) -> None:
        client.set(step_key, str(seconds))

    yield step
    client.close()


async def test_a_step_back_of_the_servers_clock_does_not_stall_the_pace(
    redis_server: RedisServer, namespace: str, step_back: Callable[[int], None]
) -> None:
    """Every time Redis stores (a bucket's next free moment, leases, windows) is on the
    server's clock: a step back of 30 s put them all 30 s ahead and the next admission waited
    30 s (seen in CI: a fresh machine's wall clock stepped by tens of seconds mid-run). The
    namespace's clock takes the step in and goes on from where it was."""
    gov = shared_gov(redis_server, namespace, limits=Limits(rpm=600, burst_s=0.1))
    lane = gov.lane(CHAT, "m")

    async def send(n: int) -> list[float]:
        sent = []
        for _ in range(n):
            permit = await lane.acquire(0)
            sent.append(permit.sent_at)  # the server's clock, as the lane sees it
            permit.release(Signal.SUCCESS)
        return sent

    before = await send(10)
    step_back(30)
    started = time.monotonic()
    after = await asyncio.wait_for(send(10), timeout=15)  # before: about 31 s
    elapsed = time.monotonic() - started
    close(gov)
    assert elapsed < 5  # ten at 10/s: about a second
    assert after[0] >= before[-1]  # the lane's timeline never runs backwards
    # and the pace holds across the step: no burst from buckets that looked full or empty
    sent = before + after
    assert 60 * (len(sent) - 1) / (sent[-1] - sent[0]) <= 600 * 1.1


async def test_a_cooldown_set_before_a_step_back_lasts_what_it_said(
    redis_server: RedisServer, namespace: str, step_back: Callable[[int], None]
) -> None:
    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    # the fleet's gate, as a 429 asking for a second's wait closes it (a settled 429 would
    # also teach a rate: the wait to measure here would be the pace's, not the gate's)
    admission = a.lane(CHAT, "m").admission
    assert isinstance(admission, RedisAdmissionPolicy)
    admission.close_gate(a.clock() + 1.0, 1.0)
    await written(redis_server, f"{namespace}:lane:{CHAT}|m", "cd")
    step_back(30)
    started = time.monotonic()
    permit = await asyncio.wait_for(b.lane(CHAT, "m").acquire(0), timeout=15)  # before: 31 s
    permit.release()
    waited = time.monotonic() - started
    close(a, b)
    assert 0.6 <= waited < 5
