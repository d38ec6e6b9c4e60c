"""A separate process spending against a spend cap shared through Redis (run by the tests).

    python spend_worker.py REDIS_URL NAMESPACE CAP_USD REQUESTS SEED

Admits up to REQUESTS requests (1000 prompt tokens, max_tokens 1000, answers of a random
length) at $1/$10 per million tokens, from threads and asyncio tasks together, until the
cap refuses; prints one JSON line: {"sent": n, "refused": m}.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import time

from pacekeeper import Governor, Limits, Price, SpendCap, SpendCapReached
from pacekeeper.backends import RedisBackend
from pacekeeper.core.classify import classify_response
from pacekeeper.core.tokens import TokenEstimate

PRICE = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=10.0)
ESTIMATE = TokenEstimate(prompt_tokens=1000, max_completion_tokens=1000, method="exact")
OK = classify_response(200, {}, None, now_wall_s=time.time())


def main() -> None:
    url, namespace, cap, count, seed = sys.argv[1:6]
    rng = random.Random(int(seed))
    gov = Governor(
        limits=Limits(concurrency=8),
        backend=RedisBackend(url, namespace=namespace),
        prices=lambda model: PRICE,
        budget=SpendCap(usd=float(cap), completion_quantile=1.0),
    )
    answers = [rng.randint(0, 1000) for _ in range(int(count))]
    counts = {"sent": 0, "refused": 0}
    lock = threading.Lock()

    def tally(key: str) -> None:
        with lock:
            counts[key] += 1

    def one_sync(answer: int) -> None:
        call = gov.call(route="/v1/chat/completions", model="m", estimate=ESTIMATE)
        try:
            permit = call.admit_sync()
        except SpendCapReached:
            tally("refused")
            return
        time.sleep(0.002)
        call.settle(permit, OK, prompt_tokens=1000, completion_tokens=answer)
        tally("sent")

    async def one_async(answer: int) -> None:
        call = gov.call(route="/v1/chat/completions", model="m", estimate=ESTIMATE)
        try:
            permit = await call.admit()
        except SpendCapReached:
            tally("refused")
            return
        await asyncio.sleep(0.002)
        call.settle(permit, OK, prompt_tokens=1000, completion_tokens=answer)
        tally("sent")

    half = len(answers) // 2
    threads = [threading.Thread(target=one_sync, args=(a,)) for a in answers[:half]]
    for t in threads:
        t.start()

    async def tasks() -> None:
        await asyncio.gather(*(one_async(a) for a in answers[half:]))

    asyncio.run(tasks())
    for t in threads:
        t.join()
    assert isinstance(gov.backend, RedisBackend)
    gov.backend.close()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
