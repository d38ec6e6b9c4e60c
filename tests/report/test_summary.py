"""The end-of-run summary: use against what the limit allowed; full width outside a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pacekeeper.core.stats import StatsSnapshot
from pacekeeper.report.summary import summary_lines, summary_rows


def snapshot(**overrides: Any) -> StatsSnapshot:
    values: dict[str, Any] = {
        "route": "/v1/chat/completions",
        "model": "gpt-4o-mini-2024-07-18",
        "requests": 11,
        "ok": 11,
        "failed": 0,
        "attempts": 11,
        "retries": 0,
        "rate_limited": 0,
        "by_status": {"200": 11},
        "by_outcome": {"ok": 11},
        "latency_p50_s": 0.1,
        "latency_p95_s": 0.2,
        "latency_p99_s": 0.3,
        "queued_p50_s": 0.0,
        "queued_p95_s": 0.0,
        "total_p50_s": 0.1,
        "total_p95_s": 0.2,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "tokens_estimated": 0,
        "first_at": 100.0,
        "last_at": 110.0,
        "concurrency_limit": 4,
        "peak_in_flight": 4,
        "rpm_limit": 60.0,
        "tpm_limit": None,
        "cooldowns": 0,
    }
    values.update(overrides)
    return StatsSnapshot(**values)


def test_a_short_paced_run_is_not_over_100_percent() -> None:
    # 60 rpm over 10 s: the first request goes at once, then one a second: 11 requests, all
    # the limit allowed. Counted against 60/min x 10 s alone it looked like 110%.
    (row,) = summary_rows([snapshot()])
    assert row["use"] == "100%"


def test_the_initial_burst_counts_against_the_allowance() -> None:
    # 600 rpm, 0.5 s of burst (5 requests) at once, then 10 a second for 2 s.
    (row,) = summary_rows([snapshot(ok=25, requests=25, rpm_limit=600.0, last_at=102.0)])
    assert row["use"] == "100%"


def test_more_than_allowed_shows_above_100_percent() -> None:
    (row,) = summary_rows([snapshot(ok=30, requests=30)])
    assert row["use"] == "273%"  # 30 accepted where 11 were allowed: the limit is not right


def test_outside_a_terminal_nothing_is_cut() -> None:
    stats = [snapshot(), snapshot(route="/v1/embeddings", model="text-embedding-3-large")]
    lines = summary_lines(stats)
    assert len(lines) == 2
    assert lines[0].startswith("model=gpt-4o-mini-2024-07-18 route=/v1/chat/completions ")
    assert "model=text-embedding-3-large route=/v1/embeddings " in lines[1]
    assert " use=100%" in lines[0]
    assert all(len(line) > 80 for line in lines)  # not cut to a terminal's width


async def _queue_through(gov: Any, work: Sequence[tuple[str, str | None]]) -> None:
    """One slot, work that takes 20 ms: each request waits for those admitted before it."""
    import asyncio

    async def answer() -> None:
        await asyncio.sleep(0.02)

    await asyncio.gather(
        *(gov.run(answer, model="m", priority=cls, tenant=tenant) for cls, tenant in work)
    )


async def test_queue_wait_per_class_and_tenant_when_several_waited() -> None:
    from pacekeeper import Governor, Limits
    from pacekeeper.report.summary import queue_wait_rows, queue_wait_table

    gov = Governor(limits=Limits(concurrency=1, min_share=0.0))
    work = [("batch", "nightly")] * 4 + [("batch", "etl")] * 2 + [("interactive", None)] * 2
    await _queue_through(gov, work)
    stats = gov.stats()
    rows = queue_wait_rows(stats)
    assert [(r["class"], r["tenant"], r["reqs"]) for r in rows] == [
        ("interactive", "all", "2"),
        ("batch", "all", "6"),
        ("batch", "etl", "2"),
        ("batch", "nightly", "4"),
    ]
    (snap,) = stats
    by_class = {w.priority: w for w in snap.queue_wait_by_class}
    # the interactive requests went before every batch one still waiting
    assert by_class["interactive"].p95_s < by_class["batch"].p95_s
    lines = summary_lines(stats)
    assert len(lines) == 1 + len(rows)
    assert lines[1].startswith("queue_wait model=m route=/ class=interactive tenant=all reqs=2 ")
    assert "wait_p99=" in lines[1]
    table = queue_wait_table(stats)
    assert table is not None
    assert [c.header for c in table.columns] == [
        "model", "class", "tenant", "reqs", "wait p50", "wait p95", "wait p99"
    ]  # fmt: skip
    as_json = snap.as_dict()
    assert as_json["queue_wait_by_tenant"][0]["tenant"] == "etl"
    import json

    json.dumps(as_json)  # --metrics writes it as JSON


async def test_one_class_of_one_tenant_shows_no_queue_wait_rows() -> None:
    from pacekeeper import Governor, Limits
    from pacekeeper.report.summary import queue_wait_rows, queue_wait_table

    gov = Governor(limits=Limits(concurrency=1))
    await _queue_through(gov, [("batch", "nightly")] * 3)
    assert queue_wait_rows(gov.stats()) == []
    assert queue_wait_table(gov.stats()) is None
    assert len(summary_lines(gov.stats())) == 1
