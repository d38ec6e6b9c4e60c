"""Governed transports for httpx, for older SDK versions and other libraries built on it.

httpx is an optional dependency (``pip install 'pacekeeper[httpx]'``); this module imports it.
"""

from __future__ import annotations

import httpx

from pacekeeper.transports._engine import flavour_of
from pacekeeper.transports._flow import AsyncGovernedTransport, SyncGovernedTransport

__all__ = ["HttpxSyncTransport", "HttpxTransport"]


class HttpxTransport(AsyncGovernedTransport, httpx.AsyncBaseTransport):
    """The async governed transport for ``httpx.AsyncClient``."""

    _flavour = flavour_of(httpx)


class HttpxSyncTransport(SyncGovernedTransport, httpx.BaseTransport):
    """The blocking governed transport for ``httpx.Client``."""

    _flavour = flavour_of(httpx)
