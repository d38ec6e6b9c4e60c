"""One of K processes sharing a quota through Redis (started by bench.sharing).

Prints "ready", waits for a line on stdin (so that all start together), sends its requests
through a governed openai client, and prints one JSON line: ok, failed, started_at, finished_at
(wall clock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import openai

import pacekeeper


async def main(args: argparse.Namespace) -> None:
    backend = pacekeeper.RedisBackend(args.redis, namespace=args.namespace)
    gov = pacekeeper.Governor(
        backend=backend, retry=pacekeeper.RetryPolicy(max_attempts=args.max_attempts)
    )
    client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=args.base_url, api_key="x"), gov)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()

    async def one(i: int) -> bool:
        try:
            await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"{args.tag} request {i}"}],
                max_tokens=100,
                extra_headers={"x-client-request-id": f"{args.tag}-{i}"},
            )
        except openai.APIError:
            return False
        return True

    results = await asyncio.gather(*(one(i) for i in range(args.count)))
    finished = time.time()
    backend.close()
    print(
        json.dumps(
            {
                "ok": sum(results),
                "failed": len(results) - sum(results),
                "started_at": started,
                "finished_at": finished,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--tag", default="w")
    parser.add_argument("--max-attempts", type=int, default=6)
    asyncio.run(main(parser.parse_args()))
