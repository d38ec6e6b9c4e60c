"""A separate process sharing limits through Redis (run by the tests as a script).

    python worker.py send  --redis URL --namespace NS --base-url URL --count N [--tag T]
                           [--max-attempts A]
    python worker.py hold  --redis URL --namespace NS --slots K --lease-ttl S

``send`` sends N chat requests through a governed client and prints one JSON line of counts
(and when it started and finished: `time.monotonic()`, one clock for every process of the
machine, so that a step of the wall clock during a run cannot stretch the rates measured);
``hold`` takes K slots, prints "holding", and waits forever (to be killed with SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import openai

import pacekeeper
from pacekeeper.backends import RedisBackend


class SendTimes:
    """Keeps when each accepted attempt was sent, to measure the aggregate rate: on the
    monotonic clock (the hook runs as the answer is taken, so now less the latency), not the
    record's wall-clock `started_at`, which a clock step (a fresh CI machine's NTP) moves."""

    def __init__(self) -> None:
        self.started: list[float] = []

    def on_attempt(self, record: pacekeeper.AttemptRecord) -> None:
        if record.status == 200:
            self.started.append(time.monotonic() - record.latency_s)

    def on_request(self, record: pacekeeper.RequestRecord) -> None:
        pass


async def send(args: argparse.Namespace) -> None:
    backend = RedisBackend(args.redis, namespace=args.namespace)
    times = SendTimes()
    gov = pacekeeper.Governor(
        backend=backend,
        hooks=[times],
        retry=pacekeeper.RetryPolicy(max_attempts=args.max_attempts, retry_budget_ratio=1.0),
    )
    client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=args.base_url, api_key="x"), gov)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    started = time.monotonic()

    async def one(i: int) -> bool:
        try:
            with pacekeeper.priority(args.priority):
                await client.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": f"{args.tag} {i}"}],
                    max_tokens=20,
                    extra_headers={"x-client-request-id": f"{args.tag}-{i}"},
                )
        except openai.APIError:
            return False
        return True

    async def trace() -> None:  # PACEKEEPER_TRACE=1: the lanes' state on stderr, to debug
        while True:
            await asyncio.sleep(0.5)
            for lane in gov.lanes:
                print(f"{time.monotonic() - started:6.2f} {args.tag} {lane!r}", file=sys.stderr)

    tracer = asyncio.ensure_future(trace()) if os.environ.get("PACEKEEPER_TRACE") else None
    results = await asyncio.gather(*(one(i) for i in range(args.count)))
    if tracer is not None:
        tracer.cancel()
    finished = time.monotonic()
    stats = gov.stats()[0]
    report = {
        "ok": stats.ok,
        "failed": len(results) - sum(results),
        "rate_limited": stats.rate_limited,
        "sent_at": times.started,
        "started_at": started,
        "finished_at": finished,
    }
    print(json.dumps(report), flush=True)
    backend.close()


async def hold(args: argparse.Namespace) -> None:
    backend = RedisBackend(args.redis, namespace=args.namespace, lease_ttl_s=args.lease_ttl)
    gov = pacekeeper.Governor(limits=pacekeeper.Limits(concurrency=args.slots), backend=backend)
    lane = gov.lane("/v1/chat/completions", "m")
    permits = [await lane.acquire(0) for _ in range(args.slots)]
    print("holding", len(permits), flush=True)
    await asyncio.sleep(3600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("send", "hold"))
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--base-url")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--tag", default="w")
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--max-attempts", type=int, default=6)
    parser.add_argument("--model", default="m")
    parser.add_argument("--priority", default="interactive")
    args = parser.parse_args()
    asyncio.run(send(args) if args.mode == "send" else hold(args))


if __name__ == "__main__":
    main()
