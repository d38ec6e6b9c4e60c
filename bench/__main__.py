"""``python -m bench`` (``make bench``): run every scenario and the overhead measures, write
bench/results/latest.{md,json} and a dated copy.

``--quick`` is a smoke run of a few seconds per scenario (written to quick.{md,json});
``--only NAME`` runs one scenario or ``overhead`` (written to only-NAME.{md,json});
``--only robustness`` runs every contender on every simulator profile with several seeds and
reports the worst case (written to robustness.{md,json}; ``--profiles`` and ``--seeds`` narrow
it); ``--only independent`` runs auto mode against llmock, a mock server written by others
(bench/independent.py);
``--render FILE.json`` rewrites FILE.md from stored results (after a change to the report's
presentation or to a target's wording), measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.contenders import CONTENDERS
from bench.independent import CASES as INDEPENDENT_CASES
from bench.issue_rows import MEASURES as EXTRAS
from bench.issue_rows import measure_extras
from bench.measures import verdicts
from bench.overhead import measure_overhead, remeasure_cpu
from bench.overhead import summarise as summarise_overhead
from bench.report import render_markdown, write_results
from bench.robustness import DEFAULT_CONTENDERS, console_table, run_robustness, summarise
from bench.runner import log, run_scenario, warm_up
from bench.scenarios import scenarios
from bench.sharing import measure_sharing
from pacekeeper.sim import PROFILES

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        # Others change src/ while benchmarks run: say when the code measured is not the commit.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev} + uncommitted changes in src/" if dirty else rev


def _meta(mode: str) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "git": _git_revision(),
        "cpus": os.cpu_count(),
        "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "openai": version("openai"),
        "httpx2": version("httpx2"),
        "pacekeeper": version("pacekeeper"),
        "duration_s": 0.0,
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = [s.name for s in scenarios()]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument(
        "--only",
        choices=[
            *names,
            *("overhead", "sharing", "robustness", "extras", "priority", "cost", "independent"),
        ],
        help="run one scenario, or only the overhead, the Redis sharing measures, the "
        "robustness runs (every profile x seed), the issue rows (extras) or the cost section "
        "(proxy, queued calls, run memory, start-up, tokenizers)",
    )
    parser.add_argument(
        "--extras",
        help="extras: comma-separated rows (default all: " + ",".join(EXTRAS) + ")",
    )
    parser.add_argument(
        "--cases",
        help="independent: comma-separated llmock cases (default all: "
        + ",".join(c.name for c in INDEPENDENT_CASES)
        + ")",
    )
    parser.add_argument(
        "--profiles",
        help="robustness: comma-separated simulator profiles (default all: "
        + ",".join(PROFILES)
        + ")",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="robustness: seeds 1..N per profile (default 3)"
    )
    parser.add_argument(
        "--run-s",
        type=float,
        help="robustness: size each run to this many seconds of ideal time (default 10; 3 "
        "with --quick): longer runs tell a start's cost from a steady one",
    )
    parser.add_argument(
        "--contenders",
        help="comma-separated contender keys (default all: "
        + ",".join(c.key for c in CONTENDERS)
        + ")",
    )
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="overhead: measure only the CPU per request (minutes, not the half hour of the "
        "memory rows) and keep the other rows of the section in --into FILE.json",
    )
    parser.add_argument(
        "--parts",
        help="cost: comma-separated parts to measure again (startup, proxy, queued, "
        "tokenizers, run), the others kept from --into FILE.json",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument(
        "--render", type=Path, metavar="FILE.json", help="rewrite FILE.md from FILE.json"
    )
    parser.add_argument(
        "--into",
        type=Path,
        metavar="FILE.json",
        help="also put the sections measured now (robustness, extras, priority, overhead, "
        "sharing) into FILE.json (e.g. "
        "bench/results/latest.json) and re-render FILE.md",
    )
    return parser.parse_args(argv)


def _render(path: Path) -> int:
    """Recompute verdicts and report lines from the stored measurements; write both files."""
    results = json.loads(path.read_text(encoding="utf-8"))
    by_name = {s.name: s for s in scenarios(quick=results["meta"]["mode"] == "quick")}
    for section in results["scenarios"]:
        scenario = by_name[section["name"]]
        for row in section["rows"]:
            row.pop("targets", None)
            if row["contender"] in scenario.checked_on:
                row["targets"] = verdicts(scenario, row)
    if results.get("overhead"):
        results["overhead"].update(summarise_overhead(results["overhead"]))
    if results.get("robustness"):
        results["robustness"]["summary"] = summarise(results["robustness"]["runs"])
    if results.get("cost"):
        from bench.cost import summarise_cost

        results["cost"].update(summarise_cost(results["cost"]))
    path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(render_markdown(results), encoding="utf-8")
    log(f"rendered {path.with_suffix('.md')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        return _render(args.render)
    if args.cpu_only and (
        args.only != "overhead"
        or args.into is None
        or not args.into.exists()
        or "overhead" not in json.loads(args.into.read_text(encoding="utf-8"))
    ):
        log(
            "--cpu-only goes with --only overhead --into FILE.json, a results file with an "
            "overhead section (the rows it keeps)"
        )
        return 2
    if args.parts is not None:
        from bench.cost import COST_PARTS

        unknown_parts = set(args.parts.split(",")) - set(COST_PARTS)
        if args.only != "cost" or args.into is None or unknown_parts:
            log(
                "--parts goes with --only cost --into FILE.json (the rows it keeps), and names "
                f"parts among {', '.join(COST_PARTS)}"
                + (f" (not: {', '.join(sorted(unknown_parts))})" if unknown_parts else "")
            )
            return 2
    contenders = [c for c in CONTENDERS if c.key != "fleet3"]  # the robustness runs have it
    robustness_contenders = [c for c in CONTENDERS if c.key in DEFAULT_CONTENDERS]
    profiles = args.profiles.split(",") if args.profiles else None
    unknown_profiles = set(profiles or ()) - set(PROFILES)
    if unknown_profiles:
        known = ", ".join(PROFILES)
        log(f"unknown profiles: {', '.join(sorted(unknown_profiles))} (known: {known})")
        return 2
    if args.contenders:
        wanted = args.contenders.split(",")
        unknown = set(wanted) - {c.key for c in CONTENDERS}
        if unknown:
            log(f"unknown contenders: {', '.join(sorted(unknown))}")
            return 2
        contenders = [c for c in CONTENDERS if c.key in wanted]
        robustness_contenders = contenders
    mode = "quick" if args.quick else "full"
    full_run = not args.quick and not args.only and not args.contenders
    stem = "latest" if full_run else "quick" if args.quick else "partial"
    if args.only:
        stem = f"{'quick-' if args.quick else ''}only-{args.only}"
    if args.only == "robustness":
        stem = "quick-robustness" if args.quick else "robustness"
    started = time.monotonic()
    dated = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M") if full_run else None
    results: dict[str, Any] = {"meta": _meta(mode), "scenarios": [], "overhead": {}}

    def save() -> Path:
        results["meta"]["duration_s"] = time.monotonic() - started
        results["meta"]["load_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        return write_results(results, args.out, stem, dated)

    with tempfile.TemporaryDirectory(prefix="pacekeeper-bench-") as tmp:
        workdir = Path(tmp)
        warm_up()
        for scenario in scenarios(quick=args.quick):
            if args.only and args.only != scenario.name:
                continue
            results["scenarios"].append(run_scenario(scenario, contenders, workdir))
            save()  # a crash later still leaves every finished scenario on disk
        if args.only in (None, "overhead"):
            measured = {
                key: results["meta"][key] for key in ("date", "mode", "git", "load_at_start")
            }
            if args.cpu_only:
                stored = json.loads(args.into.read_text(encoding="utf-8"))["overhead"]
                results["overhead"] = remeasure_cpu(stored, quick=args.quick)
                results["overhead"]["cpu_measured"] = measured
            else:
                results["overhead"] = measure_overhead(quick=args.quick, workdir=workdir)
                results["overhead"]["measured"] = measured
            save()
        if args.only in (None, "sharing"):
            results["sharing"] = measure_sharing(quick=args.quick)
            save()
        if args.only in (None, "priority"):
            from bench.priority import measure_priority

            results["priority"] = measure_priority(quick=args.quick)
            save()
        if args.only in (None, "extras"):
            only = args.extras.split(",") if args.extras else None
            results["extras"] = measure_extras(quick=args.quick, only=only)
            results["extras"]["measured"] = {
                key: results["meta"][key] for key in ("date", "mode", "git", "load_at_start")
            }
            save()
        if args.only in (None, "cost"):
            from bench.cost import measure_cost

            measured = {
                key: results["meta"][key] for key in ("date", "mode", "git", "load_at_start")
            }
            if args.parts:
                parts = tuple(args.parts.split(","))
                stored = json.loads(args.into.read_text(encoding="utf-8"))["cost"]
                results["cost"] = measure_cost(
                    quick=args.quick, workdir=workdir, parts=parts, stored=stored
                )
                results["cost"]["parts_measured"] = {
                    **results["cost"].get("parts_measured", {}),
                    **dict.fromkeys(parts, measured),
                }
            else:
                results["cost"] = measure_cost(quick=args.quick, workdir=workdir)
                results["cost"]["measured"] = measured
            save()
        if args.only in (None, "independent"):
            from bench.independent import measure_independent

            cases = args.cases.split(",") if args.cases else None
            results["independent"] = measure_independent(quick=args.quick, only=cases)
            results["independent"]["measured"] = {
                key: results["meta"][key] for key in ("date", "mode", "git", "load_at_start")
            }
            save()
        if args.only in (None, "robustness"):

            def save_robustness(section: dict[str, Any]) -> None:
                section["measured"] = {
                    key: results["meta"][key] for key in ("date", "mode", "git", "load_at_start")
                }
                results["robustness"] = section
                save()

            run_robustness(
                quick=args.quick,
                contenders=robustness_contenders,
                workdir=workdir,
                profiles=profiles,
                seeds=args.seeds,
                run_s=args.run_s,
                save=save_robustness,
            )
            print(console_table(results.get("robustness", {})), flush=True)
    path = save()
    log(f"results: {path} (and .json), {time.monotonic() - started:.0f} s")
    sections = [
        key
        for key in (
            "robustness",
            "independent",
            "extras",
            "priority",
            "overhead",
            "sharing",
            "cost",
        )
        if results.get(key)
    ]
    if args.into and sections:
        target = json.loads(args.into.read_text(encoding="utf-8"))
        for key in sections:
            if key == "extras" and args.extras and target.get("extras"):
                # A few rows measured again replace theirs; the others stay.
                fresh = {row["name"] for row in results["extras"]["rows"]}
                kept = [r for r in target["extras"]["rows"] if r["name"] not in fresh]
                results["extras"]["rows"] = kept + results["extras"]["rows"]
            target[key] = results[key]
        args.into.write_text(json.dumps(target, indent=1, default=str) + "\n", encoding="utf-8")
        return _render(args.into)
    return 0


if __name__ == "__main__":
    sys.exit(main())
