"""The report as one self-contained HTML page.

Everything is inline: styles in a ``<style>`` element, charts as ``data:`` URIs. The page has no
script and no external URL, and its Content-Security-Policy forbids loading any, so it opens the
same offline, attached to an e-mail or from a CI artifact. Every piece of text that came from
the records (model names, routes, error messages, the title) is escaped.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from html import escape

from pacekeeper.report._load import BadLine, LaneKey, RunData
from pacekeeper.report._plots import Chart
from pacekeeper.report._verdict import BOUND_KINDS, Binding, Finding, bound_label
from pacekeeper.report.summary import queue_wait_rows, summary_rows

__all__ = ["render_html"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { color-scheme: light; --ink: #1d2433; --muted: #5b6475; --line: #d9dde5;
  --panel: #f6f7f9; --ok: #1e7b34; --info: #1f5fa8; --warning: #9a5b00; --problem: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 40px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); margin: 0; }
.findings { list-style: none; padding: 0; margin: 0; }
.finding { display: flex; gap: 10px; align-items: baseline; padding: 8px 12px; margin: 6px 0;
  background: var(--panel); border-left: 4px solid var(--info); border-radius: 4px; }
.finding .badge { flex: none; font-size: 12px; font-weight: 700; text-transform: uppercase;
  letter-spacing: .04em; min-width: 66px; }
.finding.ok { border-color: var(--ok); } .finding.ok .badge { color: var(--ok); }
.finding.info .badge { color: var(--info); }
.finding.warning { border-color: var(--warning); }
.finding.warning .badge { color: var(--warning); }
.finding.problem { border-color: var(--problem); }
.finding.problem .badge { color: var(--problem); }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px;
  margin: 18px 0 0; padding: 0; }
.tile { background: var(--panel); border-radius: 6px; padding: 10px 12px; margin: 0; }
.tile dt { color: var(--muted); font-size: 13px; }
.tile dd { margin: 0; font-size: 20px; font-weight: 600; }
.tile dd small { font-size: 13px; font-weight: 400; color: var(--muted); }
figure { margin: 18px 0 26px; }
figure img { display: block; width: 100%; max-width: 1100px; height: auto; }
figcaption { color: var(--muted); font-size: 14px; max-width: 1100px; margin-top: 4px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 8px 0 4px; }
caption { text-align: left; color: var(--muted); font-size: 14px; padding-bottom: 6px; }
th, td { padding: 5px 12px; border-bottom: 1px solid var(--line); text-align: right; }
th { background: var(--panel); font-weight: 600; }
th.text, td.text { text-align: left; }
.notice { background: #fff6e5; border: 1px solid #f0c36d; border-radius: 4px; padding: 8px 12px; }
.notice ul { margin: 4px 0 0; padding-left: 20px; }
footer { color: var(--muted); font-size: 13px; margin-top: 32px; border-top: 1px solid var(--line);
  padding-top: 8px; }
"""

_SEVERITY_LABELS = {"ok": "ok", "info": "info", "warning": "warning", "problem": "problem"}

_COLUMN_HELP = {
    "model": "the model named in the requests",
    "route": "the API route",
    "reqs": "requests (each may take several attempts)",
    "ok": "requests that succeeded",
    "failed": "requests that failed for good",
    "retries": "attempts after the first",
    "429s": "rate-limit answers received",
    "p50": "median attempt latency (sending to answer)",
    "p95": "95th percentile attempt latency",
    "rpm": "successful requests per minute while the model was active",
    "limit": "the rpm limit in force at the end (configured or learned)",
    "use": "rpm / limit",
}
_TEXT_COLUMNS = frozenset({"model", "route"})


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _when(epoch_s: float) -> str:
    moment = _dt.datetime.fromtimestamp(epoch_s, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def render_html(
    *,
    title: str,
    run: RunData,
    findings: Sequence[Finding],
    charts: Sequence[Chart],
    bindings: Mapping[LaneKey, Binding],
    generator: str,
) -> str:
    """The whole page."""
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f'<meta name="generator" content="{_e(generator)}">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        _header(title, run),
        _verdict(findings),
        _tiles(run),
        _bad_lines(run.bad_lines, run.bad_line_count),
        _charts(charts),
        _tables(run, bindings),
        f"<footer>Made by {_e(generator)}"
        + (f" from {_e(run.source)}" if run.source else "")
        + ". Times are wall-clock, UTC. Every number comes from the run's own records.</footer>",
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _header(title: str, run: RunData) -> str:
    facts = []
    if run.source:
        facts.append(_e(run.source))
    if not run.empty:
        facts.append(f"started {_when(run.start)}")
        facts.append(f"lasted {_duration(run.duration_s)}")
    separator = " \u00b7 "
    return f'<header><h1>{_e(title)}</h1><p class="meta">{separator.join(facts)}</p></header>'


def _verdict(findings: Iterable[Finding]) -> str:
    items = []
    for f in findings:
        severity = f.severity if f.severity in _SEVERITY_LABELS else "info"
        items.append(
            f'<li class="finding {severity}" data-kind="{_e(f.kind)}">'
            f'<span class="badge">{_SEVERITY_LABELS[severity]}</span>'
            f"<span>{_e(f.text)}</span></li>"
        )
    return (
        '<section id="verdict" aria-labelledby="verdict-title">'
        '<h2 id="verdict-title">Verdict</h2>'
        f'<ul class="findings">{"".join(items)}</ul></section>'
    )


def _tiles(run: RunData) -> str:
    requests = sum(lane.requests for lane in run.lanes)
    ok = sum(lane.ok for lane in run.lanes)
    failed = sum(lane.failed for lane in run.lanes)
    attempts = sum(lane.attempts for lane in run.lanes)
    retries = sum(lane.retries for lane in run.lanes)
    limited = sum(lane.by_group.get("429", 0) for lane in run.lanes)
    per_min = 60.0 * ok / run.duration_s if run.duration_s > 0 else 0.0
    tiles = [
        ("Duration", _duration(run.duration_s), ""),
        ("Requests", f"{requests:,}", f"{ok:,} ok, {failed:,} failed"),
        ("Throughput", f"{per_min:,.0f}/min", "successful requests"),
        ("Attempts", f"{attempts:,}", f"{retries:,} retries"),
        ("429s", f"{limited:,}", f"{limited / attempts:.1%} of attempts" if attempts else ""),
    ]
    body = "".join(
        f'<div class="tile"><dt>{_e(name)}</dt><dd>{_e(value)}'
        + (f"<br><small>{_e(note)}</small>" if note else "")
        + "</dd></div>"
        for name, value, note in tiles
    )
    return f'<dl class="tiles" aria-label="Key figures">{body}</dl>'


def _bad_lines(bad: Sequence[BadLine], count: int) -> str:
    if not count:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in bad[:10])
    more = f"<li>... and {count - min(10, len(bad)):,} more</li>" if count > 10 else ""
    noun = "line" if count == 1 else "lines"
    return (
        '<section id="bad-lines" class="notice" role="note">'
        f"<strong>{count:,} {noun} of the records file could not be read</strong> and "
        f"{'was' if count == 1 else 'were'} left out:<ul>{items}{more}</ul></section>"
    )


def _charts(charts: Sequence[Chart]) -> str:
    figures = [
        f'<figure id="chart-{_e(chart.id)}" aria-labelledby="caption-{_e(chart.id)}">'
        f'<img src="{chart.data_uri}" alt="{_e(chart.alt)}"'
        f' width="{chart.width_px}" height="{chart.height_px}">'
        f'<figcaption id="caption-{_e(chart.id)}"><strong>{_e(chart.title)}.</strong> '
        f"{_e(chart.caption)}</figcaption></figure>"
        for chart in charts
    ]
    if not figures:
        return ""
    return (
        '<section id="charts" aria-labelledby="charts-title">'
        f'<h2 id="charts-title">Over time</h2>{"".join(figures)}</section>'
    )


def _tables(run: RunData, bindings: Mapping[LaneKey, Binding]) -> str:
    rows = summary_rows(run.stats)
    if not rows:
        return ""
    columns = [
        name for name in rows[0] if name != "route" or len({row["route"] for row in rows}) > 1
    ]
    head = "".join(
        f'<th scope="col" class="{"text" if name in _TEXT_COLUMNS else "num"}" '
        f'title="{_e(_COLUMN_HELP.get(name, name))}">{_e(name)}</th>'
        for name in columns
    )
    body = "".join(
        "<tr>"
        + "".join(
            (
                f'<th scope="row" class="text">{_e(row[name])}</th>'
                if name == "model"
                else f'<td class="{"text" if name in _TEXT_COLUMNS else "num"}">'
                f"{_e(row[name])}</td>"
            )
            for name in columns
        )
        + "</tr>"
        for row in rows
    )
    summary = (
        '<table id="summary-table"><caption>Requests, retries and 429s per model; p50/p95: '
        "attempt latency; rpm: successful requests per minute while the model was active, "
        "against the rpm limit in force.</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )
    return (
        '<section id="summary" aria-labelledby="summary-title">'
        f'<h2 id="summary-title">Per model</h2>{summary}{_binding_table(run, bindings)}'
        f"{_queue_wait_table(run)}</section>"
    )


_WAIT_HELP = {
    "class": "the priority class: interactive, batch or background",
    "tenant": "whose fair share within the class ('all': every request of the class)",
    "reqs": "requests",
    "wait p50": "median time waiting for admission in pacekeeper",
    "wait p95": "95th percentile time waiting for admission",
    "wait p99": "99th percentile time waiting for admission",
}


def _queue_wait_table(run: RunData) -> str:
    """Queue wait per class and tenant of each model, when more than one class or tenant
    waited."""
    rows = queue_wait_rows(run.stats)
    if not rows:
        return ""
    text = {"model", "route", "class", "tenant"}
    columns = [
        name for name in rows[0] if name != "route" or len({row["route"] for row in rows}) > 1
    ]
    head = "".join(
        f'<th scope="col" class="{"text" if name in text else "num"}" '
        f'title="{_e(_WAIT_HELP.get(name, _COLUMN_HELP.get(name, name)))}">{_e(name)}</th>'
        for name in columns
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"text" if name in text else "num"}">{_e(row[name])}</td>'
            for name in columns
        )
        + "</tr>"
        for row in rows
    )
    return (
        '<table id="queue-wait-table"><caption>Queue wait per priority class (tenant '
        "<em>all</em>) and per tenant within it, per model: how long requests waited for "
        "admission in pacekeeper.</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _binding_table(run: RunData, bindings: Mapping[LaneKey, Binding]) -> str:
    kinds = [k for k in BOUND_KINDS if any(b.shares.get(k, 0) >= 0.005 for b in bindings.values())]
    if not kinds:
        return ""
    head = "".join(
        f'<th scope="col" class="num" title="{_e(bound_label(k))}">'
        f"{_e(bound_label(k, short=True))}</th>"
        for k in kinds
    )
    body = ""
    for lane in run.lanes:
        b = bindings.get(lane.key)
        if b is None:
            continue
        cells = "".join(f'<td class="num">{b.shares.get(k, 0.0):.0%}</td>' for k in kinds)
        body += f'<tr><th scope="row" class="text">{_e(lane.label)}</th>{cells}</tr>'
    return (
        '<table id="binding-table"><caption>What held each model back, as a share of the '
        "run's duration (the timeline chart, in numbers).</caption>"
        f'<thead><tr><th scope="col" class="text">model</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )
