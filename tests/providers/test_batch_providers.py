"""``pacekeeper run --provider``: each provider's auth, routes and result formats, against a
real server on loopback speaking that dialect; Anthropic Message Batches lines; --model and
--default-model; parking on a limit that resets far away (and stopping past --max-wait)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pacekeeper import Governor, RecordCollector
from pacekeeper.batch import BatchJob, run_batch
from pacekeeper.providers import PROVIDERS, get_provider
from pacekeeper.sim import Scenario

from .cli import base_env, read_results, run_cli, write_lines
from .conftest import StartUpstream
from .upstream import KEY


def read_any(path: Path) -> list[dict[str, Any]]:
    """Every line of an output, whatever its format (whole lines, each a JSON object)."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def message_batch_line(custom_id: str, **params: Any) -> dict[str, Any]:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"about {custom_id}"}],
        **params,
    }
    return {"custom_id": custom_id, "params": body}


def assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text


def test_anthropic_message_batches_lines_native_auth_and_results(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    server = start_upstream(auth="x-api-key", sim=Scenario())  # the sim answers
    document = "word " * 800
    cached: Any = [{"type": "text", "text": document, "cache_control": {"type": "ephemeral"}}]
    rows: list[Any] = [
        message_batch_line("m1"),
        message_batch_line("m2", system=[*cached, {"type": "text", "text": "Be terse."}]),
        {  # no model
            "custom_id": "m3",
            "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "m3"}]},
        },
        {"custom_id": "m4", "params": "not an object"},
        {"prompt": "a bare prompt", "custom_id": "p1"},
    ]
    write_lines(tmp_path / "in.jsonl", rows)
    env = base_env(ANTHROPIC_API_KEY=KEY)
    args = [
        "run", "in.jsonl", "--provider", "anthropic", "--base-url", server.base,
        "--model", "claude-haiku-4-5", "--log", "log.jsonl", "--metrics", "m.json",
        "--progress", "plain",
    ]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=env)
    assert done.code == 1, done.stderr  # m4 is a bad line; --model fills m3's model in
    records = {r["custom_id"]: r for r in read_any(tmp_path / "in.results.jsonl")}
    assert records["m1"]["result"]["type"] == "succeeded"
    # 3 priming + 4 per message + "about m1" (2 tokens), as the sim counts.
    assert records["m1"]["result"]["message"]["usage"]["input_tokens"] == 9
    assert records["m2"]["result"]["message"]["usage"]["cache_creation_input_tokens"] == 1003
    assert records["m3"]["result"]["type"] == "succeeded"
    assert records["m4"]["result"]["type"] == "errored"
    assert records["m4"]["result"]["code"] == "invalid_body"
    assert records["m4"]["result"]["error"]["error"]["type"] == "invalid_request_error"
    assert set(records["p1"]) == {"id", "custom_id", "response", "error"}  # OpenAI format
    sent = [s for s in server.seen if s.path == "/v1/messages"]
    assert len(sent) == 4
    for seen in sent:
        assert seen.headers["x-api-key"] == KEY
        assert seen.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in seen.headers
    prompt = next(
        s for s in sent if s.body["messages"][:1] == [{"role": "user", "content": "a bare prompt"}]
    )
    assert prompt.body["max_tokens"] == 1024  # Anthropic requires one
    assert_no_key(
        done.stdout,
        done.stderr,
        (tmp_path / "in.results.jsonl").read_text(),
        (tmp_path / "log.jsonl").read_text(),
        (tmp_path / "m.json").read_text(),
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    (model,) = [m for m in metrics["models"] if m["route"] == "/v1/messages"]
    usages = [
        r["result"]["message"]["usage"]
        for r in records.values()
        if r.get("result", {}).get("type") == "succeeded"
    ]
    assert len(usages) == 3
    counted = sum(u["input_tokens"] + u["cache_creation_input_tokens"] for u in usages)
    bare = records["p1"]["response"]["body"]["usage"]  # OpenAI's batch format, Anthropic's usage
    assert model["prompt_tokens"] == counted + bare["input_tokens"] == counted + 11
    # resume: everything is done, nothing is sent again, the formats are recognised
    before = len(server.seen)
    again = run_cli(args, cwd=tmp_path, env=env)
    assert again.code == 1, again.stderr  # m4's error record counts as done, and failed
    assert len(server.seen) == before


def test_azure_deployment_routes_api_key_and_lanes(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    server = start_upstream(auth="api-key", sim=Scenario(rate_limit_headers="azure"))
    write_lines(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "a", "prompt": "x", "model": "prod-4o"},
            {"custom_id": "b", "prompt": "y", "model": "prod-4o-mini"},
            {"custom_id": "c", "prompt": "z"},
        ],
    )
    env = base_env(AZURE_OPENAI_API_KEY=KEY, AZURE_OPENAI_ENDPOINT=server.base)
    args = ["run", "in.jsonl", "--provider", "azure", "--default-model", "prod-4o",
            "--metrics", "m.json", "--progress", "none"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path, env=env)
    assert done.code == 0, done.stderr
    assert sorted((s.path, s.query) for s in server.seen) == [
        ("/openai/deployments/prod-4o-mini/chat/completions", "api-version=2024-10-21"),
        ("/openai/deployments/prod-4o/chat/completions", "api-version=2024-10-21"),
        ("/openai/deployments/prod-4o/chat/completions", "api-version=2024-10-21"),
    ]
    assert all(s.headers["api-key"] == KEY for s in server.seen)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert sorted((m["model"], m["requests"]) for m in metrics["models"]) == [
        ("prod-4o", 2),
        ("prod-4o-mini", 1),
    ]
    assert_no_key(done.stdout, done.stderr, (tmp_path / "m.json").read_text())


def test_azure_without_an_endpoint_says_what_to_pass(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    done = run_cli(
        ["run", "in.jsonl", "--provider", "azure", "--model", "d"],
        cwd=tmp_path,
        env=base_env(AZURE_OPENAI_API_KEY=KEY),
    )
    assert done.code == 2
    assert "--base-url https://RESOURCE.openai.azure.com" in done.stderr
    assert "AZURE_OPENAI_ENDPOINT" in done.stderr


@pytest.mark.parametrize(
    ("name", "mount"),
    [
        ("openai", "/v1"),
        ("gemini", "/v1beta/openai"),
        ("openrouter", "/api/v1"),
        ("mistral", "/v1"),
        ("groq", "/openai/v1"),
        ("together", "/v1"),
        ("vllm", "/v1"),
        ("compatible", "/v1"),
    ],
)
async def test_bearer_providers_send_their_key_and_join_their_routes(
    start_upstream: StartUpstream,
    tmp_path: Path,
    name: str,
    mount: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = start_upstream()
    provider = get_provider(name)
    write_lines(tmp_path / "in.jsonl", [{"prompt": "hello", "custom_id": "q"}])
    job = BatchJob(
        input=tmp_path / "in.jsonl",
        output=tmp_path / "out.jsonl",
        base_url=server.base + mount,
        api_key=KEY,
        provider=provider,
        model="some-model",
    )
    records = RecordCollector()
    gov = Governor(hooks=[records])
    result = await run_batch(job, gov)
    assert result.succeeded == 1
    (seen,) = server.seen
    assert seen.path == mount + "/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    (record,) = records.requests
    assert record.tokens_estimated > 0  # estimated at admission
    counted = 120 if provider.cache_reads_count else 20  # 100 of the 120 were cached
    assert (record.prompt_tokens, record.completion_tokens) == (counted, 30)  # settled
    (lane,) = gov.lanes
    assert (lane.learned_rpm, lane.learned_tpm) == (5000, 800_000)  # learned from headers
    assert_no_key((tmp_path / "out.jsonl").read_text(), caplog.text)


def test_every_provider_has_a_key_variable_and_a_known_auth() -> None:
    for provider in PROVIDERS.values():
        headers = provider.auth_headers("k")
        assert provider.key_header in headers
        assert headers[provider.key_header] in ("k", "Bearer k")


def test_model_overrides_and_default_model_fills(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    server = start_upstream()
    rows = [
        {"custom_id": "own", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "line-model", "messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "none", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "y"}]}},
    ]  # fmt: skip
    write_lines(tmp_path / "in.jsonl", rows)
    base = ["run", "in.jsonl", "--base-url", server.base + "/v1", "--progress", "none"]
    done = run_cli([*base, "--default-model", "fallback"], cwd=tmp_path)
    assert done.code == 0, done.stderr
    assert sorted(s.body["model"] for s in server.seen) == ["fallback", "line-model"]
    server.seen.clear()
    done = run_cli([*base, "-o", "two.jsonl", "--model", "forced"], cwd=tmp_path)
    assert done.code == 0, done.stderr
    assert [s.body["model"] for s in server.seen] == ["forced", "forced"]
    assert len(read_results(tmp_path / "two.jsonl")) == 2


def test_a_limit_that_resets_later_parks_the_run_and_says_so(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    # The server refuses the first request until 2 s later; the governor's max hint is 1 s,
    # so the governor does not retry it: the run parks until the reset, then finishes.
    server = start_upstream(refuse_first=1, refuse_retry_after_s=2)
    (tmp_path / "pacekeeper.toml").write_text("max_hint_s = 1\n")
    write_lines(
        tmp_path / "in.jsonl", [{"prompt": f"p{i}", "custom_id": f"c{i}"} for i in range(3)]
    )
    done = run_cli(
        ["run", "in.jsonl", "--base-url", server.base + "/v1", "--model", "m",
         "--concurrency", "1", "--progress", "plain"],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert len([r for r in read_results(tmp_path / "in.results.jsonl") if r["error"] is None]) == 3
    assert len(server.seen) == 4  # the refused one was sent again once, after the reset
    # said once, not a silent wait
    assert done.stderr.count("pacekeeper run: parked until ") == 1
    assert "daily request limit reached" in done.stderr


def test_a_limit_beyond_max_wait_stops_the_run_resumably(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    server = start_upstream(refuse_first=1, refuse_retry_after_s=7200)
    write_lines(tmp_path / "in.jsonl", [{"prompt": "p", "custom_id": "only"}])
    args = ["run", "in.jsonl", "--base-url", server.base + "/v1", "--model", "m",
            "--max-wait", "60", "--progress", "none"]  # fmt: skip
    done = run_cli(args, cwd=tmp_path)
    assert done.code == 3, done.stderr
    assert "stopped: the provider refuses until" in done.stderr
    assert "longer than --max-wait 60 s" in done.stderr
    assert "daily request limit reached" in done.stderr
    assert "Resume with:" in done.stderr
    assert read_results(tmp_path / "in.results.jsonl") == []  # nothing written for it
    again = run_cli(args, cwd=tmp_path)  # the server no longer refuses
    assert again.code == 0, again.stderr
    assert len(read_results(tmp_path / "in.results.jsonl")) == 1


def test_the_progress_line_says_when_the_run_is_parked() -> None:
    import io
    import time

    from pacekeeper.batch._progress import BatchProgress
    from pacekeeper.batch._runner import BatchResult

    result = BatchResult(parked_until_wall_s=time.time() + 7200)
    progress = BatchProgress(Governor(), total=10, stream=io.StringIO(), live=False)
    figures = progress.figures(result)
    assert figures["parked until"] == time.strftime(
        "%H:%M:%S UTC", time.gmtime(result.parked_until_wall_s)
    )
    assert figures["eta"].startswith("after 2.0h")


@pytest.mark.parametrize(("name", "auth"), [("azure", "api-key"), ("anthropic", "x-api-key")])
def test_a_key_echoed_back_in_an_error_is_redacted(
    start_upstream: StartUpstream, tmp_path: Path, name: str, auth: str
) -> None:
    server = start_upstream(auth=auth, key="the-key-the-server-wants")
    write_lines(tmp_path / "in.jsonl", [{"prompt": "p", "custom_id": "only"}])
    env = base_env(AZURE_OPENAI_API_KEY=KEY, ANTHROPIC_API_KEY=KEY)
    done = run_cli(
        ["run", "in.jsonl", "--provider", name, "--base-url", server.base, "--model", "m",
         "--log", "log.jsonl", "--progress", "plain"],
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    assert done.code == 1, done.stderr
    (seen,) = server.seen
    assert seen.headers[auth] == KEY  # it was sent, in the provider's header
    output = (tmp_path / "in.results.jsonl").read_text()
    assert "[redacted]" in output
    assert_no_key(output, (tmp_path / "log.jsonl").read_text(), done.stdout, done.stderr)


def test_a_gemini_refusal_with_its_wait_in_the_body_parks_the_run(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    server = start_upstream(refuse_first=1, refuse_retry_after_s=2, refuse_like_google=True)
    (tmp_path / "pacekeeper.toml").write_text("max_hint_s = 1\nmax_attempts = 1\n")
    write_lines(tmp_path / "in.jsonl", [{"prompt": "p", "custom_id": "only"}])
    done = run_cli(
        ["run", "in.jsonl", "--provider", "gemini", "--base-url", server.base + "/v1beta/openai",
         "--model", "gemini-2.0-flash", "--progress", "none"],
        cwd=tmp_path,
        env=base_env(GEMINI_API_KEY=KEY),
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert "parked until" in done.stderr
    assert "Quota exceeded" in done.stderr
    assert [s.path for s in server.seen] == ["/v1beta/openai/chat/completions"] * 2


def test_a_hosted_provider_without_its_key_stops_before_sending(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [{"prompt": "p"}])
    done = run_cli(
        ["run", "in.jsonl", "--provider", "anthropic", "--model", "claude-haiku-4-5"],
        cwd=tmp_path,
        env=base_env(),  # OPENAI_API_KEY is set; ANTHROPIC_API_KEY is not
    )
    assert done.code == 2
    assert "no API key: set ANTHROPIC_API_KEY" in done.stderr
    assert "anthropic at https://api.anthropic.com needs one" in done.stderr
