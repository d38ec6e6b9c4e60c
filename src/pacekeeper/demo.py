"""``pacekeeper demo``: the main job, end to end, with no key and no network.

It starts the built-in simulator in this process with a realistic scenario (two models, each
limited in requests and tokens per minute, with latency and a few faults), writes a batch file
of a few hundred requests, runs it through ``pacekeeper run``'s engine with the live display,
and ends with the per-model table and what the server saw (how many 429s it had to send, and
whether any request arrived twice).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacekeeper.sim import Scenario

__all__ = ["configure_parser", "demo_scenario", "run", "write_demo_batch"]

_TOPICS = (
    "the water cycle",
    "how a bloom filter works",
    "why the sky is blue",
    "the history of the printing press",
    "how vaccines train the immune system",
    "what a hash table is",
    "the rules of chess",
    "how tides work",
)


def demo_scenario(*, seed: int = 7) -> Scenario:
    """Two models with per-minute limits enforced per second, latency, and some faults."""
    from pacekeeper.sim import Faults, Latency, ModelLimits, Scenario

    return Scenario(
        models={
            "gpt-4o-mini": ModelLimits(rpm=1200, tpm=200_000),
            "gpt-4o": ModelLimits(rpm=300, tpm=40_000),
        },
        latency=Latency(ttft_s=0.25, per_token_s=0.004, spread=0.3),
        faults=Faults(http_500=0.01, http_503=0.01, drop=0.005, malformed=0.005),
        seed=seed,
    )


def write_demo_batch(path: Path, *, requests: int) -> None:
    """An OpenAI Batch API file: three quarters for gpt-4o-mini, a quarter for gpt-4o."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(requests):
            model = "gpt-4o" if i % 4 == 3 else "gpt-4o-mini"
            topic = _TOPICS[i % len(_TOPICS)]
            line = {
                "custom_id": f"demo-{i:04d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [
                        {"role": "system", "content": "You explain things briefly."},
                        {"role": "user", "content": f"In two sentences, explain {topic}. #{i}"},
                    ],
                    "max_tokens": 120,
                },
            }
            f.write(json.dumps(line) + "\n")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a batch of a few hundred requests against the built-in rate-limited simulator, "
        "with a live display and the per-model summary. No API key, no network."
    )
    parser.add_argument("--requests", type=int, default=400, help="how many (default 400)")
    parser.add_argument("--seed", type=int, default=7, help="the simulator's seed")
    parser.add_argument(
        "--dir", type=Path, help="keep the input and results here (default: a temporary dir)"
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write an HTML report of the run (charts and a verdict); needs pacekeeper[report]",
    )


def run(args: argparse.Namespace) -> int:
    if args.requests < 1:
        sys.stderr.write("pacekeeper demo: error: --requests must be at least 1\n")
        return 2
    if args.report is not None:
        from pacekeeper.report import MissingExtraError, require_matplotlib

        try:
            require_matplotlib()
        except MissingExtraError as exc:
            sys.stderr.write(f"pacekeeper demo: error: {exc}\n")
            return 2
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        return _run_in(args.dir, args)
    with tempfile.TemporaryDirectory(prefix="pacekeeper-demo-") as tmp:
        return _run_in(Path(tmp), args)


def _run_in(folder: Path, args: argparse.Namespace) -> int:
    # Imported here: building the CLI's parser must not load the simulator and uvicorn.
    from rich.console import Console

    from pacekeeper.batch._progress import BatchProgress
    from pacekeeper.batch._runner import BatchJob, BatchResult, run_batch
    from pacekeeper.core.governor import Governor
    from pacekeeper.prices import price_lookup
    from pacekeeper.report import ReportRecorder
    from pacekeeper.report.summary import summary_lines, summary_table
    from pacekeeper.sim import Simulator

    console = Console()
    batch = folder / "demo-batch.jsonl"
    results = folder / "demo-batch.results.jsonl"
    results.unlink(missing_ok=True)
    write_demo_batch(batch, requests=args.requests)
    scenario = demo_scenario(seed=args.seed)
    console.print(
        "[bold]pacekeeper demo[/bold]: the simulator enforces gpt-4o-mini at 1200 rpm / 200k tpm "
        "and gpt-4o at 300 rpm / 40k tpm (per second, as providers do), with ~2.5% faults. "
        "pacekeeper is told nothing: it learns the limits from the response headers."
    )
    recorder = ReportRecorder() if args.report is not None else None
    with Simulator(scenario) as sim:
        # The simulator answers with OpenAI's model names: OpenAI's prices show what it cost.
        gov = Governor(
            hooks=[recorder] if recorder is not None else [],
            prices=price_lookup(provider="openai"),
        )
        job = BatchJob(input=batch, output=results, base_url=sim.base_url, api_key="demo")

        async def go() -> BatchResult:
            with BatchProgress(gov, total=args.requests) as display:
                return await run_batch(job, gov, on_progress=display.update)

        result = asyncio.run(go())
        server = sim.stats()
    if console.is_terminal:
        console.print(summary_table(gov.stats(), title="what pacekeeper saw"))
    else:  # logs and CI: full width, one key=value line per model
        for line in summary_lines(gov.stats()):
            print(f"what pacekeeper saw: {line}", flush=True)
    received = server.get("requests_received", 0)
    by_status = server.get("by_status", {})
    console.print(
        f"what the server saw: {received} requests for {args.requests} lines, "
        f"{by_status.get('429', 0)} answered 429, "
        f"{len(server.get('duplicates', {}))} successful duplicates; statuses {by_status}"
    )
    console.print(f"results: {results if args.dir else '(temporary directory)'}")
    if recorder is not None:
        summary = recorder.write(args.report, title="pacekeeper demo")
        for finding in summary.findings:
            console.print(f"  - {finding.text}")
        console.print(f"report: {summary.output_path}")
    return 0 if result.all_succeeded else 1
