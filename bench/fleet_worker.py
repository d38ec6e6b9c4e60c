"""One process of the ``fleet3`` contender (started by :func:`bench.contenders.run_fleet3`):
every ``stride``-th request of a workload, from ``offset``, through ``pacekeeper.wrap()`` with
nothing configured, sharing what it learns with the other processes through one Redis
namespace.

Prints "ready", waits for a line on stdin (so that all start together), and prints one JSON
line: when it started and finished (wall clock), the fate of each of its requests and every
answer it saw.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time

import openai

import pacekeeper
from bench.contenders import _drive, _Recorder, _sdk_call
from bench.workload import Workload


async def main(args: argparse.Namespace) -> None:
    spec = json.loads(args.workload)
    wl = Workload(**{**spec, "models": tuple(spec["models"])})
    backend = pacekeeper.RedisBackend(args.redis, namespace=args.namespace)
    answers: list[tuple[float, int | None]] = []
    gov = pacekeeper.Governor(backend=backend, hooks=[_Recorder(answers)])
    pacekeeper.warm_up(wl.models or [wl.model])  # as the one-process contender does
    client = pacekeeper.wrap(
        openai.AsyncOpenAI(base_url=args.base_url, api_key="x", timeout=args.timeout), gov
    )
    mine = list(range(args.offset, wl.n, args.stride))
    call = _sdk_call(client, wl)
    print("ready", flush=True)
    sys.stdin.readline()
    tracer = asyncio.ensure_future(_trace(gov)) if os.environ.get("PACEKEEPER_TRACE") else None
    outcome = await _drive(len(mine), lambda k: call(mine[k]), args.cap)
    if tracer is not None:
        tracer.cancel()
    finished = time.time()
    await client.close()
    backend.close()
    report = {
        **{f: getattr(outcome, f) for f in ("started_at", "ok", "failed", "lost", "unexplained")},
        "finished_at": finished,
        "reasons": dict(outcome.reasons),
        "samples": outcome.samples,
        "answers": answers,
        "lanes": [repr(lane) for lane in gov.lanes],
    }
    print(json.dumps(report), flush=True)


async def _trace(gov: pacekeeper.Governor) -> None:
    """PACEKEEPER_TRACE=1: every lane's state on stderr twice a second (to diagnose a run)."""
    t0 = time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        for lane in gov.lanes:
            print(f"{time.monotonic() - t0:6.2f} {lane!r}", file=sys.stderr, flush=True)


def workload_arg(wl: Workload) -> str:
    """The workload as this worker's ``--workload`` argument."""
    return json.dumps(dataclasses.asdict(wl))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--workload", required=True, help="the Workload's fields, as JSON")
    parser.add_argument("--offset", type=int, required=True)
    parser.add_argument("--stride", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--cap", type=float, default=600.0)
    asyncio.run(main(parser.parse_args()))
