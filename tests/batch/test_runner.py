"""The engine (run_batch) in-process against the simulator on loopback: formats, bad lines,
order, bounded buffering, resume, API errors, faults, stopping."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacekeeper import Governor, Limits, RetryPolicy, set_testing
from pacekeeper.batch import BatchJob, BatchResult, join_url, run_batch
from pacekeeper.sim import Faults, Latency, Scenario, Simulator

from .conftest import StartSim
from .helpers import (
    assert_exactly_once,
    batch_line,
    chat_body,
    read_results,
    succeeded,
    write_batch,
    write_lines,
)


@pytest.fixture
def instant_retries() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


def job_for(sim: Simulator, tmp_path: Path, source: Path, **kwargs: Any) -> BatchJob:
    return BatchJob(
        input=source,
        output=kwargs.pop("output", tmp_path / "out.jsonl"),
        base_url=sim.base_url,
        api_key="sk-in-process-test-key",
        **kwargs,
    )


async def run(job: BatchJob, gov: Governor | None = None, **kwargs: Any) -> BatchResult:
    return await run_batch(job, gov or Governor(retry=RetryPolicy(max_attempts=6)), **kwargs)


async def test_every_format_one_result_per_line(plain_sim: Simulator, tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            batch_line("api-1", model="gpt-4o"),
            chat_body("a bare body", model="gpt-4o"),
            {"prompt": "a prompt object"},
            {"custom_id": "named", "prompt": "a named prompt"},
            "",
            {"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
            "this is not JSON",
            batch_line("api-1"),  # duplicate
            {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"},
        ],
    )
    job = job_for(plain_sim, tmp_path, source, model="gpt-4o-mini")
    result = await run(job)
    records = read_results(job.output)
    assert_exactly_once(
        records,
        ["api-1", "line-2", "line-3", "named", "emb", ("line-7", 7), ("api-1", 8), ("no-body", 9)],
    )
    by_key = {(r["custom_id"], (r["error"] or {}).get("line")): r for r in records}
    for cid in ("api-1", "line-2", "line-3", "named"):
        body = by_key[(cid, None)]["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["model"] == "gpt-4o-mini"  # --model overrides the body's
    assert by_key[("emb", None)]["response"]["body"]["object"] == "list"
    assert by_key[("line-7", 7)]["error"]["code"] == "invalid_json"
    assert by_key[("api-1", 8)]["error"]["code"] == "duplicate_custom_id"
    assert "line 8" in by_key[("api-1", 8)]["error"]["message"]
    assert by_key[("no-body", 9)]["error"]["code"] == "missing_field"
    assert (result.total_lines, result.succeeded, result.bad_lines, result.failed) == (8, 5, 3, 0)
    assert result.errors_by_code == {
        "invalid_json": 1,
        "duplicate_custom_id": 1,
        "missing_field": 1,
    }
    assert not result.all_succeeded
    stats = plain_sim.stats()
    assert stats["requests_received"] == 5  # bad lines are never sent
    assert stats["received_more_than_once"] == 0


async def test_ordered_output_follows_input_under_random_latencies(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.01, spread=1.5), seed=3))
    rows: list[Any] = []
    expected: list[Any] = []
    for i in range(80):
        if i % 17 == 5:
            rows.append("{broken")
            expected.append((f"line-{i + 1}", i + 1))
        else:
            rows.append(batch_line(f"o-{i:03d}", f"question {i}"))
            expected.append(f"o-{i:03d}")
    source = write_lines(tmp_path / "in.jsonl", rows)
    job = job_for(sim, tmp_path, source, ordered=True, window=16)
    result = await run(job, Governor(limits=Limits(concurrency=16)))
    records = read_results(job.output)
    assert_exactly_once(records, expected)
    order = [
        r["custom_id"] if r["response"] is not None else (r["custom_id"], r["error"]["line"])
        for r in records
    ]
    assert order == expected
    assert (result.succeeded, result.bad_lines) == (75, 5)
    # the latencies really were spread: unordered, the same lines finish out of order
    unordered = job_for(sim, tmp_path, source, output=tmp_path / "unordered.jsonl")
    await run(unordered, Governor(limits=Limits(concurrency=16)))
    ids = [r["custom_id"] for r in read_results(unordered.output) if r["response"]]
    assert ids != sorted(ids)


async def test_lines_in_progress_are_bounded(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.01)))
    ids = write_batch(tmp_path / "in.jsonl", 60)
    gov = Governor(limits=Limits(concurrency=64))
    job = job_for(sim, tmp_path, tmp_path / "in.jsonl", window=5, ordered=True)
    await run(job, gov)
    assert_exactly_once(read_results(job.output), ids)
    assert 1 < sim.stats()["peak_in_flight"] <= 5

    sim.reset_stats()
    small = job_for(
        sim, tmp_path, tmp_path / "in.jsonl", output=tmp_path / "b.jsonl", max_buffer_bytes=1
    )
    await run(small, Governor(limits=Limits(concurrency=64)))
    assert_exactly_once(read_results(small.output), ids)
    assert sim.stats()["peak_in_flight"] == 1  # one line's bytes fill the buffer


async def test_resume_after_a_complete_run_sends_nothing(
    plain_sim: Simulator, tmp_path: Path
) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [batch_line("a"), batch_line("b"), "oops", batch_line("a"), {"prompt": "no model"}],
    )
    job = job_for(plain_sim, tmp_path, source)
    first = await run(job)
    assert (first.succeeded, first.bad_lines) == (2, 3)
    before = job.output.read_bytes()
    plain_sim.reset_stats()
    again = await run(job)
    assert plain_sim.stats()["requests_received"] == 0
    assert job.output.read_bytes() == before
    assert (again.skipped_done, again.skipped_failed, again.written) == (5, 3, 0)
    assert not again.all_succeeded  # the earlier error records still count


@pytest.mark.parametrize(
    ("faults", "status", "code", "words"),
    [
        (Faults(insufficient_quota=1.0), 429, "insufficient_quota", "quota"),
        (Faults(invalid_request=1.0), 400, "invalid_value", "Invalid request"),
    ],
)
async def test_non_retryable_api_errors_are_records_sent_once(
    start_sim: StartSim, tmp_path: Path, faults: Faults, status: int, code: str, words: str
) -> None:
    sim = start_sim(Scenario(faults=faults))
    ids = write_batch(tmp_path / "in.jsonl", 12)
    job = job_for(sim, tmp_path, tmp_path / "in.jsonl")
    result = await run(job)
    records = read_results(job.output)
    assert_exactly_once(records, ids)
    for r in records:
        assert r["response"]["status_code"] == status
        assert r["error"]["code"] == code
        assert words in r["error"]["message"]
        assert "not retried" in r["error"]["message"]
    assert (result.failed, result.succeeded) == (12, 0)
    stats = sim.stats()
    assert stats["requests_received"] == 12
    assert stats["non_retryable_repeats"] == {}
    assert stats["received_more_than_once"] == 0


@pytest.mark.parametrize("httptools", [True, False], ids=["lean-transport", "httpx2-pool"])
async def test_transient_faults_are_retried_and_every_line_gets_one_result(
    start_sim: StartSim,
    tmp_path: Path,
    instant_retries: None,
    httptools: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not httptools:  # as without the fast extra: httpx2's own pool sends
        monkeypatch.setitem(sys.modules, "httptools", None)
    faults = Faults(http_500=0.1, http_503=0.05, drop=0.05, malformed=0.05)
    sim = start_sim(Scenario(faults=faults, seed=11))
    ids = write_batch(tmp_path / "in.jsonl", 150)
    job = job_for(sim, tmp_path, tmp_path / "in.jsonl")
    gov = Governor(retry=RetryPolicy(max_attempts=8, retry_budget_initial=100))
    result = await run(job, gov)
    records = read_results(job.output)
    assert_exactly_once(records, ids)
    assert result.succeeded == len(succeeded(records)) == 150
    stats = sim.stats()
    assert stats["duplicates"] == {}  # no request answered twice: nothing repeated
    assert sum(stats["faults_injected"].values()) > 10
    assert stats["by_status"]["200"] - stats["faults_injected"].get("malformed", 0) == 150


async def test_exhausted_retries_and_malformed_answers_are_error_records(
    start_sim: StartSim, tmp_path: Path, instant_retries: None
) -> None:
    sim = start_sim(Scenario(faults=Faults(malformed=1.0)))
    ids = write_batch(tmp_path / "in.jsonl", 3)
    job = job_for(sim, tmp_path, tmp_path / "in.jsonl")
    result = await run(job, Governor(retry=RetryPolicy(max_attempts=2)))
    records = read_results(job.output)
    assert_exactly_once(records, ids)
    for r in records:
        assert r["error"]["code"] == "malformed_response"
        assert r["response"] is None  # the transport raised: the body never parsed
        assert "not valid JSON" in r["error"]["message"]
        assert "gave up after 2 attempts" in r["error"]["message"]
    assert result.failed == 3


async def test_a_key_with_a_line_break_is_refused_before_anything_is_sent(
    plain_sim: Simulator, tmp_path: Path
) -> None:
    write_batch(tmp_path / "in.jsonl", 2)
    sim = plain_sim
    job = dataclasses.replace(
        job_for(sim, tmp_path, tmp_path / "in.jsonl"), api_key="sk-secret-1\r\nX-Injected: yes"
    )
    with pytest.raises(ValueError, match="'authorization' holds a line break") as caught:
        await run(job)
    assert "sk-secret-1" not in str(caught.value)
    assert sim.stats()["requests_received"] == 0


async def test_an_unexpected_client_error_is_a_record_not_a_lost_line(tmp_path: Path) -> None:
    ids = write_batch(tmp_path / "in.jsonl", 4)
    job = BatchJob(
        input=tmp_path / "in.jsonl",
        output=tmp_path / "out.jsonl",
        base_url="http://127.0.0.1:99999/v1",  # httpx2 refuses the port before sending
        api_key=None,
    )
    result = await asyncio.wait_for(run(job), timeout=20)
    records = read_results(job.output)
    assert_exactly_once(records, ids)
    assert {r["error"]["code"] for r in records} == {"client_error"}
    assert result.failed == 4


async def test_stop_finishes_in_flight_and_leaves_the_rest_for_the_next_run(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.05)))
    ids = write_batch(tmp_path / "in.jsonl", 200)
    job = job_for(sim, tmp_path, tmp_path / "in.jsonl")
    stop = asyncio.Event()

    def progress(result: BatchResult) -> None:
        if result.written >= 10:
            stop.set()

    first = await run(job, Governor(limits=Limits(concurrency=4)), stop=stop, on_progress=progress)
    assert first.interrupted
    written = read_results(job.output)
    assert 10 <= len(written) < 200
    # Everything the server finished was written (in flight at the stop: drained, not lost).
    assert sim.stats()["by_status"]["200"] == len(written)
    assert first.not_sent + first.not_reached + first.written == 200
    second = await run(job, Governor(limits=Limits(concurrency=32)))
    assert not second.interrupted
    assert second.skipped_done == len(written)
    assert_exactly_once(read_results(job.output), ids)
    assert sim.stats()["duplicates"] == {}


async def test_progress_is_reported_while_skipping_done_lines(
    plain_sim: Simulator, tmp_path: Path
) -> None:
    write_batch(tmp_path / "in.jsonl", 600)
    job = job_for(plain_sim, tmp_path, tmp_path / "in.jsonl")
    await run(job, Governor(limits=Limits(concurrency=64)))
    seen: list[int] = []
    await run(job, on_progress=lambda r: seen.append(r.skipped_done))
    assert len(seen) >= 3
    assert seen[-1] == 600


async def test_log_records_every_attempt(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(Scenario(faults=Faults(http_500=0.2), seed=5))
    set_testing(True)
    try:
        ids = write_batch(tmp_path / "in.jsonl", 30)
        job = job_for(sim, tmp_path, tmp_path / "in.jsonl", log_path=tmp_path / "log.jsonl")
        await run(job, Governor(retry=RetryPolicy(max_attempts=10, retry_budget_initial=100)))
    finally:
        set_testing(False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    attempts = [r for r in log if r["type"] == "attempt"]
    requests = [r for r in log if r["type"] == "request"]
    assert len(attempts) == sim.stats()["requests_received"] > 30
    assert sorted(r["tag"] for r in requests) == sorted(ids)
    assert {r["status"] for r in attempts} == {200, 500}


async def test_memory_stays_flat_however_long_the_input(
    start_sim: StartSim, tmp_path: Path
) -> None:
    """250 lines of 48 kB (12 MB) through a 256 kB in-progress buffer: the peak of everything
    allocated (the simulator's thread included) stays far below the input's size."""
    sim = start_sim(Scenario())
    source = tmp_path / "long.jsonl"
    padding = "lorem ipsum " * 4000
    with source.open("w") as f:
        for i in range(250):
            f.write(json.dumps(batch_line(f"m-{i:04d}", f"{i} {padding}")) + "\n")
    size = source.stat().st_size
    assert size > 12_000_000
    job = job_for(sim, tmp_path, source, max_buffer_bytes=256 * 1024)
    # Warm up first: the tokenizer's tables (tens of MB, once per process) are not the run's.
    warm_up = write_batch(tmp_path / "warm.jsonl", 2)
    await run(job_for(sim, tmp_path, tmp_path / "warm.jsonl", output=tmp_path / "warm.out"))
    assert len(read_results(tmp_path / "warm.out")) == len(warm_up)
    tracemalloc.start()
    try:
        result = await run(job, Governor(limits=Limits(concurrency=8)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.succeeded == 250
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB input"


async def test_hung_requests_time_out_into_error_records(
    start_sim: StartSim, tmp_path: Path, instant_retries: None
) -> None:
    sim = start_sim(Scenario(faults=Faults(hang=1.0, hang_s=30)))
    ids = write_batch(tmp_path / "in.jsonl", 3)
    job = job_for(sim, tmp_path, tmp_path / "in.jsonl", timeout_s=0.3)
    gov = Governor(retry=RetryPolicy(max_attempts=2, attempt_timeout_s=0.3))
    result = await asyncio.wait_for(run(job, gov), timeout=20)
    records = read_results(job.output)
    assert_exactly_once(records, ids)
    assert {r["error"]["code"] for r in records} == {"timeout"}
    assert all("gave up after 2 attempts" in r["error"]["message"] for r in records)
    assert result.failed == 3
    assert sim.stats()["requests_received"] == 6


async def test_an_empty_input_is_a_successful_run(plain_sim: Simulator, tmp_path: Path) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text("\n\n")
    job = job_for(plain_sim, tmp_path, source)
    result = await run(job)
    assert (result.total_lines, result.written, result.all_succeeded) == (0, 0, True)
    assert job.output.read_bytes() == b""


@pytest.mark.parametrize(
    ("base", "route", "url"),
    [
        ("http://h:1/v1", "/v1/chat/completions", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1/", "/v1/embeddings", "http://h:1/v1/embeddings"),
        ("http://h:1", "/v1/chat/completions", "http://h:1/v1/chat/completions"),
        ("https://h/openai/v1", "/v1/responses", "https://h/openai/v1/responses"),
        ("https://h/api", "/v1/chat/completions", "https://h/api/v1/chat/completions"),
    ],
)
def test_join_url(base: str, route: str, url: str) -> None:
    assert join_url(base, route) == url


async def test_an_api_error_keeps_the_providers_code_and_type_apart(
    plain_sim: Simulator, tmp_path: Path
) -> None:
    # The simulator answers an unknown URL as OpenAI does: a 404 whose error has a type
    # (invalid_request_error) and no code. The type is not a code.
    line = batch_line("lost", model="gpt-4o")
    line["url"] = "/v1/no-such-endpoint"
    source = write_lines(tmp_path / "in.jsonl", [line, batch_line("fine", model="gpt-4o")])
    job = job_for(plain_sim, tmp_path, source)
    result = await run(job)
    by_id = {r["custom_id"]: r for r in read_results(job.output)}
    error = by_id["lost"]["error"]
    assert error["status"] == 404
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "http_404"  # the provider gave none
    assert "Invalid URL" in error["message"]
    assert by_id["fine"]["error"] is None
    assert result.errors_by_code == {"http_404": 1}


async def test_an_api_error_with_a_code_keeps_it(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(Scenario(faults=Faults(insufficient_quota=1.0)))
    write_batch(tmp_path / "in.jsonl", 1)
    job = job_for(sim, tmp_path, tmp_path / "in.jsonl")
    await run(job)
    (record,) = read_results(job.output)
    assert record["error"]["code"] == "insufficient_quota"
    assert record["error"]["type"] == "insufficient_quota"
    assert record["error"]["status"] == 429
