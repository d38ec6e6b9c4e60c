"""What one process's controller learns is what the fleet uses: a rate discovered from bare
429s, a cut, an in-flight cap. Real redis-server, real classification of real answers, no mocks."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pacekeeper
from pacekeeper import Governor, Limits, RetryPolicy
from pacekeeper.backends import RedisAdmissionPolicy, RedisBackend
from pacekeeper.core.classify import Verdict, classify_response
from pacekeeper.core.concurrency import AimdLimit
from pacekeeper.core.config import AdaptiveConcurrency
from pacekeeper.core.lane import Lane, QueueTimeout
from pacekeeper.sim import ModelLimits, Scenario, Simulator

from .redis_server import RedisServer

CHAT = "/v1/chat/completions"


def shared_gov(server: RedisServer, namespace: str, **kwargs: object) -> Governor:
    backend = RedisBackend(server.url, namespace=namespace, lease_ttl_s=2.0, heartbeat_s=0.3)
    return Governor(backend=backend, **kwargs)  # type: ignore[arg-type]


def close(*govs: Governor) -> None:
    for gov in govs:
        if isinstance(gov.backend, RedisBackend):
            gov.backend.close()


def shared_lane(gov: Governor) -> Lane:
    lane = gov.lane(CHAT, "m")
    assert isinstance(lane.admission, RedisAdmissionPolicy)
    return lane


def redis_admission(lane: Lane) -> RedisAdmissionPolicy:
    admission = lane.admission
    assert isinstance(admission, RedisAdmissionPolicy)
    return admission


def ok() -> Verdict:
    return classify_response(200, {}, b"{}", now_wall_s=time.time())


def bare_429() -> Verdict:
    return classify_response(429, {}, b"Too Many Requests", now_wall_s=time.time())


def spent_429(rpm: int) -> Verdict:
    """A 429 whose headers show the budget of a stated ``rpm`` spent: the rate's (a bare one
    at a pace far under a stated limit is a busy provider's noise, in a fleet as in one
    process: core/lane.py Lane._unexplained)."""
    headers = {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": "0"}
    return classify_response(429, headers, b"Too Many Requests", now_wall_s=time.time())


def in_flight_429() -> Verdict:
    body = {"error": {"code": "concurrency_limit_exceeded", "message": "too many in flight"}}
    return classify_response(429, {}, json.dumps(body).encode(), now_wall_s=time.time())


def slowed_clock(factor: float) -> Any:
    """A monotonic clock that runs ``factor`` times slower than the real one."""
    start = time.monotonic()
    return lambda: start + (time.monotonic() - start) / factor


async def until(condition: object, timeout_s: float = 10.0, about: object = None) -> None:
    """Poll ``condition()`` (a callable) until true, at most ``timeout_s``; on timeout the
    message shows ``about`` (a lane, say: what it concluded instead)."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {about!r}"
        await asyncio.sleep(0.02)


def stored(server: RedisServer, namespace: str, field: str) -> float | None:
    client = server.client()
    raw = client.hget(f"{namespace}:lane:{CHAT}|m", field)
    client.close()
    return None if raw is None else float(raw)


async def released(gov: Governor, lane: Lane) -> None:
    """Wait until the fleet holds no slot of ``lane``: releases reach Redis through the
    maintenance thread, and an admission asked before they land counts them in flight."""
    backend = gov.backend
    assert isinstance(backend, RedisBackend)
    client, key = backend.sync_client(), redis_admission(lane).slot_key
    deadline = time.monotonic() + 5
    while client.zcard(key) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


async def discover(gov: Governor) -> float:
    """Twenty answers accepted back to back, then a bare 429: the lane discovers a rate.

    One at a time in the fleet too: each waits until the release before it reached Redis.
    Asked sooner, the admission counts the releases still queued in the maintenance thread
    as in flight (its first calls on a fresh Redis load the scripts), and a refusal at a new
    peak in flight is first taken for an in-flight cap: the likely cause (not confirmed) of
    this file's first test discovering no rate once in CI, and in 1 of 30 and 1 of 8 runs
    alone on a fresh Redis."""
    lane = shared_lane(gov)
    for _ in range(20):
        permit = await lane.acquire(0)
        lane.settle(permit, ok(), now=gov.clock(), max_hint_s=60, retry=False)
        await released(gov, lane)
    permit = await lane.acquire(0)
    lane.settle(permit, bare_429(), now=gov.clock(), max_hint_s=60, retry=False)
    rpm = lane.discovered_rpm
    assert rpm is not None, lane
    return rpm


async def test_a_rate_discovered_by_one_process_paces_every_process(
    redis_server: RedisServer, namespace: str
) -> None:
    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    lane_b = shared_lane(b)  # made before anything was discovered
    assert lane_b.rpm is None
    own = await discover(a)
    await until(lambda: stored(redis_server, namespace, "pr") is not None)
    # its own, unless the key took less in the second before the 429 (then just under that)
    rpm = stored(redis_server, namespace, "pr")
    assert rpm is not None
    assert rpm <= own * 1.001
    # the other process adopts it at its next heartbeat, and paces at it
    await until(lambda: lane_b.rpm is not None)
    assert lane_b.discovered_rpm == pytest.approx(rpm, rel=1e-3)
    # one made later starts from it
    c = shared_gov(redis_server, namespace)
    assert shared_lane(c).discovered_rpm == pytest.approx(rpm, rel=1e-3)
    # and admissions through Redis are paced at it, whoever asks: n admissions after the
    # discovery take at least (n - burst) / rate, the burst being what refilled since
    await asyncio.sleep(0.3)  # a little refill, not a full bucket
    rate = rpm / 60
    sent = []
    for i in range(30):
        permit = await shared_lane((b, c)[i % 2]).acquire(0)
        sent.append(permit.sent_at)
        permit.release()
    burst = max(1.0, rate * Limits().burst_s)
    assert sent[-1] - sent[0] >= (30 - burst - 1) / rate * 0.9
    close(a, b, c)


async def test_a_rate_discovered_from_a_share_of_the_traffic_is_the_fleets(
    redis_server: RedisServer, namespace: str
) -> None:
    """What one process saw accepted was its share of what the fleet sent: the rate it
    shares is its own discovery divided by that share, unless the key itself took less in
    the second before the 429 (then just under what it took)."""
    # The burst below must fit in a second of the lanes' clock: spread over more (a loaded CI
    # machine took over a second for these 26 round trips to Redis), the second before the
    # 429 no longer shows the rate and the refusal reads as a cap. A clock at a quarter speed
    # gives it four; the key's own count is on the Redis server's clock, and the assertion
    # below takes either measure.
    clock = slowed_clock(4.0)
    a = shared_gov(redis_server, namespace, clock=clock)
    b = shared_gov(redis_server, namespace, clock=clock)
    # Connections, scripts and lazy imports first, on another lane.
    for gov in (a, b):
        (await gov.lane(CHAT, "warm-up").acquire(0)).release()
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    for _ in range(12):  # half the fleet's admissions are a's, and a sees only its own answers
        permit = await lane_a.acquire(0)
        lane_a.settle(permit, ok(), now=a.clock(), max_hint_s=60, retry=False)
        (await lane_b.acquire(0)).release()
    permit = await lane_a.acquire(0)
    lane_a.settle(permit, bare_429(), now=a.clock(), max_hint_s=60, retry=False)
    await until(lambda: stored(redis_server, namespace, "pr") is not None, about=lane_a)
    shared = stored(redis_server, namespace, "pr")
    assert shared is not None
    own = 0.9 * 12 * 60  # 90% of the twelve a saw accepted within a second, per minute
    took = stored(redis_server, namespace, "pl")
    assert took is not None
    assert 1.7 * own <= shared <= 2.1 * own or shared == pytest.approx(0.92 * took, rel=1e-3)
    assert shared <= 2.1 * own
    await until(lambda: lane_a.rpm == pytest.approx(shared, rel=1e-3))
    close(a, b)


async def test_a_cut_by_one_process_slows_the_others(
    redis_server: RedisServer, namespace: str
) -> None:
    limits = Limits(rpm=1200, burst_s=0.1)
    a = shared_gov(redis_server, namespace, limits=limits)
    b = shared_gov(redis_server, namespace, limits=limits)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    # two refusals, each sent after the first came back: the rate is cut below the stated one
    for _ in range(2):
        permit = await lane_a.acquire(0)
        lane_a.settle(permit, spent_429(1200), now=a.clock(), max_hint_s=60, retry=False)
        await asyncio.sleep(1.05)  # cuts are at most one per second
    cut = lane_a.rpm
    assert cut is not None
    assert cut < 1200
    await until(lambda: lane_b.rpm is not None and lane_b.rpm < 1200)
    assert lane_b.rpm == pytest.approx(cut, rel=1e-3)
    assert lane_b.rpm_limit == 1200  # the stated limit stays the ceiling
    close(a, b)


async def test_an_in_flight_cap_learned_by_one_process_bounds_the_others(
    redis_server: RedisServer, namespace: str
) -> None:
    limits = Limits(concurrency=AdaptiveConcurrency(initial=8))
    a = shared_gov(redis_server, namespace, limits=limits)
    b = shared_gov(redis_server, namespace, limits=limits)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    held = [await lane_a.acquire(0) for _ in range(6)]
    # the sixth in flight is refused as one too many in flight: at most five fit
    lane_a.settle(held.pop(), in_flight_429(), now=a.clock(), max_hint_s=60, retry=False)
    learner_a = redis_admission(lane_a).learner
    assert learner_a is not None
    assert learner_a.learned_cap == 5
    await until(lambda: stored(redis_server, namespace, "pc") == 5)
    for permit in held:
        permit.release()
    # the other process, which never saw a refusal, takes five, not the window's eight
    taken = [await lane_b.acquire(0, deadline=time.monotonic() + 1.0) for _ in range(5)]
    with pytest.raises(QueueTimeout):
        await lane_b.acquire(0, deadline=time.monotonic() + 0.3)
    learner_b = redis_admission(lane_b).learner
    assert learner_b is not None
    await until(lambda: learner_b.learned_cap == 5)
    for permit in taken:
        permit.release()
    close(a, b)


async def test_the_lowest_cap_wins_and_only_a_probe_raises_it(
    redis_server: RedisServer, namespace: str
) -> None:
    from pacekeeper.backends import _scripts

    client = redis_server.client()
    control = client.register_script(_scripts.CONTROL)
    key = f"{namespace}:lane:{CHAT}|m"

    def push(cap: int, probing: int = 0) -> object:
        return control(keys=[key, f"{namespace}:clock"], args=["", "", cap, probing, "", 60])[2]

    assert push(6) == b"6"
    assert push(4) == b"4"  # lower wins
    assert push(7) == b"4"  # a higher one from a process that did not probe does not
    assert push(5, probing=1) == b"5"  # a probe raises it by one
    assert push(7, probing=1) == b"5"  # but only by one
    assert push(0) is None  # refuted: forgotten
    client.close()


async def test_a_429_to_a_process_with_a_small_share_of_the_traffic_is_no_cap(
    redis_server: RedisServer, namespace: str
) -> None:
    """A process of a fleet sees only its own acceptances: that it was accepted at under half
    the stated rate says nothing about the key, which the others fill. Its 429 (the window
    run out by another process's request) teaches no in-flight cap (it did: one fewer than
    the fleet had in flight, here one, for every process). Its headers show room and the
    fleet sent 3 in the second before it, at a stated 300/min: as in one process, that is
    a busy provider's noise until the share of such 429s says otherwise (Lane._unexplained,
    on the fleet's sends): no gate closed for the fleet, no cut."""
    # 300 rpm counted per fifth of a second: one request per window, which the fleet's pacing
    # burst (half a second) can overfill.
    scenario = Scenario(default=ModelLimits(rpm=300, burst_s=0.2))
    single = RetryPolicy(max_attempts=1)
    with Simulator(scenario) as sim:
        chat_gov = shared_gov(redis_server, namespace, retry=single)
        batch_gov = shared_gov(redis_server, namespace, retry=single)
        chat = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="x"), chat_gov)
        batch = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="x"), batch_gov)

        async def send(client: openai.AsyncOpenAI) -> None:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )

        for _ in range(12):  # under two a second: this process alone is under half of 300 rpm
            await send(chat)
            await asyncio.sleep(0.55)
        await send(batch)  # another process takes the window
        with pytest.raises(openai.RateLimitError):
            await send(chat)
        await chat.close()
        await batch.close()
    lane = shared_lane(chat_gov)
    assert lane.rpm_limit == 300
    learner = redis_admission(lane).learner
    assert learner is not None
    assert learner.learned_cap is None
    await released(chat_gov, lane)  # the release, and a gate submitted before it, landed
    assert stored(redis_server, namespace, "pc") is None
    assert stored(redis_server, namespace, "cd") is None
    assert lane.rpm == 300
    close(chat_gov, batch_gov)


async def test_what_is_learned_while_an_exchange_runs_reaches_the_fleet(
    redis_server: RedisServer, namespace: str
) -> None:
    """The controller moves while an exchange is on the wire (here: a cap learned while the
    script runs): that exchange did not push it, so the next one must. It used to count as
    pushed, and the fleet never heard of it (a rate discovered under load was lost so)."""
    a = shared_gov(redis_server, namespace)
    lane = shared_lane(a)
    learner = redis_admission(lane).learner
    assert learner is not None
    assert isinstance(a.backend, RedisBackend)
    control = a.backend.sync_scripts().control

    def racing(*, keys: list[str], args: list[Any]) -> Any:
        learner.learn_cap(in_flight_at_send=6, now=a.clock())
        return control(keys=keys, args=args)

    redis_admission(lane).exchange_control(racing)  # type: ignore[arg-type]
    await until(lambda: stored(redis_server, namespace, "pc") == 5)
    close(a)


def _cap_pusher(client: Any, namespace: str) -> Callable[..., tuple[object, object]]:
    """CONTROL's cap exchange, called as a process pushes its cap: (the stored cap, its
    provisional flag)."""
    from pacekeeper.backends import _scripts

    control = client.register_script(_scripts.CONTROL)
    key = f"{namespace}:lane:{CHAT}|m"

    def push(cap: int, provisional: int, probing: int = 0) -> tuple[object, object]:
        stored = control(
            keys=[key, f"{namespace}:clock"], args=["", "", cap, probing, "", 60, provisional]
        )
        return stored[2], stored[4]

    return push


async def test_a_provisional_cap_is_stored_as_one_and_confirmed_only_by_a_confirmed_cap(
    redis_server: RedisServer, namespace: str
) -> None:
    client = redis_server.client()
    push = _cap_pusher(client, namespace)

    assert push(6, provisional=1) == (b"6", b"1")
    assert push(7, provisional=0) == (b"6", b"1")  # a higher cap neither sets nor confirms
    assert push(6, provisional=0) == (b"6", None)  # the same cap, tested elsewhere: confirmed
    assert push(5, provisional=1) == (b"5", b"1")  # a lower one wins, with its flag
    assert push(0, provisional=0) == (None, None)  # refuted: forgotten, flag and all
    client.close()


async def test_a_confirmed_cap_stands_against_a_hypothesis_refuted_or_tested_elsewhere(
    redis_server: RedisServer, namespace: str
) -> None:
    """Every process tests a provisional cap within its round trip. One test refused
    confirms it; another process's test, sent at the fleet's count (which runs ahead of the
    server's by releases on their way), may be taken all the same. Traced under load: that
    process then forgot the cap for the whole fleet, after a third had raised the confirmed
    cap back to a hypothesis with its own test, and 20-44 429s followed where 2-4 do. A
    confirmed cap stands against both; a confirmed cap's own probe and a refutation of a
    confirmed cap still move it. Storing a cap brings the fleet's window down to it."""
    client = redis_server.client()
    key = f"{namespace}:lane:{CHAT}|m"
    push = _cap_pusher(client, namespace)

    client.hset(key, "cw", "26")  # the start's ramp grew the window
    assert push(8, provisional=1) == (b"8", b"1")
    assert stored(redis_server, namespace, "cw") == 8  # down to the cap, as one process's
    assert stored(redis_server, namespace, "ss") == 8  # and slow start ends there
    assert push(8, provisional=0) == (b"8", None)  # a refused test confirmed it
    assert push(9, provisional=1, probing=1) == (b"8", None)  # another's test: not raised
    assert push(0, provisional=1) == (b"8", None)  # another's hypothesis refuted: it stands
    assert push(9, provisional=0, probing=1) == (b"9", None)  # a confirmed cap's probe
    assert push(0, provisional=0) == (None, None)  # refusals below a confirmed cap: gone
    client.close()


async def test_a_process_whose_test_was_taken_adopts_the_cap_the_fleet_confirmed(
    redis_server: RedisServer, namespace: str
) -> None:
    """Its provisional cap refuted here (its test taken), a process does not make the fleet
    forget a cap another's refused test confirmed: it adopts it, confirmed."""
    limits = Limits(concurrency=AdaptiveConcurrency(initial=8))
    a = shared_gov(redis_server, namespace, limits=limits)
    lane_a = shared_lane(a)
    held = [await lane_a.acquire(0) for _ in range(8)]
    lane_a.settle(held.pop(), bare_429(), now=a.clock(), max_hint_s=60, retry=False)
    admission = redis_admission(lane_a)
    learner = admission.learner
    assert learner is not None
    assert (learner.learned_cap, learner.cap_provisional) == (7, True)
    await until(lambda: stored(redis_server, namespace, "pp") == 1)
    for permit in held:
        permit.release()
    # another process's test of it was refused: confirmed in the store
    backend = a.backend
    assert isinstance(backend, RedisBackend)
    scripts = backend.sync_scripts()
    scripts.control(keys=[admission.hash_key, backend.clock_key], args=["", "", 7, 0, "", 60, 0])
    learner.forget_cap()  # this process's test was taken
    admission.exchange_control(scripts.control)
    assert stored(redis_server, namespace, "pc") == 7
    assert stored(redis_server, namespace, "pp") is None
    assert (learner.learned_cap, learner.cap_provisional) == (7, False)
    close(a)


async def test_a_cap_taught_by_bare_429s_stays_provisional_in_the_other_processes(
    redis_server: RedisServer, namespace: str
) -> None:
    """A bare 429 at a new peak in flight, with no stated rate, may be a cap or a rate: the
    cap it suggests is a hypothesis, tried within a round trip. Another process adopted it
    as a confirmed cap (CONTROL had no flag for it) and held under it until its first probe,
    10 s on."""
    limits = Limits(concurrency=AdaptiveConcurrency(initial=8))
    a = shared_gov(redis_server, namespace, limits=limits)
    b = shared_gov(redis_server, namespace, limits=limits)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    held = [await lane_a.acquire(0) for _ in range(8)]
    # the eighth, which filled the window, refused with nothing to say why
    lane_a.settle(held.pop(), bare_429(), now=a.clock(), max_hint_s=60, retry=False)
    learner_a, learner_b = redis_admission(lane_a).learner, redis_admission(lane_b).learner
    assert learner_a is not None
    assert learner_b is not None
    assert (learner_a.learned_cap, learner_a.cap_provisional) == (7, True)
    await until(lambda: stored(redis_server, namespace, "pp") == 1)
    await until(lambda: learner_b.learned_cap == 7)
    assert learner_b.cap_provisional
    for permit in held:
        permit.release()
    close(a, b)


async def test_the_rate_a_discovery_climbs_to_is_kept_against_cuts_of_a_lower_pace(
    redis_server: RedisServer, namespace: str
) -> None:
    """Every process refused in the burst that discovers a rate measures what the key took,
    each from its share (an estimate that runs high): the lowest measure of that burst is
    kept. A cut of a pace well under it (a process that adopted a low seed, refused for a
    request sent in the same burst) does not lower it: the last writer used to win, and a
    process that measured 250/min overwrote another's 960 a tenth of a second later. A pace
    refused a little under it is the loss from then on."""
    from pacekeeper.backends import _scripts

    client = redis_server.client()
    control = client.register_script(_scripts.CONTROL)
    key = f"{namespace}:lane:{CHAT}|m"

    def push(loss: str, measured: int) -> object:
        return control(
            keys=[key, f"{namespace}:clock"], args=["", "", "", 0, "", 60, 0, loss, measured]
        )[5]

    assert push("1200", 1) == b"1200"  # one process's measure of the refusal
    assert push("1000", 1) == b"1000"  # another's, lower: the lowest of the burst is kept
    assert push("1500", 1) == b"1000"
    assert push("250", 0) == b"1000"  # a cut of a low pace: no news
    assert push("", 0) == b"1000"  # unchanged
    assert push("950", 0) == b"950"  # the pace was refused near it: the loss from then on
    assert push("990", 0) == b"950"  # refused above it: it was past what the key took
    client.hset(key, "pla", "0")  # the discovery was long ago: a new one replaces it
    assert push("2000", 1) == b"2000"
    assert push("0", 0) is None  # forgotten
    client.close()


async def test_a_process_that_adopts_a_low_pace_climbs_to_what_the_key_took(
    redis_server: RedisServer, namespace: str
) -> None:
    """One process discovers a rate; another, whose own 429 came from the same burst, cuts
    the pace it adopted and shares the cut. The first adopts that lower pace, but the rate it
    climbs back to stays what the key took when it refused: it regains it within seconds.
    (An adopted pace used to become that aim, and a fleet seeded low took 16 s to climb from
    162 to 1023/min at +2%/s.)"""
    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    # twenty accepted within a second; a second later three more, then a bare 429: the pace
    # starts under what that last second took (the seed, 3/s), the aim is the best second
    for k in range(24):
        if k == 20:
            await asyncio.sleep(1.1)
        permit = await asyncio.wait_for(lane_a.acquire(0), 10)
        verdict = bare_429() if k == 23 else ok()
        lane_a.settle(permit, verdict, now=a.clock(), max_hint_s=60, retry=False)
        await released(a, lane_a)  # one at a time in the fleet too (see discover)
    loss = lane_a.request_rate.loss_rpm
    assert loss is not None
    assert lane_a.rpm is not None
    assert lane_a.rpm < 0.5 * loss
    await until(lambda: lane_b.rpm is not None)  # b adopts a's discovery
    permit = await asyncio.wait_for(lane_b.acquire(0), 10)
    lane_b.settle(permit, bare_429(), now=b.clock(), max_hint_s=60, retry=False)
    cut = lane_b.rpm
    assert cut is not None
    assert cut < 0.9 * loss
    await until(lambda: lane_a.rpm == pytest.approx(cut, rel=1e-3))  # a adopts the cut
    rate = lane_a.request_rate
    assert rate.loss_rpm == pytest.approx(loss, rel=1e-3)
    # three seconds of successes with a backlog, on a clock of our own: just under the loss
    for i in range(31):
        rate.succeeded(now=1e6 + 0.1 * i, backlog=True)
    assert rate.rpm is not None
    assert rate.rpm > 0.85 * loss
    close(a, b)


async def test_every_caller_paces_at_the_fleets_rate_whatever_its_own(
    redis_server: RedisServer, namespace: str
) -> None:
    """The shared bucket is judged at the fleet's pace (pr), not at the lower of it and the
    caller's: a process whose pace lags the fleet's (it adopts at its next exchange) saw the
    bucket fuller than the others did, and they took every opening first (one process of
    three waited 6 s with work queued)."""
    from pacekeeper.backends import _scripts

    client = redis_server.client()
    admit = client.register_script(_scripts.ADMIT)
    control = client.register_script(_scripts.CONTROL)
    key, slots = f"{namespace}:lane:{CHAT}|m", f"{namespace}:slots:{CHAT}|m"
    control(
        keys=[key, f"{namespace}:clock"], args=["6000", "", "", 0, "", 60, 0, "", 0]
    )  # the fleet: 100/s

    def ask(lease: str) -> list[Any]:
        # tokens, rpm 60 (this caller's own, lagging), tpm, burst 0.5 s, utilisation, fixed
        # 100 slots, initial/min/max, lease, ttls, cap, floor, rank, share, waiting x3,
        # output tokens, otpm, silence, token and output bursts
        args: list[Any] = [0, 60, 0, 0.5, 1, 100, 4, 1, 512, lease, 15, 60, 0, 0, 0, 0.1]
        args += [1, 0, 0, 0, 0, 0, 0.5, 0.5]
        reply: list[Any] = admit(keys=[key, slots, f"{namespace}:clock"], args=args)
        return reply

    admitted = [int(ask(f"l{k}")[0]) for k in range(5)]
    assert admitted == [1, 1, 1, 1, 1]  # a burst of half a second at 100/s holds 50
    client.close()


async def test_a_cut_pace_is_not_overwritten_by_a_rise_from_before_the_cut(
    redis_server: RedisServer, namespace: str
) -> None:
    """The fleet's pace: the last writer wins among rises, but a rise from a process that
    has not adopted the latest cut (its epoch is older) is dropped, and a cut never raises
    the pace. A process climbing from its own old pace used to overwrite another's cut a
    tenth of a second later, and the fleet paced at 1.5 times what the key took."""
    from pacekeeper.backends import _scripts

    client = redis_server.client()
    control = client.register_script(_scripts.CONTROL)
    key = f"{namespace}:lane:{CHAT}|m"

    def push(rpm: str, *, cut: int = 0, discovery: int = 0, epoch: int = 0) -> list[Any]:
        loss = "" if not (cut or discovery) else str(float(rpm) / 0.85)
        reply: list[Any] = control(
            keys=[key, f"{namespace}:clock"],
            args=[rpm, "", "", 0, "", 60, 0, loss, discovery, cut, epoch],
        )
        return reply

    def pace(reply: list[Any]) -> float:
        return float(reply[0])

    first = push("900", discovery=1)  # a discovery: epoch 1
    assert (pace(first), int(first[6])) == (900, 1)
    assert pace(push("950", epoch=1)) == 950  # a rise by a process that adopted it
    cut = push("800", cut=1, epoch=1)  # a cut: epoch 2
    assert (pace(cut), int(cut[6])) == (800, 2)
    assert pace(push("1000", epoch=1)) == 800  # a rise from before the cut: dropped
    assert pace(push("1100", cut=1, epoch=1)) == 800  # a cut of a higher pace: no higher
    assert pace(push("820", epoch=3)) == 820  # a rise after adopting the last cut
    client.close()


async def test_a_cut_of_a_fleets_discovered_pace_is_measured_on_the_keys_acceptances(
    redis_server: RedisServer, namespace: str
) -> None:
    """A process of a fleet sees only its share of what the key accepts, so it cuts its pace
    by a fixed share; past the burst that discovered the rate, the cut it shares is measured
    on the key's successes, which every process's releases count in Redis: the pace resumes
    just under what the key took (a fleet whose discovery ran high paced at 1.5 times the
    server's rate, cut after fixed cut)."""
    from pacekeeper.backends import _scripts

    client = redis_server.client()
    control = client.register_script(_scripts.CONTROL)
    release = client.register_script(_scripts.RELEASE)
    key = f"{namespace}:lane:{CHAT}|m"

    def push(rpm: str, loss: str, *, cut: int, discovery: int, epoch: int) -> list[Any]:
        reply: list[Any] = control(
            keys=[key, f"{namespace}:clock"],
            args=[rpm, "", "", 0, "", 60, 0, loss, discovery, cut, epoch],
        )
        return reply

    push("1000", "1200", cut=0, discovery=1, epoch=0)  # a discovery that ran high
    # four successes a second for a little over three whole seconds (240/min), from any
    # process: the fixed limit's releases (no window to adapt) still count them
    for k in range(15):
        release(
            keys=[key, f"{namespace}:slots:{CHAT}|m", f"{namespace}:clock"],
            args=[f"l{k}", 1, 0, 1, 1],
        )
        await asyncio.sleep(0.25)
    stored = push("1020", "1200", cut=1, discovery=0, epoch=1)  # refused at 1200/min
    assert 150 <= float(stored[5]) <= 330  # what the key took: the loss from now on
    assert float(stored[0]) == pytest.approx(0.97 * float(stored[5]), rel=1e-3)
    client.close()


async def test_a_discovery_is_measured_on_the_keys_admissions_less_its_refusals(
    redis_server: RedisServer, namespace: str
) -> None:
    """Each process sees only its share of what the key accepts: divided by that share, its
    own measure of a discovery ran 1.1-2.5 times the server's rate. The key's admissions in
    the second before the 429, less the fleet's refusals of requests sent then (each
    process's release counts its own in Redis), are what the server took: the rate the
    discovered pace climbs to, and the pace starts no higher than just under it."""
    from pacekeeper.backends import _scripts

    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    client = redis_server.client()
    release = client.register_script(_scripts.RELEASE)
    key, slots = f"{namespace}:lane:{CHAT}|m", f"{namespace}:slots:{CHAT}|m"
    for i in range(12):  # 24 admitted: a sees 12 accepted, b 6 accepted and 6 refused
        permit = await asyncio.wait_for(lane_a.acquire(0), timeout=10)
        lane_a.settle(permit, ok(), now=a.clock(), max_hint_s=60, retry=False)
        permit = await asyncio.wait_for(lane_b.acquire(0), timeout=10)
        permit.release()  # b's own count; what became of it, as b's release tells Redis:
        assert isinstance(permit.lease, tuple)
        lease, sent_at = permit.lease[:2]
        release(
            keys=[key, slots, f"{namespace}:clock"],
            args=[str(lease), 3 if i % 2 else 1, sent_at, 1, 1],
        )
    await asyncio.sleep(0.15)  # (the key counts by tenths of a second)
    permit = await asyncio.wait_for(lane_a.acquire(0), timeout=10)
    lane_a.settle(permit, bare_429(), now=a.clock(), max_hint_s=60, retry=False)
    await until(lambda: lane_a.discovered_rpm is not None)
    # at most 24 admitted in the second before it (fewer if they took over 0.85 s), 6 of
    # them refused; a's own view, 12 accepted divided by its half of the traffic, read
    # 1440/min
    await until(lambda: stored(redis_server, namespace, "pl") is not None)
    took = stored(redis_server, namespace, "pl")
    assert took is not None
    assert 60 * 6 <= took <= 60 * (24 - 6) * 1.001
    pace = stored(redis_server, namespace, "pr")
    assert pace is not None
    assert pace <= 0.92 * took * 1.001
    await until(lambda: lane_a.rpm is not None and lane_a.rpm <= 0.92 * took * 1.001)
    client.close()
    close(a, b)


async def test_a_cut_of_a_fleets_pace_is_measured_at_once_on_the_second_before_the_429(
    redis_server: RedisServer, namespace: str
) -> None:
    """A cut measured on the key's successes waits for two whole seconds of answers after
    the last loss, while the fleet climbs past the server. The key's admissions less its
    refusals in the second before the 429 measure it at once: the pace resumes just under
    what the key took, as a process alone resumes under its own measure."""
    from pacekeeper.backends import _scripts

    gov = shared_gov(redis_server, namespace)
    lane = shared_lane(gov)
    client = redis_server.client()
    control = client.register_script(_scripts.CONTROL)
    release = client.register_script(_scripts.RELEASE)
    key, slots = f"{namespace}:lane:{CHAT}|m", f"{namespace}:slots:{CHAT}|m"

    def push(rpm: str, loss: str, *, cut: int, discovery: int, epoch: int, at: str) -> list[Any]:
        args: list[str | int] = [rpm, "", "", 0, "", 60, 0, loss, discovery, cut, epoch, at]
        reply: list[Any] = control(keys=[key, f"{namespace}:clock"], args=args)
        return reply

    push("1000", "1200", cut=0, discovery=1, epoch=0, at="")  # a discovery that ran high
    server_sent = []
    for k in range(10):  # ten admitted within a second, the last four refused
        permit = await lane.acquire(0)
        permit.release()  # this process's count (its release to Redis counts nothing)
        assert isinstance(permit.lease, tuple)
        lease, sent_at = permit.lease[:2]  # (the lease's id, the server's clock at admission)
        server_sent.append(float(sent_at))
        release(
            keys=[key, slots, f"{namespace}:clock"],
            args=[str(lease), 3 if k >= 6 else 1, sent_at, 1, 1],
        )
    assert server_sent[-1] - server_sent[0] < 0.7
    # refused: a request sent a little later (the second before it holds the ten)
    stored = push("850", "1000", cut=1, discovery=0, epoch=1, at=repr(server_sent[-1] + 0.2))
    assert float(stored[5]) == pytest.approx(360, rel=1e-3)  # the loss: what the key took
    assert float(stored[0]) == pytest.approx(0.92 * 360, rel=1e-3)  # resumed just under it
    client.close()
    close(gov)


async def test_a_429_about_the_rate_anywhere_empties_the_fleets_bucket(
    redis_server: RedisServer, namespace: str
) -> None:
    """A local lane drains its bucket at a 429 about the rate (the provider's window is
    empty now). The fleet's bucket in Redis is drained by any process's refusal: left full,
    the other processes spent its burst into the window that had just refused (nine more
    429s within 60 ms of a fleet's first, on 1-s windows)."""
    from pacekeeper.backends import _scripts

    gov = shared_gov(redis_server, namespace)
    lane = shared_lane(gov)
    client = redis_server.client()
    control = client.register_script(_scripts.CONTROL)
    release = client.register_script(_scripts.RELEASE)
    key, slots = f"{namespace}:lane:{CHAT}|m", f"{namespace}:slots:{CHAT}|m"
    # the fleet paces at 600/min (10/s): a full bucket holds half a second's five
    control(keys=[key, f"{namespace}:clock"], args=["600", "", "", 0, "", 60, 0, "", 1, 0, 0, ""])
    await asyncio.sleep(1.0)
    # another process's request refused about the rate (its lease, its send time)
    server_now = float(client.time()[0])
    release(keys=[key, slots, f"{namespace}:clock"], args=["elsewhere", 3, server_now, 1, 1])
    sent = []
    for _ in range(3):
        permit = await asyncio.wait_for(lane.acquire(0), timeout=10)
        sent.append(permit.sent_at)
        permit.release()
    # from empty, each waits its tenth of a second (less a margin for clock reads)
    assert sent[-1] - sent[0] >= 0.15
    client.close()
    close(gov)


async def test_a_refusal_judged_about_the_rate_later_is_measured_on_the_key(
    redis_server: RedisServer, namespace: str
) -> None:
    """A bare 429 at a new peak in flight is first read as a provisional cap (released as a
    refusal about a cap); a request past that cap accepted shows it was the rate, and the
    second before the refusal measures a discovery (``refused_earlier``). One process's view
    of that second is not what the key took: measured on the key."""
    limits = Limits(concurrency=AdaptiveConcurrency(initial=8))
    a = shared_gov(redis_server, namespace, limits=limits)
    b = shared_gov(redis_server, namespace)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    for _ in range(30):  # the rest of the fleet: 30 admitted, none refused
        (await asyncio.wait_for(lane_b.acquire(0), timeout=10)).release()
    held = [await asyncio.wait_for(lane_a.acquire(0), timeout=10) for _ in range(7)]
    await asyncio.sleep(0.15)  # (the key counts by tenths of a second)
    held.append(await asyncio.wait_for(lane_a.acquire(0), timeout=10))
    lane_a.settle(held.pop(), bare_429(), now=a.clock(), max_hint_s=60, retry=False)
    learner = redis_admission(lane_a).learner
    assert learner is not None
    assert learner.cap_provisional
    for permit in held:
        lane_a.settle(permit, ok(), now=a.clock(), max_hint_s=60, retry=False)
    # with work waiting, answers at the cap: it is tried one higher a round trip later
    waiting = [asyncio.ensure_future(lane_a.acquire(0)) for _ in range(10)]
    deadline = time.monotonic() + 10
    while lane_a.discovered_rpm is None:
        assert time.monotonic() < deadline, "the cap was never tried"
        await asyncio.sleep(0.02)
        for task in [t for t in waiting if t.done()]:
            waiting.remove(task)
            lane_a.settle(task.result(), ok(), now=a.clock(), max_hint_s=60, retry=False)
            waiting.append(asyncio.ensure_future(lane_a.acquire(0)))
    await until(lambda: stored(redis_server, namespace, "pl") is not None)
    # the key took b's 30 and a's 7 in the second before the refusal; a's own view, all of
    # its traffic lately, read 420/min
    loss = stored(redis_server, namespace, "pl")
    assert loss is not None
    # (38: the refused one's own admission, when its send time, read a moment after the
    # admission on a busy loop, falls in the next tenth of the key's clock: once in 4 runs of
    # this file and 5 of this test, at load 1-2)
    assert 60 * 30 <= loss <= 60 * 38
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    close(a, b)


async def test_one_callers_floor_is_the_fleets_at_once(
    redis_server: RedisServer, namespace: str
) -> None:
    """The floor (the slots the rate needs) bounds every caller's limit alike: each caller's
    own floor in its own decision let a process whose answers showed more latency take every
    slot over the others' limit (one held 22 of 25 while two sat with 33-35 queued and none in
    flight)."""
    from pacekeeper.backends import _scripts

    client = redis_server.client()
    admit = client.register_script(_scripts.ADMIT)
    key, slots = f"{namespace}:lane:{CHAT}|m", f"{namespace}:slots:{CHAT}|m"

    def ask(lease: str, floor: int) -> list[Any]:
        # tokens, no rpm/tpm, burst, utilisation, adaptive (fixed 0), initial 2, min 1, max
        # 512, lease, ttls, cap, floor, rank, share, waiting x3, output tokens, otpm, silence,
        # token and output bursts
        args: list[Any] = [0, 0, 0, 0.5, 1, 0, 2, 1, 512, lease, 15, 60, 0, floor, 0, 0.1]
        args += [1, 0, 0, 0, 0, 0, 0.5, 0.5]
        reply: list[Any] = admit(keys=[key, slots, f"{namespace}:clock"], args=args)
        return reply

    high = [ask(f"a{k}", floor=6) for k in range(6)]
    assert [int(r[0]) for r in high] == [1] * 6  # the window is 2; the floor lets 6 go
    low = ask("b0", floor=0)  # another process, whose own answers need no more than 2
    assert int(low[3]) == 6, low  # the limit it is judged by: the fleet's floor
    assert int(low[0]) == 0  # six in flight: no slot
    client.close()


async def test_a_cut_on_swollen_answers_is_the_fleets_window(
    redis_server: RedisServer, namespace: str
) -> None:
    """A self-hosted server (no 429s) queues past its capacity: answers swell, and the
    process that judges them cuts the window to the capacity they show. The window cut must
    be the fleet's: kept in the learner alone, it cut nothing, and the fleet's window grew on
    every answer not yet judged swollen (three processes held a queue one process cuts).
    Answers of a FIFO server of 12, 1 s unqueued, to 48 sent at once."""
    limits = Limits(concurrency=AdaptiveConcurrency(initial=48))
    a = shared_gov(redis_server, namespace, limits=limits)
    b = shared_gov(redis_server, namespace, limits=limits)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    first = await lane_b.acquire(0)  # answered: no silence of b's grows the window later
    lane_b.settle(first, ok(), now=first.sent_at + 1.0, max_hint_s=60, retry=False)
    await released(b, lane_b)
    permits = [await lane_a.acquire(0) for _ in range(48)]
    loads = [p.in_flight_at_send for p in permits]
    assert loads == sorted(loads)
    assert loads[-1] == 48
    for permit in permits:  # in the order a FIFO server answers them
        latency_s = max(1.0, permit.in_flight_at_send / 12)
        lane_a.settle(permit, ok(), now=permit.sent_at + latency_s, max_hint_s=60, retry=False)
    learner = redis_admission(lane_a).learner
    assert learner is not None
    assert learner.queue_cut_at > -math.inf, lane_a.latency  # the swelling was judged
    await until(lambda: (stored(redis_server, namespace, "cw") or 48) < 20, about=learner)
    window = stored(redis_server, namespace, "cw")
    assert window is not None
    assert 12 <= window < 20  # the capacity, a tenth to spare: not 0.7 of 48
    # the other process, which judged nothing, is held to it
    taken = [await lane_b.acquire(0, deadline=time.monotonic() + 1.0) for _ in range(int(window))]
    with pytest.raises(QueueTimeout):
        await lane_b.acquire(0, deadline=time.monotonic() + 0.3)
    for permit in taken:
        permit.release()
    close(a, b)


async def test_the_ramp_after_an_answer_that_states_nothing_is_the_fleets(
    redis_server: RedisServer, namespace: str
) -> None:
    """A self-hosted server states nothing: after its first answer, a local lane's ramp goes
    on to 16 (a slot every 0.1 s) where slow start alone waits a round trip per doubling. In
    a fleet only silence before any answer raised the shared window: the ramp after it grew
    the learner's window alone, and three processes on a server of 22 answering in 1.6 s
    doubled from 8 on answers."""
    a = shared_gov(redis_server, namespace)
    lane = shared_lane(a)
    first = await lane.acquire(0)
    backlog = [asyncio.ensure_future(lane.acquire(0)) for _ in range(30)]  # the ramp runs
    await until(lambda: lane.slots.limit >= 8, timeout_s=5.0, about=lane.slots)
    lane.settle(first, ok(), now=a.clock(), max_hint_s=60, retry=False)  # states nothing
    await until(
        lambda: (stored(redis_server, namespace, "cw") or 0) >= AimdLimit.ramp_answered_max - 1,
        timeout_s=5.0,
        about=lane.slots,
    )
    # Another process cuts the fleet's window (its answers swelled, say): this process's
    # ramp, still running, must not undo it.
    client = redis_server.client()
    client.hset(f"{namespace}:lane:{CHAT}|m", mapping={"cw": "6", "ss": "6"})
    client.close()
    await asyncio.sleep(0.5)
    assert stored(redis_server, namespace, "cw") == 6
    for task in backlog:
        task.cancel()
    close(a)


async def test_past_the_fleets_most_in_flight_one_more_at_a_time(
    redis_server: RedisServer, namespace: str
) -> None:
    """Past the most the fleet has had in flight answered, the shared admission lets one more
    go per answer come back, or per spacing (the window at most doubling per mean answer
    time): slow start for the fleet as a whole. Each process's window, cap and floor let it
    take the limit at once, and three processes opening their windows together overshot an
    in-flight cap that one process approaches a step at a time."""
    from pacekeeper.backends import _scripts

    client = redis_server.client()
    admit = client.register_script(_scripts.ADMIT)
    release = client.register_script(_scripts.RELEASE)
    key, slots = f"{namespace}:lane:{CHAT}|m", f"{namespace}:slots:{CHAT}|m"
    keys = [key, slots, f"{namespace}:clock"]

    def ask(lease: str) -> list[Any]:
        # tokens, no rpm/tpm, burst, utilisation, adaptive (fixed 0), initial 8, min 1, max
        # 512, lease, ttls, cap, floor, rank, share, waiting x3, output tokens, otpm, silence,
        # token and output bursts, no request or token windows (4 + 4 + 1), mean answer 60 s
        args: list[Any] = [0, 0, 0, 0.5, 1, 0, 8, 1, 512, lease, 15, 60, 0, 0, 0, 0.1]
        args += [1, 0, 0, 0, 0, 0, 0.5, 0.5, *([0] * 9), 60.0]
        reply: list[Any] = admit(keys=keys, args=args)
        client.hset(key, "ft", "1e12")  # the last step was just now, however slow this runs
        return reply

    def answered(lease: str, in_flight_at_send: int) -> None:
        # a success, sent at server time 0, adaptive (initial 8, min 1, max 512), no backlog
        args: list[Any] = [lease, 1, 0, in_flight_at_send, 0, 8, 1, 512, 0.7, 0.8]
        args += [0, 0, 1, 0, 0, 0, 0]
        release(keys=keys, args=args)

    start = [ask(f"a{k}") for k in range(4)]
    assert [int(r[0]) for r in start] == [1] * 4  # before any answer: the start's window
    answered("a3", in_flight_at_send=4)  # four in flight were answered: the fleet's most
    assert [int(ask(f"b{k}")[0]) for k in range(3)] == [1, 1, 0]  # back to 4, one past it
    refused = ask("b2")
    assert float(refused[1]) < 0  # held as with no free slot, asked again soon
    assert int(refused[2]) == 5 < int(refused[3])  # the limit has room: the step held it
    answered("a0", in_flight_at_send=1)  # an answer came back: one more step
    assert [int(ask(f"c{k}")[0]) for k in range(2)] == [1, 0]
    client.hset(key, "ft", "0")  # as if a spacing (1 s / 5) had passed
    assert [int(ask(f"d{k}")[0]) for k in range(2)] == [1, 0]
    client.close()


@given(
    steps=st.lists(
        st.one_of(
            st.just(("ask", 0, False)),
            st.tuples(st.just("answer"), st.integers(0, 63), st.booleans()),
        ),
        min_size=1,
        max_size=80,
    )
)
@settings(max_examples=40, deadline=None)
def test_the_fleets_way_past_its_most_in_flight_answered(
    redis_server: RedisServer, steps: list[tuple[str, int, bool]]
) -> None:
    """Whatever the order of asks and answers (successes, and refusals that raise nothing),
    with no spacing passing: an admission that takes
    the fleet past the most it had in flight answered comes after a success since the last
    such admission, and below that most the way is free (no rate here: only the window
    holds it)."""
    from pacekeeper.backends import _scripts

    namespace = f"past-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    admit = client.register_script(_scripts.ADMIT)
    release = client.register_script(_scripts.RELEASE)
    keys = [f"{namespace}:lane", f"{namespace}:slots", f"{namespace}:clock"]
    held: list[tuple[str, int]] = []  # (lease, in flight at send)
    peak, answered_since_step, stepped_before = 0, False, False
    for k, (op, pick, success) in enumerate(steps):
        if op == "answer":
            if not held:
                continue
            lease, at_send = held.pop(pick % len(held))
            args: list[Any] = [lease, 1 if success else 0, 0, at_send, 0, 32, 1, 64, 0.7, 0.8]
            release(keys=keys, args=[*args, 0, 0, 1, 0, 0, 0, 0])
            if success:
                peak, answered_since_step = max(peak, at_send), True
            continue
        args = [0, 0, 0, 0.5, 1, 0, 32, 1, 64, f"l{k}", 15, 60, 0, 0, 0, 0.1]  # a window of 32
        args += [1, 0, 0, 0, 0, 0, 0.5, 0.5, *([0] * 9), 86_400.0]
        reply: list[Any] = admit(keys=keys, args=args)
        client.hset(keys[0], "ft", "1e12")  # no spacing passes, however slow this runs
        in_flight, limit = int(reply[2]), int(reply[3])
        if int(reply[0]):
            assert in_flight == len(held) + 1
            if peak > 0 and in_flight > peak:
                assert answered_since_step or not stepped_before, (k, in_flight, peak)
                answered_since_step, stepped_before = False, True
            held.append((f"l{k}", in_flight))
        else:
            assert in_flight == len(held)
            assert in_flight >= limit or (peak > 0 and in_flight + 1 > peak), (k, peak)
    client.close()
