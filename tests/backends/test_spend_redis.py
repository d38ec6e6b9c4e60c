"""The spend cap shared through a real redis-server: several governors and several processes
count against one cap, atomically. No mocks."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacekeeper import Governor, Limits, Price, SpendCap, SpendCapReached
from pacekeeper.backends import RedisBackend
from pacekeeper.core.classify import OutcomeKind, classify_response, verdict_for_failure
from pacekeeper.core.cost import SpendRefusal
from pacekeeper.core.tokens import TokenEstimate

from .redis_server import RedisServer

WORKER = Path(__file__).with_name("spend_worker.py")
PRICE = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=10.0)
OK = classify_response(200, {}, None, now_wall_s=time.time())
WORST_USD = (1000 * 1.0 + 1000 * 10.0) / 1e6  # 1000 prompt tokens, max_tokens 1000


def shared(server: RedisServer, namespace: str, cap: SpendCap) -> Governor:
    return Governor(
        limits=Limits(concurrency=8),
        backend=RedisBackend(server.url, namespace=namespace),
        prices=lambda model: PRICE,
        budget=cap,
    )


def spend_of(server: RedisServer, namespace: str) -> tuple[float, float]:
    client = server.client()
    try:
        spent, reserved = client.hmget(f"{namespace}:spend", ["spent", "reserved"])
    finally:
        client.close()
    return float(spent or 0), float(reserved or 0)


class Watch:
    """Reads spent + reserved from Redis while the governors work: the highest seen."""

    def __init__(self, server: RedisServer, namespace: str) -> None:
        self.highest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server, namespace))

    def _run(self, server: RedisServer, namespace: str) -> None:
        while not self._stop.is_set():
            spent, reserved = spend_of(server, namespace)
            self.highest = max(self.highest, spent + reserved)
            time.sleep(0.001)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def estimate() -> TokenEstimate:
    return TokenEstimate(prompt_tokens=1000, max_completion_tokens=1000, method="exact")


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    answers=st.lists(st.integers(0, 1000), min_size=4, max_size=30),
    cap_usd=st.floats(0.005, 0.08),
)
def test_governors_sharing_a_cap_never_pass_it(
    redis_server: RedisServer, answers: list[int], cap_usd: float
) -> None:
    import uuid

    namespace = f"spend-{uuid.uuid4().hex[:8]}"
    cap = SpendCap(usd=cap_usd, completion_quantile=1.0)
    govs = [shared(redis_server, namespace, cap) for _ in range(3)]

    def one(gov: Governor, answer: int) -> None:
        call = gov.call(route="/v1/chat/completions", model="m", estimate=estimate())
        try:
            permit = call.admit_sync()
        except SpendCapReached:
            return
        call.settle(permit, OK, prompt_tokens=1000, completion_tokens=answer)

    try:
        with Watch(redis_server, namespace) as watch:
            threads = [
                threading.Thread(target=one, args=(govs[n % 3], a)) for n, a in enumerate(answers)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        spent, reserved = spend_of(redis_server, namespace)
        assert reserved == 0
        assert spent <= cap_usd + 1e-9
        assert watch.highest <= cap_usd + 1e-9
    finally:
        for gov in govs:
            assert isinstance(gov.backend, RedisBackend)
            gov.backend.close()


def test_processes_sharing_a_cap_stop_within_one_request_below_it(
    redis_server: RedisServer, namespace: str
) -> None:
    cap_usd = 0.3  # about 40 requests of the 3 x 60 the processes would send
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), redis_server.url, namespace, str(cap_usd), "60", str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    with Watch(redis_server, namespace) as watch:
        outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    spent, reserved = spend_of(redis_server, namespace)
    assert reserved == 0
    assert cap_usd - WORST_USD <= spent <= cap_usd + 1e-9
    assert watch.highest <= cap_usd + 1e-9
    assert sum(o["refused"] for o in outputs) > 0
    assert sum(o["sent"] for o in outputs) < 180


async def test_a_failed_attempt_gives_its_hold_back_to_the_fleet(
    redis_server: RedisServer, namespace: str
) -> None:
    gov = shared(redis_server, namespace, SpendCap(usd=1.0))
    try:
        call = gov.call(route="/v1/chat/completions", model="m", estimate=estimate())
        permit = await call.admit()
        spent, reserved = spend_of(redis_server, namespace)
        assert spent == 0.0
        assert reserved == pytest.approx(WORST_USD)
        call.settle(permit, verdict_for_failure(OutcomeKind.TIMEOUT, "timed out"))
        assert spend_of(redis_server, namespace) == (0.0, 0.0)
    finally:
        assert isinstance(gov.backend, RedisBackend)
        gov.backend.close()


def test_a_dead_processs_holds_come_back_when_their_lease_runs_out(
    redis_server: RedisServer, namespace: str
) -> None:
    from pacekeeper.backends._spend import RedisSpendLedger

    client = redis_server.client()
    try:
        dead = RedisSpendLedger(client, SpendCap(usd=1.0), namespace=namespace, hold_lease_s=0.3)
        held = dead.reserve(hold_usd=0.6, need_usd=0.9)
        assert not isinstance(held, SpendRefusal)
        alive = RedisSpendLedger(client, SpendCap(usd=1.0), namespace=namespace)
        refused = alive.reserve(hold_usd=0.5, need_usd=0.5)
        assert isinstance(refused, SpendRefusal)
        assert refused.wait  # the dead process's hold is still leased
        time.sleep(0.4)
        assert alive.totals().reserved_usd == 0  # its lease ran out: the room is back
        assert not isinstance(alive.reserve(hold_usd=0.5, need_usd=0.5), SpendRefusal)
    finally:
        client.close()
