"""httpx2 headers built from byte pairs the proxy already holds, without httpx2 checking and
normalising every name and value again (two objects per request: the forwarded request's and
the upstream answer's; each header costs httpx2 four checks and two conversions)."""

from __future__ import annotations

import httpx2

__all__ = ["headers_of", "lowered_pairs"]


def _layout_known() -> bool:
    """Whether httpx2.Headers still keeps (raw name, lowercased name, value) triples in
    ``_list``; if a later httpx2 changes that, headers are built the public way."""
    try:
        return httpx2.Headers([(b"A-B", b"v")])._list == [(b"A-B", b"a-b", b"v")]
    except AttributeError:  # pragma: no cover - another httpx2
        return False


_LAYOUT_KNOWN = _layout_known()


def headers_of(triples: list[tuple[bytes, bytes, bytes]]) -> httpx2.Headers:
    """httpx2.Headers holding ``triples`` of (name, lowercased name, value) bytes, which the
    caller got from an HTTP parser (so they hold no CR or LF).

    >>> headers_of([(b"Content-Type", b"content-type", b"application/json")])["content-type"]
    'application/json'
    """
    if not _LAYOUT_KNOWN:  # pragma: no cover - another httpx2
        return httpx2.Headers([(name, value) for name, _, value in triples])
    headers = httpx2.Headers()
    headers._list = triples
    return headers


def lowered_pairs(headers: httpx2.Headers) -> list[tuple[bytes, bytes]]:
    """(lowercased name, value) of every header, in order, without lowering each name again.

    >>> lowered_pairs(headers_of([(b"X-A", b"x-a", b"1")]))
    [(b'x-a', b'1')]
    """
    if not _LAYOUT_KNOWN:  # pragma: no cover - another httpx2
        return [(name.lower(), value) for name, value in headers.raw]
    return [(lowered, value) for _, lowered, value in headers._list]
