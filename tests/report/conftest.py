"""Fixtures for the report tests: one real batch run against the simulator (shared by the
end-to-end and browser tests), and headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacekeeper.batch._runner import BatchJob, BatchResult, run_batch
from pacekeeper.core.config import Limits
from pacekeeper.core.governor import Governor
from pacekeeper.prices import price_lookup
from pacekeeper.report import ReportRecorder
from pacekeeper.sim import Faults, Latency, ModelLimits, Scenario, Simulator

CHROMIUM_HINT = (
    "headless Chromium is needed for the browser tests: install it with "
    "`apt-get install -y chromium` (Debian/Ubuntu; .ci/run does this), or point "
    "PACEKEEPER_CHROMIUM at a chromium/chrome binary"
)


@dataclass(frozen=True)
class SimulatedRun:
    log: Path
    """The --log records file the batch runner wrote."""
    recorder: ReportRecorder
    """A ReportRecorder that saw the same records in memory."""
    result: BatchResult
    mini_requests: int
    big_requests: int


def write_batch(path: Path, *, mini: int, big: int) -> None:
    """gpt-4o-mini with a modest max_tokens; gpt-4o with a max_tokens far above the replies
    (the simulator's replies are 16 to 200 tokens)."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(mini + big):
            model, max_tokens = ("gpt-4o", 1000) if i < big else ("gpt-4o-mini", 120)
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"Explain item {i} in two sentences."}],
                "max_tokens": max_tokens,
            }
            line = {"custom_id": f"line-{i:04d}", "method": "POST", "url": CHAT, "body": body}
            f.write(json.dumps(line) + "\n")


CHAT = "/v1/chat/completions"


@pytest.fixture(scope="session")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> SimulatedRun:
    return run_against_simulator(tmp_path_factory.mktemp("simulated-run"))


def run_against_simulator(folder: Path) -> SimulatedRun:
    """About 8 seconds of a real run: gpt-4o-mini bound by its rpm, gpt-4o by its tpm (its
    max_tokens reserve is five times what replies use), 500s, 503s and dropped connections."""
    batch, log = folder / "batch.jsonl", folder / "attempts.jsonl"
    mini, big = 120, 16
    write_batch(batch, mini=mini, big=big)
    scenario = Scenario(
        models={
            "gpt-4o-mini": ModelLimits(rpm=1200, tpm=1_000_000),
            "gpt-4o": ModelLimits(rpm=600, tpm=150_000),
        },
        latency=Latency(ttft_s=0.2, per_token_s=0.003, spread=0.3),
        faults=Faults(http_500=0.02, http_503=0.01, drop=0.01),
        seed=11,
    )
    recorder = ReportRecorder()
    with Simulator(scenario) as sim:
        gov = Governor(hooks=[recorder], prices=price_lookup(provider="openai"))
        job = BatchJob(
            input=batch,
            output=folder / "results.jsonl",
            base_url=sim.base_url,
            api_key="test",
            log_path=log,
        )
        result = asyncio.run(run_batch(job, gov))
    return SimulatedRun(log, recorder, result, mini, big)


@dataclass(frozen=True)
class ClassesRun:
    log: Path
    recorder: ReportRecorder
    result: BatchResult
    interactive: int


@pytest.fixture(scope="session")
def classes_run(tmp_path_factory: pytest.TempPathFactory) -> ClassesRun:
    return run_with_classes(tmp_path_factory.mktemp("classes-run"))


def run_with_classes(folder: Path) -> ClassesRun:
    """About 4 seconds of a real run on one 1,200-rpm key: a batch (class batch, tenant
    nightly) saturating it, and an interactive caller (tenant chat) sending now and then
    through the same governor."""
    import openai

    import pacekeeper

    batch, log = folder / "batch.jsonl", folder / "attempts.jsonl"
    write_batch(batch, mini=80, big=0)
    scenario = Scenario(
        models={"gpt-4o-mini": ModelLimits(rpm=1200, tpm=10_000_000)},
        latency=Latency(ttft_s=0.05, per_token_s=0.0005),
        seed=3,
    )
    recorder = ReportRecorder()
    interactive = 8

    async def main(sim: Simulator, gov: Governor) -> BatchResult:
        job = BatchJob(
            input=batch,
            output=folder / "results.jsonl",
            base_url=sim.base_url,
            api_key="test",
            log_path=log,
            tenant="nightly",
        )
        running = asyncio.create_task(run_batch(job, gov))
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="t"), gov)
        try:
            await asyncio.sleep(0.5)  # the batch's queue has built up
            for i in range(interactive):
                with pacekeeper.priority("interactive", tenant="chat"):
                    await client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}]
                    )
                await asyncio.sleep(0.2)
        finally:
            await client.close()
        return await running

    with Simulator(scenario) as sim:
        gov = Governor(hooks=[recorder], limits=Limits(rpm=1200, burst_s=0.1))
        result = asyncio.run(main(sim, gov))
    return ClassesRun(log, recorder, result, interactive)


def find_chromium() -> str | None:
    explicit = os.environ.get("PACEKEEPER_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser binary; skips without it, except on CI (PACEKEEPER_CI=1), where it fails."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("PACEKEEPER_CI") == "1":
            pytest.fail(f"PACEKEEPER_CI=1 and no Chromium found: {CHROMIUM_HINT}")
        pytest.skip(CHROMIUM_HINT)
    return binary


@pytest.fixture
def artifacts_dir() -> Iterator[Path | None]:
    """Where to copy test artifacts for people to look at: $PACEKEEPER_ARTIFACTS, if set."""
    target = os.environ.get("PACEKEEPER_ARTIFACTS")
    if not target:
        yield None
        return
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    yield path
