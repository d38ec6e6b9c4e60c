"""The result file: recovery after a crash (a torn last line is cut, anything else is damage),
one writer at a time, and lines that always encode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacekeeper.batch import OutputDamaged, ResultFile
from pacekeeper.batch._output import OutputBusy, encode_line, record_key, scan


def ok(custom_id: str, text: str = "fine") -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": None, "body": {"text": text}},
        "error": None,
    }


def failed(custom_id: str) -> dict[str, Any]:
    return {
        "id": "batch_req_x",
        "custom_id": custom_id,
        "response": {"status_code": 400, "request_id": None, "body": {"error": {}}},
        "error": {"code": "invalid_request", "message": "no"},
    }


def bad(custom_id: str, line: int) -> dict[str, Any]:
    return {
        "id": "batch_req_y",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": "duplicate_custom_id", "message": "dup", "line": line},
    }


def lines(*records: dict[str, Any]) -> bytes:
    return b"".join(encode_line(r) for r in records)


def test_missing_file_is_empty(tmp_path: Path) -> None:
    done = scan(tmp_path / "none.jsonl")
    assert (len(done), done.torn_bytes) == (0, 0)


def test_recovers_keys_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(lines(ok("a"), failed("b"), bad("a", 9)))
    done = scan(path)
    assert set(done.keys) == {record_key("a"), record_key("b"), record_key("a", 9)}
    assert done.failed == {record_key("b"), record_key("a", 9)}
    assert done.torn_bytes == 0


def test_torn_last_line_is_cut_when_opened_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    whole = lines(ok("a"), ok("b"))
    torn = encode_line(ok("c"))[:-10]
    path.write_bytes(whole + torn)
    assert scan(path).torn_bytes == len(torn)
    assert path.read_bytes() == whole + torn  # scanning alone changes nothing
    out, done = ResultFile.open(path)
    out.write(ok("d"))
    out.close()
    assert set(done.keys) == {record_key("a"), record_key("b")}
    assert done.torn_bytes == len(torn)
    assert path.read_bytes() == whole + encode_line(ok("d"))


@pytest.mark.parametrize(
    ("middle", "what"),
    [
        (b"{not json\n", "it starts '{not json'"),
        (b"\n", "a blank line"),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/x", "body": {}}\n', "custom_id"),
        (b"[1, 2]\n", "[1, 2]"),
        (b'{"id": "x", "custom_id": 5, "response": null, "error": null}\n', "custom_id"),
    ],
)
def test_a_damaged_line_that_is_not_last_is_an_error(
    tmp_path: Path, middle: bytes, what: str
) -> None:
    path = tmp_path / "out.jsonl"
    content = lines(ok("a")) + middle + lines(ok("b"))
    path.write_bytes(content)
    with pytest.raises(OutputDamaged, match=r"out\.jsonl: line 2 is not a result line") as info:
        ResultFile.open(path)
    assert what in str(info.value)
    assert path.read_bytes() == content  # nothing cut, nothing guessed


def test_a_complete_last_line_that_is_not_a_result_is_damage_not_a_torn_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.jsonl"
    content = lines(ok("a")) + b"garbage\n"
    path.write_bytes(content)
    with pytest.raises(OutputDamaged, match="line 2"):
        ResultFile.open(path)
    assert path.read_bytes() == content


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first, _ = ResultFile.open(path)
    try:
        with pytest.raises(OutputBusy, match="another pacekeeper run"):
            ResultFile.open(path)
    finally:
        first.close()
    second, _ = ResultFile.open(path)  # released by close
    second.close()


def test_lines_always_encode_and_the_key_is_redacted(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    key = "sk-secret-0123456789"
    out, _ = ResultFile.open(path, redact=[key, None, "short"])
    out.write(ok("a", text="unpaired \udc80 surrogate"))
    out.write(ok("b", text=f"echo Bearer {key}"))
    out.write(ok("c", text="ünïcödé short"))
    out.close()
    data = path.read_bytes()
    records = [json.loads(line) for line in data.splitlines()]
    assert [r["custom_id"] for r in records] == ["a", "b", "c"]
    assert records[0]["response"]["body"]["text"] == "unpaired \udc80 surrogate"
    assert key.encode() not in data
    assert records[1]["response"]["body"]["text"] == "echo Bearer [redacted]"
    assert "ünïcödé".encode() in data  # UTF-8, not escaped, when it can be
    assert records[2]["response"]["body"]["text"] == "ünïcödé short"  # short secrets: not redacted


# -- hypothesis ----------------------------------------------------------------------------

_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
_record = st.one_of(
    st.builds(ok, _ids, st.text(max_size=30)),
    st.builds(failed, _ids),
    st.builds(bad, _ids, st.integers(1, 10**6)),
)


def _key(record: dict[str, Any]) -> int:
    if record["response"] is None:
        return record_key(record["custom_id"], record["error"]["line"])
    return record_key(record["custom_id"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(_record, max_size=8), tail=_record, cut=st.floats(0.0, 1.0))
def test_torn_last_line_is_cut_whatever_the_cut(
    tmp_path: Path, records: list[dict[str, Any]], tail: dict[str, Any], cut: float
) -> None:
    path = tmp_path / "out.jsonl"
    whole = lines(*records)
    tail_bytes = encode_line(tail)
    torn = tail_bytes[: int(cut * (len(tail_bytes) - 1))]  # never the whole line with "\n"
    path.write_bytes(whole + torn)
    out, done = ResultFile.open(path)
    out.write(tail)
    out.close()
    assert set(done.keys) == {_key(r) for r in records}
    assert done.torn_bytes == len(torn)
    assert path.read_bytes() == whole + tail_bytes
    again = scan(path)
    assert set(again.keys) == set(done.keys) | {_key(tail)}
    assert again.torn_bytes == 0


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(_record, min_size=1, max_size=8),
    junk=st.binary(min_size=0, max_size=40).map(lambda b: b.replace(b"\n", b"")),
    where=st.integers(0, 7),
)
def test_damage_anywhere_but_the_torn_tail_is_reported_with_its_line(
    tmp_path: Path, records: list[dict[str, Any]], junk: bytes, where: int
) -> None:
    path = tmp_path / "out.jsonl"
    encoded = [encode_line(r) for r in records]
    where = min(where, len(encoded))
    try:
        obj = json.loads(junk)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and {"custom_id", "response", "error"} <= set(obj):
        return  # the junk happens to be a result line
    content = b"".join(encoded[:where]) + junk + b"\n" + b"".join(encoded[where:])
    path.write_bytes(content)
    with pytest.raises(OutputDamaged, match=rf"line {where + 1} is not a result line"):
        ResultFile.open(path)
    assert path.read_bytes() == content


@given(
    st.lists(
        st.integers(min_value=0, max_value=2**64 - 1)
        # clustered keys too: multiples of one number land on few slots of any table size
        | st.integers(min_value=0, max_value=4000).map(lambda k: 21 * k),
        max_size=3000,
    ),
    st.integers(min_value=0, max_value=64),
)
def test_the_compact_key_set_behaves_like_a_set(keys: list[int], capacity: int) -> None:
    from pacekeeper.batch._keys import KeySet

    compact = KeySet(capacity=capacity)  # small, so that it grows many times
    for key in keys:
        compact.add(key)
    expected = {key or 1 for key in keys}
    assert len(compact) == len(expected)
    assert set(compact) == expected
    assert all(key in compact for key in keys)
    assert not any(key in compact for key in range(2, 50) if key not in expected)


def test_a_key_set_sized_for_its_lines_holds_them_in_about_11_bytes_each() -> None:
    from pacekeeper.batch._keys import KeySet

    keys = KeySet(capacity=100_000)
    nbytes = keys.nbytes
    for key in range(1, 100_001):
        keys.add(key * 0x9E3779B97F4A7C15 % 2**64)
    assert len(keys) == 100_000
    assert keys.nbytes == nbytes <= 11 * 100_000  # sized once: it never grew
