"""The proxy builds httpx2's Request and Response objects without their constructors
(transports/_objects.py): they must hold what the constructors would have made."""

from __future__ import annotations

import httpx2

from pacekeeper.transports import _objects as _headers


def _plain(value: object) -> object:
    if isinstance(value, httpx2.Headers):
        return value.raw
    if isinstance(value, httpx2.ByteStream):
        return b"".join(value)
    if isinstance(value, httpx2.URL):
        return str(value)
    return value


def _state(obj: object) -> dict[str, object]:
    return {name: _plain(value) for name, value in vars(obj).items()}


def test_the_installed_httpx2_takes_the_fast_path() -> None:
    # False would still work (the public constructors), only slower: this says it happened.
    assert _headers._OBJECTS_KNOWN
    assert _headers._LAYOUT_KNOWN


def test_a_request_is_what_httpx2_request_makes() -> None:
    url = httpx2.URL("http://127.0.0.1:8000/v1/chat/completions?x=1")
    triples = [(b"content-type", b"content-type", b"application/json"), (b"host", b"host", b"h")]
    extensions = {"timeout": {"read": 1.0}}
    fast = _headers.request_of("POST", url, triples, b'{"a": 1}', dict(extensions))
    public = httpx2.Request(
        "POST",
        url,
        headers=[(n, v) for n, _, v in triples],
        stream=httpx2.ByteStream(b'{"a": 1}'),
        extensions=dict(extensions),
    )
    public.read()
    assert _state(fast) == _state(public)
    assert fast.content == public.content == b'{"a": 1}'


def test_a_response_is_what_httpx2_response_makes() -> None:
    stream = httpx2.ByteStream(b"body")
    triples = [(b"Content-Length", b"content-length", b"4")]
    fast = _headers.response_of(201, triples, stream, {"http_version": b"HTTP/1.1"})
    public = httpx2.Response(
        201,
        headers=[(n, v) for n, _, v in triples],
        stream=stream,
        extensions={"http_version": b"HTTP/1.1"},
    )
    assert _state(fast) == _state(public)
    assert fast.read() == public.read() == b"body"
