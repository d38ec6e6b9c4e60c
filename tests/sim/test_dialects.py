"""Azure OpenAI routes, the Responses API, daily limits and cached prompt tokens, over loopback."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from pacekeeper.sim import ModelLimits, Scenario, ScenarioError, Simulator
from pacekeeper.sim._limits import ModelLimiter

from .helpers import StartSim, chat, sse_events

API_VERSION = "2024-10-21"

# --- Azure OpenAI -----------------------------------------------------------------------------


def azure(sim: Simulator, deployment: str, op: str, body: dict[str, Any], **kw: Any) -> Any:
    params = kw.pop("params", {"api-version": API_VERSION})
    headers = kw.pop("headers", {"api-key": "azure-key"})
    return httpx2.post(
        f"{sim.url}/openai/deployments/{deployment}/{op}", json=body, params=params, headers=headers
    )


def test_azure_sdk_chat_on_a_deployment(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(require_api_key=True, rate_limit_headers="azure"))
    client = openai.AzureOpenAI(
        azure_endpoint=sim.url, api_key="azure-key", api_version=API_VERSION, max_retries=0
    )
    with client:
        reply = client.chat.completions.create(
            model="my-gpt4o", messages=[{"role": "user", "content": "Hi"}]
        )
    # The deployment is the model (the body's model, if any, does not matter).
    assert reply.model == "my-gpt4o"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 3 + 4 + 1


def test_azure_embeddings_and_completions_under_a_deployment(plain_sim: Simulator) -> None:
    emb = azure(plain_sim, "emb", "embeddings", {"input": ["a", "b"]})
    assert emb.status_code == 200
    assert len(emb.json()["data"]) == 2
    comp = azure(plain_sim, "instruct", "completions", {"prompt": "Say hi", "max_tokens": 5})
    assert comp.status_code == 200
    assert comp.json()["model"] == "instruct"


def test_azure_needs_api_version_and_its_key(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(require_api_key=True))
    missing = azure(sim, "d", "chat/completions", chat(), params={})
    assert missing.status_code == 400
    assert "api-version" in missing.json()["error"]["message"]
    unauthorized = azure(sim, "d", "chat/completions", chat(), headers={"x-api-key": "k"})
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "401"
    bearer = azure(sim, "d", "chat/completions", chat(), headers={"authorization": "Bearer t"})
    assert bearer.status_code == 200  # an Entra ID token
    unknown = azure(sim, "d", "images/generations", chat())
    assert unknown.status_code == 404


def test_azure_limits_are_per_deployment(start_sim: StartSim) -> None:
    scenario = Scenario(
        models={"small": ModelLimits(rpm=60, window_s=10)}, rate_limit_headers="azure"
    )
    sim = start_sim(scenario)
    # 60 rpm in 10 s windows: 10 requests per window for "small", none for "big".
    statuses = [
        azure(sim, "small", "chat/completions", chat(f"{i}")).status_code for i in range(11)
    ]
    assert statuses.count(429) >= 1
    refused = azure(sim, "small", "chat/completions", chat("x"))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert "retry-after-ms" not in refused.headers
    assert refused.json()["error"]["code"] == "429"
    assert azure(sim, "big", "chat/completions", chat("x")).status_code == 200


def test_azure_v1_routes(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(require_api_key=True))
    client = openai.OpenAI(base_url=f"{sim.url}/openai/v1", api_key="unused", max_retries=0)
    with client:
        client = client.with_options(default_headers={"api-key": "azure-key"})
        reply = client.chat.completions.create(
            model="dep", messages=[{"role": "user", "content": "Hi"}]
        )
        response = client.responses.create(model="dep", input="Hi")
    assert reply.model == "dep"
    assert response.usage is not None
    no_key = httpx2.post(f"{sim.url}/openai/v1/embeddings", json={"model": "e", "input": "a"})
    assert no_key.status_code == 401


# --- the Responses API ------------------------------------------------------------------------


def test_responses_plain_and_streamed_via_sdk(plain_sim: Simulator) -> None:
    client = openai.OpenAI(base_url=plain_sim.base_url, api_key="x", max_retries=0)
    with client:
        plain = client.responses.create(
            model="gpt-4.1-mini", input="Name three colours.", max_output_tokens=300
        )
        events = list(
            client.responses.create(
                model="gpt-4.1-mini",
                input="Name three colours.",
                max_output_tokens=300,
                stream=True,
            )
        )
        listed = client.responses.create(
            model="gpt-4.1-mini",
            instructions="Be brief.",
            input=[{"role": "user", "content": "Name three colours."}],
        )
    assert plain.status == "completed"
    assert plain.usage is not None
    assert plain.usage.input_tokens == math.ceil(len("Name three colours.") / 4)
    assert plain.usage.total_tokens == plain.usage.input_tokens + plain.usage.output_tokens
    assert plain.output_text
    assert events[0].type == "response.created"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage == plain.usage
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == plain.output_text
    assert listed.usage is not None
    assert listed.usage.input_tokens == 3 + 3 + 4 + 5  # instructions, priming, message


def test_responses_validation_and_length_cap(plain_sim: Simulator) -> None:
    url = f"{plain_sim.base_url}/responses"
    assert httpx2.post(url, json={"model": "m"}).status_code == 400
    assert httpx2.post(url, json={"model": "m", "input": []}).status_code == 400
    capped = httpx2.post(url, json={"model": "m", "input": "Hi", "max_output_tokens": 3}).json()
    assert capped["status"] == "incomplete"
    assert capped["usage"]["output_tokens"] == 3


# --- daily limits -----------------------------------------------------------------------------


def test_daily_requests_refused_until_the_day_ends(start_sim: StartSim) -> None:
    day_s = 1000.0
    sim = start_sim(Scenario(default=ModelLimits(rpd=3, day_s=day_s)))
    url = f"{sim.base_url}/chat/completions"
    ok = [httpx2.post(url, json=chat(f"{i}")).status_code for i in range(3)]
    refused = httpx2.post(url, json=chat("over"))
    to_day_end = day_s - time.time() % day_s
    if ok != [200, 200, 200]:  # a day boundary fell inside the test (1 chance in ~10,000)
        pytest.skip("a simulated day ended during the test")
    assert refused.status_code == 429
    body = refused.json()["error"]
    assert body["code"] == "rate_limit_exceeded"
    assert "requests per day (RPD): Limit 3" in body["message"]
    assert abs(int(refused.headers["retry-after"]) - to_day_end) <= 2
    assert abs(int(refused.headers["retry-after-ms"]) / 1000 - to_day_end) <= 1


def test_daily_tokens_anthropic_message(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=ModelLimits(tpd=300), rate_limit_headers="anthropic"))
    url = f"{sim.base_url}/chat/completions"
    assert httpx2.post(url, json=chat(max_tokens=200)).status_code == 200
    refused = httpx2.post(url, json=chat("more", max_tokens=200))
    assert refused.status_code == 429
    assert "300 tokens per day" in refused.json()["error"]["message"]


def test_day_meter_resets_at_the_day_end() -> None:
    limiter = ModelLimiter("m", ModelLimits(rpd=2, day_s=10.0), now=3.0, day_origin=0.0)
    assert limiter.admit(1, 3.0) is None
    assert limiter.admit(1, 3.0) is None
    rejection = limiter.admit(1, 4.0)
    assert rejection is not None
    assert rejection.kind == "requests_day"
    assert rejection.wait_s == pytest.approx(6.0)
    assert limiter.admit(1, 10.0) is None  # a new day


def test_daily_flags_and_toml(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("charge_cached_tokens = false\n[default]\nrpd = 1000\ntpd = 5e6\nday_s = 60\n")
    scenario = Scenario.from_toml(path)
    assert scenario.default == ModelLimits(rpd=1000, tpd=5e6, day_s=60)
    assert not scenario.charge_cached_tokens
    path.write_text(scenario.to_toml())
    assert Scenario.from_toml(path) == scenario
    path.write_text("[default]\nrpd = -1\n")
    with pytest.raises(ScenarioError, match=r"\[default\] rpd: must be a positive number"):
        Scenario.from_toml(path)
    path.write_text('charge_cached_tokens = "no"\n')
    with pytest.raises(ScenarioError, match="charge_cached_tokens"):
        Scenario.from_toml(path)
    bad = subprocess.run(
        [sys.executable, "-m", "pacekeeper.sim", "--day-s", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "--day-s" in bad.stderr


# --- cached prompt tokens ---------------------------------------------------------------------


def _long_chat(question: str) -> dict[str, Any]:
    document = "word " * 1000  # 1250 tokens
    return {
        "model": "gpt-4o-mini",
        "max_tokens": 10,
        "messages": [
            {"role": "system", "content": document},
            {"role": "user", "content": question},
        ],
    }


@pytest.mark.parametrize("charged", [True, False])
def test_cached_tokens_reported_and_charged_or_not(start_sim: StartSim, charged: bool) -> None:
    sim = start_sim(Scenario(charge_cached_tokens=charged))
    url = f"{sim.base_url}/chat/completions"
    first = httpx2.post(url, json=_long_chat("What is it about?")).json()["usage"]
    charged_first = sim.stats()["tokens_charged"]
    second = httpx2.post(url, json=_long_chat("Who wrote it?")).json()["usage"]
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    # 3 priming + 4 + 1250 = 1257 tokens of prefix: cached in steps of 128.
    assert second["prompt_tokens_details"]["cached_tokens"] == 1152
    assert second["prompt_tokens"] == 3 + 4 + 1250 + 4 + 4
    charged_second = sim.stats()["tokens_charged"] - charged_first
    full = second["prompt_tokens"] + 10
    assert charged_second == (full if charged else full - 1152)
    streamed = httpx2.post(
        url,
        json={**_long_chat("Why?"), "stream": True, "stream_options": {"include_usage": True}},
    )
    usage = sse_events(streamed.text)[-2]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 1152


def test_short_prompts_are_never_cached(plain_sim: Simulator) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
    }
    url = f"{plain_sim.base_url}/chat/completions"
    for _ in range(2):
        usage = httpx2.post(url, json=body).json()["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
