"""A minimal keep-alive HTTP/1.1 load generator: the simulator's own zero-latency rate.

An HTTP client library costs more CPU per request than the simulator does, so it would measure
itself; this speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) to keep the
server busy from one core (the idea of tests/sim/loadgen.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import time

__all__ = ["flood", "process_cpu_s", "read_response"]


def _request_bytes(host: str, port: int, index: int) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Say something about item {index}."}],
            "max_tokens": 64,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 answer (content-length, chunked, or until close); its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = -1, False
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
    else:  # until the connection closes
        await reader.read()
    return status


async def _worker(host: str, port: int, deadline: float, requests: list[bytes]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    done = 0
    try:
        while time.monotonic() < deadline:
            writer.write(requests[done % len(requests)])
            await read_response(reader)
            done += 1
    finally:
        writer.close()
    return done


async def flood(host: str, port: int, *, seconds: float, connections: int = 64) -> float:
    """Requests per second the server answered under a flood of chat completions."""
    requests = [_request_bytes(host, port, i) for i in range(512)]
    start = time.monotonic()
    counts = await asyncio.gather(
        *(_worker(host, port, start + seconds, requests) for _ in range(connections))
    )
    return sum(counts) / (time.monotonic() - start)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
