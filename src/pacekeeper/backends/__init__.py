"""Where a governor's state lives: in this process (the default), or shared through Redis.

``RedisBackend`` needs the ``redis`` extra (``pip install 'pacekeeper[redis]'``); it is
imported lazily so that the extra stays optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pacekeeper.backends._redis import RedisAdmissionPolicy, RedisBackend

__all__ = ["RedisAdmissionPolicy", "RedisBackend"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pacekeeper.backends import _redis

        return getattr(_redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
