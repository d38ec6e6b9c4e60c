"""Read pacekeeper's records (the JSON lines of ``pacekeeper run --log``) and aggregate them.

Reading is lazy and forgiving: :func:`iter_records` yields one record or one :class:`BadLine`
per line, so a torn last line, a line of garbage or a record from a newer version is counted
and named by its line number instead of ending the report.

Aggregation is streaming: :class:`RunAggregator` keeps per-second sums in sparse maps and a few
histograms per (route, model), never the records themselves, so a log of millions of attempts
costs memory in proportion to its duration in seconds, not its length. :class:`RunData` then
resamples those sums into bins of any width (:meth:`RunData.series`): rates per minute, time
averages (requests in flight, waiting for admission, waiting to retry) and the limits in force.
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pacekeeper.core.records import AttemptRecord, RequestRecord
from pacekeeper.core.stats import KeyStats, QueueWaits, StatsSnapshot

__all__ = [
    "BadLine",
    "ErrorGroup",
    "Histogram",
    "LaneKey",
    "LaneSeries",
    "LaneTotals",
    "RunAggregator",
    "RunData",
    "error_group",
    "iter_records",
    "load_run",
    "nice_bin_width",
    "parse_record",
]

LaneKey = tuple[str, "str | None"]
Record = AttemptRecord | RequestRecord

MAX_LINE_BYTES = 1 << 20
"""Longer lines are reported as bad (and skipped without holding them in memory)."""

_KEEP_BAD_LINES = 50

# Attempt outcomes grouped the way the report shows them.
ErrorGroup = str
ERROR_GROUPS: tuple[ErrorGroup, ...] = (
    "429",
    "5xx",
    "timeout",
    "connection",
    "other",
)
_GROUP_LABELS = {
    "429": "429 rate limited",
    "5xx": "5xx server errors",
    "timeout": "timeouts",
    "connection": "connection errors",
    "other": "other errors",
}


def error_group(outcome: str, status: int | None) -> ErrorGroup | None:
    """The report's group of a failed attempt (None for a success).

    >>> error_group("rate_limited", 429), error_group("overloaded", 529), error_group("ok", 200)
    ('429', '5xx', None)
    """
    if outcome == "ok":
        return None
    if outcome == "rate_limited":
        return "429"
    if outcome in ("timeout", "request_timeout"):
        return "timeout"
    if outcome == "connection_error":
        return "connection"
    if outcome in ("server_error", "overloaded") or (status is not None and status >= 500):
        return "5xx"
    return "other"


def group_label(group: ErrorGroup) -> str:
    return _GROUP_LABELS.get(group, group)


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a readable record, and why."""

    line_no: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.reason}"


class _Bad(Exception):
    pass


_MISSING = object()

# (name, type, optional) per record type: checked in one loop with exact-type fast paths,
# since reading a large log is mostly this.
_Spec = tuple[tuple[str, type, bool], ...]
_ATTEMPT_SPEC: _Spec = (
    ("route", str, False),
    ("model", str, True),
    ("attempt", int, False),
    ("outcome", str, False),
    ("status", int, True),
    ("started_at", float, False),
    ("queued_s", float, False),
    ("latency_s", float, False),
    ("tokens_estimated", int, False),
    ("prompt_tokens", int, True),
    ("completion_tokens", int, True),
    ("retry_in_s", float, True),
    ("error", str, True),
    ("request_id", str, True),
    ("tag", str, True),
    ("in_flight", int, True),
    ("concurrency_limit", int, True),
    ("rpm_limit", float, True),
    ("tpm_limit", float, True),
    ("cost_usd", float, True),
    ("priority", str, True),
    ("tenant", str, True),
)
_REQUEST_SPEC: _Spec = (
    ("route", str, False),
    ("model", str, True),
    ("outcome", str, False),
    ("status", int, True),
    ("ok", bool, False),
    ("attempts", int, False),
    ("started_at", float, False),
    ("total_s", float, False),
    ("queued_s", float, False),
    ("latency_s", float, False),
    ("tokens_estimated", int, False),
    ("prompt_tokens", int, True),
    ("completion_tokens", int, True),
    ("error", str, True),
    ("error_type", str, True),
    ("request_id", str, True),
    ("tag", str, True),
    ("cost_usd", float, True),
    ("priority", str, True),
    ("tenant", str, True),
)
_CLASSES = frozenset({"interactive", "batch", "background"})


def _fields(obj: Mapping[str, Any], spec: _Spec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, kind, optional in spec:
        value = obj.get(name)
        if value is None:
            if optional:
                out[name] = None
                continue
            raise _Bad(f'missing field "{name}"')
        t = type(value)
        if t is kind:
            if t is float and not math.isfinite(value):
                raise _Bad(f'"{name}" should be a finite number, got {value}')
        elif kind is float and t is int:
            value = float(value)
        elif kind is int and t is float:
            if not math.isfinite(value):
                raise _Bad(f'"{name}" should be a finite number, got {value}')
            if not value.is_integer():
                raise _Bad(f'"{name}" should be a whole number, got {value}')
            value = int(value)
        elif kind is str:
            raise _Bad(f'"{name}" should be a string, got {_short(value)}')
        elif kind is bool:
            raise _Bad(f'"{name}" should be true or false, got {_short(value)}')
        else:
            raise _Bad(f'"{name}" should be a number, got {_short(value)}')
        out[name] = value
    priority = out.get("priority", "interactive")
    if priority is None:
        out["priority"] = "interactive"  # written before classes existed
    elif priority not in _CLASSES:
        raise _Bad(f'"priority" should be one of {", ".join(sorted(_CLASSES))}, got {priority!r}')
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _non_negative(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise _Bad(f'"{name}" should not be negative, got {value:g}')


def parse_record(obj: Any) -> Record:
    """A record from its JSON form (``AttemptRecord.as_dict()``); ``ValueError`` if it is not
    one. Unknown fields are ignored (records from newer versions still read); fields added
    after the first release may be missing."""
    try:
        return _parse(obj)
    except _Bad as exc:
        raise ValueError(str(exc)) from None


def _parse(obj: Any) -> Record:
    if not isinstance(obj, dict):
        raise _Bad(f"not a JSON object but {type(obj).__name__ if obj is not None else 'null'}")
    kind = obj.get("type")
    if kind is None:
        raise _Bad('no "type" field: not a pacekeeper record (is this the --log file?)')
    if kind == "attempt":
        record = AttemptRecord(**_fields(obj, _ATTEMPT_SPEC))
        if record.attempt < 1:
            raise _Bad(f'"attempt" should be 1 or more, got {record.attempt}')
        for name in ("queued_s", "latency_s", "retry_in_s", "tokens_estimated"):
            _non_negative(name, getattr(record, name))
        return record
    if kind == "request":
        request = RequestRecord(**_fields(obj, _REQUEST_SPEC))
        for name in ("total_s", "queued_s", "latency_s", "tokens_estimated", "attempts"):
            _non_negative(name, getattr(request, name))
        return request
    raise _Bad(f"unknown record type {_short(kind)} (expected attempt or request)")


def _open(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def iter_records(path: str | Path) -> Iterator[Record | BadLine]:
    """Every line of a records file (plain or gzip), in order: a record, or a :class:`BadLine`
    saying why not. Blank lines are skipped. Lazy: one line in memory at a time.

    Raises ``OSError`` only when the file cannot be opened (or a gzip stream is corrupt).
    """
    path = Path(path)
    with _open(path) as f:
        line_no = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the long line
                    raw = f.readline(MAX_LINE_BYTES)
                yield BadLine(line_no, f"longer than {MAX_LINE_BYTES // 1024} KiB; skipped")
                continue
            torn = not raw.endswith(b"\n")
            text = raw.strip()
            if not text:
                continue
            yield _read_line(text, line_no, torn)


def _read_line(text: bytes, line_no: int, torn: bool) -> Record | BadLine:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(line_no, f"not UTF-8 text (byte {exc.start + 1})")
    try:
        obj = json.loads(decoded)
    except ValueError as exc:
        if torn:
            return BadLine(
                line_no,
                "incomplete last line (the run was still writing, or stopped mid-line)",
            )
        message = getattr(exc, "msg", str(exc))
        column = getattr(exc, "colno", None)
        where = f" at column {column}" if column else ""
        return BadLine(line_no, f"not JSON ({message}{where})")
    try:
        return _parse(obj)
    except _Bad as exc:
        return BadLine(line_no, str(exc))


# -- histograms ------------------------------------------------------------------------------


class Histogram:
    """Positive values (seconds, tokens) in geometric buckets 2% wide: constant memory,
    quantiles within 2%.

    >>> h = Histogram()
    >>> for v in range(1, 101):
    ...     h.add(v / 100)
    >>> round(h.quantile(0.5), 2), h.count, round(h.mean, 3)
    (0.5, 100, 0.505)
    """

    __slots__ = ("_buckets", "count", "max", "min", "total")

    GROWTH = 1.02
    FLOOR = 1e-3

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, value: float) -> None:
        index = (
            int(math.log(value / self.FLOOR) / math.log(self.GROWTH)) + 1
            if value > self.FLOOR
            else 0
        )
        self._buckets[index] += 1
        self.count += 1
        self.total += value
        self.max = max(self.max, value)
        self.min = min(self.min, value)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1); 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                if index == 0:
                    return min(self.max, self.FLOOR)
                middle: float = self.FLOOR * self.GROWTH ** (index - 0.5)
                return max(self.min, min(self.max, middle))
        return self.max

    def merge(self, other: Histogram) -> None:
        self._buckets.update(other._buckets)
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        self.min = min(self.min, other.min)

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        out = cls()
        for h in histograms:
            out.merge(h)
        return out

    def buckets(self) -> list[tuple[float, float, int]]:
        """(low, high, count) of each non-empty bucket, in order."""
        out = []
        for index in sorted(self._buckets):
            low = 0.0 if index == 0 else self.FLOOR * self.GROWTH ** (index - 1)
            high = self.FLOOR * self.GROWTH**index
            out.append((low, high, self._buckets[index]))
        return out


def exact_quantile(counts: Counter[int], q: float) -> int | None:
    """The ``q`` quantile of integer values given as value -> count (nearest rank).

    >>> exact_quantile(Counter({10: 98, 500: 2}), 0.99)
    500
    """
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)  # pragma: no cover (unreachable: seen reaches total)


# -- per-second accumulation -----------------------------------------------------------------


class _Steps:
    """The time integral of "how many intervals are open", per second, in O(1) per interval.

    For second k: integral = (intervals open at k) + sum over edges e in [k, k+1) of
    sign(e) * (k + 1 - t(e)). So each edge adds its sign to ``count[k]`` and its partial area
    to ``part[k]``; a sweep in time order recovers every second's integral.
    """

    __slots__ = ("count", "part")

    def __init__(self) -> None:
        self.count: defaultdict[int, int] = defaultdict(int)
        self.part: defaultdict[int, float] = defaultdict(float)

    def add(self, start: float, end: float) -> None:
        if not end > start:
            return
        for t, sign in ((start, 1), (end, -1)):
            k = math.floor(t)
            self.count[k] += sign
            self.part[k] += sign * (k + 1 - t)

    def integrate(self, k0: int, width: int, n: int) -> list[float]:
        """The integral over each of ``n`` bins of ``width`` seconds from second ``k0``."""
        out = [0.0] * n
        open_now = 0
        previous: int | None = None
        for k in sorted(self.count.keys() | self.part.keys()):
            if previous is not None and open_now and k > previous + 1:
                _add_range(out, k0, width, previous + 1, k, float(open_now))
            value = open_now + self.part.get(k, 0.0)
            if value:
                _add_range(out, k0, width, k, k + 1, value)
            open_now += self.count.get(k, 0)
            previous = k
        return out


def _add_range(  # noqa: PLR0917
    out: list[float], k0: int, width: int, start: int, end: int, per_s: float
) -> None:
    """Add ``per_s`` for every second in [start, end) to the bins it falls in."""
    n = len(out)
    s = start
    while s < end:
        index = (s - k0) // width
        bin_end = k0 + (index + 1) * width
        stop = min(end, bin_end)
        if 0 <= index < n:
            out[index] += per_s * (stop - s)
        s = stop


class _Sample:
    """Per second, the value of the latest record (by time): the limit in force then."""

    __slots__ = ("by_second",)

    def __init__(self) -> None:
        self.by_second: dict[int, tuple[float, float | None]] = {}

    def add(self, t: float, value: float | None) -> None:
        k = math.floor(t)
        current = self.by_second.get(k)
        if current is None or t >= current[0]:
            self.by_second[k] = (t, value)


# -- aggregates ------------------------------------------------------------------------------


@dataclass(slots=True)
class LaneTotals:
    """Totals of one (route, model) over the whole run."""

    route: str
    model: str | None
    attempts: int = 0
    requests: int = 0
    ok: int = 0
    failed: int = 0
    retries: int = 0
    """Attempts after the first."""
    by_outcome: Counter[str] = field(default_factory=Counter)
    """Attempts by outcome kind."""
    by_status: Counter[str] = field(default_factory=Counter)
    """Attempts by HTTP status ("none" without one)."""
    by_group: Counter[str] = field(default_factory=Counter)
    """Failed attempts by :func:`error_group`."""
    retried_after: Counter[str] = field(default_factory=Counter)
    """Retries by the error group of the attempt they repeated (the outcome itself for the
    "other" group, e.g. "malformed")."""
    rate_limited_unknown: int = 0
    """429s to attempts sent before any rpm or tpm limit was known (configured or learned:
    the 429 that teaches a limit carries it in its record, but was sent without it)."""
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Failed requests by (outcome, error type)."""
    failure_examples: dict[tuple[str, str], str] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)
    """Of successful attempts."""
    queued: Histogram = field(default_factory=Histogram)
    """Per request, summed over its attempts."""
    total: Histogram = field(default_factory=Histogram)
    completion_tokens: Counter[int] = field(default_factory=Counter)
    """Of successful attempts that reported usage."""
    reserve_tokens: Counter[int] = field(default_factory=Counter)
    """tokens_estimated - prompt_tokens of successful attempts: the answer's reserve."""
    completion_at_reserve: int = 0
    """Successful answers that used their whole reserve (cut at max_tokens)."""
    prompt_tokens_sum: int = 0
    prompt_tokens_count: int = 0
    tokens_estimated_sum: int = 0
    queued_s: float = 0.0
    api_s: float = 0.0
    retry_wait_s: float = 0.0
    total_s: float = 0.0
    first_at: float = math.inf
    last_at: float = -math.inf
    last_sent_at: float = -math.inf
    """When the last attempt was sent (answers may come later)."""
    concurrency_limits: Counter[int] = field(default_factory=Counter)
    last_rpm_limit: float | None = None
    last_tpm_limit: float | None = None
    last_limit_at: float = -math.inf
    cost_usd: float = 0.0
    """What the requests with a known price cost (their answers' usage at that price)."""
    priced_requests: int = 0
    unpriced_requests: int = 0
    """Requests whose cost is unknown (no price for the model, or a log without costs)."""
    stats: StatsSnapshot | None = None

    @property
    def key(self) -> LaneKey:
        return (self.route, self.model)

    @property
    def label(self) -> str:
        return self.model or self.route

    @property
    def mean_prompt_tokens(self) -> float | None:
        """Of successful attempts that reported usage."""
        if not self.prompt_tokens_count:
            return None
        return self.prompt_tokens_sum / self.prompt_tokens_count

    @property
    def mean_charged_tokens(self) -> float:
        return self.tokens_estimated_sum / self.attempts if self.attempts else 0.0

    @property
    def adaptive_concurrency(self) -> bool:
        """Whether the concurrency limit moved during the run (AIMD)."""
        return len(self.concurrency_limits) > 1


@dataclass(frozen=True, slots=True)
class LaneSeries:
    """One (route, model) resampled into bins (see :class:`RunData`)."""

    key: LaneKey
    sent: list[float]
    """Attempts sent per minute."""
    succeeded: list[float]
    """Successful answers per minute (by the time they arrived)."""
    tokens_charged: list[float]
    """Tokens charged at admission per minute (prompt + the answer's reserve)."""
    tokens_used: list[float]
    """Prompt + completion tokens the provider reported, per minute."""
    in_flight: list[float]
    """Average requests in flight."""
    peak_in_flight: list[float | None]
    queued: list[float]
    """Average requests waiting for admission."""
    retry_waiting: list[float]
    """Average requests sleeping before a retry."""
    concurrency_limit: list[float | None]
    """Time-averaged over the bin (an adaptive limit moves)."""
    rpm_limit: list[float | None]
    """The latest in the bin, carried forward; None while unknown."""
    tpm_limit: list[float | None]
    errors: dict[ErrorGroup, list[float]]
    """Failed attempts per bin (counts), by group."""
    retries: list[float]
    """Retries sent per bin (counts)."""
    sent_count: list[float]
    """Attempts sent per bin (counts)."""
    tokens_charged_count: list[float]
    """Tokens charged per bin (sums)."""
    rate_limited_unknown: list[float]
    """429s per bin received while no limit was known (counts)."""
    cost_usd: list[float]
    """USD the requests that ended in each bin cost (sums; priced requests only)."""


@dataclass(slots=True)
class _LaneAcc:
    totals: LaneTotals
    keystats: KeyStats
    sent: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    succeeded: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    tokens_charged: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    tokens_used: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    cost: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    retries: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    rl_unknown: defaultdict[int, float] = field(default_factory=lambda: defaultdict(float))
    errors: defaultdict[str, defaultdict[int, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    peak: dict[int, int] = field(default_factory=dict)
    in_flight: _Steps = field(default_factory=_Steps)
    queued: _Steps = field(default_factory=_Steps)
    retry_waiting: _Steps = field(default_factory=_Steps)
    concurrency_limit: _Sample = field(default_factory=_Sample)
    rpm_limit: _Sample = field(default_factory=_Sample)
    tpm_limit: _Sample = field(default_factory=_Sample)
    peak_in_flight: int = 0
    cooldowns: int = 0
    rl_unknown_count: int = 0
    rl_maybe_early: list[float] = field(default_factory=list)
    """Send times of 429s whose record states a limit but that were sent before the earliest
    answer stating one seen so far. (That earliest time only moves back, so later 429s can
    never qualify: the list stays as short as the run's first moments.)"""
    first_known_end: float = math.inf
    """When an answer first stated a limit: attempts sent before then went without one."""

    def early_429s(self) -> Counter[int]:
        """429s that state a limit but were sent before any limit was known, by second."""
        return Counter(math.floor(t) for t in self.rl_maybe_early if t < self.first_known_end)


class RunAggregator:
    """Feed records (in any order) with :meth:`add`; :meth:`finish` gives the :class:`RunData`.

    It is also a :class:`~pacekeeper.RecordHook` (``on_attempt``/``on_request``), but not
    thread-safe by itself: :class:`~pacekeeper.report.ReportRecorder` adds the lock.
    """

    def __init__(self, *, source: str | None = None) -> None:
        self.source = source
        self._lanes: dict[LaneKey, _LaneAcc] = {}
        self._start = math.inf
        self._end = -math.inf
        self.attempts = 0
        self.requests = 0
        self.bad_lines: list[BadLine] = []
        self.bad_line_count = 0
        self.queue_waits = QueueWaits()
        """Queue wait per class and tenant over the whole run (every model)."""

    def _lane(self, route: str, model: str | None) -> _LaneAcc:
        key = (route, model)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _LaneAcc(
                totals=LaneTotals(route=route, model=model),
                keystats=KeyStats(route=route, model=model),
            )
        return lane

    def add(self, record: Record | Mapping[str, Any]) -> None:
        """Take one record: an AttemptRecord, a RequestRecord, or the dict form of either."""
        if isinstance(record, Mapping):
            record = parse_record(dict(record))
        if isinstance(record, AttemptRecord):
            self.on_attempt(record)
        else:
            self.on_request(record)

    def add_bad(self, bad: BadLine) -> None:
        self.bad_line_count += 1
        if len(self.bad_lines) < _KEEP_BAD_LINES:
            self.bad_lines.append(bad)

    def on_attempt(self, record: AttemptRecord) -> None:
        self.attempts += 1
        lane = self._lane(record.route, record.model)
        totals = lane.totals
        sent = record.started_at
        end = sent + record.latency_s
        asked = sent - record.queued_s
        self._start = min(self._start, asked)
        self._end = max(self._end, end)
        totals.first_at = min(totals.first_at, asked)
        totals.last_at = max(totals.last_at, end)
        totals.last_sent_at = max(totals.last_sent_at, sent)
        k_sent, k_end = math.floor(sent), math.floor(end)

        totals.attempts += 1
        totals.by_outcome[record.outcome] += 1
        totals.by_status["none" if record.status is None else str(record.status)] += 1
        totals.tokens_estimated_sum += record.tokens_estimated
        totals.queued_s += record.queued_s
        totals.api_s += record.latency_s
        lane.sent[k_sent] += 1
        lane.tokens_charged[k_sent] += record.tokens_estimated
        if record.attempt > 1:
            totals.retries += 1
            lane.retries[k_sent] += 1
        lane.in_flight.add(sent, end)
        lane.queued.add(asked, sent)
        if record.in_flight is not None:
            lane.peak[k_sent] = max(lane.peak.get(k_sent, 0), record.in_flight)
            lane.peak_in_flight = max(lane.peak_in_flight, record.in_flight)
        if record.concurrency_limit is not None:
            lane.concurrency_limit.add(end, record.concurrency_limit)
            totals.concurrency_limits[record.concurrency_limit] += 1
        lane.rpm_limit.add(end, record.rpm_limit)
        lane.tpm_limit.add(end, record.tpm_limit)
        known = record.rpm_limit is not None or record.tpm_limit is not None
        if known:
            lane.first_known_end = min(lane.first_known_end, end)
        if end >= totals.last_limit_at:
            totals.last_limit_at = end
            totals.last_rpm_limit = record.rpm_limit
            totals.last_tpm_limit = record.tpm_limit

        group = error_group(record.outcome, record.status)
        if group is None:
            lane.succeeded[k_end] += 1
            totals.latency.add(record.latency_s)
            if record.prompt_tokens is not None:
                totals.prompt_tokens_sum += record.prompt_tokens
                totals.prompt_tokens_count += 1
                used = record.prompt_tokens + (record.completion_tokens or 0)
                lane.tokens_used[k_end] += used
                reserve = record.tokens_estimated - record.prompt_tokens
                if reserve > 0:
                    totals.reserve_tokens[reserve] += 1
            if record.completion_tokens is not None:
                totals.completion_tokens[record.completion_tokens] += 1
                if (
                    record.prompt_tokens is not None
                    and record.completion_tokens
                    >= record.tokens_estimated - record.prompt_tokens
                    > 0
                ):
                    totals.completion_at_reserve += 1
        else:
            totals.by_group[group] += 1
            lane.errors[group][k_end] += 1
            if group == "429":
                if record.retry_in_s is not None:
                    lane.cooldowns += 1
                if known:
                    if sent < lane.first_known_end:
                        lane.rl_maybe_early.append(sent)
                else:
                    lane.rl_unknown_count += 1
                    lane.rl_unknown[k_end] += 1
        if record.retry_in_s is not None:
            totals.retry_wait_s += record.retry_in_s
            cause = record.outcome if group == "other" else group
            totals.retried_after[cause or "other"] += 1
            lane.retry_waiting.add(end, end + record.retry_in_s)
            self._end = max(self._end, end + record.retry_in_s)

        lane.keystats.on_attempt(
            status=record.status,
            rate_limited=record.outcome == "rate_limited",
            latency_s=record.latency_s,
            retry=record.attempt > 1,
            at=end,
        )

    def on_request(self, record: RequestRecord) -> None:
        self.requests += 1
        lane = self._lane(record.route, record.model)
        totals = lane.totals
        end = record.started_at + record.total_s
        self._start = min(self._start, record.started_at)
        self._end = max(self._end, end)
        totals.first_at = min(totals.first_at, record.started_at)
        totals.last_at = max(totals.last_at, end)
        totals.requests += 1
        totals.total_s += record.total_s
        totals.total.add(record.total_s)
        totals.queued.add(record.queued_s)
        if record.cost_usd is not None:
            totals.cost_usd += record.cost_usd
            totals.priced_requests += 1
            lane.cost[math.floor(end)] += record.cost_usd
        else:
            totals.unpriced_requests += 1
        if record.ok:
            totals.ok += 1
        else:
            totals.failed += 1
            reason = (record.outcome, record.error_type or record.outcome)
            totals.failures[reason] += 1
            if reason not in totals.failure_examples and record.error:
                totals.failure_examples[reason] = record.error
        lane.keystats.on_record(record, at=end)
        self.queue_waits.add(record.queued_s, priority=record.priority, tenant=record.tenant)

    def finish(self, *, max_bins: int = 150) -> RunData:
        """The aggregates so far (the aggregator may keep taking records afterwards)."""
        lanes: dict[LaneKey, _LaneAcc] = {}
        for key in sorted(self._lanes, key=lambda k: (k[1] or "", k[0])):
            acc = self._lanes[key]
            totals = acc.totals
            totals.rate_limited_unknown = acc.rl_unknown_count + sum(acc.early_429s().values())
            limits = totals.concurrency_limits
            totals.stats = acc.keystats.snapshot(
                concurrency_limit=_latest(acc.concurrency_limit) or max(limits, default=0),
                peak_in_flight=acc.peak_in_flight,
                rpm_limit=totals.last_rpm_limit,
                tpm_limit=totals.last_tpm_limit,
                cooldowns=acc.cooldowns,
            )
            lanes[key] = acc
        empty = not lanes
        start = 0.0 if empty else self._start
        end = 0.0 if empty else max(self._end, start)
        return RunData(
            source=self.source,
            start=start,
            end=end,
            attempts=self.attempts,
            requests=self.requests,
            bad_lines=tuple(self.bad_lines),
            bad_line_count=self.bad_line_count,
            lanes=lanes,
            max_bins=max_bins,
            queue_waits=self.queue_waits,
        )


def _latest(sample: _Sample) -> int | None:
    if not sample.by_second:
        return None
    _, value = sample.by_second[max(sample.by_second)]
    return None if value is None else int(value)


_NICE_WIDTHS = (
    1, 2, 3, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800,
    3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip


def nice_bin_width(span_s: float, max_bins: int = 150, *, at_least: float = 1.0) -> int:
    """The smallest "round" bin width (whole seconds) giving at most ``max_bins`` bins over
    ``span_s`` and at least ``at_least`` seconds.

    >>> nice_bin_width(25), nice_bin_width(3600), nice_bin_width(3600, at_least=45)
    (1, 30, 60)
    """
    need = max(at_least, span_s / max(1, max_bins))
    for width in _NICE_WIDTHS:
        if width >= need:
            return width
    return math.ceil(need / 86400) * 86400


class RunData:
    """What a run did, aggregated: totals per (route, model) and per-second sums that
    :meth:`series` resamples. Made by :class:`RunAggregator` (or :func:`load_run`)."""

    def __init__(
        self,
        *,
        source: str | None,
        start: float,
        end: float,
        attempts: int,
        requests: int,
        bad_lines: tuple[BadLine, ...],
        bad_line_count: int,
        lanes: Mapping[LaneKey, _LaneAcc],
        max_bins: int = 150,
        queue_waits: QueueWaits | None = None,
    ) -> None:
        self.source = source
        self.start = start
        """Wall-clock time (epoch seconds) of the first request's start."""
        self.end = end
        self.attempts = attempts
        self.requests = requests
        self.bad_lines = bad_lines
        """The first bad lines (up to 50); :attr:`bad_line_count` counts them all."""
        self.bad_line_count = bad_line_count
        self._acc = dict(lanes)
        self.lanes: list[LaneTotals] = [acc.totals for acc in self._acc.values()]
        self.bin_s = nice_bin_width(self.duration_s, max_bins)
        """The display bins' width in seconds."""
        self.queue_waits = queue_waits if queue_waits is not None else QueueWaits()
        """Queue wait per priority class and tenant over every model."""

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def empty(self) -> bool:
        return not self.lanes

    @property
    def stats(self) -> list[StatsSnapshot]:
        """Per (route, model), in the governor's own form (for the summary table)."""
        return [lane.stats for lane in self.lanes if lane.stats is not None]

    def bins(self, width: int | None = None) -> tuple[int, int, list[float]]:
        """(first second, width, covered seconds per bin) for bins of ``width`` seconds."""
        width = width or self.bin_s
        k0 = math.floor(self.start)
        n = max(1, math.ceil((self.end - k0) / width))
        covered = []
        for i in range(n):
            low = max(self.start, k0 + i * width)
            high = min(self.end, k0 + (i + 1) * width)
            covered.append(max(0.0, high - low))
        return k0, width, covered

    def bin_starts(self, width: int | None = None) -> list[float]:
        """Start of each bin in seconds since :attr:`start` (the first may be negative)."""
        k0, width, covered = self.bins(width)
        return [k0 + i * width - self.start for i in range(len(covered))]

    def series(self, key: LaneKey, width: int | None = None) -> LaneSeries:
        """One lane resampled into bins of ``width`` seconds (default :attr:`bin_s`)."""
        acc = self._acc[key]
        k0, width, covered = self.bins(width)
        n = len(covered)
        rate_div = [max(c, width / 2) / 60.0 for c in covered]
        avg_div = [c if c > 0 else float(width) for c in covered]

        def counts(sparse: Mapping[int, float]) -> list[float]:
            out = [0.0] * n
            for k, v in sparse.items():
                index = min(n - 1, max(0, (k - k0) // width))
                out[index] += v
            return out

        def per_min(sparse: Mapping[int, float]) -> list[float]:
            return [c / d for c, d in zip(counts(sparse), rate_div, strict=True)]

        def average(steps: _Steps) -> list[float]:
            return [a / d for a, d in zip(steps.integrate(k0, width, n), avg_div, strict=True)]

        def sample(s: _Sample) -> list[float | None]:
            """The latest value in each bin, carried forward into bins without one."""
            latest: list[tuple[float, float | None] | None] = [None] * n
            for k, (t, v) in s.by_second.items():
                index = min(n - 1, max(0, (k - k0) // width))
                current = latest[index]
                if current is None or t >= current[0]:
                    latest[index] = (t, v)
            out: list[float | None] = []
            value: float | None = None
            for item in latest:
                if item is not None:
                    value = item[1]
                out.append(value)
            return out

        def time_average(s: _Sample) -> list[float | None]:
            """Each second holds its latest value (or the one before; the first value before
            the first sample), averaged over each bin's seconds."""
            seconds = sorted(k for k, (_, v) in s.by_second.items() if v is not None)
            if not seconds:
                return [None] * n
            area = [0.0] * n
            first = k0
            last = k0 + n * width
            for i, k in enumerate(seconds):
                value = s.by_second[k][1]
                assert value is not None
                begin = first if i == 0 else k
                stop = seconds[i + 1] if i + 1 < len(seconds) else last
                _add_range(area, k0, width, begin, stop, value)
            return [a / width for a in area]

        peaks: list[float | None] = [None] * n
        for k, v in acc.peak.items():
            index = min(n - 1, max(0, (k - k0) // width))
            current = peaks[index]
            peaks[index] = v if current is None else max(current, v)
        return LaneSeries(
            key=key,
            sent=per_min(acc.sent),
            succeeded=per_min(acc.succeeded),
            tokens_charged=per_min(acc.tokens_charged),
            tokens_used=per_min(acc.tokens_used),
            in_flight=average(acc.in_flight),
            peak_in_flight=peaks,
            queued=average(acc.queued),
            retry_waiting=average(acc.retry_waiting),
            concurrency_limit=time_average(acc.concurrency_limit),
            rpm_limit=sample(acc.rpm_limit),
            tpm_limit=sample(acc.tpm_limit),
            errors={group: counts(acc.errors.get(group, {})) for group in ERROR_GROUPS},
            retries=counts(acc.retries),
            sent_count=counts(acc.sent),
            tokens_charged_count=counts(acc.tokens_charged),
            rate_limited_unknown=counts(_merged(acc.rl_unknown, acc.early_429s())),
            cost_usd=counts(acc.cost),
        )


def _merged(a: Mapping[int, float], b: Mapping[int, int]) -> dict[int, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0.0) + v
    return out


def aggregate(
    items: Iterable[Record | BadLine | Mapping[str, Any]], *, source: str | None = None
) -> RunAggregator:
    """Feed records (or bad lines) to a new :class:`RunAggregator`. Mappings that are not
    records are counted as bad lines, numbered by their position."""
    agg = RunAggregator(source=source)
    for number, item in enumerate(items, start=1):
        if isinstance(item, BadLine):
            agg.add_bad(item)
            continue
        try:
            agg.add(item)
        except ValueError as exc:
            agg.add_bad(BadLine(number, str(exc)))
    return agg


def load_run(path: str | Path, *, max_bins: int = 150) -> RunData:
    """Read and aggregate a records file (see :func:`iter_records`)."""
    return aggregate(iter_records(path), source=str(path)).finish(max_bins=max_bins)
