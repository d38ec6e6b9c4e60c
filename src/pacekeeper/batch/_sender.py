"""The run's requests, built straight for the governed transport.

``httpx2.AsyncClient.post`` costs about a third of a line's CPU against a local server: the URL
parsed again for every request, the headers merged and checked, cookies, auth and redirect
steps a run never uses. A run sends one kind of request (a POST of a JSON body to a handful
of URLs, with the same headers), so :class:`LineSender` checks the headers once, keeps one
parsed URL per address, and hands the transport a request built the way the proxy builds
its own; the answer is read in full, as ``client.post`` would have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx2

from pacekeeper.transports._objects import request_of

__all__ = ["LineSender"]

_Triples = list[tuple[bytes, bytes, bytes]]
_UNSENDABLE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class LineSender:
    """POSTs JSON bodies through ``transport`` with ``headers`` on every request.

    >>> import asyncio
    >>> class Echo(httpx2.AsyncBaseTransport):
    ...     async def handle_async_request(self, request):
    ...         return httpx2.Response(200, content=request.content, headers=request.headers)
    >>> sender = LineSender(Echo(), {"user-agent": "me"}, httpx2.Timeout(5.0))
    >>> answer = asyncio.run(sender.post("http://h:8/v1/x", {"a": "é"}))
    >>> answer.content.decode(), answer.headers["host"], answer.headers["content-length"]
    ('{"a":"é"}', 'h:8', '10')
    >>> bad = {"authorization": "Bearer sk-1\\n"}
    >>> LineSender(Echo(), bad, httpx2.Timeout(5.0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the header 'authorization' holds a line break or a control character ...
    """

    __slots__ = ("_base", "_timeout", "_transport", "_urls")

    def __init__(
        self,
        transport: httpx2.AsyncBaseTransport,
        headers: Mapping[str, str],
        timeout: httpx2.Timeout,
    ) -> None:
        self._transport = transport
        # Checked once here, then sent as they are on every request: a CR or LF in a value
        # (a key pasted with its newline) would end the header early and smuggle the rest in.
        checked = httpx2.Headers({"accept": "*/*", "accept-encoding": "gzip, deflate", **headers})
        for name, value in checked.raw:
            if _UNSENDABLE.search(name + b":" + value):
                raise ValueError(
                    f"the header {name.decode(errors='replace')!r} holds a line break or a "
                    "control character and cannot be sent; check how it (or the API key it "
                    "carries) was set"
                )
        self._base: _Triples = [(name, name.lower(), value) for name, value in checked.raw]
        self._timeout = timeout.as_dict()
        self._urls: dict[str, tuple[httpx2.URL, bytes]] = {}

    def _url(self, url: str) -> tuple[httpx2.URL, bytes]:
        known = self._urls.get(url)
        if known is None:
            parsed = httpx2.URL(url)
            known = (parsed, parsed.netloc)
            if len(self._urls) >= 1024:  # a URL per route and model: a few, unless Azure's many
                self._urls.clear()
            self._urls[url] = known
        return known

    async def post(
        self,
        url: str,
        body: Any,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> httpx2.Response:
        """POST ``body`` as JSON (as httpx2 encodes it) and read the answer; ``headers`` are
        the caller's, already safe to send (no CR or LF)."""
        parsed, host = self._url(url)
        content = json.dumps(
            body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        triples = [
            (b"Host", b"host", host),
            *self._base,
            (b"Content-Length", b"content-length", str(len(content)).encode()),
            (b"Content-Type", b"content-type", b"application/json"),
        ]
        for name, value in (headers or {}).items():
            triples.append((name.encode(), name.lower().encode(), value.encode()))
        # A dict of its own: the governed transport bounds an attempt's timeout in place.
        request = request_of(
            "POST", parsed, triples, content, {"timeout": dict(self._timeout), **(extensions or {})}
        )
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()

    def __repr__(self) -> str:
        return f"<LineSender {len(self._urls)} URLs over {self._transport!r}>"
