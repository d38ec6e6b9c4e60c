"""A token rate discovered by one process of a fleet (a 429 that says tokens ran out, with no
token limit stated) paces the fleet's shared token bucket, scaled from that process's share
of the traffic as a discovered request rate is. Real redis-server, real classification."""

from __future__ import annotations

import time

import pytest

from pacekeeper.core.classify import Verdict, classify_response

from .redis_server import RedisServer
from .test_control import close, ok, shared_gov, shared_lane, stored, until


def tokens_429() -> Verdict:
    body = b'{"error":{"message":"slow down","type":"tokens","code":"rate_limit_exceeded"}}'
    return classify_response(429, {}, body, now_wall_s=time.time())


async def test_a_token_rate_discovered_by_one_process_is_the_fleets(
    redis_server: RedisServer, namespace: str
) -> None:
    a = shared_gov(redis_server, namespace)
    b = shared_gov(redis_server, namespace)
    lane_a, lane_b = shared_lane(a), shared_lane(b)
    for _ in range(12):  # half the fleet's admissions are a's; a sees only its own answers
        permit = await lane_a.acquire(400)
        lane_a.settle(permit, ok(), now=a.clock(), max_hint_s=60, retry=False)
        (await lane_b.acquire(400)).release()
    permit = await lane_a.acquire(400)
    lane_a.settle(permit, tokens_429(), now=a.clock(), max_hint_s=60, retry=False)
    assert lane_a.request_rate.rpm is None  # the requests are not what ran out
    await until(lambda: stored(redis_server, namespace, "pt") is not None)
    shared = stored(redis_server, namespace, "pt")
    assert shared is not None
    own = 0.9 * 12 * 400 * 60  # 90% of the tokens a saw accepted within a second, per minute
    assert 1.7 * own <= shared <= 2.1 * own
    # both processes pace tokens at the fleet's rate
    await until(lambda: lane_b.tpm == pytest.approx(shared, rel=1e-3))
    await until(lambda: lane_a.tpm == pytest.approx(shared, rel=1e-3))
    close(a, b)
