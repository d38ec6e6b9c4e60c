"""The Anthropic Messages dialect: POST /v1/messages over loopback HTTP and the anthropic SDK."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from pacekeeper.sim import Faults, ModelLimits, Scenario, ScenarioError, Simulator
from pacekeeper.sim._app import SimApp
from pacekeeper.sim._cli import build_scenario, configure_parser

from .helpers import StartSim

VERSION = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def message(content: Any = "Hello there", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def post(sim: Simulator, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return httpx2.post(
        f"{sim.url}/v1/messages", json=body, headers=VERSION if headers is None else headers
    )


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[len("data: ") :])))
    return out


def test_message_body_has_anthropic_shape(plain_sim: Simulator) -> None:
    reply = post(plain_sim, message("Name three colours."))
    assert reply.status_code == 200
    body = reply.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["id"].startswith("msg_")
    assert body["model"] == "claude-sonnet-4-5"
    assert body["stop_reason"] == "end_turn"
    assert [block["type"] for block in body["content"]] == ["text"]
    usage = body["usage"]
    assert set(usage) == {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    # 3 priming + 4 per message + ceil(19 / 4).
    assert usage["input_tokens"] == 3 + 4 + 5
    assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0
    assert 16 <= usage["output_tokens"] <= 200


def test_max_tokens_caps_the_reply(plain_sim: Simulator) -> None:
    body = post(plain_sim, message(max_tokens=5)).json()
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 5


@pytest.mark.parametrize(
    ("headers", "body", "status", "error_type"),
    [
        ({"anthropic-version": "2023-06-01"}, message(), 401, "authentication_error"),
        ({"x-api-key": "k"}, message(), 400, "invalid_request_error"),
        # An OpenAI-style key is not Anthropic's.
        ({"authorization": "Bearer k", "anthropic-version": "1"}, message(), 401, None),
        (VERSION, {"model": "claude", "messages": [{"role": "user", "content": "x"}]}, 400, None),
        (VERSION, {"model": "claude", "max_tokens": 5, "messages": []}, 400, None),
        (VERSION, {"model": "claude", "max_tokens": 5, "messages": [{"role": "bot"}]}, 400, None),
    ],
)
def test_auth_version_and_validation(
    start_sim: StartSim,
    headers: dict[str, str],
    body: dict[str, Any],
    status: int,
    error_type: str | None,
) -> None:
    sim = start_sim(Scenario(require_api_key=True))
    reply = post(sim, body, headers)
    assert reply.status_code == status
    error = reply.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == (
        error_type or ("authentication_error" if status == 401 else "invalid_request_error")
    )
    if status == 400 and "max_tokens" not in body:
        assert "max_tokens" in error["error"]["message"]


def test_version_is_required_without_require_api_key(plain_sim: Simulator) -> None:
    reply = post(plain_sim, message(), {"x-api-key": "k"})
    assert reply.status_code == 400
    assert "anthropic-version" in reply.json()["error"]["message"]


def test_sdk_plain_and_streamed(plain_sim: Simulator) -> None:
    client = anthropic.Anthropic(base_url=plain_sim.url, api_key="sk-ant", max_retries=0)
    with client:
        plain = client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=300,
            system="Be brief.",
            messages=[{"role": "user", "content": "Hi"}],
        )
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=300,
            system="Be brief.",
            messages=[{"role": "user", "content": "Hi"}],
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert plain.content[0].type == "text"
    assert text == plain.content[0].text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.stop_reason == "end_turn"


def test_stream_events_in_order_with_usage(plain_sim: Simulator) -> None:
    reply = post(plain_sim, message(stream=True))
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = named_events(reply.text)
    names = [n for n, _ in events if n != "ping"]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]["usage"]
    assert start["input_tokens"] == 3 + 4 + 3  # "Hello there"
    delta = next(d for n, d in events if n == "message_delta")
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert delta["usage"]["output_tokens"] == -(-len(text) // 4)


def test_rate_limit_headers_and_429(start_sim: StartSim) -> None:
    limits = ModelLimits(rpm=120, input_tpm=60_000, output_tpm=12_000)
    sim = start_sim(Scenario(default=limits))  # openai mode: /v1/messages still Anthropic's
    first = post(sim, message(max_tokens=50))  # the output meter holds 200: max_tokens fits
    for bucket in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert first.headers[f"anthropic-ratelimit-{bucket}-limit"]
        assert int(first.headers[f"anthropic-ratelimit-{bucket}-remaining"]) >= 0
        assert RFC3339.match(first.headers[f"anthropic-ratelimit-{bucket}-reset"])
    assert first.headers["anthropic-ratelimit-requests-limit"] == "120"
    assert first.headers["anthropic-ratelimit-input-tokens-limit"] == "60000"
    assert first.headers["anthropic-ratelimit-output-tokens-limit"] == "12000"
    assert "x-ratelimit-limit-requests" not in first.headers
    # rpm 120 with a 1 s bucket holds 2 requests.
    second = post(sim, message("b", max_tokens=50))
    third = post(sim, message("c", max_tokens=50))
    assert second.status_code == 200
    assert third.status_code == 429
    assert int(third.headers["retry-after"]) >= 1
    assert third.json() == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "This request would exceed the rate limit for your organization of "
            "120 requests per minute.",
        },
    }


def test_input_tokens_charged_at_admission(start_sim: StartSim) -> None:
    # 600 input tokens per minute with a 1 s bucket: 10 input tokens per second.
    sim = start_sim(Scenario(default=ModelLimits(input_tpm=600)))
    assert post(sim, message("x" * 8)).status_code == 200  # 3 + 4 + 2 = 9 tokens
    refused = post(sim, message("y" * 8))
    assert refused.status_code == 429
    assert "600 input tokens per minute" in refused.json()["error"]["message"]


@pytest.mark.parametrize("counting", ["max_tokens", "generated"])
def test_output_tokens_put_the_meter_in_debt(start_sim: StartSim, counting: Any) -> None:
    # 60 output tokens per minute, 1 token per second: one reply of 16+ tokens puts it in debt
    # (a max_tokens beyond the whole budget is admitted from a full meter, as any oversize cost).
    sim = start_sim(Scenario(default=ModelLimits(output_tpm=60), otpm_counting=counting))
    first = post(sim, message(max_tokens=20))
    assert first.status_code == 200
    refused = post(sim, message("other", max_tokens=20))
    assert refused.status_code == 429
    assert "output tokens per minute" in refused.json()["error"]["message"]
    assert int(refused.headers["anthropic-ratelimit-output-tokens-remaining"]) == 0


# A meter of 300 output tokens (60 per minute, a 300 s bucket): refill is negligible here.
_BIG_OUTPUT_METER = ModelLimits(output_tpm=60, burst_s=300)


def test_max_tokens_reserved_at_admission(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=_BIG_OUTPUT_METER))  # the default: Anthropic's rule
    first = post(sim, message(max_tokens=250))
    assert first.status_code == 200
    # 300 - 250 reserved = 50 left in the meter: 10 of the per-minute 60.
    assert first.headers["anthropic-ratelimit-output-tokens-remaining"] == "10"
    # The reply (16-200 tokens) gave back at least 50: 100+ left, not the 250 asked for next.
    refused = post(sim, message("other", max_tokens=250))
    assert refused.status_code == 429
    assert "output tokens per minute" in refused.json()["error"]["message"]


def test_generated_counting_reserves_nothing(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=_BIG_OUTPUT_METER, otpm_counting="generated"))
    first = post(sim, message(max_tokens=250))
    assert first.headers["anthropic-ratelimit-output-tokens-remaining"] == "60"
    assert post(sim, message("other", max_tokens=250)).status_code == 200  # not in debt


def test_unused_max_tokens_are_given_back(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=_BIG_OUTPUT_METER))
    first = post(sim, message(max_tokens=290))
    generated = first.json()["usage"]["output_tokens"]
    assert generated <= 200  # replies are 16-200 tokens
    # 10 left after the reserve; the settlement gave back 290 - generated (>= 90).
    second = post(sim, message("other", max_tokens=300 - generated - 1))
    assert second.status_code == 200, second.text


def test_a_failed_request_gives_its_reserve_back(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=_BIG_OUTPUT_METER, faults=Faults(http_500=1.0)))
    assert post(sim, message(max_tokens=290)).status_code == 500
    # Nothing was generated: the whole reserve is back, so the same ask fits again.
    assert post(sim, message("other", max_tokens=290)).status_code == 500  # not 429


def test_529_and_500_in_anthropic_shape(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(faults=Faults(http_529=1.0)))
    reply = post(sim, message())
    assert reply.status_code == 529
    assert reply.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    sim = start_sim(Scenario(faults=Faults(http_500=1.0)))
    error = post(sim, message()).json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"


def _cached(marked_text: str, question: str) -> dict[str, Any]:
    return message(
        [
            {"type": "text", "text": marked_text, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": question},
        ],
        system=[{"type": "text", "text": "You answer questions about a document."}],
    )


def test_cache_control_writes_then_reads(plain_sim: Simulator) -> None:
    document = "word " * 800  # 4000 characters: 1000 tokens
    first = post(plain_sim, _cached(document, "What is it about?")).json()["usage"]
    second = post(plain_sim, _cached(document, "Who wrote it?")).json()["usage"]
    prefix = 3 + 10 + 4 + 1000  # priming, system (40 chars), message overhead, the document
    assert first["cache_creation_input_tokens"] == prefix
    assert first["cache_read_input_tokens"] == 0
    assert first["input_tokens"] == 5  # "What is it about?"
    assert second["cache_read_input_tokens"] == prefix
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == 4  # "Who wrote it?"
    other = post(plain_sim, _cached("another " + document, "Who?")).json()["usage"]
    assert other["cache_read_input_tokens"] == 0
    assert other["cache_creation_input_tokens"] > 0


async def test_cache_reads_are_not_charged_to_itpm() -> None:
    # 1300 input tokens per second: a 1018-token prefix fits once as a write, then reads are
    # free, so three more requests fit where a second write would not. The app is driven in
    # process on a frozen clock: over loopback, a busy machine's slow requests let the bucket
    # refill enough for the last write.
    app = SimApp(Scenario(default=ModelLimits(input_tpm=78_000)), clock=lambda: 1000.0)
    document = "word " * 800
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://sim"
    ) as client:

        async def post_in_process(body: dict[str, Any]) -> Any:
            return await client.post("/v1/messages", json=body, headers=VERSION)

        assert (await post_in_process(_cached(document, "q1"))).status_code == 200
        for question in ("q2", "q3", "q4"):
            reply = await post_in_process(_cached(document, question))
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["cache_read_input_tokens"] > 0
        assert (await post_in_process(_cached("new " + document, "q5"))).status_code == 429


def test_otpm_counting_in_toml_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('otpm_counting = "generated"\n[default]\noutput_tpm = 8000\n')
    scenario = Scenario.from_toml(path)
    assert scenario.otpm_counting == "generated"
    path.write_text(scenario.to_toml())
    assert Scenario.from_toml(path) == scenario
    assert Scenario().otpm_counting == "max_tokens"  # Anthropic's documented rule
    path.write_text('otpm_counting = "eventually"\n')
    with pytest.raises(ScenarioError, match="otpm_counting: must be one of max_tokens, generated"):
        Scenario.from_toml(path)
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--output-tpm", "8000", "--otpm-counting", "generated"])
    assert build_scenario(args).otpm_counting == "generated"
    with pytest.raises(SystemExit):
        parser.parse_args(["--otpm-counting", "eventually"])
