"""A switch for users' own test suites: make pacekeeper's retry waits instant.

With it on, backoff delays and server hints are not slept and the cooldown gate stays open, so
a test that exercises retries runs in milliseconds. Pacing and concurrency limits still apply.
"""

from __future__ import annotations

__all__ = ["is_testing", "set_testing"]

_instant = False


def set_testing(instant: bool = True) -> None:
    """Turn instant retries on (or off again)."""
    global _instant
    _instant = instant


def is_testing() -> bool:
    return _instant
