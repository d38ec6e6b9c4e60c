"""Bytecodes the governed transport runs per request, by pacekeeper function (issue 15).

``python -m bench.hotpath_ops [--kind fixed|adaptive|bare] [--top 40]``; for another tree,
``PYTHONPATH=DIR/src``.

The cost-budget test's harness (tests/transports/test_cost_budget.py, as
``bench.hotpath_calls`` drives it), traced with ``sys.settrace`` and ``f_trace_opcodes``:
each bytecode executed is counted for the code object it runs in (its own, not its
callees'). Exact and the same from run to run, like the call counts, but it sees what they
do not: on CPython 3.11 a Python call costs about as much as three or four bytecodes, so
after the frames were cut (rounds 3-9) the bytecodes each function runs are most of what is
left. A bytecode is some 60-150 machine instructions on this build, depending on its kind.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.opcodes import opcode_counter

__all__ = ["main", "measure"]


def measure(kind: str) -> tuple[float, float, list[tuple[str, float]]]:
    """(bytecodes per request in all, in pacekeeper, [(pacekeeper function, bytecodes per
    request)] most first) of the harness's measured requests of ``kind``."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "transports"))
    import test_cost_budget as harness

    counts, entered = opcode_counter()

    class _Tracing:
        """Stands in for the harness's ``sys``: its ``setprofile(counter)`` around the
        measured requests turns opcode tracing on, ``setprofile(None)`` off."""

        @staticmethod
        def setprofile(on: object) -> None:
            sys.settrace(entered if on is not None else None)

    harness.sys = _Tracing  # type: ignore[assignment,attr-defined]  # a stand-in
    try:
        asyncio.run(harness._calls_per_request(kind))
    finally:
        harness.sys = sys  # type: ignore[attr-defined]  # the harness imports it
    requests = harness._REQUESTS
    ours = {
        code.co_filename.rsplit("pacekeeper/", 1)[-1]
        + ":"
        + getattr(code, "co_qualname", code.co_name): n
        for code, n in counts.items()
        if "/pacekeeper/" in code.co_filename
    }
    rows = sorted(((name, n / requests) for name, n in ours.items()), key=lambda r: -r[1])
    return sum(counts.values()) / requests, sum(ours.values()) / requests, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("fixed", "adaptive", "bare"), default="fixed")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    everything, ours, rows = measure(args.kind)
    print(f"{args.kind}: {everything:.0f} bytecodes a request, {ours:.0f} in pacekeeper")
    for name, n in rows[: args.top]:
        print(f"{n:8.1f}  {name}")


if __name__ == "__main__":
    main()
