"""Reading records files (bad input never crashes; bad lines are named by number) and the
streaming aggregation behind the charts and the verdict."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.core.records import AttemptRecord, RequestRecord
from pacekeeper.report import BadLine, iter_records, load_run
from pacekeeper.report._load import (
    MAX_LINE_BYTES,
    RunAggregator,
    _Steps,
    aggregate,
    error_group,
    parse_record,
)

from .crafted import CHAT, T0, Run, simulate


def attempt(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = AttemptRecord(
        route=CHAT,
        model="gpt-4o-mini",
        attempt=1,
        outcome="ok",
        status=200,
        started_at=T0,
        queued_s=0.5,
        latency_s=1.0,
        tokens_estimated=300,
        prompt_tokens=50,
        completion_tokens=20,
        in_flight=1,
        concurrency_limit=4,
        rpm_limit=600.0,
        tpm_limit=100_000.0,
    ).as_dict()
    base.update(overrides)
    return base


def request(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = RequestRecord(
        route=CHAT,
        model="gpt-4o-mini",
        outcome="ok",
        status=200,
        ok=True,
        attempts=1,
        started_at=T0 - 0.5,
        total_s=1.5,
        queued_s=0.5,
        latency_s=1.0,
        tokens_estimated=300,
        prompt_tokens=50,
        completion_tokens=20,
    ).as_dict()
    base.update(overrides)
    return base


def write_lines(path: Path, lines: list[str | bytes], *, newline_at_end: bool = True) -> Path:
    data = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    path.write_bytes(data + (b"\n" if newline_at_end else b""))
    return path


def test_every_kind_of_bad_line_is_named_by_number_and_the_good_ones_are_read(
    tmp_path: Path,
) -> None:
    lines: list[str | bytes] = [
        json.dumps(attempt()),  # 1 good
        "",  # 2 blank: skipped silently
        "{not json",  # 3
        "[1, 2, 3]",  # 4
        json.dumps({"custom_id": "x", "response": {}}),  # 5 a results line, not a record
        json.dumps({"type": "limit_change"}),  # 6
        json.dumps(attempt(started_at="yesterday")),  # 7
        json.dumps({k: v for k, v in attempt().items() if k != "outcome"}),  # 8
        json.dumps(attempt(started_at=math.nan)),  # 9 (Python's json writes and reads NaN)
        json.dumps(attempt(latency_s=-1.0)),  # 10
        b"\xff\xfe not utf-8",  # 11
        json.dumps(attempt(attempt=0)),  # 12
        json.dumps(attempt(status=True)),  # 13: a bool is not a status
        json.dumps(request()),  # 14 good
        json.dumps(request(ok="yes")),  # 15
        '{"type": "request", "route": "/v1/chat',  # 16: torn last line, no newline
    ]
    path = write_lines(tmp_path / "log.jsonl", lines, newline_at_end=False)
    items = list(iter_records(path))
    good = [i for i in items if not isinstance(i, BadLine)]
    bad = {b.line_no: b.reason for b in items if isinstance(b, BadLine)}
    assert [type(g) for g in good] == [AttemptRecord, RequestRecord]
    assert sorted(bad) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16]
    assert bad[3].startswith("not JSON")
    assert "column" in bad[3]
    assert bad[4] == "not a JSON object but list"
    assert "is this the --log file?" in bad[5]
    assert "unknown record type" in bad[6]
    assert '"started_at" should be a number' in bad[7]
    assert bad[8] == 'missing field "outcome"'
    assert "finite" in bad[9]
    assert "negative" in bad[10]
    assert bad[11].startswith("not UTF-8")
    assert '"attempt" should be 1 or more' in bad[12]
    assert '"status" should be a number' in bad[13]
    assert '"ok" should be true or false' in bad[15]
    assert bad[16].startswith("incomplete last line")


def test_unknown_fields_are_ignored_and_fields_added_later_may_be_missing(tmp_path: Path) -> None:
    record = attempt(future_field={"nested": 1})
    for newer in ("in_flight", "concurrency_limit", "rpm_limit", "tpm_limit", "tag"):
        del record[newer]
    path = write_lines(tmp_path / "log.jsonl", [json.dumps(record)])
    (item,) = iter_records(path)
    assert isinstance(item, AttemptRecord)
    assert item.in_flight is None
    assert item.rpm_limit is None
    assert item.priority == "interactive"  # logs written before priority classes


def test_a_priority_class_is_read_and_an_unknown_one_is_a_bad_line(tmp_path: Path) -> None:
    good = attempt(priority="batch", tenant="nightly")
    bad = attempt(priority="urgent")
    path = write_lines(tmp_path / "log.jsonl", [json.dumps(good), json.dumps(bad)])
    first, second = iter_records(path)
    assert isinstance(first, AttemptRecord)
    assert (first.priority, first.tenant) == ("batch", "nightly")
    assert isinstance(second, BadLine)
    assert "priority" in second.reason


def test_a_line_longer_than_the_limit_is_skipped_without_losing_the_next(tmp_path: Path) -> None:
    huge = '{"type": "attempt", "error": "' + "x" * (MAX_LINE_BYTES + 10) + '"}'
    path = write_lines(tmp_path / "log.jsonl", [huge, json.dumps(attempt())])
    items = list(iter_records(path))
    assert isinstance(items[0], BadLine)
    assert items[0].line_no == 1
    assert "longer than" in items[0].reason
    assert isinstance(items[1], AttemptRecord)


def test_gzip_files_are_read_transparently(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(attempt()) + "\n" + json.dumps(request()) + "\n")
    run = load_run(path)
    assert (run.attempts, run.requests, run.bad_line_count) == (1, 1, 0)


def test_an_empty_file_gives_an_empty_run(tmp_path: Path) -> None:
    run = load_run(write_lines(tmp_path / "empty.jsonl", [], newline_at_end=False))
    assert run.empty
    assert run.duration_s == 0.0


def test_parse_record_round_trips_as_dict() -> None:
    records = simulate(Run(requests=5))
    assert [parse_record(r.as_dict()) for r in records] == records
    with pytest.raises(ValueError, match="unknown record type"):
        parse_record({"type": "nope"})


def test_error_groups() -> None:
    assert error_group("ok", 200) is None
    assert error_group("rate_limited", 429) == "429"
    assert error_group("quota_exhausted", 429) == "other"
    assert error_group("server_error", 502) == "5xx"
    assert error_group("overloaded", 529) == "5xx"
    assert error_group("timeout", None) == "timeout"
    assert error_group("request_timeout", 408) == "timeout"
    assert error_group("connection_error", None) == "connection"
    assert error_group("malformed", None) == "other"


def test_totals_and_series_agree_with_the_records() -> None:
    records = simulate(Run(requests=120, concurrency=6, latency_s=lambda i, a: 0.7))
    run = aggregate(records).finish()
    (lane,) = run.lanes
    assert (lane.attempts, lane.requests, lane.ok) == (120, 120, 120)
    s = run.series(lane.key)
    # counts survive resampling, whatever the bin width
    for width in (1, 2, 5, 60):
        assert sum(run.series(lane.key, width).sent_count) == 120
    # rates per minute: 6 in flight, 0.7 s each: waves of 6 sent at 0, 0.7, 1.4 ... s, so
    # 8 waves in [0, 5) and 7 in [5, 10)
    assert run.series(lane.key, 5).sent[:2] == [8 * 6 * 12, 7 * 6 * 12]
    # time-averaged in-flight: the concurrency limit while busy
    assert all(5.9 <= v <= 6.0 + 1e-9 for v in s.in_flight[:-3]), s.in_flight
    assert {v for v in s.concurrency_limit if v is not None} == {6.0}
    assert lane.stats is not None
    assert lane.stats.requests == 120
    assert lane.stats.peak_in_flight == 6


def test_the_integral_of_open_intervals_is_exact() -> None:
    steps = _Steps()
    steps.add(10.25, 12.75)  # 0.75 in second 10, 1 in 11, 0.75 in 12
    steps.add(11.5, 11.6)
    assert steps.integrate(10, 1, 3) == pytest.approx([0.75, 1.1, 0.75])
    assert steps.integrate(10, 2, 2) == pytest.approx([1.85, 0.75])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=50, allow_nan=False),
            st.floats(min_value=0, max_value=20, allow_nan=False),
        ),
        max_size=25,
    ),
    st.sampled_from([1, 2, 3, 7]),
)
def test_the_integral_matches_brute_force(intervals: list[tuple[float, float]], w: int) -> None:
    steps = _Steps()
    for start, length in intervals:
        steps.add(start, start + length)
    n = math.ceil(75 / w)
    got = steps.integrate(0, w, n)
    for i in range(n):
        lo, hi = i * w, (i + 1) * w
        expected = sum(max(0.0, min(hi, s + d) - max(lo, s)) for s, d in intervals if d > 0)
        assert got[i] == pytest.approx(expected, abs=1e-6)


def test_records_may_arrive_in_any_order() -> None:
    records = simulate(Run(requests=60, concurrency=3))
    forward = aggregate(records).finish()
    backward = aggregate(list(reversed(records))).finish()
    key = forward.lanes[0].key
    a, b = forward.series(key), backward.series(key)
    assert a.sent == b.sent
    assert a.in_flight == pytest.approx(b.in_flight)
    assert a.concurrency_limit == b.concurrency_limit


def test_dicts_that_are_not_records_count_as_bad_by_position() -> None:
    agg = aggregate([attempt(), {"nonsense": True}, request()])
    assert (agg.attempts, agg.requests, agg.bad_line_count) == (1, 1, 1)
    assert agg.bad_lines[0].line_no == 2


def test_only_the_first_bad_lines_are_kept_but_all_are_counted() -> None:
    agg = RunAggregator()
    for n in range(1, 1001):
        agg.add_bad(BadLine(n, "junk"))
    run = agg.finish()
    assert run.bad_line_count == 1000
    assert len(run.bad_lines) == 50


def test_the_reader_knows_every_field_of_the_records() -> None:
    """A field added to the records must be read too (or it silently vanishes from logs)."""
    from pacekeeper.report._load import _ATTEMPT_SPEC, _REQUEST_SPEC

    assert {name for name, _, _ in _ATTEMPT_SPEC} == set(AttemptRecord.__dataclass_fields__)
    assert {name for name, _, _ in _REQUEST_SPEC} == set(RequestRecord.__dataclass_fields__)
