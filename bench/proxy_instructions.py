"""Two proxies' CPU instructions per request, counted (callgrind), not timed (issue 15).

``python -m bench.proxy_instructions OTHER_SRC [--requests N] [--per-token-ms MS] [--out FILE.md]``

CPU time per request spreads by ±15-25% from round to round on the shared 2-core machine, so
a change worth a few percent does not show in ``bench.proxy_ab``. Instructions do not move
with the load: this starts the zero-latency simulator, then this tree's proxy and another
tree's (``PYTHONPATH=OTHER_SRC``, e.g. a ``git archive`` of the baseline's ``src``), each in
a process of its own under ``valgrind --tool=callgrind`` with counting off; warms both up
(connections, lanes, limits), then counts user-space instructions over ``N`` sequential
requests on one keep-alive connection (bench/cost.py's requests), non-streaming then
streaming, each kind in a dump of its own. System calls' kernel work is not counted. Needs
valgrind; a proxy under callgrind runs about fifty times slower (about a minute a kind).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cost import _latencies
from pacekeeper.sim import Latency, Scenario, SimulatorProcess

__all__ = ["main"]

_SERVE = """
import sys, time
from pacekeeper.proxy import Proxy, ProxyConfig
with Proxy(ProxyConfig(upstream=sys.argv[1], port=0)) as proxy:
    with open(sys.argv[2] + ".tmp", "w") as fh:
        fh.write(str(proxy.port))
    import os
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    while True:
        time.sleep(3600)
"""
_PATH = "/v1/chat/completions"
_TOTALS = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)


def _control(pids: list[int], *args: str) -> None:
    for pid in pids:
        subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _totals(out: Path, name: str, part: int) -> int:
    (path,) = out.glob(f"{name}.*.out.{part}")
    found = _TOTALS.search(path.read_text(encoding="utf-8", errors="replace"))
    if found is None:
        raise RuntimeError(f"no totals in {path}")
    return int(found.group(1))


def measure(other_src: str, requests: int, per_token_s: float = 0.0) -> dict[str, dict[str, float]]:
    """Instructions per request: {kind: {"base": ..., "this": ...}}. ``per_token_s``: the
    simulator's time per completion token (0: the whole answer at once, a stream in one
    chunk; above it, a stream arrives event by event, as from a real upstream)."""
    trees = {"base": other_src, "this": str(Path(__file__).resolve().parents[1] / "src")}
    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorProcess(Scenario(latency=Latency(per_token_s=per_token_s))) as sim,
    ):
        out = Path(tmp)
        serve = out / "serve.py"
        serve.write_text(_SERVE, encoding="utf-8")
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, src in trees.items():
                procs[name] = subprocess.Popen(
                    [
                        "valgrind",
                        "--tool=callgrind",
                        "--instr-atstart=no",
                        f"--callgrind-out-file={out}/{name}.%p.out",
                        sys.executable,
                        str(serve),
                        sim.base_url,
                        str(out / f"{name}.port"),
                    ],
                    env=dict(os.environ, PYTHONPATH=src),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            ports: dict[str, int] = {}
            deadline = time.monotonic() + 300
            while len(ports) < len(trees):
                if time.monotonic() > deadline:
                    raise RuntimeError("the proxies under callgrind did not start in 300 s")
                for name in trees:
                    port_file = out / f"{name}.port"
                    if name not in ports and port_file.exists():
                        ports[name] = int(port_file.read_text(encoding="ascii"))
                time.sleep(0.5)
            pids = [proc.pid for proc in procs.values()]
            for stream in (False, True):
                for name, port in ports.items():
                    asyncio.run(_latencies({name: (port, _PATH)}, 200, stream=stream))
            for stream in (False, True):
                _control(pids, "-z")
                _control(pids, "-i", "on")
                for name, port in ports.items():
                    asyncio.run(_latencies({name: (port, _PATH)}, requests, stream=stream))
                _control(pids, "-i", "off")
                _control(pids, "-d", f"stream{int(stream)}")
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(60)
        return {
            kind: {name: _totals(out, name, part) / requests for name in trees}
            for kind, part in (("non-streaming", 1), ("streaming", 2))
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other_src", help="the other tree's src directory (the baseline)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--per-token-ms",
        type=float,
        default=0.0,
        help="the simulator's time per completion token (default 0: a stream in one chunk)",
    )
    parser.add_argument("--out", type=Path, help="also write the lines to this markdown file")
    args = parser.parse_args()
    lines = [
        f"# Proxy instructions per request: this tree vs {args.other_src}",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, callgrind, {args.requests} "
        "sequential requests each way and kind (user space; the kernel's work not counted).",
        "",
    ]
    for kind, row in measure(args.other_src, args.requests, args.per_token_ms / 1000.0).items():
        base, this = row["base"], row["this"]
        lines.append(
            f"- {kind}: base {base / 1e3:,.0f}k, this {this / 1e3:,.0f}k instructions per "
            f"request ({(this - base) / base:+.1%})"
        )
        print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
