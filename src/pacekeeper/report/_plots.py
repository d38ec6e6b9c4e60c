"""The report's charts, drawn with matplotlib (the ``pacekeeper[report]`` extra).

matplotlib is imported only when a chart is drawn, and only its object-oriented API is used
(``Figure`` and the Agg renderer behind ``savefig``): no pyplot, no global backend, no window,
safe in threads and servers. Each chart comes back as PNG or SVG bytes with a title, a caption
saying how to read it, and alt text that states its key numbers.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pacekeeper.core.stats import QueueWaitStats
from pacekeeper.report._extras import require
from pacekeeper.report._load import ERROR_GROUPS, Histogram, LaneSeries, RunData, group_label
from pacekeeper.report._verdict import BOUND_KINDS, Binding, bound_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Chart", "ImageFormat", "render_charts", "require_matplotlib"]

ImageFormat = Literal["png", "svg"]

WIDTH_IN = 11.0
DPI = 150
"""PNGs are drawn at 1.5x their displayed size, for sharp text on high-density screens."""
MAX_LANES = 8
"""Charts with one line per model draw at most this many (the busiest)."""

_LANE_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
)  # fmt: skip
_GROUP_COLORS = {
    "429": "#d62728",
    "5xx": "#8c564b",
    "timeout": "#ff7f0e",
    "connection": "#9467bd",
    "other": "#7f7f7f",
}
_BOUND_COLORS = {
    "rpm": "#1f77b4",
    "tpm": "#9467bd",
    "concurrency": "#ff7f0e",
    "429": "#d62728",
    "upstream": "#8c564b",
    "other": "#bcbd22",
    "demand": "#b7dfb0",
    "idle": "#eeeeee",
}


def require_matplotlib() -> None:
    """Raise :class:`~pacekeeper.report.MissingExtraError` unless matplotlib is installed."""
    require("matplotlib", extra="report", purpose="the HTML report")


@dataclass(frozen=True, slots=True)
class Chart:
    """One drawn chart."""

    id: str
    title: str
    caption: str
    """How to read it (one or two sentences)."""
    alt: str
    """What it shows, with its key numbers, for screen readers and broken images."""
    mime: str
    data: bytes
    width_px: int
    """The size to display it at (CSS pixels)."""
    height_px: int

    @property
    def data_uri(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Axis:
    """The time axis: bin edges and centres in a readable unit."""

    unit: str
    scale: float
    edges: list[float]
    centres: list[float]
    end: float


def _time_axis(run: RunData, width: int) -> _Axis:
    duration = run.duration_s
    if duration <= 300:
        unit, scale = "s", 1.0
    elif duration <= 300 * 60:
        unit, scale = "min", 60.0
    else:
        unit, scale = "h", 3600.0
    starts = run.bin_starts(width)
    edges = [max(0.0, min(duration, s)) / scale for s in starts]
    edges.append(duration / scale)
    centres = [(lo + hi) / 2 for lo, hi in itertools.pairwise(edges)]
    return _Axis(unit, scale, edges, centres, duration / scale)


def _nan(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _steps(ax: Axes, axis: _Axis, values: Sequence[float | None], **kwargs: Any) -> None:
    ys = _nan(values)
    if all(math.isnan(y) for y in ys):
        return
    ax.step(axis.edges, [*ys, ys[-1]], where="post", **kwargs)


def _si(value: float, _pos: object = None) -> str:
    """Axis labels: 1,200 / 45k / 1.2M.

    >>> _si(1200), _si(45000), _si(1_250_000), _si(0.5)
    ('1,200', '45k', '1.25M', '0.5')
    """
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.3g}k"
    if magnitude >= 1 or value == 0:
        return f"{value:,.0f}"
    return f"{value:.2g}"


def _fmt(value: float) -> str:
    return f"{round(value):,}"


def _style() -> dict[Any, Any]:
    return {
        "font.size": 10,
        "axes.titlesize": 12,
        "axes.titleweight": "bold",
        "axes.titlelocation": "left",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.fontsize": 9,
        "legend.frameon": False,
        "svg.hashsalt": "pacekeeper",
        "svg.fonttype": "path",
    }


# Fixed margins (not a constrained layout) so that every chart's time axis spans the same
# pixels and the charts line up down the page; legends go in the right-hand margin.
_LEFT_IN, _RIGHT_IN, _TOP_IN, _BOTTOM_IN = 0.85, 2.55, 0.42, 0.58
LEGEND_CHARS = 30


def _figure(height_in: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    fig.subplots_adjust(
        left=_LEFT_IN / WIDTH_IN,
        right=1 - _RIGHT_IN / WIDTH_IN,
        top=1 - _TOP_IN / height_in,
        bottom=_BOTTOM_IN / height_in,
    )
    return fig


def _wrap(label: str) -> str:
    """Wrap a legend label to the margin; labels with their own line breaks are kept."""
    import textwrap

    if "\n" in label:
        return label
    return "\n".join(textwrap.wrap(label, LEGEND_CHARS, break_long_words=True)) or label


def _encode(fig: Figure, fmt: ImageFormat) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buf, format="svg", metadata={"Date": None})
        return "image/svg+xml", buf.getvalue()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "image/png", buf.getvalue()


def _legend_outside(ax: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            [_wrap(label) for label in labels],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )


def _time_xaxis(ax: Axes, axis: _Axis) -> None:
    ax.set_xlim(0, max(axis.end, 1e-9))
    ax.set_xlabel(f"time since start ({axis.unit})")


# -- charts ----------------------------------------------------------------------------------


def render_charts(
    run: RunData,
    bindings: Mapping[tuple[str, str | None], Binding],
    *,
    image_format: ImageFormat = "png",
) -> list[Chart]:
    """Every chart of the report, in page order."""
    require_matplotlib()
    import matplotlib

    lanes = sorted(run.lanes, key=lambda lane: -lane.attempts)[:MAX_LANES]
    lanes.sort(key=lambda lane: (lane.model or "", lane.route))
    colors = {lane.key: _LANE_COLORS[i % len(_LANE_COLORS)] for i, lane in enumerate(lanes)}
    names = _lane_names(run)
    series = {lane.key: run.series(lane.key) for lane in lanes}
    axis = _time_axis(run, run.bin_s)
    omitted = len(run.lanes) - len(lanes)
    more = f" ({omitted} less busy models are not drawn.)" if omitted > 0 else ""
    ctx = _Ctx(run, axis, series, colors, names, more, image_format)
    builders: list[Callable[[_Ctx], Chart]] = [
        _throughput,
        _concurrency,
        _errors,
        _tokens,
        _latency,
    ]
    if any(lane.priced_requests for lane in lanes):
        builders.append(_cost)
    if run.queue_waits.varied:
        builders.append(_queue_wait)
    with matplotlib.rc_context(_style()):
        charts = [build(ctx) for build in builders]
        charts.append(_timeline(ctx, bindings))
    return charts


def _lane_names(run: RunData) -> dict[tuple[str, str | None], str]:
    models = [lane.model for lane in run.lanes]
    out = {}
    for lane in run.lanes:
        name = lane.model or lane.route
        if lane.model is not None and models.count(lane.model) > 1:
            name = f"{lane.model} {lane.route}"
        out[lane.key] = name
    return out


@dataclass(frozen=True, slots=True)
class _Ctx:
    run: RunData
    axis: _Axis
    series: dict[tuple[str, str | None], LaneSeries]
    colors: dict[tuple[str, str | None], str]
    names: dict[tuple[str, str | None], str]
    more: str
    fmt: ImageFormat

    def chart(self, fig: Figure, chart_id: str, title: str, caption: str, alt: str) -> Chart:
        mime, data = _encode(fig, self.fmt)
        width, height = fig.get_size_inches()
        return Chart(
            id=chart_id,
            title=title,
            caption=caption + self.more,
            alt=alt,
            mime=mime,
            data=data,
            width_px=round(width * 100),
            height_px=round(height * 100),
        )


_PANEL_IN, _PANEL_TITLE_IN, _SUPTITLE_IN = 1.45, 0.34, 0.42


def _panels(
    ctx: _Ctx, title: str, ylabel: str, styles: Sequence[tuple[str, dict[str, Any]]]
) -> tuple[Figure, list[tuple[tuple[str, str | None], LaneSeries, str, Axes]]]:
    """One panel per model, stacked, sharing the time axis, each with its own y scale (a
    model limited to 150k tokens/min stays readable next to one allowed 10M). ``styles`` are
    the legend's (label, line style) pairs, drawn once for all panels. Callers draw, then set
    the y axis's bottom to 0 (setting it before drawing would freeze the top)."""
    from matplotlib.lines import Line2D

    lanes = list(ctx.series.items())
    n = max(1, len(lanes))
    height = _SUPTITLE_IN + n * (_PANEL_TITLE_IN + _PANEL_IN) + _BOTTOM_IN
    fig = _figure(height)
    left, right = _LEFT_IN / WIDTH_IN, 1 - _RIGHT_IN / WIDTH_IN
    out = []
    first: Axes | None = None
    for j, (key, series) in enumerate(lanes):
        top_in = height - _SUPTITLE_IN - j * (_PANEL_TITLE_IN + _PANEL_IN) - _PANEL_TITLE_IN
        ax = fig.add_axes((left, (top_in - _PANEL_IN) / height, right - left, _PANEL_IN / height))
        if first is None:
            first = ax
        else:
            ax.sharex(first)
        color = ctx.colors[key]
        ax.set_title(ctx.names[key], loc="left", fontsize=10, color=color, pad=4)
        last = j == len(lanes) - 1
        ax.tick_params(labelbottom=last)
        if last:
            _time_xaxis(ax, ctx.axis)
        out.append((key, series, color, ax))
    fig.text(left, 1 - 0.1 / height, title, ha="left", va="top", fontsize=12, fontweight="bold")
    fig.text(0.012, 0.5, ylabel, rotation=90, ha="left", va="center")
    handles = [Line2D([], [], color="#444444", **style) for _, style in styles]
    fig.legend(
        handles,
        [label for label, _ in styles],
        loc="upper left",
        bbox_to_anchor=(right + 0.01, 1 - (_SUPTITLE_IN + _PANEL_TITLE_IN) / height),
    )
    return fig, out


_SOLID: dict[str, Any] = {"lw": 1.6}
_DASHED: dict[str, Any] = {"lw": 1.2, "ls": "--"}
_DOTTED: dict[str, Any] = {"lw": 1.2, "ls": ":"}


def _throughput(ctx: _Ctx) -> Chart:
    title = "Requests per minute, against the rpm limit"
    fig, panels = _panels(ctx, title, "requests / min", [("sent", _SOLID), ("rpm limit", _DASHED)])
    parts = []
    for key, s, color, ax in panels:
        ax.plot(ctx.axis.centres, s.sent, color=color, **_SOLID)
        _steps(ax, ctx.axis, s.rpm_limit, color=color, **_DASHED)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(_si)
        limit = _last(s.rpm_limit)
        parts.append(
            f"{ctx.names[key]} peaked at {_fmt(max(s.sent, default=0))} requests/min"
            + (f" against a limit of {_fmt(limit)} rpm" if limit else " (no rpm limit known)")
        )
    return ctx.chart(
        fig,
        "throughput",
        title,
        "One panel per model, each on its own scale. Solid: attempts sent per minute (what a "
        "provider's rpm limit counts). Dashed: the rpm limit in force (configured, or learned "
        "from the response headers). Solid flat against dashed: the rpm limit set the pace.",
        f"Line charts over {_fmt_duration(ctx.run.duration_s)}: " + "; ".join(parts) + ".",
    )


def _concurrency(ctx: _Ctx) -> Chart:
    title = "Requests in flight, against the concurrency limit"
    fig, panels = _panels(
        ctx, title, "requests in flight", [("in flight", _SOLID), ("concurrency limit", _DASHED)]
    )
    parts = []
    for key, s, color, ax in panels:
        ax.plot(ctx.axis.centres, s.in_flight, color=color, **_SOLID)
        _steps(ax, ctx.axis, s.concurrency_limit, color=color, **_DASHED)
        ax.set_ylim(bottom=0)
        limits = [v for v in s.concurrency_limit if v is not None]
        parts.append(
            f"{ctx.names[key]} averaged {max(s.in_flight, default=0):.1f} in flight at most"
            + (
                f", with a concurrency limit between {min(limits):.0f} and {max(limits):.0f}"
                if limits
                else ""
            )
        )
    return ctx.chart(
        fig,
        "concurrency",
        title,
        "One panel per model. Solid: requests sent and not yet answered (averaged over each "
        "interval). Dashed: the concurrency limit (an adaptive limit grows while answers come "
        "back fine and shrinks on 429 and overload answers). Solid against dashed: slots were "
        "the bound.",
        f"Line charts over {_fmt_duration(ctx.run.duration_s)}: " + "; ".join(parts) + ".",
    )


def _errors(ctx: _Ctx) -> Chart:
    fig = _figure(3.3)
    ax = fig.add_subplot()
    n = len(ctx.axis.centres)
    totals = {group: [0.0] * n for group in ERROR_GROUPS}
    retries = [0.0] * n
    for s in ctx.series.values():
        for group in ERROR_GROUPS:
            for i, v in enumerate(s.errors[group]):
                totals[group][i] += v
        for i, v in enumerate(s.retries):
            retries[i] += v
    widths = [hi - lo for lo, hi in itertools.pairwise(ctx.axis.edges)]
    bottom = [0.0] * n
    parts = []
    for group in ERROR_GROUPS:
        values = totals[group]
        count = sum(values)
        if not count:
            continue
        ax.bar(
            ctx.axis.edges[:-1],
            values,
            width=widths,
            bottom=bottom,
            align="edge",
            color=_GROUP_COLORS[group],
            label=group_label(group),
            linewidth=0,
        )
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        parts.append(f"{_fmt(count)} {group_label(group)}")
    if sum(retries):
        ax.stairs(
            retries, ctx.axis.edges, baseline=None, color="black", lw=1.4, label="retries sent"
        )
        parts.append(f"{_fmt(sum(retries))} retries")
    per = _bin_label(ctx.run.bin_s)
    title = "429s, errors and retries"
    ax.set_title(title)
    ax.set_ylabel(f"attempts per {per}")
    ax.set_ylim(bottom=0)
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not parts:
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.text(
            0.5,
            0.5,
            "no 429s, no errors, no retries",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#555555",
        )
    _time_xaxis(ax, ctx.axis)
    _legend_outside(ax)
    return ctx.chart(
        fig,
        "errors",
        title,
        f"Bars: failed attempts per {per} by kind, stacked, all models together (a 429 is a "
        "rate limit; 5xx, timeouts and dropped connections are the upstream's failures). "
        "Line: retries sent in the same interval.",
        (
            f"Bar chart over {_fmt_duration(ctx.run.duration_s)}: " + ", ".join(parts) + "."
            if parts
            else "Empty chart: no 429s, no errors and no retries during the run."
        ),
    )


def _tokens(ctx: _Ctx) -> Chart:
    title = "Tokens per minute, against the tpm limit"
    fig, panels = _panels(
        ctx,
        title,
        "tokens / min",
        [("charged", _SOLID), ("used", _DOTTED), ("tpm limit", _DASHED)],
    )
    parts = []
    for key, s, color, ax in panels:
        ax.plot(ctx.axis.centres, s.tokens_charged, color=color, **_SOLID)
        if any(s.tokens_used):
            ax.plot(ctx.axis.centres, s.tokens_used, color=color, **_DOTTED)
        _steps(ax, ctx.axis, s.tpm_limit, color=color, **_DASHED)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(_si)
        limit = _last(s.tpm_limit)
        parts.append(
            f"{ctx.names[key]} peaked at {_fmt(max(s.tokens_charged, default=0))} tokens/min "
            f"charged and {_fmt(max(s.tokens_used, default=0))} used"
            + (f", against a limit of {_fmt(limit)} tpm" if limit else " (no tpm limit known)")
        )
    return ctx.chart(
        fig,
        "tokens",
        title,
        "One panel per model. Solid: tokens charged per minute as requests were sent (the "
        "prompt plus max_tokens, which is what OpenAI counts against the limit). Dotted: "
        "tokens the answers reported using (prompt + reply). Dashed: the tpm limit. A wide "
        "gap between solid and dotted means max_tokens reserves far more than replies use.",
        f"Line charts over {_fmt_duration(ctx.run.duration_s)}: " + "; ".join(parts) + ".",
    )


def _cost(ctx: _Ctx) -> Chart:
    title = "Cost over time, spent so far"
    fig, panels = _panels(ctx, title, "USD spent", [("spent (cumulative)", _SOLID)])
    parts = []
    totals = {lane.key: lane for lane in ctx.run.lanes}
    for key, s, color, ax in panels:
        spent, running = [], 0.0
        for value in s.cost_usd:
            running += value
            spent.append(running)
        ax.plot(ctx.axis.centres, spent, color=color, **_SOLID)
        ax.set_ylim(bottom=0)
        lane = totals[key]
        parts.append(
            f"{ctx.names[key]} spent ${running:.4f}"
            if lane.priced_requests
            else f"{ctx.names[key]}: cost unknown (no price)"
        )
    return ctx.chart(
        fig,
        "cost",
        title,
        "One panel per model: USD spent so far, from each answer's usage at the model's price "
        "(genai-prices, or pacekeeper.toml). A model without a known price stays flat at zero "
        "here: its cost is unknown, not zero.",
        f"Line charts over {_fmt_duration(ctx.run.duration_s)}: " + "; ".join(parts) + ".",
    )


def _latency(ctx: _Ctx) -> Chart:
    fig = _figure(3.3)
    ax = fig.add_subplot()
    lanes = [lane for lane in ctx.run.lanes if lane.key in ctx.series and lane.latency.count]
    parts = []
    if lanes:
        low = max(Histogram.FLOOR, min(lane.latency.min for lane in lanes))
        high = max(lane.latency.max for lane in lanes)
        if high <= low * 1.5:
            low, high = low / 1.5, high * 1.5
        count = max(lane.latency.count for lane in lanes)
        edges = _log_edges(low, high, max(10, min(40, round(2 * math.sqrt(count)))))
        for lane in lanes:
            h = lane.latency
            shares = _rebin(h, edges)
            p50, p95, p99 = h.quantile(0.5), h.quantile(0.95), h.quantile(0.99)
            name = ctx.names[lane.key]
            ax.stairs(
                shares,
                edges,
                color=ctx.colors[lane.key],
                lw=1.6,
                label=f"{name[:LEGEND_CHARS]}\np50 {_s(p50)} \u00b7 p95 {_s(p95)}\np99 {_s(p99)}",
            )
            ax.axvline(p50, color=ctx.colors[lane.key], lw=0.8, ls="--")
            parts.append(
                f"{name}: {_fmt(h.count)} answers, p50 {_s(p50)}, p95 {_s(p95)}, p99 {_s(p99)}"
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_seconds_label)
        ax.xaxis.set_minor_formatter(_minor_seconds_label)
    else:
        ax.text(
            0.5,
            0.5,
            "no successful answers",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#555555",
        )
    title = "Latency of successful attempts, per model"
    ax.set_title(title)
    ax.set_xlabel("time from sending to the answer (log scale)")
    ax.set_ylabel("% of answers")
    ax.set_ylim(bottom=0)
    _legend_outside(ax)
    return ctx.chart(
        fig,
        "latency",
        title,
        "How long answers took, from sending to the response (for streams: to the headers), "
        "as a share of each model's successful attempts; the dashed line is the median. "
        "Queueing in pacekeeper is not included.",
        "Histogram: " + ("; ".join(parts) if parts else "no successful answers") + ".",
    )


MAX_WAIT_ROWS = 12
"""The queue-wait chart draws every class and at most this many rows in all (the busiest
tenants); the table lists every one."""
_WAIT_QUANTILES = (("p50", 0.5, "#9ecae1"), ("p95", 0.95, "#3182bd"), ("p99", 0.99, "#08519c"))


def wait_rows(run: RunData) -> list[QueueWaitStats]:
    """The rows of the queue-wait chart: each class, then its tenants (the busiest, up to
    :data:`MAX_WAIT_ROWS` rows in all)."""
    classes = run.queue_waits.by_class()
    tenants = run.queue_waits.by_tenant()
    busiest = sorted(tenants, key=lambda w: -w.requests)[: max(0, MAX_WAIT_ROWS - len(classes))]
    kept = {(w.priority, w.tenant) for w in busiest}
    rows: list[QueueWaitStats] = []
    for c in classes:
        rows.append(c)
        rows.extend(
            t for t in tenants if t.priority == c.priority and (t.priority, t.tenant) in kept
        )
    return rows


def _wait_label(w: QueueWaitStats) -> str:
    return w.priority if w.tenant is None else f"  {w.priority} · {w.tenant}"


def _queue_wait(ctx: _Ctx) -> Chart:
    rows = wait_rows(ctx.run)
    fig = _figure(_TOP_IN + _BOTTOM_IN + 0.3 + 0.42 * len(rows))
    ax = fig.add_subplot()
    floor = 1e-3  # a request that did not wait shows as 1 ms on the log scale
    height = 0.8 / len(_WAIT_QUANTILES)
    for j, (name, _, color) in enumerate(_WAIT_QUANTILES):
        values = [max(floor, getattr(w, f"{name}_s")) for w in rows]
        positions = [i + (j - 1) * height for i in range(len(rows))]
        ax.barh(positions, values, height=height, color=color, label=name, left=floor / 10)
    # The labels go after each group's longest bar: the fixed left margin that lines the
    # time charts up has no room for them.
    longest = 0.0
    for i, w in enumerate(rows):
        end = max(floor, w.p99_s, w.p95_s, w.p50_s)
        longest = max(longest, end)
        ax.text(end * 1.25, i, _wait_label(w), va="center", ha="left", fontsize=9)
    ax.set_yticks([])
    ax.grid(axis="y", visible=False)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(floor / 10, longest * 40)
    ax.xaxis.set_major_formatter(_seconds_label)
    title = "Queue wait per priority class and tenant"
    ax.set_title(title)
    ax.set_xlabel("time waiting for admission in pacekeeper (log scale)")
    _legend_outside(ax)
    parts = [
        f"{_wait_label(w)}: {_fmt(w.requests)} requests, p50 {_s(w.p50_s)}, "
        f"p95 {_s(w.p95_s)}, p99 {_s(w.p99_s)}"
        for w in rows
    ]
    return ctx.chart(
        fig,
        "queue_wait",
        title,
        "How long requests waited for admission (pacing, free slots, cooldowns), per priority "
        "class (every model) and per tenant within it: a higher class goes first, a lower one "
        "keeps its minimum share. Bars: p50, p95, p99; waits under 1 ms are drawn at 1 ms.",
        "Bar chart: " + "; ".join(parts) + ".",
    )


def _timeline(ctx: _Ctx, bindings: Mapping[tuple[str, str | None], Binding]) -> Chart:
    keys = [key for key in ctx.series if key in bindings]
    fig = _figure(_TOP_IN + _BOTTOM_IN + 0.2 + 0.55 * max(1, len(keys)))
    ax = fig.add_subplot()
    scale = ctx.axis.scale
    seen: set[str] = set()
    parts = []
    for row, key in enumerate(keys):
        b = bindings[key]
        spans: dict[str, list[tuple[float, float]]] = {}
        for start, covered, kind in zip(b.starts, b.covered, b.kinds, strict=True):
            if covered <= 0:
                continue
            spans.setdefault(kind, []).append((max(0.0, start) / scale, covered / scale))
        for kind, bars in spans.items():
            ax.broken_barh(
                bars,
                (row - 0.05, 0.4),
                facecolors=_BOUND_COLORS.get(kind, "#cccccc"),
                label=bound_label(kind, short=True) if kind not in seen else None,
            )
            seen.add(kind)
        # the model's name above its bar, so that long names need no wide margin
        ax.text(0, row - 0.1, ctx.names[key], va="bottom", ha="left", fontsize=10)
        top = sorted(b.shares.items(), key=lambda kv: -kv[1])[:3]
        parts.append(f"{ctx.names[key]}: " + ", ".join(f"{bound_label(k)} {v:.0%}" for k, v in top))
    ax.set_yticks([])
    ax.set_ylim(-0.55, len(keys) - 0.6)
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.spines["left"].set_visible(False)
    title = "What held each model back"
    ax.set_title(title)
    _time_xaxis(ax, ctx.axis)
    handles, labels = ax.get_legend_handles_labels()
    order = {bound_label(k, short=True): i for i, k in enumerate(BOUND_KINDS)}
    pairs = sorted(zip(handles, labels, strict=True), key=lambda hl: order.get(hl[1], 99))
    if pairs:
        ax.legend(
            [h for h, _ in pairs],
            [lbl for _, lbl in pairs],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    return ctx.chart(
        fig,
        "binding",
        title,
        "For each model, what it was waiting for, interval by interval: the rpm or tpm limit "
        "(requests waiting while at least 75% of the limit was used), the concurrency limit "
        "(slots full), 429 cooldowns, retries after upstream errors, a wait no limit explains, "
        "or nothing waiting for admission (the callers or the answers set the pace).",
        "Timeline: " + "; ".join(parts) + ".",
    )


def _last(values: Sequence[float | None]) -> float | None:
    for v in reversed(values):
        if v is not None:
            return v
    return None


def _log_edges(low: float, high: float, n: int) -> list[float]:
    ratio = (high / low) ** (1 / n)
    return [low * ratio**i for i in range(n + 1)]


def _rebin(h: Histogram, edges: list[float]) -> list[float]:
    """A histogram's buckets moved into ``edges`` (by their geometric middle), in % of all."""
    out = [0.0] * (len(edges) - 1)
    for low, high, count in h.buckets():
        middle = math.sqrt(max(low, Histogram.FLOOR / 2) * high)
        index = 0
        while index < len(out) - 1 and middle >= edges[index + 1]:
            index += 1
        out[index] += count
    total = h.count or 1
    return [100.0 * v / total for v in out]


def _s(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _seconds_label(value: float, _pos: object = None) -> str:
    """A tick label in seconds or milliseconds.

    >>> _seconds_label(0.25), _seconds_label(2.0), _seconds_label(90.0)
    ('250 ms', '2 s', '90 s')
    """
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"


def _minor_seconds_label(value: float, _pos: object = None) -> str:
    # label 2x and 5x minor ticks only, so a narrow range still has labels
    lead = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return _seconds_label(value) if round(lead) in (2, 5) else ""


def _bin_label(width: int) -> str:
    if width < 60:
        return "second" if width == 1 else f"{width} s"
    if width < 3600:
        return "minute" if width == 60 else f"{width // 60} min"
    return "hour" if width == 3600 else f"{width // 3600} h"


def _fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} seconds"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def image_size(mime: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels of a PNG, or the SVG's declared size; None if unreadable.

    >>> head = b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00\\x00\\rIHDR"
    >>> image_size("image/png", head + (256).to_bytes(4, "big") + (128).to_bytes(4, "big"))
    (256, 128)
    """
    if mime == "image/png":
        if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if mime == "image/svg+xml":
        import re

        head = data[:4096].decode("utf-8", "replace")
        w = re.search(r'<svg[^>]*\swidth="([\d.]+)pt"', head)
        h = re.search(r'<svg[^>]*\sheight="([\d.]+)pt"', head)
        if w and h:
            return round(float(w.group(1)) * 4 / 3), round(float(h.group(1)) * 4 / 3)
    return None
