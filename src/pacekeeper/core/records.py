"""Records of what happened: one per attempt, one per request, handed to hooks.

They are frozen, slotted dataclasses of plain values, so a hook can keep them, serialise them
with :func:`dataclasses.asdict`, or send them elsewhere. They carry no headers, no body and no
API key: only what is needed to say what happened and why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = ["AttemptRecord", "RecordCollector", "RecordHook", "RequestRecord"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """One attempt of a request: admitted, sent, answered (or not).

    Times are wall-clock seconds since the epoch (``started_at``) and durations in seconds.
    """

    route: str
    model: str | None
    attempt: int
    """1 for the first attempt."""
    outcome: str
    """The :class:`~pacekeeper.core.classify.OutcomeKind` value: ``"ok"``, ``"rate_limited"``..."""
    status: int | None
    """HTTP status, or None when no response came (timeout, dropped connection)."""
    started_at: float
    queued_s: float
    """Time from asking for admission to being admitted (cooldown, pacing, concurrency)."""
    latency_s: float
    """Time from sending to the end of the answer (for streams: of the stream)."""
    tokens_estimated: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retry_in_s: float | None = None
    """When this attempt will be retried: the wait before the next one; None if final."""
    error: str | None = None
    """One line: why this attempt did not succeed."""
    request_id: str | None = None
    """The provider's request id (x-request-id), for support tickets."""
    tag: str | None = None
    """The caller's label for the request (the batch runner's custom_id)."""
    in_flight: int | None = None
    """Requests in flight on this route and model when this one was sent (itself included)."""
    concurrency_limit: int | None = None
    """The concurrency limit in force when this attempt ended (adaptive limits move)."""
    rpm_limit: float | None = None
    """The requests-per-minute limit in force (configured or learned), if any."""
    tpm_limit: float | None = None
    priority: str = "interactive"
    """The request's priority class: ``interactive``, ``batch`` or ``background``."""
    tenant: str | None = None
    """Whose fair share the request counted in within its class (None: no tenant named)."""
    cost_usd: float | None = None
    """What this attempt's usage cost at the model's price (None: no usage, or no price)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, for JSON lines."""
        return {"type": "attempt", **dataclasses.asdict(self)}


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRecord:
    """The final outcome of one request, after all its attempts."""

    route: str
    model: str | None
    outcome: str
    status: int | None
    ok: bool
    attempts: int
    started_at: float
    total_s: float
    """From the first request for admission to the final answer."""
    queued_s: float
    """Summed over attempts."""
    latency_s: float
    """Of the last attempt."""
    tokens_estimated: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    error_type: str | None = None
    """The pacekeeper exception's class name when the request failed."""
    request_id: str | None = None
    tag: str | None = None
    priority: str = "interactive"
    """The request's priority class: ``interactive``, ``batch`` or ``background``."""
    tenant: str | None = None
    """Whose fair share the request counted in within its class (None: no tenant named)."""
    cost_usd: float | None = None
    """What the request's answers cost at the model's price; None when the model has no known
    price (unknown, not zero)."""

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, for JSON lines."""
        return {"type": "request", **dataclasses.asdict(self)}


class RecordHook(Protocol):
    """Receives every record as it is made. Hooks run inline: keep them quick and non-blocking."""

    def on_attempt(self, record: AttemptRecord) -> None: ...

    def on_request(self, record: RequestRecord) -> None: ...


@runtime_checkable
class AnswerCounter(RecordHook, Protocol):
    """A hook that only counts (the Prometheus collector): besides the records of failures and
    retries, it takes a successful request's fields, so that when every hook is one (and the
    log is below INFO) the governor builds no record for them: an attempt's and a request's
    frozen records cost 42 ``object.__setattr__`` calls (with the hooks' own work, an eighth
    of a request's instructions through ``pacekeeper proxy``). Internal: the fields are those
    the records would carry (``outcome`` ``"ok"`` for both)."""

    def count_answer(
        self,
        route: str,
        model: str | None,
        status: int | None,
        *,
        attempt: int,
        latency_s: float,
        total_s: float,
        queued_s: float,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cost_usd: float | None,
        priority: str,
        tenant: str | None,
    ) -> None: ...


class RecordCollector:
    """A hook that keeps every record it is handed, in order: for tests and notebooks.

    >>> from pacekeeper import Governor
    >>> collector = RecordCollector()
    >>> gov = Governor(hooks=[collector])
    >>> collector
    <RecordCollector attempts=0 requests=0>

    It holds every record it is given, so it grows with the work: for a long run, write a hook
    that aggregates (or use the reports and metrics) instead.
    """

    __slots__ = ("attempts", "requests")

    def __init__(self) -> None:
        self.attempts: list[AttemptRecord] = []
        self.requests: list[RequestRecord] = []

    def on_attempt(self, record: AttemptRecord) -> None:
        self.attempts.append(record)

    def on_request(self, record: RequestRecord) -> None:
        self.requests.append(record)

    def clear(self) -> None:
        """Forget what was collected so far."""
        self.attempts.clear()
        self.requests.clear()

    def __repr__(self) -> str:
        return f"<RecordCollector attempts={len(self.attempts)} requests={len(self.requests)}>"
