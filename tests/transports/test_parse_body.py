"""parse_body reads a body as ``json.loads`` does (it skips loads' Python frames for UTF-8)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from pacekeeper.transports._engine import parse_body


def _as_json_loads(content: bytes) -> object:
    """What parse_body answered before its fast path: json.loads on a body that starts
    as an object."""
    if not content or content[:1] not in (b"{", b" ", b"\n"):
        return None
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return None


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    body=st.dictionaries(st.text(), _VALUES, max_size=5),
    before=st.sampled_from(["", " ", "\n", "\t"]),
    after=st.sampled_from(["", " ", "\n\r\t", "x", "\x0b", "\u3000", "}", " {}"]),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
def test_parse_body_answers_as_json_loads(
    body: dict[str, object], before: str, after: str, encoding: str
) -> None:
    text = before + json.dumps(body, ensure_ascii=False) + after
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode("utf-8", "surrogatepass")
    assert parse_body(content) == _as_json_loads(content)


@given(content=st.binary(max_size=40).map(lambda b: b"{" + b))
def test_parse_body_answers_as_json_loads_on_any_bytes(content: bytes) -> None:
    assert parse_body(content) == _as_json_loads(content)
