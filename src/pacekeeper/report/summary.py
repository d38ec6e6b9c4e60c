"""The per-model summary table printed at the end of a run (and by the demo), and, when more
than one priority class or tenant waited, the queue wait of each."""

from __future__ import annotations

from collections.abc import Iterable

from rich import box
from rich.table import Table

from pacekeeper.core.stats import QueueWaitStats, StatsSnapshot

__all__ = [
    "queue_wait_rows",
    "queue_wait_table",
    "summary_lines",
    "summary_rows",
    "summary_table",
    "usd",
    "use_of_limit",
]

DEFAULT_BURST_S = 0.5
"""The burst allowance assumed for providers (as :class:`~pacekeeper.Limits`' ``burst_s``)."""

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
    ("cost", "right"),
)
_WAIT_COLUMNS = (
    ("model", "left"),
    ("route", "left"),
    ("class", "left"),
    ("tenant", "left"),
    ("reqs", "right"),
    ("wait p50", "right"),
    ("wait p95", "right"),
    ("wait p99", "right"),
)
ALL_TENANTS = "all"
"""The tenant column of a class's own row (every request of the class)."""


def usd(value: float | None) -> str:
    """A cost for people: ``$0.0123``, ``$12.35``; ``unknown`` (no price), never ``$0``.

    >>> usd(0.012345), usd(12.345), usd(None)
    ('$0.0123', '$12.35', 'unknown')
    """
    if value is None:
        return "unknown"
    return f"${value:.2f}" if value >= 10 else f"${value:.4f}"


def _seconds(value: float) -> str:
    return f"{value:.2f}s"


def use_of_limit(snapshot: StatsSnapshot, *, burst_s: float = DEFAULT_BURST_S) -> float | None:
    """Successful requests against what the rpm limit allowed over the same interval: its
    rate times the time the key was active, plus the burst a provider accepts at once (at
    least the first request). Above 1 only when the provider really accepted more. None
    without a limit."""
    limit = snapshot.rpm_limit
    if not limit:
        return None
    per_s = limit / 60.0
    allowed = per_s * snapshot.elapsed_s + max(1.0, per_s * burst_s)
    return snapshot.ok / allowed


def summary_rows(
    stats: Iterable[StatsSnapshot], *, burst_s: float = DEFAULT_BURST_S
) -> list[dict[str, str]]:
    """One row of display strings per (route, model), in a stable order."""
    rows = []
    for s in sorted(stats, key=lambda s: (s.model or "", s.route)):
        if s.requests == 0 and s.attempts == 0:
            continue
        limit = s.rpm_limit
        use = use_of_limit(s, burst_s=burst_s)
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
                "use": f"{use:.0%}" if use is not None else "-",
                "cost": usd(s.cost_usd),
            }
        )
    return rows


def queue_wait_rows(stats: Iterable[StatsSnapshot]) -> list[dict[str, str]]:
    """Queue wait per priority class (tenant ``all``) and per (class, tenant) of each (route,
    model), when more than one class or tenant was seen anywhere; else no rows (one class of
    one tenant is the per-model table's queue wait already)."""
    snapshots = sorted(stats, key=lambda s: (s.model or "", s.route))
    if not any(s.queue_wait_varied for s in snapshots):
        return []
    return [
        _wait_row(s, w)
        for s in snapshots
        for by_class in s.queue_wait_by_class
        for w in (
            by_class,
            *(t for t in s.queue_wait_by_tenant if t.priority == by_class.priority),
        )
    ]


def _wait_row(s: StatsSnapshot, w: QueueWaitStats) -> dict[str, str]:
    return {
        "model": s.model or "-",
        "route": s.route,
        "class": w.priority,
        "tenant": w.tenant if w.tenant is not None else ALL_TENANTS,
        "reqs": str(w.requests),
        "wait p50": _seconds(w.p50_s),
        "wait p95": _seconds(w.p95_s),
        "wait p99": _seconds(w.p99_s),
    }


def summary_lines(stats: Iterable[StatsSnapshot], *, burst_s: float = DEFAULT_BURST_S) -> list[str]:
    """The summary as plain ``key=value`` lines, one per (route, model), never cut: for logs
    and CI, where a table would be cut to 80 columns. When several classes or tenants waited,
    one ``queue_wait`` line follows per class and per (class, tenant)."""
    stats = list(stats)
    lines = [
        " ".join(f"{name}={row[name]}" for name, _ in _COLUMNS)
        for row in summary_rows(stats, burst_s=burst_s)
    ]
    lines.extend(
        "queue_wait "
        + " ".join(f"{name.replace(' ', '_')}={row[name]}" for name, _ in _WAIT_COLUMNS)
        for row in queue_wait_rows(stats)
    )
    return lines


def queue_wait_table(
    stats: Iterable[StatsSnapshot], *, title: str = "queue wait per class"
) -> Table | None:
    """A rich table of :func:`queue_wait_rows` (None when there are none to show): how long
    each class, and each tenant in it, waited for admission."""
    rows = queue_wait_rows(stats)
    if not rows:
        return None
    return _table(rows, _WAIT_COLUMNS, title=title)


def _table(
    rows: list[dict[str, str]], all_columns: tuple[tuple[str, str], ...], *, title: str
) -> Table:
    columns = [
        (name, justify)
        for name, justify in all_columns
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


def summary_table(stats: Iterable[StatsSnapshot], *, title: str = "per model") -> Table:
    """A rich table: requests, ok, failed, retries, 429s seen, attempt latency p50/p95, and
    the achieved requests per minute against the limit (configured or learned) and its use
    (successful requests against what the limit allowed over the time the model was active,
    its burst included: see :func:`use_of_limit`). The route
    column is shown only when more than one route was used."""
    return _table(summary_rows(stats), _COLUMNS, title=title)
