"""Which fault, if any, a request meets: reproducible from the seed and the request identity.

Permanent faults are drawn from (seed, identity) so a retried bad request stays bad. Transient
faults are drawn from (seed, identity, attempt) so the Nth admitted arrival of a request meets
the same fate on every run, and a retry can succeed where the first attempt failed.
"""

from __future__ import annotations

from ._draws import unit
from ._scenario import PERMANENT_FAULTS, TRANSIENT_FAULTS, Faults

__all__ = ["FaultPlan"]


def _thresholds(faults: Faults, kinds: tuple[str, ...]) -> tuple[tuple[float, str], ...]:
    # One uniform draw walks the cumulative rates, so the kinds are mutually exclusive and each
    # fires with exactly its own probability.
    out: list[tuple[float, str]] = []
    total = 0.0
    for kind in kinds:
        rate = float(getattr(faults, kind))
        if rate > 0:
            total += rate
            out.append((total, kind))
    return tuple(out)


class FaultPlan:
    """Draws faults for requests; `transient`/`permanent` return a fault kind or None."""

    __slots__ = ("_permanent", "_seed", "_transient")

    def __init__(self, faults: Faults, seed: int) -> None:
        self._seed = seed
        self._transient = _thresholds(faults, TRANSIENT_FAULTS)
        self._permanent = _thresholds(faults, PERMANENT_FAULTS)

    @property
    def active(self) -> bool:
        """False when no fault can fire (the request path then skips the draws)."""
        return bool(self._transient or self._permanent)

    def permanent(self, identity: str) -> str | None:
        """The permanent fault of this request identity, if any."""
        if not self._permanent:
            return None
        u = unit(self._seed, "permanent", identity)
        for threshold, kind in self._permanent:
            if u < threshold:
                return kind
        return None

    def transient(self, identity: str, attempt: int) -> str | None:
        """The transient fault of this identity's attempt number `attempt` (0-based), if any."""
        if not self._transient:
            return None
        u = unit(self._seed, "transient", identity, attempt)
        for threshold, kind in self._transient:
            if u < threshold:
                return kind
        return None

    def __repr__(self) -> str:
        return (
            f"FaultPlan(seed={self._seed}, transient={self._transient}, "
            f"permanent={self._permanent})"
        )
