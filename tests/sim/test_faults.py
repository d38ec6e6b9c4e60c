"""Fault injection: each kind, and its reproducibility from the seed."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx2
import openai
import pytest

from pacekeeper.sim import Faults, ModelLimits, Scenario, Simulator

from .helpers import StartSim, chat

OUTCOME_ERRORS = (httpx2.RemoteProtocolError, httpx2.ReadError)


def outcome(http: httpx2.Client, body: dict[str, Any], **headers: str) -> str:
    """What a client sees: the status, or "drop", or "malformed" (a 200 that is not JSON)."""
    try:
        response = http.post("/chat/completions", json=body, headers=headers)
    except OUTCOME_ERRORS:
        return "drop"
    if response.status_code == 200:
        try:
            response.json()
        except ValueError:
            return "malformed"
    return str(response.status_code)


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        ("http_500", 500, "server_error"),
        ("http_502", 502, "server_error"),
        ("http_503", 503, "server_error"),
        ("insufficient_quota", 429, "insufficient_quota"),
        ("invalid_request", 400, "invalid_request_error"),
    ],
)
def test_error_status_faults(start_sim: StartSim, fault: str, status: int, error_type: str) -> None:
    rates: dict[str, Any] = {fault: 1.0}
    faults = Faults(**rates)
    sim = start_sim(Scenario(faults=faults, default=ModelLimits(rpm=6000)))
    with httpx2.Client(base_url=sim.base_url) as http:
        response = http.post("/chat/completions", json=chat())
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type
    assert "retry-after" not in response.headers
    assert "x-ratelimit-limit-requests" in response.headers  # openai mode: on every response
    if fault == "insufficient_quota":
        assert error["code"] == "insufficient_quota"
    assert sim.stats()["faults_injected"] == {fault: 1}


def test_529_has_anthropics_overloaded_body(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(http_529=1.0)))
    with httpx2.Client(base_url=sim.base_url) as http:
        response = http.post("/chat/completions", json=chat())
    assert response.status_code == 529
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


def test_sdk_sees_the_faults_as_api_errors(start_sim: StartSim) -> None:
    quota = start_sim(Scenario(faults=Faults(insufficient_quota=1.0)))
    drop = start_sim(Scenario(faults=Faults(drop=1.0)))
    with (
        openai.OpenAI(base_url=quota.base_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as info,
    ):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "insufficient_quota"
    with (
        openai.OpenAI(base_url=drop.base_url, api_key="x", max_retries=0) as client,
        pytest.raises(openai.APIConnectionError),
    ):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_drop_cuts_the_body_short(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(drop=1.0)))
    with (
        httpx2.Client(base_url=sim.base_url) as http,
        http.stream("POST", "/chat/completions", json=chat()) as response,
    ):
        assert response.status_code == 200
        declared = int(response.headers["content-length"])
        parts: list[bytes] = []
        with pytest.raises(OUTCOME_ERRORS):
            parts.extend(response.iter_raw())  # keeps what arrived before the error
    assert 0 < len(b"".join(parts)) < declared
    with (
        httpx2.Client(base_url=sim.base_url) as http,
        http.stream("POST", "/chat/completions", json=chat(stream=True)) as stream,
        pytest.raises(OUTCOME_ERRORS),
    ):
        for _ in stream.iter_lines():
            pass
    # The server sees the disconnect a moment after the client sees the error: on a loaded
    # machine the dropped request may still count as in flight for a few ms.
    deadline = time.monotonic() + 2.0
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = sim.stats()
    assert stats["faults_injected"] == {"drop": 2}
    assert stats["by_status"] == {}  # no complete answer was given
    assert stats["in_flight"] == 0


def test_malformed_is_a_200_that_does_not_parse(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(malformed=1.0)))
    with httpx2.Client(base_url=sim.base_url) as http:
        plain = http.post("/chat/completions", json=chat())
        streamed = http.post("/chat/completions", json=chat(stream=True))
        embedded = http.post("/embeddings", json={"model": "e", "input": "x"})
    for response in (plain, embedded):
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(response.text)
    assert streamed.status_code == 200
    data = streamed.text.split("\n")[0].removeprefix("data: ")
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)


def test_hang_until_the_client_gives_up(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(hang=1.0)))
    with (
        httpx2.Client(base_url=sim.base_url, timeout=0.3) as http,
        pytest.raises(httpx2.ReadTimeout),
    ):
        http.post("/chat/completions", json=chat())
    deadline = time.monotonic() + 2
    while sim.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = sim.stats()
    assert stats["in_flight"] == 0  # the server noticed the client leaving
    assert stats["faults_injected"] == {"hang": 1}


def test_hang_ends_with_a_504_after_hang_s(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(hang=1.0, hang_s=0.3)))
    with httpx2.Client(base_url=sim.base_url) as http:
        start = time.monotonic()
        response = http.post("/chat/completions", json=chat())
        elapsed = time.monotonic() - start
    assert response.status_code == 504
    assert 0.28 <= elapsed < 1.0


def test_stop_is_prompt_with_hung_requests_open() -> None:
    sim = Simulator(Scenario(faults=Faults(hang=1.0))).start()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with httpx2.Client(base_url=sim.base_url, timeout=30) as http:
                http.post("/chat/completions", json=chat())
        except httpx2.HTTPError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while sim.stats()["in_flight"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    sim.stop()
    stop_s = time.monotonic() - start
    for thread in threads:
        thread.join(5)
    assert stop_s < 2.0
    assert len(errors) == 3  # each hung client saw its connection close


# --- determinism ------------------------------------------------------------------------------

MIXED = Faults(
    http_500=0.08,
    http_502=0.08,
    http_503=0.08,
    http_529=0.08,
    drop=0.08,
    hang=0.05,
    malformed=0.08,
    insufficient_quota=0.05,
    invalid_request=0.05,
    hang_s=0.05,
)


def run_outcomes(sim: Simulator, bodies: list[dict[str, Any]], **headers: str) -> list[str]:
    with httpx2.Client(base_url=sim.base_url) as http:
        return [outcome(http, body, **headers) for body in bodies]


def test_same_seed_same_fates_different_seed_different_fates(start_sim: StartSim) -> None:
    bodies = [chat(f"question {i}") for i in range(40)] * 2  # each request twice
    first = run_outcomes(start_sim(Scenario(faults=MIXED, seed=11)), bodies)
    second = run_outcomes(start_sim(Scenario(faults=MIXED, seed=11)), bodies)
    other = run_outcomes(start_sim(Scenario(faults=MIXED, seed=12)), bodies)
    assert first == second
    assert first != other
    assert len(set(first)) >= 5  # a real mix of fates
    assert "200" in first


def test_fate_follows_the_attempt_number_of_each_identity(start_sim: StartSim) -> None:
    scenario = Scenario(faults=Faults(http_500=0.5), seed=5)
    same = run_outcomes(start_sim(scenario), [chat("again")] * 24)
    assert set(same) == {"200", "500"}  # retries of one request meet different fates
    # The identity is x-client-request-id when sent: different bodies, same id, same fates.
    by_id = run_outcomes(
        start_sim(scenario), [chat(f"body {i}") for i in range(24)], **{"x-client-request-id": "r1"}
    )
    by_id_again = run_outcomes(
        start_sim(scenario), [chat("x")] * 24, **{"x-client-request-id": "r1"}
    )
    assert by_id == by_id_again
    assert by_id != same


def test_rate_limited_arrivals_do_not_use_up_attempts(start_sim: StartSim) -> None:
    faults = Faults(http_500=0.5)
    free = run_outcomes(start_sim(Scenario(faults=faults, seed=9)), [chat("r")] * 3)
    limited = start_sim(Scenario(faults=faults, seed=9, default=ModelLimits(rpm=120)))  # cap 2
    with httpx2.Client(base_url=limited.base_url) as http:
        seen = [outcome(http, chat("r")) for _ in range(3)]
        time.sleep(0.55)
        seen.append(outcome(http, chat("r")))
    assert seen[2] == "429"
    assert [seen[0], seen[1], seen[3]] == free


def test_permanent_faults_stay_with_the_request(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(insufficient_quota=0.3, invalid_request=0.3)))
    with httpx2.Client(base_url=sim.base_url) as http:
        fates = [[outcome(http, chat(f"q{i}")) for _ in range(3)] for i in range(20)]
    assert all(len(set(f)) == 1 for f in fates)
    assert {f[0] for f in fates} == {"200", "400", "429"}


def test_reset_restarts_attempt_numbering(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(http_500=0.5), seed=2))
    first = run_outcomes(sim, [chat("same")] * 10)
    sim.reset_stats()
    assert run_outcomes(sim, [chat("same")] * 10) == first


def test_faults_and_lifecycle_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    scenario = Scenario(faults=Faults(drop=0.3, hang=0.2, malformed=0.2, http_500=0.2, hang_s=0.05))
    with Simulator(scenario) as sim, httpx2.Client(base_url=sim.base_url, timeout=2) as http:
        for i in range(20):
            outcome(http, chat(f"q{i}", stream=i % 2 == 0))
    assert [r for r in caplog.records if r.name.startswith("uvicorn")] == []


@pytest.mark.parametrize(
    ("retry_after_s", "with_headers"), [(1.0, False), (2.0, True), (None, False)]
)
def test_busy_429_looks_like_a_rate_limit_but_counts_as_a_fault(
    start_sim: StartSim, retry_after_s: float | None, with_headers: bool
) -> None:
    faults = Faults(
        busy_429=1.0, busy_429_retry_after_s=retry_after_s, busy_429_headers=with_headers
    )
    sim = start_sim(Scenario(faults=faults, default=ModelLimits(rpm=6000)))
    with httpx2.Client(base_url=sim.base_url) as http:
        response = http.post("/chat/completions", json=chat())
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"  # as a real limit's
    expected = None if retry_after_s is None else str(int(retry_after_s))
    assert response.headers.get("retry-after") == expected
    remaining = response.headers.get("x-ratelimit-remaining-requests")
    assert (remaining is not None) == with_headers
    if remaining is not None:
        assert int(remaining) > 5000  # the client's budget had room: not its rate
    stats = sim.stats()
    assert stats["faults_injected"] == {"busy_429": 1}
    assert stats["rejected_rate_limited"] == 0


def test_busy_429_speaks_each_dialect(start_sim: StartSim) -> None:
    gemini = start_sim(Scenario(faults=Faults(busy_429=1.0), rate_limit_headers="gemini"))
    bare = start_sim(Scenario(faults=Faults(busy_429=1.0), rate_limit_headers="none"))
    with httpx2.Client(base_url=gemini.base_url) as http:
        body = http.post("/chat/completions", json=chat()).json()
    assert body[0]["error"]["status"] == "RESOURCE_EXHAUSTED"
    with httpx2.Client(base_url=bare.base_url) as http:
        response = http.post("/chat/completions", json=chat())
    assert (response.status_code, response.text) == (429, "Too Many Requests")
