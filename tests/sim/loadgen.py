"""A minimal keep-alive HTTP/1.1 load generator for measuring the simulator's throughput.

HTTP client libraries cost more CPU per request than the simulator does, so they would measure
themselves; this speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) to keep the
server busy from one core. Run:

    python tests/sim/loadgen.py [--seconds 5] [--connections 64] [--stream] [-- SIM_ARGS...]

It starts `python -m pacekeeper.sim` in a subprocess (its own core), floods it with chat
completions at zero latency and prints requests/s plus the server's CPU use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from types import ModuleType

from pacekeeper.sim import SimulatorProcess

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


@dataclass
class LoadResult:
    """What a load run achieved."""

    requests: int
    seconds: float
    statuses: dict[int, int]

    @property
    def per_s(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def _request_bytes(host: str, port: int, index: int, stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Say something about item {index}."}],
            "max_tokens": 64,
            "stream": stream,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = -1
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length >= 0:
        await reader.readexactly(length)
    return status


async def _worker(
    host: str,
    port: int,
    deadline: float,
    requests: list[bytes],
    statuses: dict[int, int],
) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    done = 0
    try:
        i = 0
        while time.monotonic() < deadline:
            writer.write(requests[i % len(requests)])
            i += 1
            status = await _read_response(reader)
            statuses[status] = statuses.get(status, 0) + 1
            done += 1
    finally:
        writer.close()
    return done


async def run_load(
    host: str, port: int, *, seconds: float, connections: int, stream: bool = False
) -> LoadResult:
    """Flood host:port with chat completions from `connections` keep-alive connections."""
    requests = [_request_bytes(host, port, i, stream) for i in range(512)]
    statuses: dict[int, int] = {}
    start = time.monotonic()
    deadline = start + seconds
    counts = await asyncio.gather(
        *(_worker(host, port, deadline, requests, statuses) for _ in range(connections))
    )
    return LoadResult(sum(counts), time.monotonic() - start, statuses)


def _process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used by process `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def main() -> int:
    """Measure the simulator's throughput at zero latency."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("sim_args", nargs="*", help="arguments for the simulator, after --")
    args = parser.parse_args()
    if uvloop is not None:
        uvloop.install()
    with SimulatorProcess(args.sim_args) as sim:
        asyncio.run(
            run_load("127.0.0.1", sim.port, seconds=args.warmup_s, connections=args.connections)
        )
        cpu_before = _process_cpu_s(sim.pid)
        result = asyncio.run(
            run_load(
                "127.0.0.1",
                sim.port,
                seconds=args.seconds,
                connections=args.connections,
                stream=args.stream,
            )
        )
        cpu_s = _process_cpu_s(sim.pid) - cpu_before
        received = sim.stats()["requests_received"]
    print(
        f"{result.requests} requests in {result.seconds:.2f}s = {result.per_s:,.0f} req/s "
        f"({args.connections} connections, stream={args.stream}, sim {args.sim_args}); "
        f"statuses {result.statuses}; "
        f"server CPU {cpu_s:.2f}s = {cpu_s / result.seconds:.0%} of one core, "
        f"{result.requests / cpu_s:,.0f} req per server CPU-second; server saw {received}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
