"""Peak memory: requests queued in pacekeeper, and `pacekeeper run` on long inputs.

Each measure runs in a fresh process so that its peak is its own. Two Linux details matter:

- a child's ru_maxrss includes the high-water mark of the process it was forked from *before*
  exec (the kernel carries it over), so a child of the big benchmark process would report the
  benchmark's own size. `pacekeeper run` is therefore started from a small wrapper process
  (``python -m bench.rss batch ...``) that reports its child's wait4() usage;
- the queued measure reads VmHWM/VmRSS from /proc/self/status, after resetting the high-water
  mark (``5 > /proc/self/clear_refs``) once warmed up, so the growth is the queue's alone.

Both children print one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["batch_rss", "queued_rss"]

_QUEUE_LIMIT_S = 600.0


def _status_mb(field: str) -> float | None:
    """VmHWM (peak) or VmRSS (now) of this process, in MiB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _peak_mb() -> float:
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _now_mb() -> float:
    now = _status_mb("VmRSS")
    return now if now is not None else _peak_mb()


class _Stall:
    """An httpx2 transport that never answers: what n pending SDK calls cost by themselves
    (request objects, coroutines, tasks), the floor any queue in front of the wire pays."""

    def __init__(self) -> None:
        self.waiting = 0
        self._never = asyncio.Event()

    async def handle_async_request(self, request: Any) -> Any:
        self.waiting += 1
        await self._never.wait()
        raise RuntimeError("unreachable")

    async def aclose(self) -> None:
        pass


async def _queued(base_url: str, n: int, mode: str) -> dict[str, Any]:
    import httpx2
    import openai

    import pacekeeper
    from bench.workload import Workload

    wl = Workload(n=n)
    warm = openai.AsyncOpenAI(base_url=base_url, api_key="x")
    stall: _Stall | None = None
    gov: pacekeeper.Governor | None = None
    gate: asyncio.Semaphore | None = None
    waiting = 0
    if mode in ("semaphore", "semaphore-args"):
        # What a program without pacekeeper writes to bound its calls: every call waits on an
        # asyncio.Semaphore before the SDK method (held here, so all of them wait).
        gate = asyncio.Semaphore(1)
        await gate.acquire()
        client = warm
    elif mode == "pacekeeper":
        # 1 rpm: the warm-up request spends the bucket, so every later one waits in the queue.
        gov = pacekeeper.Governor(limits=pacekeeper.Limits(rpm=1))
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=base_url, api_key="x"), gov)
        warm = client
    else:
        stall = _Stall()
        transport: Any = stall
        client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key="x",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpx2Client(
                transport=transport, timeout=httpx2.Timeout(None)
            ),
        )

    def arguments(i: int) -> dict[str, Any]:
        return {
            "model": wl.model,
            "messages": [{"role": "user", "content": wl.prompt(i)}],
            "max_tokens": wl.max_tokens,
            "extra_headers": {"x-client-request-id": wl.request_id(i)},
        }

    def create(c: openai.AsyncOpenAI, i: int) -> Any:
        return c.chat.completions.create(**arguments(i))

    async def gated(i: int) -> Any:
        nonlocal waiting
        assert gate is not None
        waiting += 1
        async with gate:
            return await create(client, i)

    async def gated_with_arguments(kwargs: dict[str, Any]) -> Any:
        # The call's arguments built before the wait, as a queued SDK call holds them.
        nonlocal waiting
        assert gate is not None
        waiting += 1
        async with gate:
            return await client.chat.completions.create(**kwargs)

    t_first = time.monotonic()
    await create(warm, -1)  # lazy imports, the tokenizer, a connection: before the baseline
    first_request_s = time.monotonic() - t_first
    gc.collect()
    # Without the reset, a transient peak of the imports would hide part of the growth;
    # with it failing, the baseline is today's RSS and the growth errs on the high side.
    peak_reset = _reset_peak()
    baseline = _now_mb()
    t0 = time.monotonic()
    if mode == "semaphore-args":
        tasks = [asyncio.create_task(gated_with_arguments(arguments(i))) for i in range(n)]
    elif gate is not None:
        tasks = [asyncio.create_task(gated(i)) for i in range(n)]
    else:
        tasks = [asyncio.create_task(create(client, i)) for i in range(n)]

    def queued() -> int:
        if gate is not None:
            return waiting
        if gov is not None:
            return sum(lane.queued for lane in gov.lanes)
        assert stall is not None
        return stall.waiting

    # Polling: the queue length is the governor's state, it has no event to wait on.
    while queued() < n and time.monotonic() - t0 < _QUEUE_LIMIT_S:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    all_queued_s = time.monotonic() - t0
    count = queued()
    peak = _peak_mb()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "mode": mode,
        "requests": n,
        "queued": count,
        "seconds_to_queue": round(all_queued_s, 2),
        "baseline_mb": round(baseline, 1),
        "peak_mb": round(peak, 1),
        "growth_mb": round(peak - baseline, 1),
        "per_request_kb": round((peak - baseline) * 1024 / n, 2),
        "peak_reset": peak_reset,
        "first_request_s": round(first_request_s, 3),
    }


def queued_rss(base_url: str, n: int, mode: str) -> dict[str, Any]:
    """Peak RSS growth of a fresh process with ``n`` SDK calls queued at once: through
    pacekeeper (mode "pacekeeper"), waiting on a bare asyncio.Semaphore before the SDK method
    ("semaphore": the arguments are built after the wait; "semaphore-args": before it, as a
    call queued in pacekeeper holds them), or stalled at a transport that never answers
    ("floor")."""
    command = [sys.executable, "-m", "bench.rss", "queued", base_url, str(n), mode]
    proc = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if proc.returncode != 0:
        return {"mode": mode, "error": proc.stderr.strip()[-500:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def batch_rss(
    base_url: str,
    lines: int,
    workdir: Path,
    command: list[str],
    extra_args: tuple[str, ...] = (),
    *,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Peak RSS of `pacekeeper run` on a ``lines``-line input (the child's own ru_maxrss,
    from wait4), and whether its output holds every custom_id exactly once (``dry_run``:
    the extra arguments include --dry-run, which writes nothing)."""
    from bench.workload import Workload

    wl = Workload(n=lines, short=True)
    src, out = workdir / f"rss-{lines}.jsonl", workdir / f"rss-{lines}.out.jsonl"
    out.unlink(missing_ok=True)
    with src.open("w", encoding="utf-8") as fh:
        for i in range(lines):
            fh.write(wl.batch_line(i) + "\n")
    argv = [*command, "run", str(src), "-o", str(out), "--base-url", base_url]
    argv += ["--progress", "none", *extra_args]
    wrapper = subprocess.run(
        [sys.executable, "-m", "bench.rss", "batch", "--", *argv],
        env={**os.environ, "OPENAI_API_KEY": "x"},
        capture_output=True,
        text=True,
        check=True,
    )
    usage = json.loads(wrapper.stdout.strip().splitlines()[-1])
    ids: set[str] = set()
    written = 0
    if not dry_run:
        with out.open(encoding="utf-8") as fh:
            for line in fh:
                written += 1
                ids.add(json.loads(line)["custom_id"])
        out.unlink()
    src.unlink()
    return {
        "lines": lines,
        "args": " ".join(extra_args),
        "exit_code": usage["exit_code"],
        "peak_rss_mb": usage["peak_rss_mb"],
        "wall_s": usage["wall_s"],
        "cpu_s": usage["cpu_s"],
        "lines_per_s": round(lines / usage["wall_s"]),
        "output_lines": written,
        "distinct_ids": len(ids),
        "exactly_once": dry_run or written == lines == len(ids),
    }


def _measure_child(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` from this small process; its peak RSS and CPU from wait4()."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return {
        "exit_code": proc.returncode,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "wall_s": round(time.monotonic() - t0, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
    }


def _main() -> int:
    if sys.argv[1:2] == ["batch"]:
        argv = sys.argv[2:]
        print(json.dumps(_measure_child(argv[1:] if argv[:1] == ["--"] else argv)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.rss")
    parser.add_argument("what", choices=["queued"])
    parser.add_argument("base_url")
    parser.add_argument("n", type=int)
    parser.add_argument("mode", choices=["pacekeeper", "floor", "semaphore", "semaphore-args"])
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_queued(args.base_url, args.n, args.mode))))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
