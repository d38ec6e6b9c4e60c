"""Priority classes: who goes first when several kinds of work share one limit.

``interactive`` (the default for the library and the proxy: someone is waiting for the answer),
``batch`` (the default for ``pacekeeper run``) and ``background``. A higher class goes first
when both wait; a lower one keeps a minimum share of the lane's admissions while it has work
(see :mod:`pacekeeper.core.queue`).

Code that cannot pass ``priority=`` (an SDK client under :func:`~pacekeeper.wrap`) sets it for
everything it does in a block::

    with pacekeeper.priority("batch", tenant="nightly"):
        await client.chat.completions.create(...)

>>> Priority.parse("Batch")
<Priority.BATCH: 'batch'>
>>> Priority.parse("urgent")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pacekeeper.core.errors.ConfigurationError: priority must be one of interactive, batch, ...
>>> with priority("background", tenant="t1"):
...     current_priority(), current_tenant()
(<Priority.BACKGROUND: 'background'>, 't1')
>>> current_priority(), current_tenant()
(<Priority.INTERACTIVE: 'interactive'>, None)
"""

from __future__ import annotations

import contextlib
import contextvars
import enum

from pacekeeper.core.errors import ConfigurationError

__all__ = ["Priority", "current_priority", "current_tenant", "priority"]


class Priority(str, enum.Enum):
    """A request's class, highest first."""

    INTERACTIVE = "interactive"
    BATCH = "batch"
    BACKGROUND = "background"

    @property
    def rank(self) -> int:
        """0 for the highest class."""
        return _RANKS[self]

    @classmethod
    def parse(cls, value: Priority | str) -> Priority:
        """A class from its name (any case); a clear error for anything else."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        names = ", ".join(p.value for p in cls)
        raise ConfigurationError(f"priority must be one of {names}, got {value!r}")

    def __str__(self) -> str:
        return self.value


_RANKS = {p: i for i, p in enumerate(Priority)}

_PRIORITY: contextvars.ContextVar[Priority | None] = contextvars.ContextVar(
    "pacekeeper_priority", default=None
)
_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pacekeeper_tenant", default=None
)


PRIORITY_VAR = _PRIORITY
"""The context variable :func:`current_priority` reads (read directly on the hot path)."""
TENANT_VAR = _TENANT
"""The context variable :func:`current_tenant` reads."""


def current_priority(default: Priority = Priority.INTERACTIVE) -> Priority:
    """The class set by the innermost :func:`priority` block, else ``default``."""
    value = _PRIORITY.get()
    return default if value is None else value


def current_tenant() -> str | None:
    """The tenant set by the innermost :func:`priority` block (None: none set)."""
    return _TENANT.get()


class priority(contextlib.ContextDecorator):
    """Requests made in this block (by this task or thread, and tasks it starts) go in class
    ``cls`` and, when given, as ``tenant``. Blocks nest; leaving one restores the outer one.

    A class rather than a generator-based context manager: the proxy enters one per request,
    and the generator's machinery cost several times the two context variables it sets."""

    __slots__ = ("_tenant_token", "_token", "cls", "tenant")

    def __init__(self, cls: Priority | str, *, tenant: str | None = None) -> None:
        self.cls = Priority.parse(cls)
        if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
            raise ConfigurationError(f"tenant must be a non-empty string, got {tenant!r}")
        self.tenant = tenant
        self._token: contextvars.Token[Priority | None] | None = None
        self._tenant_token: contextvars.Token[str | None] | None = None

    def _recreate_cm(self) -> priority:
        # As a decorator, each call enters a block of its own (its own tokens).
        return priority(self.cls, tenant=self.tenant)

    def __enter__(self) -> Priority:
        self._token = _PRIORITY.set(self.cls)
        if self.tenant is not None:
            self._tenant_token = _TENANT.set(self.tenant)
        return self.cls

    def __exit__(self, *exc_info: object) -> None:
        if self._tenant_token is not None:
            _TENANT.reset(self._tenant_token)
            self._tenant_token = None
        if self._token is not None:
            _PRIORITY.reset(self._token)
            self._token = None

    def __repr__(self) -> str:
        tenant = f", tenant={self.tenant!r}" if self.tenant is not None else ""
        return f"priority({self.cls.value!r}{tenant})"
