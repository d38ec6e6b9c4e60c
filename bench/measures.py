"""Turning a run into numbers: the ideal time, efficiency, 429 shares, recovery after a change.

``ideal_s`` is what the limit alone forces, ignoring the one-second burst a client may spend
at the start and the latency of the last answer (the two roughly cancel, so a perfect client
scores about 1.0 and may score slightly above):

- rpm-bound: N / rpm minutes; tpm-bound: tokens charged / tpm minutes (the simulator's
  documented charging rule: prompt estimate + max_tokens);
- in-flight-capped: the sum of the requests' mean latencies / max_in_flight;
- with a capacity change: sending at the first rate until the change, then at the second.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from bench.outcome import Answer, Outcome
from bench.scenarios import BenchScenario

__all__ = ["RECOVERY_SHARE", "ideal_s", "recovery", "row_for", "verdicts"]

RECOVERY_SHARE = 0.02
"""A 1 s window is recovered when at most this share of its answers are 429s."""


def _time_for(units: float, rate_per_s: float, change_s: float | None, factor: float) -> float:
    """Seconds to spend ``units`` at ``rate_per_s``, the rate becoming ``rate * factor``
    ``change_s`` seconds from now (None: never)."""
    if change_s is None or units <= rate_per_s * max(0.0, change_s):
        return units / rate_per_s
    before = max(0.0, change_s)
    return before + (units - rate_per_s * before) / (rate_per_s * factor)


def ideal_s(
    scenario: BenchScenario, *, offset_s: float, latencies_s: list[float] | None = None
) -> float:
    """The ideal time for a contender that started ``offset_s`` after the simulator (capacity
    changes count from the simulator's start). ``latencies_s``: each request's mean latency,
    needed when an in-flight cap binds."""
    truth, wl = scenario.truth, scenario.workload
    change_s = None if truth.change_at_s is None else truth.change_at_s - offset_s
    bounds = [0.0]
    if truth.rpm is not None:
        bounds.append(_time_for(wl.n, truth.rpm / 60, change_s, truth.change_factor))
    if truth.tpm is not None:
        bounds.append(_time_for(wl.total_charge(), truth.tpm / 60, change_s, truth.change_factor))
    if truth.max_in_flight is not None and latencies_s:
        bounds.append(sum(latencies_s) / truth.max_in_flight)
    return max(bounds)


def mean_latencies(scenario: BenchScenario, completion_tokens: list[int]) -> list[float]:
    """Each request's mean latency under the scenario's latency model: the nominal time times
    the lognormal factor's mean, exp(spread^2 / 2)."""
    lat = scenario.sim.latency
    factor = math.exp(lat.spread**2 / 2)
    return [(lat.ttft_s + lat.per_token_s * c) * factor for c in completion_tokens]


def recovery(answers: list[Answer], change_wall: float) -> dict[str, Any]:
    """Seconds after the change until the 429 share of answers, per 1 s window, stays at or
    under 2%: the end of the last window above it (0 when none is). ``recovered`` is False
    when the last window of the run is still above it."""
    windows: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for at, status in answers:
        if at < change_wall:
            continue
        window = windows[int(at - change_wall)]
        window[0] += 1
        window[1] += status == 429
    if not windows:
        return {"recovery_s": None, "recovered": None, "windows": []}
    series = [{"s": k, "answers": n, "429s": r} for k, (n, r) in sorted(windows.items()) if n > 0]
    bad = [w["s"] for w in series if w["429s"] > RECOVERY_SHARE * w["answers"]]
    last = series[-1]["s"]
    if not bad:
        return {"recovery_s": 0.0, "recovered": True, "windows": series}
    return {"recovery_s": float(max(bad) + 1), "recovered": max(bad) < last, "windows": series}


def per_second(answers: list[Answer], started_at: float) -> list[dict[str, int]]:
    """Answers and 429s per 1 s window since the contender started (for the JSON)."""
    windows: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for at, status in answers:
        window = windows[max(0, int(at - started_at))]
        window[0] += 1
        window[1] += status == 429
    return [{"s": k, "answers": n, "429s": r} for k, (n, r) in sorted(windows.items())]


def row_for(
    scenario: BenchScenario,
    outcome: Outcome,
    stats: dict[str, Any],
    *,
    ideal: float,
    change_wall: float | None,
) -> dict[str, Any]:
    """One table row: the client's view joined with the server's."""
    n = scenario.workload.n
    sent = int(stats["requests_received"])
    rate_limited = int(stats["rejected_rate_limited"])
    row: dict[str, Any] = {
        "wall_s": outcome.wall_s,
        "ideal_s": ideal,
        "efficiency": ideal / outcome.wall_s if outcome.wall_s > 0 else None,
        "sent": sent,
        "needed": n,
        "sent_ratio": sent / n,
        "429s": rate_limited,
        "share_429": rate_limited / sent if sent else 0.0,
        "client_429s": sum(1 for _, status in outcome.answers if status == 429),
        "ok": outcome.ok,
        "failed": outcome.failed,
        "lost": outcome.lost,
        "unexplained": outcome.unexplained,
        "duplicated": len(stats.get("duplicates", {})),
        "nonretryable_repeated": len(stats.get("non_retryable_repeats", {})),
        "nonretryable_repeats_total": sum(stats.get("non_retryable_repeats", {}).values()),
        "peak_in_flight": stats.get("peak_in_flight"),
        "by_status": stats.get("by_status"),
        "faults_injected": stats.get("faults_injected"),
        "reasons": dict(outcome.reasons.most_common()),
        "reason_samples": outcome.samples,
        "per_second": per_second(outcome.answers, outcome.started_at),
    }
    if change_wall is not None:
        row.update(recovery(outcome.answers, change_wall))
        # The target needs a recovery that lasts: a run that ends still above 2% has none.
        row["recovered_within_s"] = row["recovery_s"] if row["recovered"] else None
        row["change_after_start_s"] = change_wall - outcome.started_at
    return row


def verdicts(scenario: BenchScenario, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The scenario's targets, checked against one row."""
    return [
        {
            "target": t.label,
            "metric": t.metric,
            "measured": row.get(t.metric),
            "met": t.met(row.get(t.metric)),
        }
        for t in scenario.targets
    ]
