"""Rate-limit header modes: openai, anthropic, none; and their value formats."""

from __future__ import annotations

import calendar
import json
import re
import time
from pathlib import Path

import httpx2
import pytest

from pacekeeper.sim import Faults, ModelLimits, Scenario
from pacekeeper.sim._headers import go_duration, rejection_response, rfc3339
from pacekeeper.sim._limits import ModelLimiter

from .helpers import StartSim, chat

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "provider-429s.json"
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
OPENAI_HEADERS = {
    f"x-ratelimit-{what}-{bucket}"
    for what in ("limit", "remaining", "reset")
    for bucket in ("requests", "tokens")
}
ANTHROPIC_HEADERS = {
    f"anthropic-ratelimit-{bucket}-{what}"
    for what in ("limit", "remaining", "reset")
    for bucket in ("requests", "tokens", "input-tokens", "output-tokens")
}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (0.12, "120ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (11.7, "11.7s"),
        (59.999, "59.999s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (61.25, "1m1.25s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_rfc3339_rounds_up_to_whole_seconds() -> None:
    assert rfc3339(0.2) == "1970-01-01T00:00:01Z"
    assert rfc3339(1_795_000_000) == "2026-11-18T11:06:40Z"


def limited(mode: str, **kwargs: object) -> Scenario:
    return Scenario(
        default=ModelLimits(rpm=60, tpm=6000),  # capacity 1 request, 100 tokens
        rate_limit_headers=mode,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def test_openai_headers_on_every_response(start_sim: StartSim) -> None:
    sim = start_sim(limited("openai"))
    failing = start_sim(limited("openai", faults=Faults(http_500=1.0)))
    with httpx2.Client(base_url=sim.base_url) as http:
        ok = http.post("/chat/completions", json=chat(max_tokens=10))
        limited_429 = http.post("/chat/completions", json=chat(max_tokens=10))
    with httpx2.Client(base_url=failing.base_url) as http:
        error_500 = http.post("/chat/completions", json=chat(max_tokens=10))
    assert (ok.status_code, limited_429.status_code, error_500.status_code) == (200, 429, 500)
    for response in (ok, limited_429, error_500):
        assert set(response.headers) >= OPENAI_HEADERS
        assert response.headers["x-ratelimit-limit-requests"] == "60"
        assert response.headers["x-ratelimit-limit-tokens"] == "6000"
        assert GO_DURATION.match(response.headers["x-ratelimit-reset-requests"])
        assert GO_DURATION.match(response.headers["x-ratelimit-reset-tokens"])
        assert not any(h.startswith("anthropic-") for h in response.headers)
    # One request spent the whole 1-request bucket: 0 left, full again in 1 s.
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    assert ok.headers["x-ratelimit-reset-requests"] == "1s"
    # 3 + 4 + ceil(11 / 4) = 10 prompt tokens + 10 max_tokens = 20 of the 100-token bucket.
    assert ok.headers["x-ratelimit-remaining-tokens"] == "4800"
    assert ok.headers["x-ratelimit-reset-tokens"] == "200ms"
    assert "retry-after" not in ok.headers


def test_openai_429_matches_the_providers_shape(start_sim: StartSim) -> None:
    sim = start_sim(limited("openai"))
    with httpx2.Client(base_url=sim.base_url) as http:
        http.post("/chat/completions", json=chat(max_tokens=10))
        response = http.post("/chat/completions", json=chat(max_tokens=10))
    assert response.status_code == 429
    wait_ms = int(response.headers["retry-after-ms"])
    assert 900 <= wait_ms <= 1000
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "requests"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["param"] is None
    assert re.fullmatch(
        r"Rate limit reached for gpt-4o-mini on requests per min \(RPM\): Limit 60, Used 60, "
        r"Requested 1\. Please try again in (\d+ms|1s)\.",
        body["error"]["message"],
    )
    # The same header names and body keys as the real 429 recorded in tests/fixtures.
    recorded = next(
        r for r in json.loads(FIXTURES.read_text())["responses"] if r["name"] == "openai_tpm_429"
    )
    assert set(recorded["headers"]) <= set(response.headers)
    assert set(recorded["body"]["error"]) == set(body["error"])


def test_anthropic_mode(start_sim: StartSim) -> None:
    sim = start_sim(limited("anthropic"))
    with httpx2.Client(base_url=sim.base_url) as http:
        ok = http.post("/chat/completions", json=chat(max_tokens=10))
        response = http.post("/chat/completions", json=chat(max_tokens=10))
    now = time.time()
    assert (ok.status_code, response.status_code) == (200, 429)
    for r in (ok, response):
        assert set(r.headers) >= ANTHROPIC_HEADERS
        assert not any(h.startswith("x-ratelimit-") for h in r.headers)
        assert r.headers["anthropic-ratelimit-requests-limit"] == "60"
        assert r.headers["anthropic-ratelimit-tokens-limit"] == "6000"
        assert r.headers["anthropic-ratelimit-input-tokens-limit"] == "6000"
        for bucket in ("requests", "tokens", "input-tokens", "output-tokens"):
            reset = r.headers[f"anthropic-ratelimit-{bucket}-reset"]
            assert RFC3339.match(reset)
            reset_at = calendar.timegm(time.strptime(reset, "%Y-%m-%dT%H:%M:%SZ"))
            assert now - 1 <= reset_at <= now + 2
    assert "retry-after-ms" not in response.headers
    assert response.headers["retry-after"] == "1"
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "This request would exceed the rate limit for your organization "
            "of 60 requests per minute.",
        },
    }


def test_none_mode_is_bare(start_sim: StartSim) -> None:
    sim = start_sim(limited("none"))
    with httpx2.Client(base_url=sim.base_url) as http:
        ok = http.post("/chat/completions", json=chat(max_tokens=10))
        response = http.post("/chat/completions", json=chat(max_tokens=10))
    assert (ok.status_code, response.status_code) == (200, 429)
    for r in (ok, response):
        assert not any(
            h.startswith(("x-ratelimit-", "anthropic-ratelimit-", "retry-after")) for h in r.headers
        )
    assert response.text == "Too Many Requests"
    assert response.headers["content-type"].startswith("text/plain")


def test_unlimited_models_get_no_rate_limit_headers(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(models={"limited": ModelLimits(rpm=60)}))
    with httpx2.Client(base_url=sim.base_url) as http:
        free = http.post("/chat/completions", json=chat(model="free"))
        capped = http.post("/chat/completions", json=chat(model="limited"))
    assert not any(h.startswith("x-ratelimit-") for h in free.headers)
    assert "x-ratelimit-limit-requests" in capped.headers
    assert "x-ratelimit-limit-tokens" not in capped.headers  # no tpm configured


def test_large_numbers_are_printed_whole() -> None:
    limiter = ModelLimiter("big", ModelLimits(tpm=60_000_000), now=0.0)  # 1,000,000 capacity
    assert limiter.admit(900_000, 0.0) is None
    rejection = limiter.admit(234_567, 0.0)
    assert rejection is not None
    headers, body = rejection_response("openai", limiter, rejection, now=0.0, wall=0.0)
    message = json.loads(body)["error"]["message"]
    assert "Limit 60000000, Used 54000000, Requested 234567. Please try again in 135ms." in message
    assert (b"retry-after-ms", b"135") in headers  # 134.567 ms, rounded up
    _, anthropic = rejection_response("anthropic", limiter, rejection, now=0.0, wall=0.0)
    assert "60,000,000 tokens per minute" in json.loads(anthropic)["error"]["message"]
