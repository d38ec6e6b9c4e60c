"""Govern an existing client in one call: ``pacekeeper.wrap(client)``."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pacekeeper.core.attempts import Attempts
from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.governor import Governor
from pacekeeper.providers import Provider
from pacekeeper.transports._engine import path_facts
from pacekeeper.transports._flow import (
    ADMITTED,
    AsyncGovernedTransport,
    SyncGovernedTransport,
    attempts_for,
    run_admitted,
)

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

    On an async openai or anthropic client, a POST is admitted at the SDK's method, before the
    SDK builds its request: a call waiting in the queue holds its arguments and a few frames
    (about 1 kB), not an HTTP request (about 19 kB). The transport then sends that request on
    the permit it was admitted with; retries are admitted again, as always.

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
    if is_async and client is not http:
        _admit_at_method(client, gov)
    return client


# The SDK methods most calls go through, and the path each posts to: admitted before the
# method runs, a queued call holds only its arguments. Every other POST is admitted at the
# client's ``post`` (after the SDK has transformed its arguments, before it builds a request).
_METHODS = {
    "openai": (
        (("chat", "completions"), "/chat/completions"),
        (("completions",), "/completions"),
        (("embeddings",), "/embeddings"),
        (("responses",), "/responses"),
    ),
    "anthropic": ((("messages",), "/v1/messages"),),
}


def _admit_at_method(client: Any, gov: Governor) -> None:
    """Put admission in front of an SDK client's methods: the call waits before the SDK has
    built anything for it."""
    post = getattr(client, "post", None)
    base_url = getattr(client, "base_url", None)
    if not inspect.iscoroutinefunction(post) or base_url is None:
        return  # not a Stainless-style SDK client: the transport admits, as for any client
    if "Azure" in type(client).__name__:
        return  # the path gets its deployment only as the request is built: admitted there
    governed = _governed(post, client, gov, path=None)
    client.post = governed
    _repoint_resources(client, post, governed)
    for names, path in _METHODS.get(type(client).__module__.split(".")[0], ()):
        resource: Any = functools.reduce(lambda obj, name: getattr(obj, name, None), names, client)
        create = getattr(resource, "create", None)
        bound = getattr(create, "__self__", None) is resource  # a method of this resource
        if create is not None and bound:
            resource.create = _governed(create, client, gov, path=path)


def _repoint_resources(owner: Any, old: object, new: object, depth: int = 0) -> None:
    """Resources already created (``client.chat.completions`` once used) keep the ``post`` they
    were made with: point them at the governed one."""
    if depth > 4:
        return
    for value in list(getattr(owner, "__dict__", {}).values()):
        if getattr(value, "_post", None) == old:
            value._post = new
            _repoint_resources(value, old, new, depth + 1)


def _governed(
    method: Callable[..., Any], client: Any, gov: Governor, *, path: str | None
) -> Callable[..., Any]:
    """``method`` admitted first: a create() method posting to ``path`` (its keyword
    arguments are the body), or the client's ``post`` (``path=None``: its own arguments say
    the path and body)."""

    def lane_of(target: str) -> tuple[str, str | None]:
        """(route, model named by the path) of a path under the client's current base URL
        (as the SDKs join them), or of an absolute URL: the transports' cache, by URL."""
        if "://" not in target:
            target = str(client.base_url).rstrip("/") + "/" + target.lstrip("/")
        return path_facts(target)

    def attempts_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Attempts | None:
        """The attempt loop of a call admitted here (None: the transport admits it)."""
        pending = ADMITTED.get()
        if pending is not None and pending.attempts is not None:
            return None  # admitted by the method that called this
        if path is None:
            target = args[0] if args else kwargs.get("path")
            body = kwargs.get("body")
            if not isinstance(target, str) or not isinstance(body, Mapping) or kwargs.get("files"):
                return None  # uploads and raw bodies: as before
        elif args:
            return None
        else:
            target, body = path, kwargs
        route, path_model = lane_of(target)
        return attempts_for(gov, route, path_model, body)

    # The frame of this coroutine is what a queued call holds beside its arguments (the
    # loop awaits the queue's future without one of its own): few locals, all small.
    @functools.wraps(method)
    async def governed(*args: Any, **kwargs: Any) -> Any:
        attempts = attempts_of(args, kwargs)
        if attempts is None:
            return await method(*args, **kwargs)
        await anext(attempts)
        return await run_admitted(gov, attempts, method, *args, **kwargs)

    return governed


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
