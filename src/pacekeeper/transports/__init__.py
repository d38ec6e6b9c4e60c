"""Surfaces that put the governor under HTTP clients: transports for httpx2 and httpx, and wrap().

The httpx transports are imported lazily, so httpx stays an optional dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacekeeper.transports._flow import RECORD_EXTENSION, TAG_EXTENSION
from pacekeeper.transports._httpx2 import SyncTransport, Transport
from pacekeeper.transports._wrap import wrap

if TYPE_CHECKING:
    from pacekeeper.transports._httpx import HttpxSyncTransport, HttpxTransport

__all__ = [
    "RECORD_EXTENSION",
    "TAG_EXTENSION",
    "HttpxSyncTransport",
    "HttpxTransport",
    "SyncTransport",
    "Transport",
    "wrap",
]


def __getattr__(name: str) -> Any:
    if name in ("HttpxTransport", "HttpxSyncTransport"):
        from pacekeeper.transports import _httpx

        return getattr(_httpx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
