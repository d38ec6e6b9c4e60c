"""One contender on one profile draw, second by second: what it sent, what came back, and
what the governor believed (its in-flight limit, rates and cooldown), to see where a
robustness row lost its time.

    python -m bench.trace PROFILE SEED [--contender auto] [--step 0.5] [--run-s 10]

Prints the row's figures, then per ``--step`` seconds: answers by status, the 429s' times,
and the lane's last sample in that step (auto and configured contenders only; a fleet's
lanes live in other processes: with ``PACEKEEPER_TRACE=1`` the ``fleet3`` workers print
every lane's state to stderr twice a second, bench/fleet_worker.py).
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.contenders import CONTENDERS
from bench.outcome import Outcome
from bench.robustness import RUN_S, draw_run, run_contender
from pacekeeper.sim import PROFILES, draw_profile


def _timeline(outcome: Outcome, step_s: float) -> list[str]:
    by_step: dict[int, Counter[str]] = defaultdict(Counter)
    rejected_at: dict[int, list[float]] = defaultdict(list)
    for at, status in outcome.answers:
        t = at - outcome.started_at
        k = max(0, int(t / step_s))
        by_step[k][str(status)] += 1
        if status == 429:
            rejected_at[k].append(t)
    samples: dict[int, dict[str, Any]] = {}
    for sample in outcome.diagnostics.get("lane_samples", []):
        samples[int(sample["t"] / step_s)] = sample  # the step's last
    lines = []
    for k in range(max([*by_step, *samples], default=-1) + 1):
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(by_step[k].items()))
        sample = samples.get(k)
        lane = (
            ""
            if sample is None
            else f" | limit {sample['limit']} in flight {sample['in_flight']}"
            f" queued {sample['queued']} rpm {sample['rpm']} tpm {sample['tpm']}"
            + (f" cooldown {sample['cooldown_s']}s" if sample["cooldown_s"] else "")
        )
        times = " ".join(f"{t:.2f}" for t in rejected_at[k])
        lines.append(
            f"{k * step_s:6.1f}s  {statuses or '-':<22}"
            + (f" 429 at {times}" if times else "")
            + lane
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__)
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("seed", type=int)
    parser.add_argument("--contender", default="auto", choices=[c.key for c in CONTENDERS])
    parser.add_argument("--step", type=float, default=0.5, help="seconds per line (0.5)")
    parser.add_argument("--run-s", type=float, default=RUN_S, help="ideal seconds (10)")
    args = parser.parse_args(argv)
    draw = draw_profile(args.profile, args.seed, run_s=args.run_s)
    run = draw_run(draw, args.run_s)
    contender = next(c for c in CONTENDERS if c.key == args.contender)
    print(f"{args.profile}#{args.seed}: {draw.summary}")
    with tempfile.TemporaryDirectory() as workdir:
        row, outcome = run_contender(draw, run, contender, Path(workdir))
    print(
        f"{contender.label}: wall {row['wall_s']:.2f} s, ideal {row['ideal_s']:.2f} s, "
        f"eff {row['efficiency']:.3f}, 429s {row['429s']} of {row['sent']} sent "
        f"({row['needed']} needed), peak in flight {row['peak_in_flight']}"
    )
    for learned in outcome.diagnostics.get("learned", []):
        print(f"learned: {learned}")
    print("\n".join(_timeline(outcome, args.step)))


if __name__ == "__main__":
    main()
