"""Python bytecodes per proxied request, by part and by function, counted (issue 15).

``python -m bench.proxy_opcodes [OTHER_SRC] [--requests N] [--top K] [--out FILE.md]``

Calls (bench.proxy_parts) weigh a one-line function like a long one, and callgrind
(bench.proxy_instructions) sees the interpreter, not the Python functions it runs. This counts
the bytecodes each Python function executes on the proxy's serving thread (``sys.settrace``
with opcode events), over ``N`` requests sent one after another on each of 8 kept-alive
connections (bench/cost.py's requests) to the zero-latency simulator, after a warm-up (the
lane, the upstream connections). The count does not move with the machine's load; the
governor's core has paths that depend on time (its windows), so its share moves by a few
percent between runs, the proxy's own parts by none. With ``OTHER_SRC`` (e.g. a ``git
archive`` of the baseline's ``src``) the same count is made for that tree, in a process of
its own, and the parts are shown side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import CodeType
from typing import Any

__all__ = ["count", "main"]

_PATH = "/v1/chat/completions"
_CONNECTIONS = 8


def _sequential(port: int, total: int, *, stream: bool) -> int:
    """``total`` requests, one after another on each of the connections; the number sent."""
    from bench.cost import _request
    from bench.loadgen import read_response

    each = max(1, total // _CONNECTIONS)

    async def run() -> None:
        async def worker() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                for i in range(each):
                    writer.write(_request(port, _PATH, i, stream=stream))
                    status = await read_response(reader)
                    if status != 200:
                        raise RuntimeError(f"the proxy answered {status}")
            finally:
                writer.close()

        await asyncio.gather(*(worker() for _ in range(_CONNECTIONS)))

    asyncio.run(run())
    return each * _CONNECTIONS


def count(*, stream: bool, requests: int) -> tuple[int, Counter[CodeType]]:
    """(requests sent, bytecodes executed per code object) of this process's proxy."""
    from bench.opcodes import opcode_counter
    from bench.proxy_parts import _on_loop
    from pacekeeper.proxy import Proxy, ProxyConfig
    from pacekeeper.sim import Scenario, SimulatorProcess

    counts, start = opcode_counter()

    with (
        SimulatorProcess(Scenario()) as sim,
        Proxy(ProxyConfig(upstream=sim.base_url, port=0)) as proxy,
    ):
        _sequential(proxy.port, 64, stream=stream)  # warm-up
        _on_loop(proxy, lambda: sys.settrace(start))  # the serving thread's calls from now on
        n = _sequential(proxy.port, requests, stream=stream)
        _on_loop(proxy, lambda: sys.settrace(None))
    return n, counts


def _measure(stream: bool, requests: int, top: int) -> dict[str, Any]:
    from bench.proxy_parts import _part

    n, counts = count(stream=stream, requests=requests)
    parts: Counter[str] = Counter()
    for code, c in counts.items():
        parts[_part(code.co_filename)] += c
    functions = [
        (
            f"{_part(code.co_filename).split(' (')[0]}: "
            f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_name}",
            c / n,
        )
        for code, c in counts.most_common(top)
    ]
    return {
        "total": sum(counts.values()) / n,
        "parts": {part: c / n for part, c in parts.items()},
        "functions": functions,
    }


def _child(src: str, stream: bool, requests: int, top: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(Path.cwd())]))
    code = (
        "import json, sys; from bench.proxy_opcodes import _measure; "
        f"print(json.dumps(_measure({stream}, {requests}, {top})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("other_src", nargs="?", help="another tree's src directory (baseline)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=25, help="functions listed per kind")
    parser.add_argument("--out", type=Path, help="also write the lines to this markdown file")
    args = parser.parse_args()
    lines = [
        "# Python bytecodes per proxied request",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `python -m bench.proxy_opcodes"
        f"{' ' + args.other_src if args.other_src else ''} --requests {args.requests}`.",
        "",
    ]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    for kind in ("non-streaming", "streaming"):
        stream = kind == "streaming"
        this = _measure(stream, args.requests, args.top)
        other = _child(args.other_src, stream, args.requests, 0) if args.other_src else None
        if other is None:
            say(f"- {kind}: {this['total']:.0f} bytecodes per request")
            for part, c in sorted(this["parts"].items(), key=lambda kv: -kv[1]):
                say(f"  - {part}: {c:.0f}")
        else:
            say(f"- {kind}: {other['total']:.0f} -> {this['total']:.0f} bytecodes per request")
            for part, c in sorted(this["parts"].items(), key=lambda kv: -kv[1]):
                before = other["parts"].get(part, 0.0)
                say(f"  - {part}: {before:.0f} -> {c:.0f} ({c - before:+.0f})")
        say(f"  - the {args.top} largest functions (this tree):")
        for name, c in this["functions"]:
            say(f"    - {c:.0f} {name}")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
