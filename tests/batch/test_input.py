"""The input reader: every format, every kind of bad line (with its line number), and, with
hypothesis, that any bytes at all come out as a request or a bad line, never an exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pacekeeper.batch import BadLine, BatchLine, count_lines, read_lines
from pacekeeper.batch._input import MAX_CUSTOM_ID, parse_line

from .helpers import batch_line, chat_body, write_lines


def parse(raw: str | bytes, **kwargs: Any) -> BatchLine | BadLine:
    data = raw.encode() if isinstance(raw, str) else raw
    return parse_line(7, data, **kwargs)


def test_batch_api_line() -> None:
    line = batch_line("a-1", "hello", model="gpt-4o")
    item = parse(json.dumps(line))
    assert isinstance(item, BatchLine)
    assert (item.line_no, item.custom_id, item.url) == (7, "a-1", "/v1/chat/completions")
    assert item.body == line["body"]


def test_model_flag_overrides_and_fills_the_body_model() -> None:
    item = parse(json.dumps(batch_line("a", model="gpt-4o")), model="gpt-4o-mini")
    assert isinstance(item, BatchLine)
    assert item.body["model"] == "gpt-4o-mini"
    no_model = {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}
    item = parse(json.dumps(no_model), model="text-embedding-3-small")
    assert isinstance(item, BatchLine)
    assert (item.url, item.body["model"]) == ("/v1/embeddings", "text-embedding-3-small")


def test_bare_body_gets_line_number_id_and_the_url_flag() -> None:
    item = parse(json.dumps(chat_body("hi")))
    assert isinstance(item, BatchLine)
    assert (item.custom_id, item.url) == ("line-7", "/v1/chat/completions")
    item = parse(
        json.dumps({"model": "text-embedding-3-small", "input": ["a", "b"]}), url="/v1/embeddings"
    )
    assert isinstance(item, BatchLine)
    assert (item.custom_id, item.url, item.body["input"]) == (
        "line-7",
        "/v1/embeddings",
        ["a", "b"],
    )
    completion = parse(json.dumps({"model": "m", "prompt": "Once"}), url="/v1/completions")
    assert isinstance(completion, BatchLine)
    assert completion.body == {"model": "m", "prompt": "Once"}  # a body, not a prompt object


def test_prompt_objects_are_one_user_message() -> None:
    item = parse('{"prompt": "Why is the sky blue?"}', model="gpt-4o-mini")
    assert isinstance(item, BatchLine)
    assert item.custom_id == "line-7"
    assert item.body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
    }
    named = parse('{"custom_id": "q1", "prompt": "hi"}', model="m", url="/v1/x")
    assert isinstance(named, BatchLine)
    assert (named.custom_id, named.url) == ("q1", "/v1/x")


def test_prompt_objects_follow_the_route() -> None:
    own_model = parse('{"prompt": "hi", "model": "gpt-4o"}')
    assert isinstance(own_model, BatchLine)
    assert own_model.body == {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    overridden = parse('{"prompt": "hi", "model": "gpt-4o"}', model="gpt-4o-mini")
    assert isinstance(overridden, BatchLine)
    assert overridden.body["model"] == "gpt-4o-mini"
    completions = parse(
        '{"custom_id": "c", "prompt": "Once upon"}', model="m", url="/v1/completions"
    )
    assert isinstance(completions, BatchLine)
    assert (completions.custom_id, completions.body) == ("c", {"model": "m", "prompt": "Once upon"})
    tokens = parse('{"prompt": [1, 2, 3], "model": "m"}', url="/v1/completions")
    assert isinstance(tokens, BatchLine)
    assert tokens.body == {"model": "m", "prompt": [1, 2, 3]}
    no_model = parse('{"prompt": "x"}', url="/v1/completions")
    assert isinstance(no_model, BadLine)
    assert no_model.code == "missing_model"


def test_text_format_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_bytes(b'first prompt\n\n   \n{"not": "parsed"}\r\nlast without newline')
    items = list(read_lines(path, fmt="text", model="m"))
    assert [(i.line_no, i.custom_id) for i in items] == [
        (1, "line-1"),
        (4, "line-4"),
        (5, "line-5"),
    ]
    assert all(isinstance(i, BatchLine) for i in items)
    contents = [i.body["messages"][0]["content"] for i in items if isinstance(i, BatchLine)]
    assert contents == ["first prompt", '{"not": "parsed"}', "last without newline"]
    assert count_lines(path) == 3


def test_text_format_without_model_is_bad_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("a\nb\n")
    items = list(read_lines(path, fmt="text"))
    assert [(i.code, i.line_no) for i in items if isinstance(i, BadLine)] == [
        ("missing_model", 1),
        ("missing_model", 2),
    ]


def test_formats_are_told_apart_per_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            batch_line("api-1"),
            chat_body("a bare body"),
            {"prompt": "a prompt"},
            {"custom_id": "p2", "prompt": "a named prompt"},
            "",
            "not json at all",
        ],
    )
    items = list(read_lines(path, model="gpt-4o-mini"))
    assert [(type(i).__name__, i.line_no, i.custom_id) for i in items] == [
        ("BatchLine", 1, "api-1"),
        ("BatchLine", 2, "line-2"),
        ("BatchLine", 3, "line-3"),
        ("BatchLine", 4, "p2"),
        ("BadLine", 6, "line-6"),
    ]
    bad = items[-1]
    assert isinstance(bad, BadLine)
    assert bad.code == "invalid_json"  # never silently a prompt
    assert count_lines(path) == 5


def test_utf8_bom_on_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(batch_line("x")).encode() + b"\n")
    [item] = read_lines(path)
    assert isinstance(item, BatchLine)
    assert item.custom_id == "x"


_API = {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": chat_body("x")}


def _with(**changes: Any) -> str:
    line = {**_API, **changes}
    return json.dumps({k: v for k, v in line.items() if v is not ...})


BAD_LINES: list[tuple[str, str | bytes, str, str]] = [
    ("invalid json", "{not json", "invalid_json", "not valid JSON"),
    ("plain text in a JSON file", "hello world", "invalid_json", "not valid JSON"),
    ("truncated", _with()[:-5], "invalid_json", "not valid JSON"),
    ("NaN", _with(body={**chat_body("x"), "temperature": float("nan")}), "invalid_json", "NaN"),
    ("Infinity", '{"model": "m", "messages": [], "top_p": Infinity}', "invalid_json", "Infinity"),
    ("nested too deeply", "[" * 50_000 + "]" * 50_000, "invalid_json", "too deeply"),
    ("unpaired surrogate", '{"model": "m", "messages": "\\udc80"}', "invalid_json", "surrogate"),
    ("not UTF-8", b'{"model": "m", "messages": "\xff\xfe"}', "invalid_encoding", "not UTF-8"),
    ("an array", "[1, 2, 3]", "invalid_line", "expected a JSON object, got an array"),
    ("a string", '"just a string"', "invalid_line", "got a string"),
    ("a number", "42", "invalid_line", "got a number"),
    ("null", "null", "invalid_line", "got null"),
    ("empty object", "{}", "unrecognized_line", "not a request"),
    ("no request fields", '{"model": "m", "temperature": 1}', "unrecognized_line", "not a request"),
    ("missing custom_id", _with(custom_id=...), "missing_custom_id", "custom_id is missing"),
    ("custom_id a number", _with(custom_id=5), "invalid_custom_id", "non-empty string, got 5"),
    ("custom_id empty", _with(custom_id=""), "invalid_custom_id", "non-empty string"),
    ("custom_id null", _with(custom_id=None), "invalid_custom_id", "got null"),
    ("custom_id too long", _with(custom_id="x" * 513), "invalid_custom_id", "longer than 512"),
    ("missing body", _with(body=...), "missing_field", "missing body"),
    ("missing method and url", _with(method=..., url=...), "missing_field", "missing method, url"),
    ("custom_id but no request", '{"custom_id": "c", "model": "m"}', "missing_field", "missing"),
    ("method GET", _with(method="GET"), "invalid_method", 'method must be POST, got "GET"'),
    ("method lowercase", _with(method="post"), "invalid_method", "method must be POST"),
    ("url not a path", _with(url="v1/chat/completions"), "invalid_url", "url must be a path"),
    ("url absolute", _with(url="https://evil.example/v1"), "invalid_url", "url must be a path"),
    ("url with a space", _with(url="/v1/chat completions"), "invalid_url", "url must be a path"),
    ("url a number", _with(url=3), "invalid_url", "url must be a path"),
    ("body a list", _with(body=[1]), "invalid_body", "body must be a JSON object, got an array"),
    ("body a string", _with(body="{}"), "invalid_body", "got a string"),
    ("body without model", _with(body={"messages": []}), "missing_model", "names no model"),
    ("model not a string", _with(body={"model": 4, "messages": []}), "missing_model", "no model"),
    ("streaming body", _with(body=chat_body("x", stream=True)), "invalid_body", "cannot stream"),
    ("bare body without model", '{"messages": []}', "missing_model", "names no model"),
    ("prompt not a string", '{"prompt": 5}', "invalid_prompt", "must be a string"),
    ("prompt with bad custom_id", '{"prompt": "x", "custom_id": 3}', "invalid_custom_id", "got 3"),
    ("prompt without --model", '{"prompt": "x"}', "missing_model", "needs --model"),
    ("prompt with a bad model", '{"prompt": "x", "model": 5}', "missing_model", "got 5"),
]


@pytest.mark.parametrize(
    ("raw", "code", "fragment"), [case[1:] for case in BAD_LINES], ids=[c[0] for c in BAD_LINES]
)
def test_bad_lines_name_their_line_and_problem(raw: str | bytes, code: str, fragment: str) -> None:
    model = None if code == "missing_model" else "m"
    item = parse(raw, model=model)
    assert isinstance(item, BadLine), item
    assert item.code == code
    assert item.line_no == 7
    assert item.message.startswith("line 7")
    assert fragment in item.message
    assert isinstance(item.custom_id, str)
    assert 0 < len(item.custom_id) <= MAX_CUSTOM_ID


def test_bad_line_keeps_its_own_custom_id_when_it_has_a_valid_one() -> None:
    item = parse(_with(custom_id="mine", method="GET"))
    assert isinstance(item, BadLine)
    assert item.custom_id == "mine"
    assert '("mine")' in item.message
    item = parse(_with(custom_id=12))
    assert isinstance(item, BadLine)
    assert item.custom_id == "line-7"


def test_custom_id_of_exactly_512_characters_is_fine() -> None:
    item = parse(_with(custom_id="é" * 512))
    assert isinstance(item, BatchLine)
    assert item.custom_id == "é" * 512


def test_read_lines_is_lazy(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "big.jsonl", (batch_line(f"r{i}") for i in range(2000)))
    lines = read_lines(path)
    first = next(lines)
    assert isinstance(first, BatchLine)
    assert first.custom_id == "r0"
    lines.close()  # closes the file; nothing was read past the first block


# -- hypothesis ----------------------------------------------------------------------------

_any_text = st.text(st.characters(exclude_categories=()), max_size=20)
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _any_text
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_any_text, inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(
    ["custom_id", "method", "url", "body", "prompt", "model", "messages", "input", "stream"]
)
_values = st.one_of(
    _json,
    st.just("POST"),
    st.just("/v1/chat/completions"),
    st.just("gpt-4o-mini"),
    st.builds(chat_body, _any_text),
)
_request_like = st.dictionaries(_keys, _values, max_size=5)


def _encode(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=True).encode()


_line = st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")),
    _request_like.map(_encode),
    _json.map(_encode),
    st.builds(lambda cid: _encode({**_API, "custom_id": cid}), _json),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@example(lines=[b"\xef\xbb\xbf"], fmt="jsonl", model=None)  # a BOM alone: a blank line
@given(
    lines=st.lists(_line, max_size=12),
    fmt=st.sampled_from(["jsonl", "text"]),
    model=st.sampled_from([None, "m"]),
)
def test_any_bytes_become_a_request_or_a_bad_line(
    tmp_path: Path, lines: list[bytes], fmt: str, model: str | None
) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines))
    items = list(read_lines(path, fmt=fmt, model=model))  # type: ignore[arg-type]
    # a byte-order mark opening the file is not content (a BOM-only first line is blank)
    non_blank = [
        n
        for n, raw in enumerate(lines, start=1)
        if (raw.removeprefix(b"\xef\xbb\xbf") if n == 1 else raw).strip()
    ]
    assert [i.line_no for i in items] == non_blank
    assert count_lines(path) == len(items)
    for item in items:
        assert isinstance(item, (BatchLine, BadLine))
        assert isinstance(item.custom_id, str)
        assert 0 < len(item.custom_id) <= MAX_CUSTOM_ID
        if isinstance(item, BadLine):
            assert item.message.startswith(f"line {item.line_no}")
            continue
        # what is sent can always be sent: strict JSON, UTF-8, a model, a path route
        json.dumps(item.body, allow_nan=False, ensure_ascii=False).encode("utf-8")
        assert isinstance(item.body["model"], str)
        assert item.body["model"]
        assert item.url.startswith("/")
        assert item.body.get("stream") is not True
        if model is not None:
            assert item.body["model"] == model


@settings(max_examples=300, deadline=None)
@given(custom_id=_json)
def test_custom_id_rules(custom_id: object) -> None:
    item = parse(_encode({**_API, "custom_id": custom_id}))
    valid = isinstance(custom_id, str) and 0 < len(custom_id) <= MAX_CUSTOM_ID
    if valid:
        try:
            assert isinstance(custom_id, str)
            custom_id.encode("utf-8")
        except UnicodeEncodeError:
            valid = False
    if valid:
        assert isinstance(item, BatchLine)
        assert item.custom_id == custom_id
    else:
        assert isinstance(item, BadLine)
        assert item.code in ("invalid_custom_id", "invalid_json")
        assert item.custom_id == "line-7"
