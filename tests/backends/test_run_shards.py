"""Several machines split one batch: `pacekeeper run --shard K/N --redis URL`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pacekeeper.sim import Latency, ModelLimits, Scenario, Simulator

from .redis_server import RedisServer


def test_shards_share_the_quota_and_concatenate_to_one_result_per_line(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    lines = 240
    batch = tmp_path / "in.jsonl"
    with batch.open("w") as f:
        for i in range(lines):
            body = {"model": "m", "messages": [{"role": "user", "content": f"line {i}"}]}
            f.write(
                json.dumps(
                    {
                        "custom_id": f"c{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )
    scenario = Scenario(models={"m": ModelLimits(rpm=2400)}, latency=Latency(ttft_s=0.02))
    env = {**os.environ, "OPENAI_API_KEY": "sk-shard-test"}
    with Simulator(scenario) as sim:
        runs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pacekeeper",
                    "run",
                    str(batch),
                    "-o",
                    str(tmp_path / f"out-{k}.jsonl"),
                    "--shard",
                    f"{k}/3",
                    "--redis",
                    redis_server.url,
                    "--redis-namespace",
                    namespace,
                    "--base-url",
                    sim.base_url,
                    "--progress",
                    "none",
                    "--report",
                    str(tmp_path / f"report-{k}.html"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in (1, 2, 3)
        ]
        outcomes = [run.communicate(timeout=120) for run in runs]
        stats = sim.stats()
    for run, (out, err) in zip(runs, outcomes, strict=True):
        assert run.returncode == 0, err
        assert "sk-shard-test" not in out + err
    ids: list[str] = []
    for k in (1, 2, 3):
        for line in (tmp_path / f"out-{k}.jsonl").read_text().splitlines():
            record = json.loads(line)
            assert record["response"]["status_code"] == 200
            ids.append(record["custom_id"])
        assert (tmp_path / f"report-{k}.html").stat().st_size > 10_000
    assert sorted(ids) == sorted(f"c{i}" for i in range(lines))  # exactly once, all of them
    assert stats["by_status"].get("429", 0) <= 0.01 * lines  # one shared quota, not three
    assert stats["duplicates"] == {}
