"""Optional dependencies: imported only when used, with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from pacekeeper.core.errors import PacekeeperError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(PacekeeperError, ImportError):
    """An optional dependency of pacekeeper is not installed; the message names the extra."""


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the pip extra.

    >>> require("json", extra="none", purpose="testing").__name__
    'json'
    >>> try:
    ...     require("no_such_module_here", extra="report", purpose="the HTML report")
    ... except MissingExtraError as exc:
    ...     print(exc)
    the HTML report needs no_such_module_here, which is not installed: pip install 'pacekeeper[report]'
    """  # noqa: E501
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".", maxsplit=1)[0]
        raise MissingExtraError(
            f"{purpose} needs {top}, which is not installed: pip install 'pacekeeper[{extra}]'",
            name=top,
        ) from exc
