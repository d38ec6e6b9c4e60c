"""Govern an existing client in one call: ``pacekeeper.wrap(client)``."""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.governor import Governor
from pacekeeper.providers import Provider
from pacekeeper.transports._flow import AsyncGovernedTransport, SyncGovernedTransport

__all__ = ["wrap"]

C = TypeVar("C")


def wrap(
    client: C,
    governor: Governor | None = None,
    *,
    include_usage: bool = False,
    provider: str | Provider | None = None,
) -> C:
    """Send everything ``client`` sends through ``governor`` (a new one if not given).

    ``client`` is an openai or anthropic client (sync or async), or an httpx2/httpx client. It
    is changed in place and returned. The SDK's own retries are turned off (``max_retries = 0``):
    every SDK retry would pass through the governor as a separate request, multiplying the two
    layers' retries, and the governor already retries what can succeed.

    The client's connection pool is kept; the governor never admits more requests at once than
    the pool holds, so the pool never becomes the queue.

    ``include_usage=True`` asks every streamed chat/completions request that did not ask for
    it for its usage (``stream_options.include_usage``), so streams are reconciled with real
    usage; the extra usage chunk is removed before the client sees it. ``provider`` (a name
    from :mod:`pacekeeper.providers`) says how the provider counts cached tokens.
    """
    http: Any = getattr(client, "_client", client)
    library = _library_of(http)
    if library is None:
        raise ConfigurationError(
            f"pacekeeper.wrap() takes an openai or anthropic client, or an httpx2/httpx client; "
            f"got {type(client).__name__} (its HTTP client is {type(http).__name__}). "
            "Pass transport=pacekeeper.Transport(gov) to the client instead."
        )
    module = importlib.import_module(library)
    is_async = isinstance(http, module.AsyncClient)
    current = getattr(http, "_transport", None)
    if isinstance(current, (AsyncGovernedTransport, SyncGovernedTransport)):
        raise ConfigurationError(f"{type(client).__name__} is already governed by pacekeeper")
    gov = governor if governor is not None else Governor()
    cls = _transport_class(library, is_async=is_async)
    options: dict[str, Any] = {"include_usage": include_usage, "provider": provider}
    http._transport = cls(gov, transport=current, **options)
    mounts = getattr(http, "_mounts", None)
    if isinstance(mounts, dict):
        for pattern, transport in list(mounts.items()):
            if transport is not None:
                mounts[pattern] = cls(gov, transport=transport, **options)
    if hasattr(client, "max_retries"):
        client.max_retries = 0
    return client


def _library_of(http: object) -> str | None:
    """ "httpx2" or "httpx" when ``http`` is (a subclass of) one of their clients."""
    for cls in type(http).__mro__:
        root = cls.__module__.split(".")[0]
        if root in ("httpx2", "httpx") and cls.__name__ in ("AsyncClient", "Client"):
            return root
    return None


def _transport_class(library: str, *, is_async: bool) -> Any:
    if library == "httpx2":
        from pacekeeper.transports._httpx2 import SyncTransport, Transport

        return Transport if is_async else SyncTransport
    from pacekeeper.transports._httpx import HttpxSyncTransport, HttpxTransport

    return HttpxTransport if is_async else HttpxSyncTransport
