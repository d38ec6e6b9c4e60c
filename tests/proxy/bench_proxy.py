"""What the proxy costs: added latency per request and the most requests per second it passes.

Runs the simulator (zero latency, no limits) and ``python -m pacekeeper.proxy`` in their own
processes (the proxy is one event-loop thread: it never uses more than one core, and its CPU
share is reported; ``--pin-cpu N`` pins it to core N, which only helps on an otherwise idle
machine: pinned to a core another process keeps busy, its tail latency is that process's time
slices), and measures with
a minimal keep-alive HTTP/1.1 client (HTTP client libraries cost more CPU per request than the
servers do, so they would measure themselves):

* latency: requests one at a time on one connection, straight to the simulator and through the
  proxy, in alternating blocks; the proxy's p50/p99 minus the direct ones is what it adds;
* throughput: ``--connections`` connections flat out for ``--seconds``, direct and through the
  proxy, with the proxy's CPU time (from /proc), so "requests per proxy CPU-second" says what
  one core sustains even when the load generator shares the machine.

    python tests/proxy/bench_proxy.py [--requests 3000] [--seconds 5] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pacekeeper.sim import SimulatorProcess

SRC = str(Path(__file__).resolve().parents[2] / "src")
LISTENING = "pacekeeper proxy listening on "


def request_bytes(host: str, port: int, path: str, index: int) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Say something about item {index}."}],
            "max_tokens": 64,
        }
    ).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer sk-bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> int:
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
    return status


@dataclass
class Target:
    name: str
    port: int
    path: str = "/v1/chat/completions"

    def requests(self, count: int = 256) -> list[bytes]:
        return [request_bytes("127.0.0.1", self.port, self.path, i) for i in range(count)]


async def latencies(targets: list[Target], total: int, block: int = 100) -> dict[str, list[float]]:
    """Sequential requests on one connection per target, alternating blocks of ``block``."""
    out: dict[str, list[float]] = {t.name: [] for t in targets}
    conns = [await asyncio.open_connection("127.0.0.1", t.port) for t in targets]
    payloads = [t.requests() for t in targets]
    try:
        done = 0
        while done < total:
            for target, (reader, writer), payload in zip(targets, conns, payloads, strict=True):
                for i in range(block):
                    started = time.perf_counter()
                    writer.write(payload[(done + i) % len(payload)])
                    status = await read_response(reader)
                    out[target.name].append(time.perf_counter() - started)
                    assert status == 200, status
            done += block
    finally:
        for _, writer in conns:
            writer.close()
    return out


async def flood(target: Target, seconds: float, connections: int) -> tuple[int, dict[int, int]]:
    payload = target.requests()
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def worker() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        done = 0
        try:
            while time.monotonic() < deadline:
                writer.write(payload[done % len(payload)])
                status = await read_response(reader)
                statuses[status] = statuses.get(status, 0) + 1
                done += 1
        finally:
            writer.close()
        return done

    counts = await asyncio.gather(*(worker() for _ in range(connections)))
    return sum(counts), statuses


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_proxy(
    upstream: str, extra: list[str], cpu: int | None
) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pacekeeper.proxy", "--upstream", upstream, "--port", "0"]

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    proc = subprocess.Popen(
        command + extra,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        preexec_fn=pin,  # noqa: PLW1509 - only sets the CPU affinity
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(LISTENING):
        proc.kill()
        raise RuntimeError(f"proxy did not start: {line!r}")
    port = int(line[len(LISTENING) :].strip().rsplit(":", 1)[1].split("/")[0])
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="sequential requests each")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each flood")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--pin-cpu", type=int, help="pin the proxy to this CPU")
    parser.add_argument(
        "proxy_args", nargs="*", help="extra arguments for the proxy, after -- (e.g. --rpm 1e9)"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpu = args.pin_cpu
    if proxy_cpu is not None and len(cpus) > 1:  # this process and the simulator: the others
        os.sched_setaffinity(0, set(cpus) - {proxy_cpu})
    with SimulatorProcess() as sim:
        proc, port = start_proxy(sim.base_url, args.proxy_args, proxy_cpu)
        try:
            direct, proxied = Target("direct", sim.port), Target("proxy", port)
            asyncio.run(latencies([direct, proxied], 300))  # warm-up
            lat = asyncio.run(latencies([direct, proxied], args.requests))
            asyncio.run(flood(proxied, 1.0, args.connections))  # warm-up (AIMD opens up)
            direct_n, direct_statuses = asyncio.run(flood(direct, args.seconds, args.connections))
            before = cpu_s(proc.pid)
            started = time.monotonic()
            proxy_n, proxy_statuses = asyncio.run(flood(proxied, args.seconds, args.connections))
            elapsed = time.monotonic() - started
            proxy_cpu_s = cpu_s(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(30)

    d50, d99 = quantile(lat["direct"], 0.5), quantile(lat["direct"], 0.99)
    p50, p99 = quantile(lat["proxy"], 0.5), quantile(lat["proxy"], 0.99)
    mean_d, mean_p = statistics.mean(lat["direct"]), statistics.mean(lat["proxy"])
    pinned = f"pinned to CPU {proxy_cpu}" if proxy_cpu is not None else "not pinned"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {len(cpus)} CPUs, load {load}; proxy {pinned}; python {sys.version[:6]}")
    print(f"latency, {args.requests} sequential requests each, one keep-alive connection:")
    print(
        f"  direct  p50 {d50 * 1e3:7.3f} ms   p99 {d99 * 1e3:7.3f} ms   mean {mean_d * 1e3:.3f} ms"
    )
    print(
        f"  proxy   p50 {p50 * 1e3:7.3f} ms   p99 {p99 * 1e3:7.3f} ms   mean {mean_p * 1e3:.3f} ms"
    )
    print(f"  added   p50 {(p50 - d50) * 1e3:7.3f} ms   p99 {(p99 - d99) * 1e3:7.3f} ms")
    print(f"throughput, {args.connections} connections for {args.seconds:g}s:")
    print(f"  direct  {direct_n / args.seconds:8,.0f} req/s   statuses {direct_statuses}")
    print(
        f"  proxy   {proxy_n / elapsed:8,.0f} req/s   statuses {proxy_statuses}; proxy CPU "
        f"{proxy_cpu_s / elapsed:.0%} of one core = {proxy_n / proxy_cpu_s:,.0f} requests per "
        "proxy CPU-second"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
