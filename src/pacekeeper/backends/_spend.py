"""The spend cap shared through Redis: every process of a namespace counts against one cap.

Spent and reserved USD live in one hash, each hold in a sorted set of leases (so a process
that dies with requests in flight gives its holds back when their lease runs out) and a hash of
amounts. Admission and settlement are one Lua script each (``SPEND_RESERVE``,
``SPEND_SETTLE``), atomic on the Redis server.

When Redis does not answer, nothing is admitted (the request waits: a cap that cannot be read
is not passed), and costs that could not be counted are kept and sent with the next call.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import uuid
from typing import TYPE_CHECKING

from pacekeeper.backends import _scripts
from pacekeeper.core.cost import Reservation, SpendCap, SpendRefusal, SpendTotals

if TYPE_CHECKING:
    import redis

__all__ = ["RedisSpendLedger"]

logger = logging.getLogger("pacekeeper.redis")


class RedisSpendLedger:
    """A :class:`~pacekeeper.core.cost.SpendLedger` kept in Redis under ``namespace``."""

    __slots__ = (
        "_client",
        "_ids",
        "_lock",
        "_prefix",
        "_reserve",
        "_settle",
        "_unsent",
        "cap",
        "hold_lease_s",
        "key_ttl_s",
        "keys",
    )

    def __init__(
        self,
        client: redis.Redis,
        cap: SpendCap,
        *,
        namespace: str,
        hold_lease_s: float = 900.0,
        key_ttl_s: int = 3600,
    ) -> None:
        self.cap = cap
        self._client = client
        self.keys = [
            f"{namespace}:spend",
            f"{namespace}:spend:holds",
            f"{namespace}:spend:held",
            f"{namespace}:clock",  # the backend's clock_key: one timeline for the namespace
        ]
        self.hold_lease_s = hold_lease_s
        self.key_ttl_s = key_ttl_s
        self._reserve = client.register_script(_scripts.SPEND_RESERVE)
        self._settle = client.register_script(_scripts.SPEND_SETTLE)
        self._prefix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._ids = itertools.count(1)
        self._unsent: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def reserve(self, *, hold_usd: float, need_usd: float) -> Reservation | SpendRefusal:
        from pacekeeper.backends._redis import _redis_errors

        hold_id = f"{self._prefix}{next(self._ids)}"
        try:
            self._flush()
            granted, spent, reserved, holds = self._reserve(
                keys=self.keys,
                args=[
                    repr(self.cap.usd),
                    repr(hold_usd),
                    repr(need_usd),
                    hold_id,
                    self.hold_lease_s,
                    self.key_ttl_s,
                ],
            )
        except _redis_errors() as exc:
            logger.warning("spend cap: Redis did not answer (%s); waiting", type(exc).__name__)
            return SpendRefusal(True, 0.0, 0.0)
        if int(granted):
            return Reservation(hold_id, hold_usd)
        return SpendRefusal(int(holds) > 0, float(spent), float(reserved))

    def settle(self, reservation: Reservation, spent_usd: float) -> None:
        self._send(str(reservation.id), spent_usd)

    def release(self, reservation: Reservation) -> None:
        self._send(str(reservation.id), 0.0)

    def _send(self, hold_id: str, spent_usd: float) -> None:
        from pacekeeper.backends._redis import _redis_errors

        try:
            self._flush()
            self._settle(keys=self.keys, args=[hold_id, repr(spent_usd), self.key_ttl_s])
        except _redis_errors():
            with self._lock:
                self._unsent.append((hold_id, spent_usd))

    def _flush(self) -> None:
        """Send the costs an earlier call could not (Redis was away); raise if it still is."""
        with self._lock:
            unsent, self._unsent = self._unsent, []
        sent = 0
        try:
            for hold_id, spent_usd in unsent:
                self._settle(keys=self.keys, args=[hold_id, repr(spent_usd), self.key_ttl_s])
                sent += 1
        finally:
            if sent < len(unsent):
                with self._lock:
                    self._unsent[:0] = unsent[sent:]

    def totals(self) -> SpendTotals:
        """Spent and reserved now, after giving back the holds whose lease ran out (a waiting
        request reads this: a dead process's holds must not keep it waiting forever)."""
        from pacekeeper.backends._redis import _redis_errors

        try:
            spent, reserved = self._settle(keys=self.keys, args=["", "0", self.key_ttl_s])
        except _redis_errors():
            # Unknown while Redis is away: nothing fits (a waiting request keeps waiting).
            return SpendTotals(math.nan, math.inf, self.cap.usd)
        return SpendTotals(float(spent), float(reserved), self.cap.usd)

    def __repr__(self) -> str:
        return f"<RedisSpendLedger {self.keys[0]} cap={self.cap.usd:g}>"
