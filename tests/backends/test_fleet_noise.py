"""429s that the fleet's rate does not cause (a provider's shared capacity busy) teach a
fleet nothing, as they teach one process nothing: no cut of the shared pace, no gate closed
for every process. A fleet that outruns a real limit still backs off. Three governors on one
key through a real redis-server, against the simulator (real HTTP, real classification); no
timed assertions: what is asserted is what the fleet decided, not how fast it went."""

from __future__ import annotations

import asyncio
import contextlib
import math

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pacekeeper
from pacekeeper import Governor
from pacekeeper.backends._redis import _marks_around, _sent_at_most
from pacekeeper.sim import Faults, InFlightReply, Latency, ModelLimits, Scenario, Simulator

from .redis_server import RedisServer
from .test_control import close, shared_gov, shared_lane, stored

_STATED_RPM = 3000  # 50 a second: a few hundred requests take seconds


async def _fleet_sends(
    govs: list[Governor],
    base_url: str,
    *,
    per_process: int,
    workers: int,
    tolerate_429s: bool = False,
) -> None:
    """``per_process`` requests from each governor, ``workers`` at a time (a backlog: every
    process sends as fast as the shared pacing lets it); ``tolerate_429s``: a request that
    runs out of retries on 429s is not an error."""

    async def process(gov: Governor) -> None:
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="x"), gov)
        left = [per_process]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                try:
                    await client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8
                    )
                except openai.RateLimitError:
                    if not tolerate_429s:
                        raise

        await asyncio.gather(*(worker() for _ in range(workers)))
        await client.close()

    await asyncio.gather(*(process(gov) for gov in govs))


def _busy(*, rpm: int, seed: int) -> Scenario:
    """A 1-s bucket of ``rpm`` stated in headers, and 6% of requests refused at random with
    `retry-after: 1` and no headers."""
    return Scenario(
        default=ModelLimits(rpm=rpm, burst_s=1.0),
        latency=Latency(ttft_s=0.05),
        faults=Faults(busy_429=0.06, busy_429_retry_after_s=1.0),
        seed=seed,
    )


@pytest.mark.slow
async def test_busy_429s_do_not_cut_a_fleets_pace(
    redis_server: RedisServer, namespace: str
) -> None:
    """A stated limit of 3000/min in a 1-s bucket and 6% of requests refused at random with
    `retry-after: 1` and no headers (llmock's and a busy gateway's kind): the three processes
    keep the stated pace and close no gate. On main every such 429 was the rate's in a
    fleet (its noise was never judged): each cut the shared pace 15% and closed the
    fleet's gate for a second, and three processes ran at 0.23-0.37 of one. Then about 1
    run in 8 still cut the pace or closed the gate: a busy 429 to a request that took the
    fleet's last slot was taken as a cap's or the rate's (a rule for the fleet alone), or
    the fleet's sends in the second before it were counted from this process's admission
    before a quiet spell (its own requests waiting out a hint), far more than a second's.
    Three requests at a time per process: the pace holds the fleet, not its window."""
    scenario = _busy(rpm=_STATED_RPM, seed=7)
    govs = [shared_gov(redis_server, namespace) for _ in range(3)]
    try:
        with Simulator(scenario) as sim:
            await _fleet_sends(govs, sim.base_url, per_process=100, workers=3)
            stats = sim.stats()
        busy = stats["faults_injected"].get("busy_429", 0)
        assert busy >= 6, stats  # the run met the noise it is about
        for gov in govs:
            lane = shared_lane(gov)
            assert lane.rpm_limit == _STATED_RPM
            # the pace in force is the stated one: no 429 cut it, here or through the fleet
            assert lane.rpm == _STATED_RPM, (lane, lane.request_rate)
        pace = stored(redis_server, namespace, "pr")
        assert pace is None or pace >= _STATED_RPM, pace
        assert stored(redis_server, namespace, "cd") is None  # no fleet-wide gate closed
    finally:
        close(*govs)


@pytest.mark.slow
async def test_a_fleet_that_outruns_a_real_limit_still_backs_off(
    redis_server: RedisServer, namespace: str
) -> None:
    """The same noise, and another client (not of the fleet) sending 15 a second of the
    key's 20: the fleet's 429s outgrow the noise, their headers show the budget spent, and
    the fleet's pace comes down (through the shared gate or a cut)."""
    scenario = _busy(rpm=1200, seed=3)
    govs = [shared_gov(redis_server, namespace) for _ in range(3)]
    try:
        with Simulator(scenario) as sim:
            other = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
            stop = asyncio.Event()

            async def one() -> None:
                with contextlib.suppress(openai.RateLimitError):
                    await other.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": "x"}], max_tokens=8
                    )

            async def another_client() -> None:
                # 15 sends a second whatever the answers take: one after another (each
                # awaited, then 1/15 s) made about 8, and fewer on a loaded machine, where
                # once the fleet and this client together did not outrun the key's 20.
                sending: set[asyncio.Task[None]] = set()
                while not stop.is_set():
                    send = asyncio.create_task(one())
                    sending.add(send)
                    send.add_done_callback(sending.discard)
                    await asyncio.sleep(1 / 15)
                await asyncio.gather(*sending)

            task = asyncio.create_task(another_client())
            await _fleet_sends(govs, sim.base_url, per_process=40, workers=4, tolerate_429s=True)
            stop.set()
            await task
            await other.close()
        cut = [shared_lane(gov).rpm for gov in govs]
        gate = stored(redis_server, namespace, "cd")
        pace = stored(redis_server, namespace, "pr")
        assert gate is not None or (pace is not None and pace < 1200), (cut, gate, pace)
    finally:
        close(*govs)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="issue #10: flaky under heavy load. Traced: (1) a test taken where the cap held "
    "(the fleet's count ahead of the server's by releases in transit) erased the confirmed cap "
    "for all: fixed (a confirmed cap stands; side by side beside a burner main failed 4 of 8, "
    "this 1 of 8); (2) left: under heavier load the count runs 2-3 ahead for seconds: the first "
    "test taken before any confirmation forgets the cap for all, or a cap is learned at 10 for "
    "8 and successes at inflated counts make the refusals at its last slot look like noise "
    "(10-57 429s in about 1 run of 5 then; 1 of 10 under -n 2)",
)
async def test_a_fleet_under_a_bare_in_flight_cap_does_not_take_its_429s_for_noise(
    redis_server: RedisServer, namespace: str
) -> None:
    """A high stated rate (100,000/min on every answer) and a cap of 8 in flight answered
    with bare 429s (`too_many_requests`, `retry-after: 2`, no headers): nothing about the
    rate explains them, but they come to the requests that take the fleet's last slot, where
    a cap refuses. The fleet's count in flight runs ahead of the server's (releases on their
    way to the store): taken as noise there, they neither lowered the provisional cap they
    taught nor kept it from being refuted, and three processes drew 8-24 429s on the bench's
    `inflight` seed 1 where one process draws 1. Then, with every 429 to the fleet's last
    slot taken as not noise, 12-41 429s in about 1 run of 4: the fleet's window grew on
    every answer while its steps past its most in flight held requests back (answered as
    "no slot"), and outgrew what was in flight, so no refusal took its last slot. Now a
    step past the fleet's most in flight answered, or the last slot under a learned cap,
    is the permit's last slot (ADMIT's edge), those holds are not "no slot", and ADMIT
    frees the caller's releases on their way first: 1-3 429s, as one process."""
    cap = 8
    scenario = Scenario(
        default=ModelLimits(rpm=100_000, max_in_flight=cap),
        latency=Latency(ttft_s=0.3),
        in_flight_reply=InFlightReply(
            message="Too many concurrent requests.",
            code="too_many_requests",
            retry_after_s=2.0,
            rate_limit_headers=False,
        ),
        seed=1,
    )
    govs = [shared_gov(redis_server, namespace) for _ in range(3)]
    try:
        with Simulator(scenario) as sim:
            await _fleet_sends(govs, sim.base_url, per_process=60, workers=8)
            stats = sim.stats()
        refused = stats["rejected_in_flight"]
        print(f"\n{refused} 429s of the cap of {cap} in {stats['requests_received']} requests")
        assert stats["peak_in_flight"] <= cap
        assert refused <= 6, stats
    finally:
        close(*govs)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.0, 0.5),  # time since the fleet's previous admission
            st.booleans(),  # ours
            st.floats(0.0, 0.3),  # how late our reply was read
            st.integers(1, 2000),  # its tokens
        ),
        min_size=1,
        max_size=80,
    ),
    st.floats(0.0, 0.05),  # from the reply read to the permit's send time
)
def test_what_a_fleet_sent_before_a_429_is_never_counted_low(
    admissions: list[tuple[float, bool, float, int]], granted_after_s: float
) -> None:
    """The fleet's admissions in the second before one of ours, as the store counted them
    (on its clock, up to ours, ours included), are never more than what our marks say: a
    fleet that outran the stated rate is never read as one that kept to it (its 429 would be
    taken as noise)."""
    server_t, tokens, read_t = 0.0, 0.0, -math.inf
    fleet: list[tuple[float, int]] = []  # (server time, tokens) of every admission
    marks: list[tuple[float, int, float, int]] = []
    ours: list[tuple[float, int]] = []  # (sent at, the store's count) of each of ours
    for count, (gap_s, mine, late_s, cost) in enumerate(admissions, start=1):
        server_t += gap_s
        tokens += cost
        fleet.append((server_t, cost))
        if mine:
            read_t = max(read_t, server_t + late_s)  # our replies are read in order
            # the store's count in the second up to it (ADMIT's, by time)
            in_second = sum(1 for t, _ in fleet if t >= server_t - 1.0)
            marks.append((read_t, count, tokens, in_second))
            ours.append((read_t + granted_after_s, count))
    for k, (sent_at, admitted) in enumerate(ours):
        # the marks this process holds when the 429 to it is judged (later ones too)
        requests, charged = _sent_at_most(marks, sent_at)
        inside = [cost for t, cost in fleet[:admitted] if t >= sent_at - 1.0]
        assert requests >= len(inside), (k, requests, inside)
        assert charged >= sum(inside), (k, charged, inside)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0.0, 0.4), max_size=40),  # gaps between our marks
    st.floats(0.0, 8.0),  # the request's send time
)
def test_the_marks_around_a_second_are_the_ones_in_and_before_it(
    gaps: list[float], sent_at: float
) -> None:
    """:func:`_marks_around` (the lower and the upper bound on what a fleet sent both read
    it) finds, of marks oldest first, the last before the second up to ``sent_at`` and the
    first and last inside it."""
    marks: list[tuple[float, int, float, int]] = []
    t = 0.0
    for n, gap in enumerate(gaps, start=1):
        t += gap
        marks.append((t, 3 * n, 10.0 * n, n))
    before, first, last = _marks_around(marks, sent_at)
    earlier = [m for m in marks if m[0] < sent_at - 1.0]
    inside = [m for m in marks if sent_at - 1.0 <= m[0] <= sent_at]
    assert before == (earlier[-1] if earlier else None)
    assert first == (inside[0] if inside else None)
    assert last == (inside[-1] if inside else None)
