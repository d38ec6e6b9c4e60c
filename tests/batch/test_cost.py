"""Costs, the spend cap and the forecast of ``pacekeeper run``, against the real simulator.

Prices are pacekeeper.toml's (``[models."gpt-4o-mini".price]``), so that what a run spent is
known exactly from the usage in its own results."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pacekeeper.batch._cli import EXIT_OK, EXIT_SPEND_CAP
from pacekeeper.sim import Latency, ModelLimits, Scenario

from .conftest import StartSim
from .helpers import assert_exactly_once, batch_line, read_results, run_cli, succeeded, write_lines

INPUT_USD, OUTPUT_USD = 20.0, 60.0  # per million tokens
CONFIG = f"""
[models."gpt-4o-mini".price]
input = {INPUT_USD}
output = {OUTPUT_USD}
"""


def spent_usd(records: list[dict[str, Any]]) -> float:
    """What the answers in a result file cost at the configured prices (their own usage)."""
    total = 0.0
    for record in succeeded(records):
        usage = record["response"]["body"]["usage"]
        total += (
            usage["prompt_tokens"] * INPUT_USD + usage["completion_tokens"] * OUTPUT_USD
        ) / 1e6
    return total


def write_input(path: Path, n: int, seed: int, max_tokens: Any) -> list[str]:
    rng = random.Random(seed)
    ids = [f"c-{seed}-{i:04d}" for i in range(n)]
    rows = []
    for cid in ids:
        words = " ".join(
            rng.choice(("alpha", "beta", "gamma", "delta")) for _ in range(rng.randint(5, 60))
        )
        tokens = max_tokens(rng) if callable(max_tokens) else max_tokens
        row = batch_line(cid, words)
        row["body"]["max_tokens"] = tokens
        rows.append(row)
    write_lines(path, rows)
    return ids


DISTRIBUTIONS = {
    # the simulator answers 16..200 tokens (by the prompt's hash), cut at max_tokens:
    "uniform": 400,  # never cut: uniform over 16..200
    "cut": 64,  # three answers in four hit max_tokens: a mass at the top
    "mixed": lambda rng: rng.choice((24, 100, 400, 1000)),  # budgets far apart
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("shape", sorted(DISTRIBUTIONS))
def test_a_capped_run_stops_within_one_request_below_the_cap_and_resumes(
    start_sim: StartSim, tmp_path: Path, seed: int, shape: str
) -> None:
    sim = start_sim(Scenario(seed=seed, latency=Latency(ttft_s=0.002, per_token_s=0.0)))
    (tmp_path / "pacekeeper.toml").write_text(CONFIG)
    ids = write_input(tmp_path / "in.jsonl", 300, seed, DISTRIBUTIONS[shape])
    cap = 0.25
    args = ["run", "in.jsonl", "--base-url", sim.base_url, "--concurrency", "16"]
    done = run_cli([*args, "--max-cost", str(cap), "--metrics", "m.json"], cwd=tmp_path)
    assert done.code == EXIT_SPEND_CAP, done.stderr
    records = read_results(tmp_path / "in.results.jsonl")
    spent = spent_usd(records)
    # the worst single request: its prompt and a whole max_tokens answer
    worst = max((60 * 2 + 30) * INPUT_USD / 1e6 + 1000 * OUTPUT_USD / 1e6, 0.0)
    assert spent <= cap
    assert spent >= cap - worst, (spent, cap)
    assert sim.stats()["requests_received"] == len(records)  # nothing sent and not written
    remaining = len(ids) - len(records)
    assert remaining > 0
    assert f"stopped by the spend cap of $0.2500 with ${spent:.4f} spent" in done.stderr
    assert f"{remaining} lines remain (expected $" in done.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["cost"]["spent_usd"] == pytest.approx(spent, rel=1e-6)
    assert metrics["cost"]["remaining"]["requests"] == remaining
    assert metrics["stopped_for_cost"]

    resumed = run_cli([*args, "--max-cost", "100"], cwd=tmp_path)
    assert resumed.code == EXIT_OK, resumed.stderr
    records = read_results(tmp_path / "in.results.jsonl")
    assert_exactly_once(records, ids)
    assert sim.stats()["requests_received"] == len(ids)  # each line sent once, across both


def test_the_summary_and_progress_show_the_cost_and_an_unknown_price_is_said_once(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(Scenario())
    (tmp_path / "pacekeeper.toml").write_text(CONFIG)
    rows = [batch_line(f"a-{i}", model="gpt-4o-mini") for i in range(20)]
    rows += [batch_line(f"b-{i}", model="my-finetune") for i in range(5)]
    write_lines(tmp_path / "in.jsonl", rows)
    done = run_cli(
        ["run", "in.jsonl", "--base-url", sim.base_url, "--progress", "plain"], cwd=tmp_path
    )
    assert done.code == EXIT_OK, done.stderr
    spent = spent_usd(
        [r for r in read_results(tmp_path / "in.results.jsonl") if r["custom_id"].startswith("a-")]
    )
    assert "model=gpt-4o-mini route=/v1/chat/completions reqs=20 ok=20" in done.stdout
    assert f"cost=${spent:.4f}" in done.stdout
    assert "model=my-finetune" in done.stdout
    assert "cost=unknown" in done.stdout
    assert done.stderr.count("cost unknown for my-finetune") == 1
    assert "spent=unknown" in done.stderr  # one model has no price: the total is unknown


def test_dry_run_forecasts_cost_and_time_and_learns_from_a_sample(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(
        Scenario(
            models={"gpt-4o-mini": ModelLimits(rpm=600, tpm=1_000_000)}, rate_limit_headers="openai"
        )
    )
    (tmp_path / "pacekeeper.toml").write_text(CONFIG)
    write_input(tmp_path / "in.jsonl", 100, 7, 400)
    base = ["run", "in.jsonl", "--base-url", sim.base_url, "--dry-run", "--metrics", "f.json"]
    before = run_cli(base, cwd=tmp_path)
    assert before.code == EXIT_OK, before.stderr
    forecast = json.loads((tmp_path / "f.json").read_text())
    row = forecast["models"][0]
    assert row["requests"] == 100
    assert row["completion_budget_tokens"] == 100 * 400
    assert row["cost_low_usd"] == pytest.approx(row["prompt_tokens"] * INPUT_USD / 1e6)
    assert row["cost_high_usd"] == pytest.approx(row["cost_low_usd"] + 100 * 400 * OUTPUT_USD / 1e6)
    assert row["cost_expected_usd"] is None  # no answer known yet
    assert row["minutes"] is None  # no limit configured, none learned yet
    assert sim.stats()["requests_received"] == 0

    sampled = run_cli([*base, "--sample", "20"], cwd=tmp_path)
    assert sampled.code == EXIT_OK, sampled.stderr
    assert sim.stats()["requests_received"] == 20
    assert len(read_results(tmp_path / "in.results.jsonl")) == 20  # the sample's results stay
    forecast = json.loads((tmp_path / "f.json").read_text())
    row = forecast["models"][0]
    assert forecast["sampled"] == 20
    assert row["requests"] == 80
    assert row["limits_learned"]
    assert row["rpm"] == 600
    assert row["binding_limit"] == "rpm"
    assert row["latency_s"] > 0
    assert row["minutes"] == pytest.approx(80 / 600 + row["latency_s"] / 60)
    assert row["cost_low_usd"] < row["cost_expected_usd"] < row["cost_high_usd"]
    # the 20 answers' mean is an estimate: the margin is 1.96 standard errors, over 80 lines
    assert 0 < row["cost_expected_margin_usd"] < row["cost_expected_usd"]
    assert "± $" in sampled.stdout
    assert "after a sample of 20 sent" in sampled.stderr
