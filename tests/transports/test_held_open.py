"""The governed transport against a server that answers 200 at once and holds a waiting
request open (DeepSeek under load: blank lines before a JSON answer, ``: keep-alive``
comments in a stream; ``pacekeeper.sim``'s ``Queueing.keep_alive_s``). The headers then say
nothing of the wait: the usage must still be read, and the latency the lane learns from must
run to the answer's end, where the wait shows."""

from __future__ import annotations

import asyncio

import openai

import pacekeeper
from pacekeeper import Governor, Limits, RecordCollector
from pacekeeper.sim import Latency, Queueing, Scenario, Simulator

_SERVICE_S = 0.3


async def test_held_open_answers_are_counted_and_timed_to_their_end() -> None:
    records = RecordCollector()
    gov = Governor(limits=Limits(concurrency=6), hooks=[records])
    scenario = Scenario(
        queueing=Queueing(capacity=2, keep_alive_s=0.05), latency=Latency(ttft_s=_SERVICE_S)
    )
    with Simulator(scenario) as sim:
        client = pacekeeper.wrap(openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-t"), gov)

        async def plain(i: int) -> str | None:
            answer = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"plain {i}"}], max_tokens=3
            )
            return answer.choices[0].message.content

        async def streamed(i: int) -> int:
            stream = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"streamed {i}"}],
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = 0
            async for _ in stream:
                chunks += 1
            return chunks

        texts = await asyncio.gather(*(plain(i) for i in range(3)))
        chunks = await asyncio.gather(*(streamed(i) for i in range(3)))
        await client.close()
    assert all(texts)
    assert all(count >= 2 for count in chunks)
    assert len(records.requests) == 6
    assert all(record.ok for record in records.requests)
    # Usage read behind the blank lines, and in a stream among the comments.
    assert all(record.completion_tokens == 3 for record in records.requests)
    assert all(record.prompt_tokens for record in records.requests)
    # Three at once on a server of two: the last of each group waited a whole service
    # behind the first two, and its latency shows it though its headers came at once.
    for group in (records.requests[:3], records.requests[3:]):
        latencies = sorted(record.latency_s for record in group)
        assert latencies[-1] >= latencies[0] + 0.8 * _SERVICE_S
