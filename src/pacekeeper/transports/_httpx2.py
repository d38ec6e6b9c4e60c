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

__all__ = ["SyncTransport", "Transport"]


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
