"""httpx2 objects built from what the proxy already holds, without httpx2 checking and
normalising it all again: the headers of the forwarded request and of the upstream's answer
(each header costs httpx2 four checks and two conversions), and the request and answer
objects themselves (their constructors copy the URL, the headers and the extensions, and
reading a held body walks it once more)."""

from __future__ import annotations

from typing import Any

import httpx2

__all__ = ["Triples", "headers_of", "request_of", "response_of", "triples_of"]

Triples = list[tuple[bytes, bytes, bytes]]


def _layout_known() -> bool:
    """Whether httpx2.Headers still keeps (raw name, lowercased name, value) triples in
    ``_list`` and nothing but its encoding beside; if a later httpx2 changes that, headers
    are built the public way."""
    try:
        return httpx2.Headers([(b"A-B", b"v")])._list == [(b"A-B", b"a-b", b"v")] and vars(
            httpx2.Headers()
        ) == {"_list": [], "_encoding": None}
    except (AttributeError, TypeError):  # pragma: no cover - another httpx2
        return False


_LAYOUT_KNOWN = _layout_known()


def headers_of(triples: Triples) -> httpx2.Headers:
    """httpx2.Headers holding ``triples`` of (name, lowercased name, value) bytes, which the
    caller got from an HTTP parser (so they hold no CR or LF).

    >>> headers_of([(b"Content-Type", b"content-type", b"application/json")])["content-type"]
    'application/json'
    """
    if not _LAYOUT_KNOWN:  # pragma: no cover - another httpx2
        return httpx2.Headers([(name, value) for name, _, value in triples])
    headers = object.__new__(httpx2.Headers)  # its __init__ checks for a Mapping: an ABC
    headers._list = triples
    headers._encoding = None
    return headers


def triples_of(headers: httpx2.Headers) -> Triples:
    """(name, lowercased name, value) of every header, in order: httpx2's own list, not
    copied (do not change it), so no name is lowered again.

    >>> triples_of(headers_of([(b"X-A", b"x-a", b"1")]))
    [(b'X-A', b'x-a', b'1')]
    """
    if not _LAYOUT_KNOWN:  # pragma: no cover - another httpx2
        return [(name, name.lower(), value) for name, value in headers.raw]
    return headers._list


def _request_fast(
    method: str, url: httpx2.URL, headers: httpx2.Headers, body: bytes, extensions: dict[str, Any]
) -> httpx2.Request:
    request = object.__new__(httpx2.Request)
    request.method = method.upper()
    request.url = url  # URLs are immutable: shared, not copied
    request.headers = headers
    request.extensions = extensions
    request.stream = httpx2.ByteStream(body)
    request._content = body
    return request


def _response_fast(
    status: int, headers: httpx2.Headers, stream: httpx2.AsyncByteStream, extensions: dict[str, Any]
) -> httpx2.Response:
    response = object.__new__(httpx2.Response)
    response.status_code = status
    response.headers = headers
    response._request = None
    response.next_request = None
    response.extensions = extensions
    response.history = []
    response.is_closed = False
    response.is_stream_consumed = False
    response.default_encoding = "utf-8"
    response.stream = stream
    response._num_bytes_downloaded = 0
    return response


def _same_layout(fast: object, public: object) -> bool:
    mine, theirs = vars(fast), vars(public)
    return mine.keys() == theirs.keys() and all(
        type(value) is type(theirs[name]) for name, value in mine.items()
    )


def _objects_known() -> bool:
    """Whether httpx2's Request and Response still hold exactly the attributes the fast
    builders set (else they are built the public way)."""
    url, stream = httpx2.URL("http://a/b"), httpx2.ByteStream(b"")
    request = httpx2.Request("POST", url, headers=httpx2.Headers(), stream=stream, extensions={})
    request.read()
    response = httpx2.Response(200, headers=httpx2.Headers(), stream=stream, extensions={})
    return _same_layout(
        _request_fast("POST", url, httpx2.Headers(), b"", {}), request
    ) and _same_layout(_response_fast(200, httpx2.Headers(), stream, {}), response)


_OBJECTS_KNOWN = _objects_known()


def request_of(
    method: str, url: httpx2.URL, triples: Triples, body: bytes, extensions: dict[str, Any]
) -> httpx2.Request:
    """An httpx2.Request with a held (already read) ``body``, as
    ``httpx2.Request(method, url, headers=..., stream=httpx2.ByteStream(body),
    extensions=...)`` then ``.read()`` makes it; the headers are sent as given (no Host or
    length added).

    >>> request = request_of("post", httpx2.URL("http://up/v1"), [], b"{}", {})
    >>> request.method, str(request.url), request.content, request.headers.raw
    ('POST', 'http://up/v1', b'{}', [])
    """
    headers = headers_of(triples)
    if _OBJECTS_KNOWN:
        return _request_fast(method, url, headers, body, extensions)
    request = httpx2.Request(  # pragma: no cover - another httpx2
        method, url, headers=headers, stream=httpx2.ByteStream(body), extensions=extensions
    )
    request.read()  # pragma: no cover
    return request  # pragma: no cover


def response_of(
    status: int, triples: Triples, stream: httpx2.AsyncByteStream, extensions: dict[str, Any]
) -> httpx2.Response:
    """An httpx2.Response whose body is ``stream``, as ``httpx2.Response(status,
    headers=..., stream=stream, extensions=extensions)`` makes it.

    >>> response = response_of(204, [(b"X-A", b"x-a", b"1")], httpx2.ByteStream(b""), {})
    >>> response.status_code, response.headers["x-a"], response.is_closed
    (204, '1', False)
    """
    headers = headers_of(triples)
    if _OBJECTS_KNOWN:
        return _response_fast(status, headers, stream, extensions)
    return httpx2.Response(  # pragma: no cover - another httpx2
        status, headers=headers, stream=stream, extensions=extensions
    )
