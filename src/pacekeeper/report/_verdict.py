"""The verdict: short, actionable sentences with numbers, computed from a run's aggregates.

Everything here is a pure function of :class:`~pacekeeper.report._load.RunData`: no I/O, no
plotting. :func:`findings` returns them in reading order (what bound the run first).

What bound a lane at a given time is read from windows of its time series (at least 3 s, and
long enough to hold about ten requests at its limit, so that pacing's granularity is not
mistaken for slack). In each window:

* requests **waiting for admission** (a backlog) and requests or tokens sent at 75% or more of
  the rpm/tpm limit in force: bound by **rpm** or **tpm** (whichever is fuller);
* a backlog and requests in flight at 75% or more of the concurrency limit: **concurrency**
  (slow answers with a fixed limit, or an adaptive limit held down by overload answers);
* a backlog and 429s in this window or the one before: **429** (cooldowns after rate limiting
  that pacing did not prevent);
* requests sleeping before a retry after 5xx, timeouts or dropped connections: **upstream**;
* a backlog that none of the above explains: **other**;
* nothing waiting: **demand** (the run waited for answers or for its callers), or **idle**.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pacekeeper.report._load import (
    Histogram,
    LaneKey,
    LaneSeries,
    LaneTotals,
    RunData,
    exact_quantile,
    nice_bin_width,
)

__all__ = [
    "BOUND_KINDS",
    "Binding",
    "Finding",
    "binding",
    "bound_label",
    "findings",
]

BOUND_KINDS = ("rpm", "tpm", "concurrency", "429", "upstream", "other", "demand", "idle")
_LIMITING = ("rpm", "tpm", "concurrency", "429", "upstream", "other")
_BOUND_LABELS = {
    "rpm": "requests per minute",
    "tpm": "tokens per minute",
    "concurrency": "the concurrency limit",
    "429": "429 cooldowns",
    "upstream": "retries after upstream errors",
    "other": "queueing no limit explains",
    "demand": "nothing waiting (answers or callers)",
    "idle": "idle",
}
_SHORT_LABELS = {
    "rpm": "rpm limit",
    "tpm": "tpm limit",
    "concurrency": "concurrency",
    "429": "429 cooldowns",
    "upstream": "upstream retries",
    "other": "unexplained wait",
    "demand": "nothing waiting",
    "idle": "idle",
}

FULL = 0.75
"""A limit counts as binding when at least this fraction of it is used."""
BACKLOG = 0.25
"""Average requests waiting for admission (or for a retry) that count as a backlog."""


def bound_label(kind: str, *, short: bool = False) -> str:
    """A few words for a :data:`BOUND_KINDS` value (one or two with ``short``)."""
    return (_SHORT_LABELS if short else _BOUND_LABELS).get(kind, kind)


@dataclass(frozen=True, slots=True)
class Finding:
    """One sentence of the verdict.

    ``kind`` is ``limit``, ``max_tokens``, ``rate_limits``, ``upstream``, ``failures``,
    ``queueing``, ``queue_wait`` (per priority class and tenant), ``cost``, ``clean`` or
    ``no_data``; ``severity`` is ``ok``, ``info``,
    ``warning`` or ``problem``; ``numbers`` holds the figures the sentence quotes, unrounded.
    """

    kind: str
    text: str
    severity: str = "info"
    lane: LaneKey | None = None
    numbers: Mapping[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Binding:
    """What bound one lane, window by window."""

    key: LaneKey
    window_s: int
    starts: list[float]
    """Window starts, seconds since the run's start."""
    covered: list[float]
    """Seconds of the run inside each window."""
    kinds: list[str]
    utilisation: list[float | None]
    """max(rpm use, tpm use) per window, counting what got through (not 429s); None when no
    limit was known."""
    shares: dict[str, float]
    """Fraction of the run's duration per kind (they sum to 1 for a non-empty run)."""
    achieved_rpm: dict[str, float]
    """Mean attempts sent per minute while in each kind."""
    concurrency: dict[str, float]
    """Median concurrency limit while in each kind."""

    def top(self, kinds: tuple[str, ...] = _LIMITING) -> tuple[str, float]:
        """The kind among ``kinds`` with the largest share, and that share."""
        best = max(kinds, key=lambda k: self.shares.get(k, 0.0))
        return best, self.shares.get(best, 0.0)


def _window_width(run: RunData, lane: LaneTotals) -> int:
    need = 3.0
    if lane.last_rpm_limit:
        need = max(need, 600.0 / lane.last_rpm_limit)
    if lane.last_tpm_limit and lane.mean_charged_tokens:
        need = max(need, 600.0 * lane.mean_charged_tokens / lane.last_tpm_limit)
    return nice_bin_width(run.duration_s, 100_000, at_least=max(need, run.bin_s))


def binding(run: RunData, lane: LaneTotals, *, width: int | None = None) -> Binding:
    """Classify each window of ``lane`` by what held it back (see the module docstring)."""
    width = width or _window_width(run, lane)
    s = run.series(lane.key, width)
    _, _, covered = run.bins(width)
    starts = run.bin_starts(width)
    kinds: list[str] = []
    utilisation: list[float | None] = []
    sending_s: list[float] = []
    n = len(covered)
    for i in range(n):
        # rates over the part of the window the lane was sending in, so that a lane that
        # starts or finishes mid-window is not read as slack
        begin = run.start + starts[i]
        low = max(run.start, begin, lane.first_at)
        high = min(run.end, begin + width, max(lane.last_sent_at, low))
        sending = max(0.0, high - low)
        active = sending if begin < lane.last_at else 0.0
        kind, use = _classify(s, i, active)
        sending_s.append(active)
        kinds.append(kind)
        utilisation.append(use)
    duration = run.duration_s or 1.0
    shares: dict[str, float] = {}
    sent: dict[str, float] = {}
    seconds: dict[str, float] = {}
    limits: dict[str, list[float]] = {}
    for i, kind in enumerate(kinds):
        shares[kind] = shares.get(kind, 0.0) + covered[i] / duration
        sent[kind] = sent.get(kind, 0.0) + s.sent_count[i]
        seconds[kind] = seconds.get(kind, 0.0) + sending_s[i]
        limit = s.concurrency_limit[i]
        if limit is not None:
            limits.setdefault(kind, []).append(limit)
    return Binding(
        key=lane.key,
        window_s=width,
        starts=starts,
        covered=covered,
        kinds=kinds,
        utilisation=utilisation,
        shares=dict(shares),
        achieved_rpm={k: 60.0 * sent[k] / seconds[k] for k in seconds if seconds[k] > 0},
        concurrency={k: sorted(v)[len(v) // 2] for k, v in limits.items()},
    )


def _classify(s: LaneSeries, i: int, active_s: float) -> tuple[str, float | None]:
    if active_s <= 0 and not (s.in_flight[i] > 0.01 or s.retry_waiting[i] > 0.01):
        return "idle", None
    rpm, tpm = s.rpm_limit[i], s.tpm_limit[i]
    # What got through: 429s spent no budget at the provider.
    sent = s.sent_count[i]
    through = max(0.0, sent - s.errors["429"][i]) / sent if sent else 0.0
    per_min = 60.0 / max(active_s, 1.0)
    use_r = sent * through * per_min / rpm if rpm else None
    use_t = s.tokens_charged_count[i] * through * per_min / tpm if tpm else None
    uses = [u for u in (use_r, use_t) if u is not None]
    use = max(uses) if uses else None
    backlog = s.queued[i] >= BACKLOG
    recent_429 = s.errors["429"][i] + (s.errors["429"][i - 1] if i else 0.0)
    upstream = sum(s.errors[g][i] for g in ("5xx", "timeout", "connection"))
    if backlog:
        if use is not None and use >= FULL:
            return ("tpm" if use_t is not None and use_t >= (use_r or 0.0) else "rpm"), use
        limit = s.concurrency_limit[i]
        if limit and s.in_flight[i] >= FULL * limit:
            return "concurrency", use
        if recent_429:
            return "429", use
        if upstream >= max(1.0, 0.1 * s.sent_count[i]) or s.retry_waiting[i] >= BACKLOG:
            return "upstream", use
        return "other", use
    if s.retry_waiting[i] >= BACKLOG:
        return ("429" if recent_429 and not upstream else "upstream"), use
    if s.sent_count[i] or s.in_flight[i] > 0.01 or s.queued[i] > 0.01 or s.retry_waiting[i]:
        return "demand", use
    return "idle", use


# -- formatting ------------------------------------------------------------------------------


def _num(value: float) -> str:
    """Whole numbers with thousands separators.

    >>> _num(200000.0), _num(1199.6)
    ('200,000', '1,200')
    """
    return f"{round(value):,}"


def _pct(share: float) -> str:
    """A share as a percentage, with a decimal below 10%.

    >>> _pct(0.823), _pct(0.07), _pct(0.004)
    ('82%', '7.0%', '0.4%')
    """
    return f"{share:.1%}" if share < 0.1 else f"{share:.0%}"


def _secs(value: float) -> str:
    """A duration in the unit that reads best.

    >>> _secs(0.591), _secs(12.34), _secs(250), _secs(9000)
    ('0.59 s', '12 s', '4.2 min', '2.5 h')
    """
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _reserve_display(value: int) -> str:
    """A reserve read back from records is off by the prompt estimate's rounding: show the
    round number it is within 2% of (a power of two or a multiple of 10), if any.

    >>> _reserve_display(4090), _reserve_display(1022), _reserve_display(119), _reserve_display(77)
    ('4,096', '1,024', '120', '77')
    """
    power = 2 ** round(math.log2(value)) if value > 0 else 0
    if power and abs(power - value) <= 0.02 * power:
        return _num(power)
    tens = round(value, -1)
    if tens and abs(tens - value) <= 0.02 * tens:
        return _num(tens)
    return _num(value)


def _mode(counts: Counter[int]) -> int | None:
    if not counts:
        return None
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]


# -- findings --------------------------------------------------------------------------------


def findings(run: RunData) -> list[Finding]:
    """The verdict: what bound each model, what retries and errors cost, why requests failed."""
    if run.empty:
        return [Finding("no_data", "No records: nothing ran, or this is not a --log file.")]
    bindings = {lane.key: binding(run, lane) for lane in run.lanes}
    out: list[Finding] = []
    order = sorted(run.lanes, key=lambda lane: (-lane.last_at, -lane.requests))
    for index, lane in enumerate(order):
        b = bindings[lane.key]
        out.append(_limit_finding(run, lane, b, order, first=index == 0))
        reserve = _max_tokens_finding(lane, b)
        if reserve is not None:
            out.append(reserve)
    for lane in order:
        rl = _rate_limit_finding(run, lane, bindings[lane.key])
        if rl is not None:
            out.append(rl)
    up = _upstream_finding(run)
    if up is not None:
        out.append(up)
    failures = _failures_finding(run)
    if failures is not None:
        out.append(failures)
    queueing = _queueing_finding(run, bindings)
    if queueing is not None:
        out.append(queueing)
    classes = _queue_wait_finding(run)
    if classes is not None:
        out.append(classes)
    cost = _cost_finding(run)
    if cost is not None:
        out.append(cost)
    clean = _clean_finding(run)
    if clean is not None:
        out.append(clean)
    return out


def _cost_finding(run: RunData) -> Finding | None:
    """What each model cost, and per request; unknown prices said as such (never $0)."""
    lanes = [lane for lane in run.lanes if lane.requests]
    if not any(lane.priced_requests for lane in lanes):
        return None
    parts = []
    numbers: dict[str, float] = {}
    for lane in sorted(lanes, key=lambda lane: -lane.cost_usd):
        if lane.priced_requests:
            per = lane.cost_usd / lane.priced_requests
            parts.append(f"{lane.label} ${lane.cost_usd:.4f} (${per:.6f} a request)")
            numbers[f"cost_usd:{lane.label}"] = lane.cost_usd
        if lane.unpriced_requests:
            parts.append(
                f"{lane.label}: {_num(lane.unpriced_requests)} requests of unknown cost "
                "(no price known: give one in pacekeeper.toml)"
            )
    total = sum(lane.cost_usd for lane in lanes)
    numbers["cost_usd"] = total
    known = "" if all(not lane.unpriced_requests for lane in lanes) else " at least"
    return Finding(
        "cost",
        f"Cost:{known} ${total:.4f} in all: " + "; ".join(parts) + ".",
        "info",
        None,
        numbers,
    )


def _limit_finding(
    run: RunData, lane: LaneTotals, b: Binding, order: list[LaneTotals], *, first: bool
) -> Finding:
    label = lane.label
    prefix = f"{label}: "
    if first and len(order) > 1:
        runner_up = max(other.last_at for other in order[1:])
        gap = lane.last_at - runner_up
        if gap > 0.1 * run.duration_s and gap >= 1.0:
            prefix = f"{label} finished last, {_secs(gap)} after the others: "
    kind, share = b.top()
    numbers: dict[str, float] = {"share": share, **{f"share_{k}": v for k, v in b.shares.items()}}
    if share < 0.1:
        demand = b.shares.get("demand", 0.0)
        p50 = lane.latency.quantile(0.5)
        numbers["latency_p50_s"] = p50
        return Finding(
            "limit",
            f"{prefix}never held back by a limit: nothing was waiting for admission "
            f"{_pct(demand)} of the run, so its pace was set by the callers or by the answers "
            f"(p50 {_secs(p50)}).",
            "info",
            lane.key,
            numbers,
        )
    achieved = b.achieved_rpm.get(kind, 0.0)
    numbers["achieved_rpm"] = achieved
    advice = ""
    if kind == "rpm":
        rpm = lane.last_rpm_limit or 0.0
        numbers["rpm_limit"] = rpm
        text = (
            f"limited by requests per minute ({_num(rpm)} rpm) for {_pct(share)} of the run, "
            f"sending {_num(achieved)}/min while bound"
        )
        advice = (
            "Only a higher limit (a higher usage tier) or spreading the work over other models "
            "or keys makes it faster"
        )
    elif kind == "tpm":
        tpm = lane.last_tpm_limit or 0.0
        numbers["tpm_limit"] = tpm
        charged = lane.mean_charged_tokens
        prompt = lane.mean_prompt_tokens
        completion = _mean(lane.completion_tokens)
        numbers["charged_per_request"] = charged
        text = (
            f"limited by tokens per minute ({_num(tpm)} tpm) for {_pct(share)} of the run, "
            f"sending {_num(achieved)} requests/min while bound"
        )
        if prompt is not None and completion is not None:
            used = prompt + completion
            numbers["used_per_request"] = used
            text += (
                f": each request was charged about {_num(charged)} tokens and used "
                f"{_num(used)} ({_num(prompt)} prompt + {_num(completion)} reply)"
            )
    elif kind == "concurrency":
        text = _concurrency_text(lane, b, share, numbers)
    elif kind == "429":
        text = (
            f"held back by 429 answers (cooldowns after rate limiting) for {_pct(share)} of "
            "the run (see the 429s below)"
        )
    elif kind == "upstream":
        text = f"waiting to retry after upstream errors for {_pct(share)} of the run"
    else:
        text = (
            f"requests waited for admission with no limit full for {_pct(share)} of the run "
            "(the short pauses of pacing and cooldowns)"
        )
    second, second_share = b.top(tuple(k for k in _LIMITING if k != kind))
    if second_share >= 0.15:
        text += f"; and by {bound_label(second)} for {_pct(second_share)}"
    text = prefix + text + "."
    if advice:
        text += f" {advice}."
    return Finding("limit", text, "info", lane.key, numbers)


def _concurrency_text(lane: LaneTotals, b: Binding, share: float, numbers: dict[str, float]) -> str:
    limit = b.concurrency.get("concurrency", 0.0)
    latency = lane.latency.mean
    numbers["concurrency_limit"] = limit
    numbers["latency_mean_s"] = latency
    overloads = lane.by_outcome.get("overloaded", 0) + lane.by_group.get("429", 0)
    if lane.adaptive_concurrency:
        low, high = min(lane.concurrency_limits), max(lane.concurrency_limits)
        if overloads >= 3:
            return (
                f"limited by the adaptive concurrency limit (about {_num(limit)} in flight) for "
                f"{_pct(share)} of the run: {overloads} 429/503/529 answers held it down, so "
                "the upstream's capacity was the bound"
            )
        return (
            f"limited by the adaptive concurrency limit for {_pct(share)} of the run, while it "
            f"grew from {low} to {high} (it starts low and grows each round trip; short runs "
            "spend much of their time growing it)"
        )
    text = (
        f"limited by the concurrency limit ({_num(limit)} in flight) for {_pct(share)} of the "
        f"run: with answers taking {_secs(latency)} on average, {_num(limit)} in flight allow "
        f"about {_num(limit * 60 / latency) if latency else '?'} requests/min"
    )
    rpm = lane.last_rpm_limit
    if rpm and latency:
        need = math.ceil(rpm * latency / 60 * 1.2)
        numbers["suggested_concurrency"] = need
        if need > limit:
            return text + (
                f", below the {_num(rpm)} rpm limit; raise concurrency to about {need} "
                "(or use concurrency='auto')"
            )
    return text + "; raise concurrency (or use concurrency='auto')"


def _mean(counts: Counter[int]) -> float | None:
    total = sum(counts.values())
    if not total:
        return None
    return sum(v * c for v, c in counts.items()) / total


def _max_tokens_finding(lane: LaneTotals, b: Binding) -> Finding | None:
    tpm_share = b.shares.get("tpm", 0.0)
    tpm = lane.last_tpm_limit
    if tpm_share < 0.2 or not tpm:
        return None
    reserve = _mode(lane.reserve_tokens)
    p99 = exact_quantile(lane.completion_tokens, 0.99)
    prompt = lane.mean_prompt_tokens
    if reserve is None or p99 is None or prompt is None or reserve < 1.25 * max(p99, 1):
        return None
    cost_now, cost_new = prompt + reserve, prompt + max(p99, 1)
    rate_now, rate_new = tpm / cost_now, tpm / cost_new
    rpm = lane.last_rpm_limit
    capped = bool(rpm and rate_new > rpm)
    if rpm:
        rate_now, rate_new = min(rate_now, rpm), min(rate_new, rpm)
    gain = rate_new / rate_now
    if gain < 1.1:
        return None
    text = (
        f"{lane.label}: lowering max_tokens from {_reserve_display(reserve)} to what replies "
        f"actually used (p99 {_num(p99)}) would allow about {gain:.1f}x the throughput"
    )
    if capped and rpm:
        text += f" (up to the {_num(rpm)} rpm limit)"
    text += (
        f": every request is charged its prompt (about {_num(prompt)} tokens) plus max_tokens "
        f"against the {_num(tpm)} tpm limit, however short the reply"
    )
    at_cap = lane.completion_at_reserve / max(1, lane.prompt_tokens_count)
    if at_cap >= 0.005:
        text += f"; {_pct(at_cap)} of replies were cut at max_tokens, so keep a margin"
    return Finding(
        "max_tokens",
        text + ".",
        "warning",
        lane.key,
        {
            "max_tokens": reserve,
            "completion_p99": p99,
            "prompt_mean": prompt,
            "gain": gain,
            "tpm_share": tpm_share,
        },
    )


def _rate_limit_finding(run: RunData, lane: LaneTotals, b: Binding) -> Finding | None:
    total = lane.by_group.get("429", 0)
    if not total:
        return None
    rate = total / lane.attempts
    unknown = lane.rate_limited_unknown
    s = run.series(lane.key, b.window_s)
    shared = at_limit = 0.0
    shared_use: list[float] = []
    for i, use in enumerate(b.utilisation):
        known = s.errors["429"][i] - s.rate_limited_unknown[i]
        if known <= 0:
            continue
        before = b.utilisation[i - 1] if i else None
        best = max((u for u in (use, before) if u is not None), default=None)
        if best is None:
            continue
        if best < FULL:
            shared += known
            shared_use.append(best)
        else:
            at_limit += known
    parts: list[str] = []
    numbers: dict[str, float] = {
        "count": total,
        "rate": rate,
        "unknown": unknown,
        "shared": shared,
        "at_limit": at_limit,
    }
    if unknown:
        if lane.last_rpm_limit is None and lane.last_tpm_limit is None:
            parts.append(
                f"{_num(unknown)} came while no limit was known (the API sent no rate-limit "
                "headers): set rpm and tpm (--rpm/--tpm, or Limits(rpm=..., tpm=...)) so "
                "pacekeeper paces from the first request"
            )
        else:
            parts.append(
                f"{_num(unknown)} came before its limits were learned from the headers: set "
                "rpm and tpm to pace from the first request"
            )
    if shared:
        use = sorted(shared_use)[len(shared_use) // 2]
        numbers["shared_use"] = use
        suggestion = max(0.1, math.floor(use * 10) / 10)
        numbers["suggested_utilisation"] = suggestion
        parts.append(
            f"{_num(shared)} came while only {_pct(use)} of its known limits got through: "
            "something else is spending the same key's limits (another job or client on the "
            f"organisation or project); leave it room with Limits(utilisation={suggestion:g}), "
            "or give this job its own key"
        )
    if at_limit:
        parts.append(
            f"{_num(at_limit)} came while pacing at the limit: the provider counts over "
            "shorter windows or allows less than it states; lower Limits(utilisation) to 0.9"
        )
    text = f"{lane.label}: {_num(total)} of {_num(lane.attempts)} attempts ({_pct(rate)}) got 429"
    if parts:
        text += "; " + "; ".join(parts)
    retries = lane.retried_after.get("429", 0)
    if retries and lane.requests:
        text += f". Retrying them cost {_pct(retries / lane.requests)} extra requests"
    return Finding(
        "rate_limits", text + ".", "warning" if rate >= 0.02 else "info", lane.key, numbers
    )


def _upstream_finding(run: RunData) -> Finding | None:
    attempts = sum(lane.attempts for lane in run.lanes)
    requests = sum(lane.requests for lane in run.lanes)
    groups: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    retried: Counter[str] = Counter()
    malformed = 0
    for lane in run.lanes:
        groups.update(lane.by_group)
        retried.update(lane.retried_after)
        malformed += lane.by_outcome.get("malformed", 0)
        for status, count in lane.by_status.items():
            if status.isdigit() and int(status) >= 500:
                statuses[status] += count
    upstream = groups["5xx"] + groups["timeout"] + groups["connection"] + malformed
    if not upstream or not attempts:
        return None
    rate = upstream / attempts
    parts = []
    if groups["5xx"]:
        detail = ", ".join(f"{_num(n)}\u00d7{s}" for s, n in sorted(statuses.items()))
        parts.append(
            f"5xx rate {_pct(groups['5xx'] / attempts)} ({_num(groups['5xx'])} of "
            f"{_num(attempts)} attempts: {detail})"
        )
    if groups["timeout"]:
        parts.append(f"timeouts {_pct(groups['timeout'] / attempts)}")
    if groups["connection"]:
        parts.append(f"dropped connections {_pct(groups['connection'] / attempts)}")
    if malformed:
        parts.append(f"malformed answers {_pct(malformed / attempts)}")
    retries = sum(lane.retries for lane in run.lanes)
    extra = retries / requests if requests else 0.0
    text = "Upstream errors: " + ", ".join(parts)
    if retries:
        causes = ", ".join(
            f"{_num(n)} after {_CAUSE.get(cause, cause.replace('_', ' ') + 's')}"
            for cause, n in retried.most_common()
        )
        text += (
            f"; retries cost {_pct(extra)} extra requests ({_num(retries)} retries for "
            f"{_num(requests)} requests: {causes})"
        )
    gave_up = sum(
        n
        for lane in run.lanes
        for (outcome, _), n in lane.failures.items()
        if outcome in _UPSTREAM_OUTCOMES
    )
    if gave_up:
        text += (
            f"; {gave_up} requests still failed on them (a re-run of pacekeeper run retries "
            "only those)"
        )
    if rate >= 0.05:
        text += ". The provider was degraded: check its status page before a long run"
    severity = "problem" if rate >= 0.1 else "warning" if rate >= 0.02 else "info"
    return Finding(
        "upstream",
        text + ".",
        severity,
        None,
        {
            "rate": rate,
            "rate_5xx": groups["5xx"] / attempts,
            "rate_timeout": groups["timeout"] / attempts,
            "rate_connection": groups["connection"] / attempts,
            "retries": retries,
            "extra_requests": extra,
            "failed": gave_up,
        },
    )


_CAUSE = {
    "429": "429s",
    "5xx": "5xx",
    "timeout": "timeouts",
    "connection": "dropped connections",
    "other": "other errors",
    "malformed": "malformed answers",
}
_UPSTREAM_OUTCOMES = frozenset(
    {"server_error", "overloaded", "timeout", "request_timeout", "connection_error", "malformed"}
)

_FAILURE_ADVICE = {
    "NonRetryableError": "rejected by the API; a retry cannot change that: fix these requests",
    "RetriesExhausted": "gave up after the last attempt allowed (RetryPolicy.max_attempts)",
    "RetryBudgetExhausted": "not retried because retries already used their share of traffic "
    "(the upstream was degraded); run again to retry them",
    "RetryWaitTooLong": "the server asked to wait longer than RetryPolicy.max_hint_s",
    "DeadlineExceeded": "their deadline passed (RetryPolicy.deadline_s)",
    "CancelledError": "cancelled by the caller (an interrupted run)",
}
_OUTCOME_ADVICE = {
    "quota_exhausted": "out of quota or credit: add credit or raise the spend limit",
    "client_error": "rejected by the API as invalid; fix these requests",
    "cancelled": "cancelled by the caller (an interrupted run)",
}


def _failures_finding(run: RunData) -> Finding | None:
    requests = sum(lane.requests for lane in run.lanes)
    failures: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for lane in run.lanes:
        failures.update(lane.failures)
        for reason, message in lane.failure_examples.items():
            examples.setdefault(reason, message)
    failed = sum(failures.values())
    if not failed:
        return None
    parts = []
    for (outcome, error_type), n in failures.most_common(4):
        advice = _OUTCOME_ADVICE.get(outcome) or _FAILURE_ADVICE.get(error_type)
        what = outcome.replace("_", " ")
        part = f"{n} {what}" + (f" ({error_type})" if error_type != outcome else "")
        if advice:
            part += f": {advice}"
        parts.append(part)
    if len(failures) > 4:
        rest = sum(n for _, n in failures.most_common()[4:])
        parts.append(f"{rest} for other reasons")
    text = f"{_num(failed)} of {_num(requests)} requests failed ({_pct(failed / requests)}): "
    text += "; ".join(parts)
    top = failures.most_common(1)[0][0]
    example = examples.get(top)
    if example:
        example = " ".join(example.split())
        if len(example) > 160:
            example = example[:157] + "..."
        text += f'. For example: "{example}"'
    numbers: dict[str, float] = {"failed": failed, "rate": failed / requests}
    for (outcome, error_type), n in failures.items():
        numbers[f"{outcome}/{error_type}"] = n
    return Finding("failures", text, "problem", None, numbers)


def _queueing_finding(run: RunData, bindings: Mapping[LaneKey, Binding]) -> Finding | None:
    total = sum(lane.total_s for lane in run.lanes)
    if total <= 0:
        return None
    queued = sum(lane.queued_s for lane in run.lanes)
    api = sum(lane.api_s for lane in run.lanes)
    retry = sum(lane.retry_wait_s for lane in run.lanes)
    q, a, r = queued / total, api / total, retry / total
    queued_p50 = Histogram.merged(lane.queued for lane in run.lanes).quantile(0.5)
    latency_p50 = Histogram.merged(lane.latency for lane in run.lanes).quantile(0.5)
    text = (
        f"Where each request's time went: {_pct(q)} waiting for admission in pacekeeper "
        f"(p50 {_secs(queued_p50)}), {_pct(a)} waiting for the API's answers (p50 attempt "
        f"{_secs(latency_p50)})"
    )
    if r >= 0.005:
        text += f", {_pct(r)} waiting to retry"
    if q >= 0.5:
        limits = {b.top()[0] for b in bindings.values() if b.top()[1] >= 0.1}
        if limits & {"rpm", "tpm"}:
            text += (
                ". Most of it is the backlog of work held to the provider's limits: it "
                "shrinks only with higher limits or cheaper requests"
            )
        elif "concurrency" in limits:
            text += ". Most of it waited for a free slot: see the concurrency limit above"
    return Finding(
        "queueing",
        text + ".",
        "info",
        None,
        {"queued_share": q, "api_share": a, "retry_share": r, "queued_p50_s": queued_p50},
    )


_VERDICT_TENANTS = 5


def _queue_wait_finding(run: RunData) -> Finding | None:
    """The queue wait of each priority class (and of the busiest tenants), when more than one
    class or tenant waited."""
    waits = run.queue_waits
    if not waits.varied:
        return None
    numbers: dict[str, float] = {}
    parts = []
    for w in waits.by_class():
        parts.append(
            f"{w.priority} p50 {_secs(w.p50_s)}, p95 {_secs(w.p95_s)}, p99 {_secs(w.p99_s)} "
            f"({_num(w.requests)} requests)"
        )
        for q in ("p50", "p95", "p99"):
            numbers[f"queue_wait_{q}_s:{w.priority}"] = getattr(w, f"{q}_s")
        numbers[f"requests:{w.priority}"] = w.requests
    text = "Queue wait per priority class: " + "; ".join(parts)
    tenants = sorted(waits.by_tenant(), key=lambda w: -w.requests)
    if tenants:
        shown = tenants[:_VERDICT_TENANTS]
        text += ". Per tenant (p95): " + ", ".join(
            f"{w.tenant} ({w.priority}) {_secs(w.p95_s)}" for w in shown
        )
        if len(tenants) > len(shown):
            text += f" and {len(tenants) - len(shown)} more in the table"
        for w in tenants:
            numbers[f"queue_wait_p95_s:{w.priority}:{w.tenant}"] = w.p95_s
    return Finding("queue_wait", text + ".", "info", None, numbers)


def _clean_finding(run: RunData) -> Finding | None:
    requests = sum(lane.requests for lane in run.lanes)
    retries = sum(lane.retries for lane in run.lanes)
    errors = sum(sum(lane.by_group.values()) for lane in run.lanes)
    failed = sum(lane.failed for lane in run.lanes)
    if retries or errors or failed or not requests:
        return None
    return Finding(
        "clean",
        f"Clean run: all {_num(requests)} requests succeeded on the first attempt, with no "
        "429s and no upstream errors.",
        "ok",
        None,
        {"requests": requests},
    )
