"""The per-model summary table printed at the end of a run (and by the demo)."""

from __future__ import annotations

from collections.abc import Iterable

from rich import box
from rich.table import Table

from pacekeeper.core.stats import StatsSnapshot

__all__ = ["summary_rows", "summary_table"]

_COLUMNS = (
    ("model", "left"),
    ("route", "left"),
    ("reqs", "right"),
    ("ok", "right"),
    ("failed", "right"),
    ("retries", "right"),
    ("429s", "right"),
    ("p50", "right"),
    ("p95", "right"),
    ("rpm", "right"),
    ("limit", "right"),
    ("use", "right"),
)


def _seconds(value: float) -> str:
    return f"{value:.2f}s"


def summary_rows(stats: Iterable[StatsSnapshot]) -> list[dict[str, str]]:
    """One row of display strings per (route, model), in a stable order."""
    rows = []
    for s in sorted(stats, key=lambda s: (s.model or "", s.route)):
        if s.requests == 0 and s.attempts == 0:
            continue
        limit = s.rpm_limit
        rows.append(
            {
                "model": s.model or "-",
                "route": s.route,
                "reqs": str(s.requests),
                "ok": str(s.ok),
                "failed": str(s.failed),
                "retries": str(s.retries),
                "429s": str(s.rate_limited),
                "p50": _seconds(s.latency_p50_s),
                "p95": _seconds(s.latency_p95_s),
                "rpm": f"{s.throughput_rpm:.0f}",
                "limit": f"{limit:.0f}" if limit else "-",
                "use": f"{s.throughput_rpm / limit:.0%}" if limit else "-",
            }
        )
    return rows


def summary_table(stats: Iterable[StatsSnapshot], *, title: str = "per model") -> Table:
    """A rich table: requests, ok, failed, retries, 429s seen, attempt latency p50/p95, and
    the achieved requests per minute against the limit (configured or learned) and its use
    (rpm / limit, over the time the model was active). The route
    column is shown only when more than one route was used."""
    rows = summary_rows(stats)
    columns = [
        (name, justify)
        for name, justify in _COLUMNS
        if name != "route" or len({row["route"] for row in rows}) > 1
    ]
    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(row[name] for name, _ in columns))
    return table
