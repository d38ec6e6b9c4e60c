"""What one contender's run produced, as seen by its caller (the client side).

The server's view (429s sent, duplicates, repeats of non-retryable requests) comes from the
simulator's /_stats and is joined to this in :mod:`bench.measures`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Answer", "Outcome", "Result", "failure"]

Answer = tuple[float, "int | None"]
"""One attempt's answer as the client saw it: (wall-clock time, HTTP status or None)."""


@dataclass(frozen=True, slots=True)
class Result:
    """The fate of one logical request, from the caller's point of view.

    ``lost`` is the one that must never happen: the call neither succeeded nor raised (it
    returned something that is not a completion, or never returned).
    """

    kind: Literal["ok", "failed", "lost"]
    reason: str = ""
    """For failures: the exception's class; for lost requests: what happened."""
    message: str = ""
    """The message the caller got (empty: a failure without an explanation)."""


def failure(exc: BaseException) -> Result:
    """A failure as the caller sees it: the exception's class (unwrapping tenacity's
    RetryError, which hides the real error one level down) and its message."""
    kind = type(exc).__name__
    inner = _retry_error_cause(exc)
    if inner is not None:
        kind = f"{kind}<{type(inner).__name__}>"
        exc = inner
    return Result("failed", kind, str(exc).strip())


def _retry_error_cause(exc: BaseException) -> BaseException | None:
    last = getattr(exc, "last_attempt", None)
    if last is None or type(exc).__name__ != "RetryError":
        return None
    inner = last.exception()
    return inner if isinstance(inner, BaseException) else None


@dataclass(slots=True)
class Outcome:
    """A contender's run: timings, the fate of every request, every answer seen."""

    started_at: float
    """Wall-clock time the first request was started (capacity changes are compared to it)."""
    wall_s: float
    ok: int = 0
    failed: int = 0
    lost: int = 0
    unexplained: int = 0
    """Failures whose caller got no message saying why."""
    reasons: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    """One message per failure reason, for the report."""
    answers: list[Answer] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        if result.kind == "ok":
            self.ok += 1
            return
        if result.kind == "failed":
            self.failed += 1
            if not result.message:
                self.unexplained += 1
        else:
            self.lost += 1
        key = result.reason if result.kind == "failed" else f"lost: {result.reason}"
        self.reasons[key] += 1
        self.samples.setdefault(key, result.message[:300])
