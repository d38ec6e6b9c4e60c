"""Governed transports for httpx2, the HTTP layer of the current openai and anthropic SDKs.

::

    client = openai.AsyncOpenAI(
        max_retries=0,
        http_client=openai.DefaultAsyncHttpx2Client(transport=pacekeeper.Transport(gov)),
    )
"""

from __future__ import annotations

import httpx2

from pacekeeper.transports._engine import flavour_of
from pacekeeper.transports._flow import AsyncGovernedTransport, SyncGovernedTransport

__all__ = ["SyncTransport", "Transport", "httptools_available", "sending_transport"]


class Transport(AsyncGovernedTransport, httpx2.AsyncBaseTransport):
    """An async httpx2 transport that sends every request through a :class:`Governor`.

    ``Transport(governor, transport=inner)``: ``inner`` really sends (default: an httpx2
    transport whose pool never queues). The governor never admits more than a bounded pool
    holds, so the pool is never the queue.
    """

    _flavour = flavour_of(httpx2)


class SyncTransport(SyncGovernedTransport, httpx2.BaseTransport):
    """The blocking twin of :class:`Transport`, for ``openai.OpenAI`` and ``httpx2.Client``.

    It may share its governor with async transports: the limits then hold across both.
    """

    _flavour = flavour_of(httpx2)


def httptools_available() -> bool:
    """Whether httptools (the ``fast`` extra) can be imported: the faster HTTP parser for
    the proxy's uvicorn protocol and for :func:`sending_transport`; without it, h11 and
    httpx2."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def sending_transport(*, keepalive: int = 256) -> httpx2.AsyncBaseTransport:
    """What really sends for pacekeeper's own clients (``pacekeeper run``, the proxy):
    httpx2's pool, which never queues, behind the lean HTTP/1.1 transport for plain-HTTP
    servers when httptools is installed. httpcore2's layers cost about as much CPU per
    request as everything else in a run against a local server (vLLM, the simulator, a
    pacekeeper proxy); https and what the lean transport does not handle go to httpx2 as
    before, and without httptools everything does (slower, same behaviour)."""
    pool = httpx2.AsyncHTTPTransport(
        limits=httpx2.Limits(max_connections=None, max_keepalive_connections=keepalive)
    )
    if not httptools_available():
        return pool
    from pacekeeper.transports._upstream import UpstreamTransport

    return UpstreamTransport(pool)
