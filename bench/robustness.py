"""The worst case across a zoo of providers: every contender on every simulator profile, with
randomised parameters (several seeds), reported as the worst and the median row per contender
and profile, never the best.

Each profile (``pacekeeper.sim.PROFILES``) disagrees with some assumption a client may make:
what remaining/reset mean, whether limits refill or reset in windows, how an in-flight cap is
answered, whether a server says 429 at all. The reference pacer is told the truth of every
draw (rpm, tpm, input and output tpm, the in-flight cap or the best concurrency, when a limit
changes) and sets the bar: auto mode, with nothing configured, should reach 0.9 of its
efficiency on every profile and seed, with at most 1% 429s, at most 2% extra requests, and
nothing lost or duplicated.

Every run is sized to ``run_s`` seconds of ideal time (10 s; 3 s with ``--quick``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2

from bench.contenders import Contender, RunContext
from bench.measures import row_for
from bench.outcome import Outcome
from bench.runner import log
from bench.scenarios import BenchScenario, Target, Truth
from bench.workload import Workload
from pacekeeper.sim import (
    PROFILES,
    ProfileDraw,
    Scenario,
    SimulatorProcess,
    TrueLimits,
    draw_profile,
)

__all__ = [
    "DEFAULT_CONTENDERS",
    "TARGETS",
    "console_table",
    "ideal_s",
    "robustness_lines",
    "run_robustness",
    "summarise",
]

DEFAULT_CONTENDERS = ("auto", "fleet3", "reference", "tenacity16")
RUN_S = 10.0
"""17 profiles x 3 seeds x 4 contenders x (10 s + latency + start-up + the slow recipes' tails)
takes about 45 minutes on 2 cores. Shorter runs measured mostly the first round trip, which
every client without the true limits pays once (a job is minutes long)."""
QUICK_RUN_S = 3.0
MAX_REQUESTS = 3000
"""No run sends more (the slow profile at 1500 rpm would want 375 requests in flight)."""

TARGETS: tuple[Target, ...] = (
    Target(metric="vs_reference", op=">=", value=0.9, label="efficiency >= 0.9 x reference"),
    Target(metric="share_429", op="<=", value=0.01, label="429s <= 1% of requests"),
    Target(
        metric="excess_sent_ratio",
        op="<=",
        value=1.02,
        label="sent / needed <= 1.02 (not counting the reference's retries of faults)",
    ),
    Target(metric="lost", op="==", value=0, label="nothing lost"),
    Target(metric="duplicated", op="==", value=0, label="nothing duplicated"),
)
"""Checked on auto mode (nothing configured), on the worst seed of every profile."""

_WORST_IS_HIGH = {"share_429", "sent_ratio", "excess_sent_ratio", "lost", "duplicated", "failed"}


# -- sizing and the ideal time ----------------------------------------------------------------


def _mean_completion(max_tokens: int) -> float:
    """The simulator's replies are 16 + (hash % 185) tokens, capped by max_tokens."""
    return sum(min(16 + k, max_tokens) for k in range(185)) / 185


def _bench_truth(truth: TrueLimits) -> Truth:
    return Truth(
        rpm=truth.rpm,
        tpm=truth.tpm,
        input_tpm=truth.input_tpm,
        output_tpm=truth.output_tpm,
        max_in_flight=truth.max_in_flight,
        window_s=truth.window_s,
        burst_s=truth.burst_s,
        change_at_s=truth.change_at_s,
        change_factor=truth.change_factor,
    )


def _time_for(units: float, rate_per_s: float, change_s: float | None, factor: float) -> float:
    if change_s is None or units <= rate_per_s * max(0.0, change_s):
        return units / rate_per_s
    before = max(0.0, change_s)
    return before + (units - rate_per_s * before) / (rate_per_s * factor)


def _window_time(units: float, budget: float, window_s: float, offset_s: float) -> float:
    """Fixed windows: a client that spends each window's budget as it opens sends its last
    request at the start of the last window it needs (the first ends ``window_s - offset``
    after the client starts, ``offset`` being its start within the windows)."""
    windows = math.ceil(units / budget - 1e-9)
    if windows <= 1:
        return 0.0
    return window_s - offset_s % window_s + (windows - 2) * window_s


def ideal_s(
    draw: ProfileDraw,
    wl: Workload,
    completions: Sequence[float],
    *,
    offset_s: float = 0.0,
    fixed_windows: bool = True,
) -> float:
    """What the true limits alone force (models run side by side: the slowest one sets it).

    Per model: requests / rpm, charged tokens / tpm, prompt tokens / input tpm, completion
    tokens / output tpm (each plus one mean latency: the last request's answer comes that
    long after it is sent, which matters with 5-15 s answers), the sum of mean latencies / the
    in-flight cap (or best concurrency), a capacity change counted from the simulator's start
    (``offset_s``: when the client started, relative to it). ``completions`` has each
    request's completion length (or an estimate). A bucket's depth (burst_s of the rate) may
    go at once at the start. With fixed windows (unless
    ``fixed_windows`` is False: the per-minute rate alone) each window's budget can be spent
    as it opens (see ``_window_time``), counted from ``offset_s`` into the windows."""
    latency = draw.scenario.latency
    spread_factor = math.exp(latency.spread**2 / 2)
    mean_completion = sum(completions) / len(completions) if completions else 0.0
    last_answer_s = (latency.ttft_s + latency.per_token_s * mean_completion) * spread_factor
    worst = 0.0
    for model, truth in draw.truth.items():
        ids = [i for i in range(wl.n) if wl.model_for(i) == model]
        if not ids:
            continue
        change_s = None if truth.change_at_s is None else truth.change_at_s - offset_s
        factor = truth.change_factor
        window_s = truth.window_s if fixed_windows else None
        # (units, per-minute limit, whole units per window) per rate limit
        spends: list[tuple[float, float, bool]] = []
        if truth.rpm is not None:
            spends.append((len(ids), truth.rpm, True))
        if truth.tpm is not None:
            spends.append((sum(wl.sim_charge(i) for i in ids), truth.tpm, False))
        if truth.input_tpm is not None:
            spends.append((sum(wl.prompt_tokens(i) for i in ids), truth.input_tpm, False))
        if truth.output_tpm is not None:
            spends.append((sum(completions[i] for i in ids), truth.output_tpm, False))
        bounds = [0.0]
        rate_bounds: list[float] = []
        for units, per_minute, whole in spends:
            if window_s is None:
                # A full bucket lets its depth go at once.
                after_burst = max(0.0, units - per_minute / 60 * truth.burst_s)
                rate_bounds.append(_time_for(after_burst, per_minute / 60, change_s, factor))
                continue
            budget = per_minute / 60 * window_s
            budget = math.floor(budget + 1e-9) if whole else budget
            rate_bounds.append(_window_time(units, budget, window_s, offset_s))
        if truth.max_in_flight is not None:
            busy_s = sum(
                (latency.ttft_s + latency.per_token_s * completions[i]) * spread_factor for i in ids
            )
            bounds.append(busy_s / truth.max_in_flight)
        bounds += [bound + last_answer_s for bound in rate_bounds]
        worst = max(worst, *bounds)
    return worst


def _workload(draw: ProfileDraw, run_s: float) -> Workload:
    """The draw's traffic, sized so that its ideal time is about ``run_s``."""
    probes = [
        Workload(
            n=n,
            max_tokens=draw.max_tokens,
            prompts=draw.prompts,
            models=draw.models if len(draw.models) > 1 else (),
            model=draw.models[0],
        )
        for n in (200, 400)
    ]
    estimate = [_mean_completion(draw.max_tokens)] * 400
    # The marginal time per request: the bucket's initial burst and the last answer's latency
    # are the same for any size and must not shrink the run.
    short, long = (ideal_s(draw, wl, estimate, fixed_windows=False) for wl in probes)
    per_request_s = (long - short) / 200
    probe = probes[0]
    # Fixed windows: span more than one, or a client could send everything in the first.
    longest_window_s = max((t.window_s or 0.0) for t in draw.truth.values())
    # A bucket's depth goes at once at the start: without counting it, a 5-s bucket would hold
    # a whole 5-s run and the run would measure nothing but the first answer's latency.
    deepest_burst_s = max(
        (t.burst_s for t in draw.truth.values() if t.window_s is None), default=0.0
    )
    span_s = max(run_s + deepest_burst_s, 1.5 * longest_window_s)
    n = max(10, min(MAX_REQUESTS, round(span_s / per_request_s)))
    return Workload(
        n=n,
        max_tokens=probe.max_tokens,
        prompts=probe.prompts,
        models=probe.models,
        model=probe.model,
    )


def _completion_tokens(wl: Workload) -> list[int]:
    """Each request's completion length, from an unlimited zero-latency simulator (the
    lengths are deterministic per model and prompt)."""

    async def main(base_url: str) -> list[int]:
        async with httpx2.AsyncClient(base_url=base_url, timeout=30) as client:
            slots = asyncio.Semaphore(32)

            async def one(i: int) -> int:
                async with slots:
                    response = await client.post("/chat/completions", json=wl.body(i))
                    response.raise_for_status()
                    return int(response.json()["usage"]["completion_tokens"])

            return list(await asyncio.gather(*(one(i) for i in range(wl.n))))

    with SimulatorProcess(Scenario()) as sim:
        return asyncio.run(main(sim.base_url))


def _needs_completions(draw: ProfileDraw) -> bool:
    return any(t.output_tpm is not None or t.max_in_flight is not None for t in draw.truth.values())


# -- running -----------------------------------------------------------------------------------


def _wait_idle(sim: SimulatorProcess, limit_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    stats = sim.stats()
    while stats.get("in_flight") and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = sim.stats()
    return stats


@dataclasses.dataclass(frozen=True)
class DrawRun:
    """What every contender on one draw is given: the scenario, the completions the
    simulator will give, and the ideal time the limits alone force."""

    scenario: BenchScenario
    completions: list[float]
    exact: bool
    nominal_s: float


def draw_run(draw: ProfileDraw, run_s: float) -> DrawRun:
    """The bench scenario of one profile draw, sized to ``run_s`` seconds of ideal time."""
    wl = _workload(draw, run_s)
    completions: list[float]
    exact = _needs_completions(draw)
    if exact:
        completions = [float(c) for c in _completion_tokens(wl)]
    else:
        completions = [_mean_completion(wl.max_tokens)] * wl.n
    first_model = draw.models[0]
    truth = _bench_truth(draw.truth[first_model])
    if len(draw.truth) > 1:
        models = tuple((m, _bench_truth(t)) for m, t in draw.truth.items())
        truth = Truth(
            rpm=truth.rpm,
            tpm=truth.tpm,
            max_in_flight=truth.max_in_flight,
            change_at_s=truth.change_at_s,
            change_factor=truth.change_factor,
            window_s=truth.window_s,
            burst_s=truth.burst_s,
            input_tpm=truth.input_tpm,
            output_tpm=truth.output_tpm,
            models=models,
        )
    scenario = BenchScenario(
        name=f"{draw.profile}#{draw.seed}",
        title=draw.summary,
        workload=wl,
        sim=draw.scenario,
        truth=truth,
        timeout_s=draw.timeout_s,
    )
    return DrawRun(scenario, completions, exact, ideal_s(draw, wl, completions))


def run_contender(
    draw: ProfileDraw, run: DrawRun, contender: Contender, workdir: Path
) -> tuple[dict[str, Any], Outcome]:
    """One contender on a fresh simulator of ``draw``: its table row (the per-second
    timeline left in) and its outcome (the governor's lane samples in its diagnostics)."""
    scenario = run.scenario
    # A contender still busy after this is cut off (its unfinished requests count as lost):
    # a recipe backing off for minutes must not hold up the whole run.
    cap_s = 3 * run.nominal_s + draw.timeout_s + 10
    with SimulatorProcess(draw.scenario) as sim:
        started_at = float(sim.stats()["started_at"])
        ctx = RunContext(
            base_url=sim.base_url,
            scenario=scenario,
            sim_started_at=started_at,
            workdir=workdir,
            cap_s=cap_s,
            completion_tokens=tuple(int(c) for c in run.completions) if run.exact else (),
        )
        outcome = contender.run(ctx)
        stats = _wait_idle(sim, limit_s=min(30.0, draw.timeout_s))
    # A contender that restarted the simulator (a fleet, once its processes were ready)
    # is timed from that start: windows and capacity changes count from it.
    restarted_at = outcome.diagnostics.get("sim_restarted_at")
    if restarted_at is not None:
        ctx = dataclasses.replace(ctx, sim_started_at=float(restarted_at))
    offset = outcome.started_at - ctx.sim_started_at
    ideal = ideal_s(draw, scenario.workload, run.completions, offset_s=offset)
    row = row_for(scenario, outcome, stats, ideal=ideal, change_wall=ctx.change_wall)
    return {"contender": contender.key, "label": contender.label, **row}, outcome


def _run_draw(
    draw: ProfileDraw,
    run_s: float,
    contenders: Sequence[Contender],
    workdir: Path,
) -> dict[str, Any]:
    run = draw_run(draw, run_s)
    scenario, wl = run.scenario, run.scenario.workload
    rows: list[dict[str, Any]] = []
    for contender in contenders:
        row, outcome = run_contender(draw, run, contender, workdir)
        # The per-second timelines and samples are for diagnosing the scenario runs; here they
        # would make the JSON huge (bench/trace.py shows them). The learned limits stay.
        row.pop("per_second", None)
        learned = outcome.diagnostics.get("learned")
        if learned is not None:
            row["learned"] = learned
        rows.append(row)
    reference = next((r for r in rows if r["contender"] == "reference"), None)
    for row in rows:
        ref_eff = None if reference is None else reference["efficiency"]
        row["vs_reference"] = (
            row["efficiency"] / ref_eff if ref_eff and row["efficiency"] is not None else None
        )
        # Faults need retries whoever sends: count only what is sent beyond the reference's.
        ref_retries = 0.0 if reference is None else max(0.0, reference["sent_ratio"] - 1.0)
        row["excess_sent_ratio"] = row["sent_ratio"] - ref_retries
        log(
            f"[robustness {scenario.name}] {row['label']}: eff {row['efficiency']:.2f}"
            + (f" ({row['vs_reference']:.2f} x ref)" if row["vs_reference"] is not None else "")
            + f", 429s {row['429s']} ({row['share_429']:.1%}), sent {row['sent']}/{row['needed']}"
            f", failed {row['failed']}, lost {row['lost']}, dup {row['duplicated']}"
        )
    return {
        "profile": draw.profile,
        "seed": draw.seed,
        "summary": draw.summary,
        "requests": wl.n,
        "prompts": wl.prompts,
        "max_tokens": wl.max_tokens,
        "models": list(draw.models),
        "timeout_s": draw.timeout_s,
        "ideal_s": run.nominal_s,
        "rows": rows,
    }


def _rank_key(row: dict[str, Any]) -> float:
    """Lower is worse: efficiency relative to the reference (or to the ideal, for the
    reference itself); a run that lost or failed requests ranks below any that did not."""
    value = row.get("vs_reference")
    if row["contender"] == "reference" or value is None:
        value = row.get("efficiency")
    penalty = 10.0 if row["lost"] or row["duplicated"] else 1.0 if row["failed"] else 0.0
    return (value or 0.0) - penalty


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per profile and contender: the worst and the median run, the worst value of every
    metric across seeds, and (for auto) the targets checked on those worst values."""
    groups: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for run in runs:
        for row in run["rows"]:
            groups.setdefault((run["profile"], row["contender"]), []).append((run["seed"], row))
    summary = []
    for (profile, contender), seeded in groups.items():
        ranked = sorted(seeded, key=lambda pair: _rank_key(pair[1]))
        worst_seed, worst = ranked[0]
        median_seed, median = ranked[(len(ranked) - 1) // 2]
        worst_values: dict[str, Any] = {}
        for metric in ("efficiency", "vs_reference", *_WORST_IS_HIGH):
            values = [r[metric] for _, r in seeded if r.get(metric) is not None]
            if values:
                worst_values[metric] = max(values) if metric in _WORST_IS_HIGH else min(values)
        entry: dict[str, Any] = {
            "profile": profile,
            "contender": contender,
            "label": worst["label"],
            "seeds": [s for s, _ in seeded],
            "worst_seed": worst_seed,
            "median_seed": median_seed,
            "worst": _short(worst),
            "median": _short(median),
            "worst_values": worst_values,
        }
        if contender == "auto":
            entry["targets"] = [
                {
                    "target": t.label,
                    "metric": t.metric,
                    "measured": worst_values.get(t.metric),
                    "met": t.met(worst_values.get(t.metric)),
                }
                for t in TARGETS
            ]
        summary.append(entry)
    return summary


def _short(row: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "efficiency",
        "vs_reference",
        "share_429",
        "429s",
        "sent",
        "needed",
        "sent_ratio",
        "excess_sent_ratio",
        "ok",
        "failed",
        "lost",
        "duplicated",
        "wall_s",
        "ideal_s",
    )
    return {k: row.get(k) for k in keys}


def run_robustness(
    *,
    quick: bool,
    contenders: Sequence[Contender],
    workdir: Path,
    profiles: Sequence[str] | None = None,
    seeds: int = 3,
    run_s: float | None = None,
    save: Any = None,
) -> dict[str, Any]:
    """Run every contender on every profile for seeds 1..``seeds``, each run sized to
    ``run_s`` seconds of ideal time (by default 10, or 3 when ``quick``); returns the section
    of the results (``save(section)`` is called after every draw, so a crash keeps the rest)."""
    if run_s is None:
        run_s = QUICK_RUN_S if quick else RUN_S
    names = list(profiles) if profiles else list(PROFILES)
    section: dict[str, Any] = {
        "run_s": run_s,
        "seeds": seeds,
        "profiles": {name: PROFILES[name].summary for name in names},
        "contenders": [c.key for c in contenders],
        "runs": [],
        "summary": [],
    }
    for name in names:
        for seed in range(1, seeds + 1):
            draw = draw_profile(name, seed, run_s=run_s)
            log(f"[robustness {name}#{seed}] {draw.summary}")
            section["runs"].append(_run_draw(draw, run_s, contenders, workdir))
            section["summary"] = summarise(section["runs"])
            if save is not None:
                save(section)
    return section


# -- the report ---------------------------------------------------------------------------------


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _row_cells(row: dict[str, Any]) -> list[str]:
    return [
        _cell(row["efficiency"], "{:.2f}"),
        _cell(row["vs_reference"], "{:.2f}"),
        _cell(row["share_429"], "{:.1%}"),
        _cell(row["sent_ratio"], "{:.2f}"),
        str(row["failed"]),
        str(row["lost"]),
        str(row["duplicated"]),
    ]


def robustness_lines(section: dict[str, Any]) -> list[str]:
    """The robustness section of the markdown report."""
    if not section or not section.get("summary"):
        return []
    lines = [
        "## Robustness: the worst case across providers",
        "",
        f"Every contender on every profile, seeds 1-{section['seeds']} (parameters drawn per "
        f"seed), each run sized to about {section['run_s']:g} s of ideal time. Per profile and "
        "contender: the worst seed and the median seed (ranked by efficiency relative to the "
        "reference pacer, which is told the true limits; a run that lost, duplicated or failed "
        "requests ranks lowest). eff = ideal / wall; x ref = eff / the reference's eff on the "
        "same draw. Profiles: docs/SIMULATOR.md.",
        "",
    ]
    measured = section.get("measured")
    if measured:
        lines += [
            f"Measured {measured['date']} ({measured['mode']} run, git {measured['git']}, "
            f"load average {measured['load_at_start']} at start)."
            + (f" {measured['note']}" if measured.get("note") else ""),
            "",
        ]
    targets = [
        [e["profile"]]
        + [_target_value(t) + ("" if t["met"] else " **MISSED**") for t in e.get("targets", [])]
        for e in section["summary"]
        if e.get("targets")
    ]
    if targets:
        lines += [
            "Targets for auto mode: per profile, the worst value of each metric over the seeds:",
            "",
        ]
        lines += _md_table(["profile", *(t.label for t in TARGETS)], targets)
        lines.append("")
    header = [
        "profile",
        "contender",
        "worst: eff",
        "x ref",
        "429s",
        "sent/needed",
        "failed",
        "lost",
        "dup",
        "median: eff",
        "x ref",
        "429s",
        "sent/needed",
        "failed",
        "lost",
        "dup",
    ]
    rows = [
        [e["profile"], e["contender"], *_row_cells(e["worst"]), *_row_cells(e["median"])]
        for e in section["summary"]
    ]
    lines += _md_table(header, rows)
    lines += _fleet_lines(section)
    lines += ["", "Draws:", ""]
    lines += _md_table(
        ["draw", "what was drawn", "requests", "ideal s"],
        [
            [
                f"{run['profile']}#{run['seed']}",
                run["summary"],
                str(run["requests"]),
                f"{run['ideal_s']:.1f}",
            ]
            for run in section["runs"]
        ],
    )
    lines.append("")
    return lines


FLEET_TARGET = 0.9
"""Three processes sharing a key through Redis should reach this share of one process's
efficiency on the same draw (issue 10: "a fleet behaves as one client")."""


def _fleet_lines(section: dict[str, Any]) -> list[str]:
    """Per profile: the fleet's efficiency over one process's, worst and median seed."""
    table = []
    for profile, runs in _by_profile(section["runs"]).items():
        ratios = sorted(
            (ratio, run["seed"]) for run in runs if (ratio := _fleet_over_one(run)) is not None
        )
        if not ratios:
            continue
        worst, median = ratios[0], ratios[(len(ratios) - 1) // 2]
        met = "" if worst[0] >= FLEET_TARGET else " **MISSED**"
        table.append(
            [
                profile,
                f"{worst[0]:.2f} (seed {worst[1]}){met}",
                f"{median[0]:.2f}",
                str(len(ratios)),
            ]
        )
    if not table:
        return []
    return [
        "",
        "A fleet: the `fleet3` contender splits the same draw over three processes, each "
        "`wrap()` with nothing configured, sharing one Redis namespace; its efficiency over one "
        f"process's (`auto`) on the same draw (target >= {FLEET_TARGET:g}):",
        "",
        *_md_table(["profile", "worst: fleet / one process", "median", "seeds"], table),
    ]


def _fleet_over_one(run: dict[str, Any]) -> float | None:
    """The fleet's efficiency over one process's on the same draw (None: either missing)."""
    eff = {row["contender"]: row.get("efficiency") for row in run["rows"]}
    one, fleet = eff.get("auto"), eff.get("fleet3")
    return fleet / one if one and fleet is not None else None


def _by_profile(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(run["profile"], []).append(run)
    return grouped


def _target_value(verdict: dict[str, Any]) -> str:
    measured = verdict["measured"]
    if measured is None:
        return "-"
    if verdict["metric"] == "share_429":
        return f"{measured:.2%}"
    if isinstance(measured, float):
        return f"{measured:.2f}"
    return str(measured)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def console_table(section: dict[str, Any]) -> str:
    """A plain-text table of the worst rows, for the terminal."""
    header = ("profile", "contender", "eff", "x ref", "429s", "sent/need", "fail", "lost", "dup")
    rows = [header]
    rows += [
        (e["profile"], e["contender"], *_row_cells(e["worst"])) for e in section.get("summary", [])
    ]
    widths = [max(len(str(r[k])) for r in rows) for k in range(len(header))]
    text = ["worst seed per profile and contender:"]
    text += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    verdicts = [
        f"  {e['profile']}: {t['target']}: {_target_value(t)} MISSED"
        for e in section.get("summary", [])
        for t in e.get("targets", [])
        if not t["met"]
    ]
    text += ["auto-mode targets missed:", *verdicts] if verdicts else ["auto-mode targets: all met"]
    return "\n".join(text)
