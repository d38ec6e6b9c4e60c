"""GET /_stats and POST /_reset: what the simulator saw."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2

from pacekeeper.sim import Faults, Latency, ModelLimits, Scenario

from .helpers import StartSim, chat


def test_stats_fields_and_http_equals_direct(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(models={"tiny": ModelLimits(rpm=60)}))
    with httpx2.Client(base_url=sim.base_url) as http:
        http.post("/chat/completions", json=chat(model="tiny", max_tokens=10))
        http.post("/chat/completions", json=chat("other", model="tiny", max_tokens=10))  # 429
        http.post("/embeddings", json={"model": "e", "input": "abcd"})
        over_http = http.get(sim.url + "/_stats").json()
    direct = sim.stats()
    direct.pop("uptime_s")
    over_http.pop("uptime_s")
    assert direct == over_http
    assert direct["requests_received"] == 3
    assert direct["by_status"] == {"200": 2, "429": 1}
    assert direct["accepted"] == 2
    assert direct["rejected_rate_limited"] == 1
    assert direct["tokens_charged"] == (3 + 4 + 3 + 10) + 1  # chat + embedding
    assert direct["per_model"] == {
        "tiny": {"received": 2, "accepted": 1, "by_status": {"200": 1, "429": 1}},
        "e": {"received": 1, "accepted": 1, "by_status": {"200": 1}},
    }
    assert direct["distinct_request_ids"] == 3
    assert direct["peak_in_flight"] == 1
    assert direct["in_flight"] == 0
    assert abs(direct["started_at"] - time.time()) < 60


def test_duplicates_are_repeated_successful_work(start_sim: StartSim) -> None:
    sim = start_sim(Scenario())
    failing = start_sim(Scenario(faults=Faults(http_500=1.0)))
    with httpx2.Client(base_url=sim.base_url) as http:
        for _ in range(3):
            http.post("/chat/completions", json=chat("dup"))
        http.post("/chat/completions", json=chat("once"))
        for i in range(2):  # different bodies, one client id: one identity
            http.post(
                "/chat/completions",
                json=chat(f"retry {i}"),
                headers={"x-client-request-id": "job-7"},
            )
    with httpx2.Client(base_url=failing.base_url) as http:
        for _ in range(3):
            http.post("/chat/completions", json=chat("dup"))
    stats = sim.stats()
    assert sorted(stats["duplicates"].values()) == [2, 3]
    assert stats["duplicates"]["job-7"] == 2
    assert stats["received_more_than_once"] == 2
    assert stats["distinct_request_ids"] == 3
    # Received three times but never answered successfully: retried, not duplicated.
    failed = failing.stats()
    assert failed["received_more_than_once"] == 1
    assert failed["duplicates"] == {}


def test_non_retryable_repeats(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(insufficient_quota=1.0), models={}))
    with httpx2.Client(base_url=sim.base_url) as http:
        for _ in range(3):
            http.post("/chat/completions", content=b"{broken")  # 400, sent three times
        http.post("/chat/completions", json=chat("quota"))  # 429 insufficient_quota
        http.post("/chat/completions", json=chat("quota"))  # ... and retried anyway
        http.post(
            "/chat/completions",
            json={"model": "m"},
            headers={"x-client-request-id": "bad-1"},
        )  # 400 missing messages, not retried
    stats = sim.stats()
    repeats = stats["non_retryable_repeats"]
    assert sorted(repeats.values()) == [1, 2]
    assert "bad-1" not in repeats
    assert stats["by_status"] == {"400": 4, "429": 2}
    assert stats["duplicates"] == {}


def test_reset_clears_stats_but_not_limits(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=ModelLimits(rpm=60)))
    with httpx2.Client(base_url=sim.base_url) as http:
        assert http.post("/chat/completions", json=chat()).status_code == 200
        reset = http.post(sim.url + "/_reset")
        assert reset.json() == {"reset": True}
        assert http.post("/chat/completions", json=chat()).status_code == 429  # bucket still empty
    stats = sim.stats()
    assert stats["requests_received"] == 1
    assert stats["by_status"] == {"429": 1}


def test_api_keys_are_never_kept(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(require_api_key=True))
    secret = "sk-very-secret-0123456789"
    with httpx2.Client(base_url=sim.base_url) as http:
        http.post("/chat/completions", json=chat(), headers={"authorization": f"Bearer {secret}"})
        http.post("/chat/completions", json=chat())
    stats = sim.stats()
    assert secret not in json.dumps(stats)
    assert stats["by_status"] == {"200": 1, "401": 1}


def test_restart_starts_the_limits_and_windows_over(start_sim: StartSim) -> None:
    # One request per fixed 10-s window: spent, then a restart gives a full window that ends
    # 10 s after the restart (as on a server that just started), and clears the stats.
    sim = start_sim(Scenario(default=ModelLimits(rpm=6, window_s=10.0)))
    with httpx2.Client(base_url=sim.base_url) as http:
        assert http.post("/chat/completions", json=chat()).status_code == 200
        assert http.post("/chat/completions", json=chat()).status_code == 429
        time.sleep(1.0)
        before = time.time()
        restart = http.post(sim.url + "/_restart").json()
        assert restart["restarted"] is True
        assert before - 0.5 <= restart["started_at"] <= time.time() + 0.5
        answer = http.post("/chat/completions", json=chat())
        assert answer.status_code == 200
        reset_s = float(answer.headers["x-ratelimit-reset-requests"].removesuffix("s"))
        assert 9.0 < reset_s <= 10.0  # the window began at the restart, not a second earlier
    stats = sim.stats()
    assert stats["requests_received"] == 1
    assert stats["started_at"] == restart["started_at"]


def test_restart_is_refused_while_a_request_is_in_flight(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=1.0)))
    with httpx2.Client(base_url=sim.base_url) as http, ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http.post, "/chat/completions", json=chat())
        deadline = time.monotonic() + 5
        while sim.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = http.post(sim.url + "/_restart")
        assert refused.status_code == 409
        assert "in flight" in refused.json()["error"]["message"]
        assert slow.result().status_code == 200
        assert http.post(sim.url + "/_restart").status_code == 200
