"""Issue 13's rows (``--only extras --extras forecast,cap``; part of the full run).

* forecast: ``pacekeeper run --dry-run --sample 20`` forecasts the rest of a batch (time and
  cost), then the same command without ``--dry-run`` runs it; the forecast's error against what
  was measured (target: within 10%), per seed.
* cap: ``pacekeeper run --max-cost USD`` on a batch that costs several times the cap: the share
  of the cap spent when the run stopped (target: >= 95%, never above), per seed and
  completion-length shape.

Both go through the real CLI (subprocesses) against a simulator process, with genai-prices'
price of gpt-4o-mini; what was spent is recomputed here from the answers' own usage in the
results file, not taken from pacekeeper's figures.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.runner import log
from pacekeeper.sim import Latency, ModelLimits, Scenario, SimulatorProcess

MODEL = "gpt-4o-mini"
FORECAST_TARGET = 0.10
CAP_TARGET = 0.95
_PACEKEEPER = [sys.executable, "-m", "pacekeeper"]


def _price() -> tuple[float, float]:
    from pacekeeper.prices import genai_price

    price = genai_price(MODEL, "openai")
    assert price is not None
    return price.input_usd_per_mtok, price.output_usd_per_mtok


def _write_input(path: Path, n: int, seed: int, max_tokens: Any) -> None:
    rng = random.Random(seed)
    words = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
    with path.open("w") as f:
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(10, 120)))
            budget = max_tokens(rng) if callable(max_tokens) else max_tokens
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"{i} {text}"}],
                "max_tokens": budget,
            }
            line = {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")


def _spent(results: Path, skip: set[str] | None = None) -> tuple[float, int]:
    """USD the answers in a results file cost at gpt-4o-mini's price, from their usage."""
    rate_in, rate_out = _price()
    total, n = 0.0, 0
    for line in results.read_text().splitlines():
        record = json.loads(line)
        if record["error"] is not None or (skip and record["custom_id"] in skip):
            continue
        usage = record["response"]["body"]["usage"]
        total += (usage["prompt_tokens"] * rate_in + usage["completion_tokens"] * rate_out) / 1e6
        n += 1
    return total, n


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_PACEKEEPER, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def _forecast_one(seed: int, quick: bool) -> dict[str, Any]:
    rpm = 1200
    n = 220 if quick else 620  # 20 sampled, then 200 (10 s) or 600 (30 s) at 1200 rpm
    scenario = Scenario(
        models={MODEL: ModelLimits(rpm=rpm, tpm=10_000_000)},
        latency=Latency(ttft_s=0.2, per_token_s=0.002, spread=0.3),
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(scenario) as sim:
        folder = Path(tmp)
        _write_input(folder / "in.jsonl", n, seed, 400)
        base = ["run", "in.jsonl", "--base-url", sim.base_url, "--progress", "none"]
        sample = _cli([*base, "--dry-run", "--sample", "20", "--metrics", "f.json"], folder)
        if sample.returncode != 0:
            raise RuntimeError(f"dry run failed: {sample.stderr[-500:]}")
        forecast = json.loads((folder / "f.json").read_text())
        sampled = {
            json.loads(line)["custom_id"]
            for line in (folder / "in.results.jsonl").read_text().splitlines()
        }
        started = time.monotonic()
        done = _cli([*base, "--metrics", "m.json"], folder)
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"run failed: {done.stderr[-500:]}")
        measured = json.loads((folder / "m.json").read_text())
        spent, answered = _spent(folder / "in.results.jsonl", skip=sampled)
    row = forecast["models"][0]
    time_s = row["minutes"] * 60.0
    # What the limits force: from the first request sent to the last answer (the process's
    # start-up, loading the tokenizer, is not part of the forecast; process_s shows it).
    elapsed = measured["models"][0]["elapsed_s"]
    return {
        "seed": seed,
        "requests": row["requests"],
        "answered": answered,
        "forecast_s": round(time_s, 2),
        "measured_s": round(elapsed, 2),
        "run_s": round(measured["elapsed_s"], 2),
        "process_s": round(wall, 2),
        "time_error": round(abs(time_s - elapsed) / elapsed, 4),
        "binding": row["binding_limit"],
        "forecast_usd": row["cost_expected_usd"],
        "range_usd": [row["cost_low_usd"], row["cost_high_usd"]],
        "measured_usd": spent,
        "cost_error": round(abs(row["cost_expected_usd"] - spent) / spent, 4),
        "margin_usd": row["cost_expected_margin_usd"],
        "within_margin": abs(row["cost_expected_usd"] - spent) <= row["cost_expected_margin_usd"],
    }


def forecast_row(quick: bool) -> dict[str, Any]:
    runs = []
    for seed in (1, 2) if quick else (1, 2, 3):
        log(f"[extras] forecast seed {seed} ...")
        runs.append(_forecast_one(seed, quick))
    worst_time = max(r["time_error"] for r in runs)
    worst_cost = max(r["cost_error"] for r in runs)
    return {
        "name": "forecast after a 20-request sample",
        "issue": "13",
        "kind": "cost",
        "runs": runs,
        "worst_time_error": worst_time,
        "worst_cost_error": worst_cost,
        "met": worst_time <= FORECAST_TARGET and worst_cost <= FORECAST_TARGET,
    }


_SHAPES: dict[str, Any] = {
    "uniform": 400,  # the simulator's answers, 16..200 tokens, never cut
    "cut": 64,  # three answers in four cut at max_tokens
    "mixed": lambda rng: rng.choice((24, 100, 400, 1000)),
}


def _cap_one(seed: int, shape: str, quick: bool) -> dict[str, Any]:
    n = 600 if quick else 2000
    rate_in, rate_out = _price()
    scenario = Scenario(
        models={MODEL: ModelLimits(rpm=30_000, tpm=100_000_000)},
        latency=Latency(ttft_s=0.05, per_token_s=0.0005, spread=0.3),
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as tmp, SimulatorProcess(scenario) as sim:
        folder = Path(tmp)
        _write_input(folder / "in.jsonl", n, seed, _SHAPES[shape])
        # the cap: about a third of what the whole batch would cost
        cap = round(n / 3 * (60 * rate_in + 108 * rate_out) / 1e6, 6)
        base = ["run", "in.jsonl", "--base-url", sim.base_url, "--progress", "none"]
        done = _cli([*base, "--max-cost", str(cap)], folder)
        if done.returncode != 5:
            raise RuntimeError(f"exit {done.returncode}, not 5: {done.stderr[-500:]}")
        spent, answered = _spent(folder / "in.results.jsonl")
    worst_one = (130 * rate_in + 1000 * rate_out) / 1e6
    return {
        "seed": seed,
        "shape": shape,
        "cap_usd": cap,
        "spent_usd": spent,
        "share": round(spent / cap, 4),
        "answered": answered,
        "above": spent > cap,
        "within_one_request": cap - spent <= worst_one,
    }


def cap_row(quick: bool) -> dict[str, Any]:
    runs = []
    for shape in _SHAPES:
        for seed in (1,) if quick else (1, 2, 3):
            log(f"[extras] cap {shape} seed {seed} ...")
            runs.append(_cap_one(seed, shape, quick))
    lowest = min(r["share"] for r in runs)
    above = sum(r["above"] for r in runs)
    return {
        "name": "spend cap: share of the cap spent",
        "issue": "13",
        "kind": "cost",
        "runs": runs,
        "lowest_share": lowest,
        "runs_above_cap": above,
        "met": lowest >= CAP_TARGET and above == 0,
    }


def cost_row_names() -> set[str]:
    """The names a crashed cost row carries (it has no ``kind``)."""
    return {"forecast", "cap"}


def cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown of issue 13's rows."""
    rows = [r for r in rows if r.get("kind") == "cost" or r.get("issue") == "13"]
    if not rows:
        return []
    lines = ["## Issue 13: forecast and spend cap", ""]
    for row in rows:
        if "error" in row:
            lines += [f"- {row['name']}: crashed: {row['error']}", ""]
            continue
        if row["name"].startswith("forecast"):
            lines += [
                f"Forecast (`--dry-run --sample 20`, then the run) against what was measured; "
                f"target: error <= {FORECAST_TARGET:.0%}. Met: "
                f"{'yes' if row['met'] else '**no**'}.",
                "",
                "Measured s: from the first request sent to the last answer; run s: the whole "
                "run, start-up (the tokenizer's loading) included.",
                "",
                "| seed | requests | forecast s | measured s | run s | time error | binds | "
                "forecast $ (± at 95%) | range $ | measured $ | cost error | in ± |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in row["runs"]:
                low, high = r["range_usd"]
                lines.append(
                    f"| {r['seed']} | {r['requests']} | {r['forecast_s']:.1f} | "
                    f"{r['measured_s']:.1f} | {r['run_s']:.1f} | {r['time_error']:.1%} | "
                    f"{r['binding']} | "
                    f"{r['forecast_usd']:.5f} ± {r['margin_usd']:.5f} | "
                    f"{low:.5f} to {high:.5f} | {r['measured_usd']:.5f} | "
                    f"{r['cost_error']:.1%} | {'yes' if r['within_margin'] else 'no'} |"
                )
        else:
            lines += [
                f"Spend cap (`--max-cost`, about a third of the batch's cost); target: >= "
                f"{CAP_TARGET:.0%} of the cap spent, never above. Met: "
                f"{'yes' if row['met'] else '**no**'}.",
                "",
                "| shape | seed | cap $ | spent $ | share | answered | above | within 1 request |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for r in row["runs"]:
                lines.append(
                    f"| {r['shape']} | {r['seed']} | {r['cap_usd']:.5f} | {r['spent_usd']:.5f} | "
                    f"{r['share']:.1%} | {r['answered']} | {'**yes**' if r['above'] else 'no'} | "
                    f"{'yes' if r['within_one_request'] else 'no'} |"
                )
        lines.append("")
    return lines
