"""Issue 14: a saturating batch and an interactive caller on one key (``--only priority``).

One simulated key at 1200 rpm (its own process). A ``pacekeeper run`` (batch, nothing else
configured) saturates it while an interactive caller sends 2 requests a second; the rows:

* **proxy, classes**: both through one ``pacekeeper proxy`` (in a thread of this process): the
  run sends ``x-pacekeeper-priority: batch`` (its default), the caller nothing (interactive);
* **proxy, no classes**: the same, the run told ``--priority interactive``: one class, first
  come first served, the comparison row;
* **Redis, classes**: no proxy; the run (``--redis``) and the caller (a governor on
  ``RedisBackend``, this process) share the key through a local redis-server.

Measured: the interactive requests' queue wait (p50/p95/p99, from the governor's records: the
proxy's, or the caller's own on Redis), and the total the key answered while both ran as a
share of its limit. Targets: p95 <= 250 ms, p99 <= 1 s, total >= 0.95.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench.contenders import pacekeeper_command
from bench.runner import log
from pacekeeper.sim import ModelLimits, Scenario, SimulatorProcess

RPM = 1200
INTERACTIVE_RPS = 2.0
P95_MAX_S = 0.25
P99_MAX_S = 1.0
TOTAL_MIN = 0.95
MODEL = "gpt-4o-mini"


CALLER_MAX_TOKENS = 64  # the caller's requests are told apart by their reserve (batch: 16)


class _Waits:
    """Queue waits of the interactive caller's requests (a governor hook); in the row without
    classes the run's requests are interactive too, so the caller's are told by their size."""

    def __init__(self) -> None:
        self.interactive: list[float] = []
        self.batch: list[float] = []

    def on_attempt(self, record: Any) -> None:
        pass

    def on_request(self, record: Any) -> None:
        if record.ok:
            caller = record.tokens_estimated >= CALLER_MAX_TOKENS
            (self.interactive if caller else self.batch).append(record.queued_s)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _batch_file(workdir: Path, n: int) -> Path:
    import json

    src = workdir / f"batch-{uuid.uuid4().hex[:6]}.jsonl"
    with src.open("w", encoding="utf-8") as f:
        for i in range(n):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"batch item {i}"}],
                "max_tokens": 16,
            }
            line = {"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return src


def _start_run(
    base_url: str,
    src: Path,
    workdir: Path,
    *,
    priority: str,
    redis: str | None,
    namespace: str | None = None,
) -> subprocess.Popen[str]:
    command = [
        *pacekeeper_command(),
        "run",
        str(src),
        "-o",
        str(workdir / f"out-{uuid.uuid4().hex[:6]}.jsonl"),
        "--base-url",
        base_url,
        "--progress",
        "none",
        "--priority",
        priority,
    ]
    if redis is not None:
        assert namespace is not None  # the caller's: both must share the key's state
        command += ["--redis", redis, "--redis-namespace", namespace]
    env = {**os.environ, "OPENAI_API_KEY": "x"}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


async def _interactive(base_url: str, gov: Any, duration_s: float) -> tuple[int, list[str]]:
    """2 requests a second for ``duration_s`` (through the proxy with ``gov`` None, else
    governed by ``gov`` here); returns how many failed."""
    import openai

    import pacekeeper

    if gov is None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=60)
    else:
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="x"), gov)
    failed = 0
    why: list[str] = []

    async def one(i: int) -> None:
        nonlocal failed
        try:
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"chat {i}"}],
                max_tokens=CALLER_MAX_TOKENS,
            )
        except Exception as exc:
            failed += 1
            why.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    tasks = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < duration_s:
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(max(0.0, started + i / INTERACTIVE_RPS - time.monotonic()))
    await asyncio.gather(*tasks)
    await client.close()
    return failed, why


def _row(
    name: str, *, classes: bool, redis: str | None, quick: bool, workdir: Path
) -> dict[str, Any]:
    import pacekeeper
    from pacekeeper.proxy import Proxy, ProxyConfig

    run_s = 15.0 if quick else 40.0
    warm_s = 3.0
    n_batch = int(RPM / 60 * (run_s + warm_s + 10))  # more than the key takes meanwhile
    scenario = Scenario(default=ModelLimits(rpm=RPM))
    waits = _Waits()
    # One namespace for the run and the caller, or they share nothing: the caller would go
    # at once into a key the run keeps full, and meet its 429s.
    namespace = f"prio-{uuid.uuid4().hex[:6]}"
    with SimulatorProcess(scenario) as sim:
        proxy = None
        backend = None
        if redis is None:
            gov = pacekeeper.Governor(hooks=[waits])
            proxy = Proxy(ProxyConfig(upstream=sim.base_url, port=0), gov).start()
            target, caller_gov = proxy.base_url, None
        else:
            from pacekeeper.backends import RedisBackend

            backend = RedisBackend(redis, namespace=namespace)
            caller_gov = pacekeeper.Governor(hooks=[waits], backend=backend)
            target = sim.base_url
        src = _batch_file(workdir, n_batch)
        run = _start_run(
            target,
            src,
            workdir,
            priority="batch" if classes else "interactive",
            redis=redis,
            namespace=namespace,
        )
        try:
            time.sleep(warm_s)  # the run saturates the key first
            before = sim.stats()["by_status"].get("200", 0)
            t0 = time.monotonic()
            failed, why = asyncio.run(_interactive(target, caller_gov, run_s))
            wall_s = time.monotonic() - t0
            answered = sim.stats()["by_status"].get("200", 0) - before
            run_alive = run.poll() is None
        finally:
            run.kill()
            run.wait()
            if proxy is not None:
                proxy.stop()
            if backend is not None:
                backend.close()
    chat = waits.interactive
    total = answered / (RPM / 60 * wall_s)
    row = {
        "name": name,
        "interactive": len(chat),
        "failed": failed,
        "p50_s": _quantile(chat, 0.5),
        "p95_s": _quantile(chat, 0.95),
        "p99_s": _quantile(chat, 0.99),
        "total": total,
        "wall_s": wall_s,
        "batch_saturating": run_alive,
        "failures": why[:3],
    }
    row["met"] = bool(
        row["p95_s"] <= P95_MAX_S
        and row["p99_s"] <= P99_MAX_S
        and total >= TOTAL_MIN
        and failed == 0
        and run_alive
    )
    return row


def measure_priority(*, quick: bool) -> dict[str, Any]:
    rows = []
    binary = shutil.which("redis-server")
    with tempfile.TemporaryDirectory(prefix="bench-prio-") as tmp:
        workdir = Path(tmp)
        plans: list[tuple[str, bool, bool]] = [
            ("proxy, classes (batch + interactive)", True, False),
            ("proxy, no classes (both interactive: FIFO)", False, False),
            ("Redis, classes (two processes)", True, True),
        ]
        for name, classes, shared in plans:
            log(f"[priority] {name} ...")
            redis_server = None
            try:
                if shared:
                    if binary is None:
                        rows.append({"name": name, "error": "redis-server is not on PATH"})
                        continue
                    from bench.sharing import LocalRedis

                    redis_server = LocalRedis(binary)
                url = redis_server.url if redis_server is not None else None
                row = _row(name, classes=classes, redis=url, quick=quick, workdir=workdir)
            except Exception as exc:  # one row's crash must not lose the others
                row = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                if redis_server is not None:
                    redis_server.close()
            log(f"[priority] {row}")
            rows.append(row)
    return {"rows": rows, "threads": threading.active_count()}


def priority_lines(section: dict[str, Any]) -> list[str]:
    if not section or not section.get("rows"):
        return []
    lines = [
        "## Priority classes (issue 14)",
        "",
        f"One simulated key at {RPM} rpm; a saturating `pacekeeper run` (batch) and an "
        f"interactive caller at {INTERACTIVE_RPS:g} requests/s. Targets: interactive queue wait "
        f"p95 <= {P95_MAX_S * 1000:.0f} ms, p99 <= {P99_MAX_S:g} s; the key's answers while "
        f"both ran >= {TOTAL_MIN} of its limit.",
        "",
        "| row | interactive requests | wait p50 ms | p95 ms | p99 ms | total / limit | "
        "failed | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        if "error" in row:
            lines.append(f"| {row['name']} | crashed: {row['error']} | — | — | — | — | — | no |")
            continue
        lines.append(
            f"| {row['name']} | {row['interactive']} | {row['p50_s'] * 1000:.0f} | "
            f"{row['p95_s'] * 1000:.0f} | {row['p99_s'] * 1000:.0f} | {row['total']:.3f} | "
            f"{row['failed']} | {'yes' if row['met'] else '**no**'} |"
        )
    return [*lines, ""]
