"""The proxy's one pass over a request's headers (ProxyApp._head) finds what the four passes
it replaced found: the headers forwarded, the declared length, the content type and the
priority header (a property over any header list, with and without a held key)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.core.governor import Governor
from pacekeeper.proxy import ProxyConfig
from pacekeeper.proxy._app import _HOP_BY_HOP, _KEY_HEADERS, ProxyApp

# The names the pass treats apart, and a few it forwards as they are.
_NAMES = sorted(
    {
        *_HOP_BY_HOP,
        *_KEY_HEADERS,
        b"host",
        b"content-length",
        b"content-type",
        b"expect",
        b"authorization",
        b"x-pacekeeper-token",
        b"x-pacekeeper-priority",
        b"accept",
        b"user-agent",
        b"x-stainless-lang",
        b"x-hop",
    }
)
_VALUES = st.sampled_from(
    [
        b"",
        b"0",
        b"12",
        b" 7 ",
        b"-3",
        b"x",
        b"application/json",
        b"text/plain",
        b"keep-alive",
        b"close",
        b"Keep-Alive, X-Hop",
        b"x-hop, accept",
        b"user-agent",
        b"batch",
        b"interactive",
        b"nonsense",
        b"Bearer sk-client",
    ]
)
_HEADERS = st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=12)

_DROP = _HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-pacekeeper-token",
    b"x-pacekeeper-priority",
}


def _reference(
    headers: list[tuple[bytes, bytes]], key_headers: list[tuple[bytes, bytes]] | None
) -> tuple[list[tuple[bytes, bytes, bytes]], int, bytes, bytes | None]:
    """The four passes as they were (ProxyApp._upstream_headers, the lengths read by
    _read_body, the type by _forward_body, the class header by _priority)."""
    out = []
    listed: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            listed.update(t.strip().lower() for t in value.split(b","))
        elif name in _DROP or (
            key_headers is not None and (name == b"authorization" or name in _KEY_HEADERS)
        ):
            continue
        else:
            out.append((name, name, value))
    if listed - {b"close", b"keep-alive"}:
        out = [header for header in out if header[1] not in listed]
    if key_headers is not None:
        present = {name for _, name, _ in out}
        out.extend((n, n, v) for n, v in key_headers if n not in present)
    declared = -1
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = -1
    content_type = b""
    for name, value in headers:
        if name == b"content-type":
            content_type = value
    asked = next((value for name, value in headers if name == b"x-pacekeeper-priority"), None)
    return out, declared, content_type, asked


_APPS = {
    held: ProxyApp(
        ProxyConfig(upstream="http://127.0.0.1:9/v1", port=0, api_key="sk-held" if held else None),
        Governor(),
    )
    for held in (False, True)
}


@settings(max_examples=400, deadline=None)
@given(headers=_HEADERS, held=st.booleans())
def test_one_pass_finds_what_the_four_passes_found(
    headers: list[tuple[bytes, bytes]], held: bool
) -> None:
    app = _APPS[held]
    expected = _reference(headers, app._key_headers if held else None)
    assert app._head(headers) == expected
