"""Where a governor's state lives: the seam between the core and the backends.

The core's :class:`~pacekeeper.core.lane.Lane` keeps everything in this process (the default).
A backend that shares limits across processes (``pacekeeper.backends.RedisBackend``) makes
core lanes built with an :class:`~pacekeeper.core.admission.AdmissionPolicy` of its own, which
decides through the shared store and falls back to the lane's local state when the store is
unreachable: composition, not subclasses. The core never imports a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pacekeeper.core.config import Limits, RetryPolicy
    from pacekeeper.core.cost import SpendCap, SpendLedger
    from pacekeeper.core.lane import Lane, LaneKey

__all__ = ["Backend", "SpendBackend"]


class Backend(Protocol):
    """Makes the lanes of a :class:`~pacekeeper.Governor`."""

    def make_lane(
        self,
        key: LaneKey,
        *,
        limits: Limits,
        retry: RetryPolicy,
        clock: Callable[[], float],
    ) -> Lane: ...


@runtime_checkable
class SpendBackend(Protocol):
    """A backend that also keeps the spend cap's ledger (shared: every process of the backend
    counts against one cap). Without it, the governor keeps the ledger in this process."""

    def make_spend_ledger(self, cap: SpendCap) -> SpendLedger: ...
