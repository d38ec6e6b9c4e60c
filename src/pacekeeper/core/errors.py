"""The exceptions pacekeeper raises, in one hierarchy.

::

    PacekeeperError
    ├── ConfigurationError          a limit, policy or flag that cannot work
    ├── RequestTooLarge             one request costs more tokens than a whole minute allows
    ├── AdmissionClosed             the governor is shutting down: queued requests were not sent
    │   └── SpendCapReached         the spend cap (``Governor(budget=...)``) refuses: not sent
    └── RequestFailed               a governed request ended without success (``.record``)
        ├── NonRetryableError       the provider's answer is one a retry cannot change
        ├── RetriesExhausted        every attempt ``RetryPolicy.max_attempts`` allows failed
        ├── RetryBudgetExhausted    retries already use their share of traffic: failing fast
        ├── RetryWaitTooLong        the server asked for a wait longer than the policy allows
        └── DeadlineExceeded        the request's deadline would pass while queued or waiting

Messages say what happened, where (route and model), and what to do next. They never contain
API keys, Authorization headers or prompt text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacekeeper.core.records import RequestRecord

__all__ = [
    "AdmissionClosed",
    "ConfigurationError",
    "DeadlineExceeded",
    "NonRetryableError",
    "PacekeeperError",
    "RequestFailed",
    "RequestTooLarge",
    "RetriesExhausted",
    "RetryBudgetExhausted",
    "RetryWaitTooLong",
    "SpendCapReached",
]


class PacekeeperError(Exception):
    """Base class of every exception pacekeeper raises."""


class ConfigurationError(PacekeeperError, ValueError):
    """A configuration value that cannot work (a negative rate, an unknown mode, ...)."""


class RequestTooLarge(PacekeeperError):
    """A single request's token cost exceeds the whole per-minute token budget.

    Such a request can never be admitted by the provider either, so it fails at once instead
    of waiting forever. Requests larger than the pacing burst but within the minute's budget
    are admitted when the token bucket is full (see ``TokenBucket``'s documented rule).
    """

    def __init__(self, message: str, *, route: str, model: str | None, tokens: int) -> None:
        super().__init__(message)
        self.route = route
        self.model = model
        self.tokens = tokens


class AdmissionClosed(PacekeeperError):
    """The governor stopped admitting (``Governor.close()``): this request was never sent.

    Raised to requests still queued when a batch is interrupted or a proxy shuts down, so
    that they can be resumed or refused cleanly while the ones in flight finish.
    """


class SpendCapReached(AdmissionClosed):
    """The spend cap refuses this request: what is spent, plus its worst-case cost, would pass
    the cap, and no request in flight holds a reservation whose answer could free room. Also
    raised when the request's model has no known price (a cap cannot admit an unknown cost).

    The request was never sent. ``spent_usd`` and ``cap_usd`` say where the cap stands;
    ``need_usd`` is what this request needed (None: its price is unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None,
        spent_usd: float,
        cap_usd: float,
        need_usd: float | None,
    ) -> None:
        super().__init__(message)
        self.model = model
        self.spent_usd = spent_usd
        self.cap_usd = cap_usd
        self.need_usd = need_usd


class RequestFailed(PacekeeperError):
    """A governed request ended without success.

    ``record`` is the final :class:`~pacekeeper.RequestRecord` (status, attempts, reason).
    """

    def __init__(self, message: str, *, record: RequestRecord | None = None) -> None:
        super().__init__(message)
        self.record = record


class NonRetryableError(RequestFailed):
    """The provider's answer cannot change on retry (400, 401, 403, 404, 422, a billing 429)."""


class RetriesExhausted(RequestFailed):
    """Every attempt the retry policy allows has failed with a retryable outcome."""


class RetryBudgetExhausted(RequestFailed):
    """Retries already take their allowed share of traffic, so this one fails fast.

    This is what keeps a degraded upstream from receiving a retry storm.
    """


class RetryWaitTooLong(RequestFailed):
    """The server's retry hint is longer than ``RetryPolicy.max_hint_s`` or the deadline."""


class DeadlineExceeded(RequestFailed):
    """The request's total deadline (``RetryPolicy.deadline_s``) would pass before it could go."""
