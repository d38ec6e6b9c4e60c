"""Reproducible pseudo-random draws: everything random in the simulator comes from a hash.

A draw is a pure function of (seed, what is drawn, request identity, attempt), so the same
request meets the same fate on every run, whatever the order or timing of other requests.
"""

from __future__ import annotations

import hashlib
from statistics import NormalDist

__all__ = ["digest64", "mix64", "unit", "unit_normal"]

_MASK64 = (1 << 64) - 1
_TWO_POW_MINUS_53 = 2.0**-53
_NORMAL = NormalDist()


def digest64(data: bytes) -> int:
    """A 64-bit hash of `data` (blake2b: fast, stable across runs and platforms)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def mix64(x: int) -> int:
    """splitmix64's finaliser: derive a well-mixed 64-bit value from `x` (e.g. hash ^ index)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def unit(seed: int, salt: str, identity: str, attempt: int = 0) -> float:
    """A uniform draw in [0, 1) from (seed, salt, identity, attempt)."""
    data = f"{seed}\x1f{salt}\x1f{attempt}\x1f{identity}".encode()
    # The top 53 bits fill a float's mantissa exactly, so the result is < 1.0 (never rounds up).
    return (digest64(data) >> 11) * _TWO_POW_MINUS_53


def unit_normal(seed: int, salt: str, identity: str, attempt: int = 0) -> float:
    """A standard normal draw from (seed, salt, identity, attempt)."""
    u = unit(seed, salt, identity, attempt)
    # inv_cdf needs 0 < u < 1; u is a multiple of 2**-53 below 1, so only 0 needs nudging.
    return _NORMAL.inv_cdf(u if u > 0.0 else _TWO_POW_MINUS_53)
