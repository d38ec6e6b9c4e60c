"""The results as markdown (for people) and JSON (for tools and for diagnosing misses).

Every number in the markdown is in the JSON too, with more: per-second 429 timelines, the
server's status counts, pacekeeper's learned limits and sampled lane state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["render_markdown", "write_results"]

_MISSING = "-"


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return _MISSING if value is None else fmt.format(value)


def _met(met: bool) -> str:
    return "met" if met else "**MISSED**"


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _targets_section(results: dict[str, Any]) -> list[str]:
    rows = []
    for section in results.get("scenarios", []):
        for row in section["rows"]:
            for verdict in row.get("targets", []):
                measured = verdict["measured"]
                if verdict["metric"] == "share_429":
                    text = _num(measured, "{:.2%}")
                elif verdict["metric"] == "recovered_within_s":
                    text = (
                        _num(measured, "{:.0f} s")
                        if measured is not None
                        else f"not recovered (last window over 2% ends at "
                        f"{_num(row.get('recovery_s'), '{:.0f}')} s)"
                    )
                elif isinstance(measured, float):
                    text = f"{measured:.3f}"
                else:
                    text = str(measured)
                rows.append(
                    [
                        section["name"],
                        row["label"],
                        verdict["target"],
                        text,
                        _met(verdict["met"]),
                    ]
                )
    rows.extend(
        ["overhead", "pacekeeper", item["target"], item["measured"], _met(item["met"])]
        for item in results.get("overhead", {}).get("targets", [])
    )
    rows.extend(
        ["cost", item["measure"], item["target"], item["value"], _met(item["met"])]
        for item in results.get("cost", {}).get("rows", [])
    )
    if not rows:
        return []
    return [
        "## Targets",
        "",
        *_table(["scenario", "checked on", "target", "measured", ""], rows),
        "",
    ]


def _scenario_section(section: dict[str, Any]) -> list[str]:
    truth, lat = section["truth"], section["latency"]
    limits = ", ".join(
        f"{name} {truth[key]:,.0f}"
        for key, name in (("rpm", "rpm"), ("tpm", "tpm"), ("max_in_flight", "max in flight"))
        if truth[key] is not None
    )
    if truth["change_at_s"] is not None:
        limits += f", x{truth['change_factor']:g} at {truth['change_at_s']:g} s"
    lines = [
        f"### {section['name']} — {section['title']}",
        "",
        f"{section['requests']} requests (max_tokens {section['max_tokens']}); limits: {limits}; "
        f"latency {lat['ttft_s']:g} s + {lat['per_token_s'] * 1000:g} ms/token "
        f"(spread {lat['spread']:g}); timeout {section['timeout_s']:g} s per attempt; "
        f"ideal {section['ideal_s']:.1f} s.",
        "",
    ]
    capacity = truth["change_at_s"] is not None
    header = [
        "contender",
        "wall s",
        "ideal s",
        "efficiency",
        "429s (% of sent)",
        "sent / needed",
        "ok",
        "failed",
        "lost",
        "duplicated",
        "non-retryable repeated",
        "peak in flight",
    ]
    if capacity:
        header.append("429 < 2% after change (s)")
    rows = []
    for row in section["rows"]:
        cells = [
            row["label"],
            _num(row["wall_s"]),
            _num(row["ideal_s"]),
            _num(row["efficiency"], "{:.2f}") + ("*" if row["failed"] or row["lost"] else ""),
            f"{row['429s']} ({row['share_429']:.1%})",
            _num(row["sent_ratio"], "{:.2f}"),
            str(row["ok"]),
            str(row["failed"]),
            str(row["lost"]),
            str(row["duplicated"]),
            str(row["nonretryable_repeated"]),
            _num(row["peak_in_flight"], "{}"),
        ]
        if capacity:
            cells.append(_recovery_cell(row))
        rows.append(cells)
    lines += _table(header, rows)
    lines.append("")
    if any(row["failed"] or row["lost"] for row in section["rows"]):
        lines += [
            "\\* some requests did not succeed: a client that gives up finishes early, so its "
            "efficiency is not comparable.",
            "",
        ]
    if any(row["failed"] or row["lost"] for row in section["rows"]):
        lines += _reasons(section)
    return lines


def _recovery_cell(row: dict[str, Any]) -> str:
    if row.get("recovery_s") is None:
        return "no answers after the change"
    if not row.get("recovered"):
        return f"never (still over at {row['recovery_s']:.0f} s)"
    return f"{row['recovery_s']:.0f}"


def _reasons(section: dict[str, Any]) -> list[str]:
    rows = []
    for row in section["rows"]:
        reasons = row.get("reasons") or {}
        if reasons:
            text = ", ".join(f"{kind} x{count}" for kind, count in reasons.items())
            rows.append([row["label"], text])
    return [
        "What the callers got for requests that did not succeed:",
        "",
        *_table(["contender", "failures by reason (exception or error code)"], rows),
        "",
    ]


def _overhead_section(overhead: dict[str, Any]) -> list[str]:
    if not overhead:
        return []
    lines = ["## Overhead", ""]
    measured = overhead.get("measured")
    if measured:
        lines += [
            f"Measured {measured['date']} ({measured['mode']} run, git {measured['git']}, load "
            f"average {measured['load_at_start']} at start): absolute µs move with the machine's "
            "load (bare httpx2 costs about 109 µs per request in process on a quiet one), read "
            "the ratios of one run.",
            "",
        ]
    cpu_measured = overhead.get("cpu_measured")
    if cpu_measured:
        lines += [
            f"The CPU rows (and the simulator's rate) were measured again on "
            f"{cpu_measured['date']} ({cpu_measured['mode']} run) at git {cpu_measured['git']} "
            "(load average "
            f"{cpu_measured['load_at_start']} at start), with `python -m bench --only overhead "
            "--cpu-only`; the memory rows are the run's above."
            # What a reader needs to weigh them (another run's figures), written in by hand.
            + (f" {cpu_measured['note']}" if cpu_measured.get("note") else ""),
            "",
        ]
    rows = [[item["measure"], item["value"]] for item in overhead.get("lines", [])]
    lines += _table(["measure", "value"], rows)
    lines.append("")
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# pacekeeper benchmark",
        "",
        f"{meta['date']} · {meta['mode']} run · {meta['duration_s']:.0f} s · git {meta['git']} · "
        f"{meta['cpus']} CPUs (load average {meta['load_at_start']} at start, "
        f"{meta.get('load_at_end', '?')} at end) · "
        f"Python {meta['python']} · openai {meta['openai']} · httpx2 {meta['httpx2']}",
        "",
        "Every contender ran against the same simulator scenario, each with a fresh simulator "
        "process on its own core. Efficiency = ideal / wall (ideal: what the limit alone "
        "forces); 429s are the simulator's rate-limit answers. Timings are noisy on a shared "
        "2-core machine: compare contenders within one table. See bench/README.md.",
        "",
    ]
    if meta["mode"] == "quick":
        lines += [
            "**Quick run**: sizes are far too small for the numbers or the targets to mean "
            "anything; it only shows that every part of the benchmark runs.",
            "",
        ]
    lines += _targets_section(results)
    if results.get("scenarios"):
        lines += ["## Scenarios", ""]
    for section in results.get("scenarios", []):
        lines += _scenario_section(section)
    from bench.robustness import robustness_lines

    lines += robustness_lines(results.get("robustness", {}))
    from bench.independent import independent_lines

    lines += independent_lines(results.get("independent", {}))
    lines += _overhead_section(results.get("overhead", {}))
    from bench.cost import cost_lines

    lines += cost_lines(results.get("cost", {}))
    from bench.sharing import sharing_lines

    lines += sharing_lines(results.get("sharing", {}))
    from bench.issue_rows import extras_lines

    lines += extras_lines(results.get("extras", {}))
    from bench.priority import priority_lines

    lines += priority_lines(results.get("priority", {}))
    return "\n".join(lines).rstrip() + "\n"


def write_results(results: dict[str, Any], out_dir: Path, stem: str, dated: str | None) -> Path:
    """Write ``stem``.md and ``stem``.json (and a dated copy of both); returns the .md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(results)
    payload = json.dumps(results, indent=1, default=str) + "\n"
    stems = [stem] + ([dated] if dated else [])
    for name in stems:
        (out_dir / f"{name}.md").write_text(markdown, encoding="utf-8")
        (out_dir / f"{name}.json").write_text(payload, encoding="utf-8")
    return out_dir / f"{stem}.md"
