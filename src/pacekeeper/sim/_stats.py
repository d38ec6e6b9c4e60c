"""What the simulator saw: counters served at GET /_stats.

Per request identity it keeps a few small counters (bounded to MAX_TRACKED_IDS identities), from
which it reports duplicated successful work and retries of non-retryable answers: the two
mistakes a careful client must never make. Authorization headers are never seen here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IdRecord", "ModelCounts", "Stats"]

MAX_TRACKED_IDS = 500_000
MAX_TRACKED_MODELS = 1_000
OTHER_MODELS = "(other models)"


class IdRecord:
    """Counters of one request identity.

    `admitted` doubles as the attempt number of the next admitted arrival (0-based), which
    transient faults are drawn from.
    """

    __slots__ = ("admitted", "nonretryable", "received", "repeats_after_nonretryable", "succeeded")

    def __init__(self) -> None:
        self.received = 0
        self.admitted = 0
        self.succeeded = 0
        self.nonretryable = False
        self.repeats_after_nonretryable = 0

    def __repr__(self) -> str:
        return (
            f"IdRecord(received={self.received}, admitted={self.admitted}, "
            f"succeeded={self.succeeded}, nonretryable={self.nonretryable}, "
            f"repeats_after_nonretryable={self.repeats_after_nonretryable})"
        )


class ModelCounts:
    """Counters of one model."""

    __slots__ = ("accepted", "by_status", "received")

    def __init__(self) -> None:
        self.received = 0
        self.accepted = 0
        self.by_status: dict[int, int] = {}


class Stats:
    """All counters. Mutated only on the server's event loop; `snapshot` builds the /_stats dict."""

    __slots__ = (
        "_ids",
        "_models",
        "accepted",
        "by_status",
        "faults_injected",
        "ids_untracked",
        "in_flight",
        "peak_in_flight",
        "rejected_in_flight",
        "rejected_rate_limited",
        "requests_received",
        "tokens_charged",
    )

    def __init__(self) -> None:
        self._ids: dict[str, IdRecord] = {}
        self._models: dict[str, ModelCounts] = {}
        self.in_flight = 0
        self._zero()

    def _zero(self) -> None:
        self._ids = {}
        self._models = {}
        self.requests_received = 0
        self.accepted = 0
        self.rejected_rate_limited = 0
        self.rejected_in_flight = 0
        self.tokens_charged = 0
        self.peak_in_flight = self.in_flight
        self.ids_untracked = 0
        self.by_status: dict[int, int] = {}
        self.faults_injected: dict[str, int] = {}

    def clear(self) -> None:
        """Forget everything except what is in flight right now (it will still finish)."""
        self._zero()

    def received(self, model: str, identity: str) -> tuple[ModelCounts, IdRecord]:
        """Count an arriving request; returns its model's and its identity's counters."""
        self.requests_received += 1
        counts = self._models.get(model)
        if counts is None:
            if len(self._models) >= MAX_TRACKED_MODELS:
                model = OTHER_MODELS
            counts = self._models.get(model)
            if counts is None:
                counts = self._models[model] = ModelCounts()
        counts.received += 1
        record = self._ids.get(identity)
        if record is None:
            record = IdRecord()
            if len(self._ids) < MAX_TRACKED_IDS:
                self._ids[identity] = record
            else:
                # Beyond the cap the record is a throwaway: attempts restart at 0 and
                # duplicates go unseen, but memory stays bounded.
                self.ids_untracked += 1
        elif record.nonretryable:
            record.repeats_after_nonretryable += 1
        record.received += 1
        return counts, record

    def admitted(self, counts: ModelCounts, tokens: int) -> None:
        """Count a request admitted past the limits, charged `tokens`, now in flight."""
        self.accepted += 1
        counts.accepted += 1
        self.tokens_charged += tokens
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def left(self) -> None:
        """An admitted request is no longer in flight."""
        self.in_flight -= 1

    def rejected(self, *, in_flight_cap: bool) -> None:
        """Count a 429 from the limits (rate buckets or the in-flight cap)."""
        self.rejected_rate_limited += 1
        if in_flight_cap:
            self.rejected_in_flight += 1

    def fault(self, kind: str) -> None:
        """Count an injected fault."""
        self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1

    def answered(
        self,
        counts: ModelCounts,
        record: IdRecord | None,
        status: int,
        *,
        success: bool = False,
        nonretryable: bool = False,
    ) -> None:
        """Count a response that was (fully or partly) sent with `status`.

        `success` marks a genuine reply (useful work); `nonretryable` an answer a client must
        not retry (400, insufficient_quota).
        """
        self.by_status[status] = self.by_status.get(status, 0) + 1
        counts.by_status[status] = counts.by_status.get(status, 0) + 1
        if record is not None:
            if success:
                record.succeeded += 1
            if nonretryable:
                record.nonretryable = True

    def snapshot(self, *, uptime_s: float, started_at: float) -> dict[str, Any]:
        """The /_stats document (JSON-ready: string keys, plain numbers)."""
        duplicates = {}
        received_more_than_once = 0
        non_retryable_repeats = {}
        for identity, record in self._ids.items():
            if record.received > 1:
                received_more_than_once += 1
                if record.succeeded > 1:
                    duplicates[identity] = record.received
            if record.repeats_after_nonretryable:
                non_retryable_repeats[identity] = record.repeats_after_nonretryable
        return {
            "requests_received": self.requests_received,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "accepted": self.accepted,
            "rejected_rate_limited": self.rejected_rate_limited,
            "rejected_in_flight": self.rejected_in_flight,
            "peak_in_flight": self.peak_in_flight,
            "in_flight": self.in_flight,
            "tokens_charged": self.tokens_charged,
            "faults_injected": dict(sorted(self.faults_injected.items())),
            "per_model": {
                model: {
                    "received": c.received,
                    "accepted": c.accepted,
                    "by_status": {str(k): v for k, v in sorted(c.by_status.items())},
                }
                for model, c in self._models.items()
            },
            "distinct_request_ids": len(self._ids) + self.ids_untracked,
            "ids_untracked": self.ids_untracked,
            "received_more_than_once": received_more_than_once,
            "duplicates": duplicates,
            "non_retryable_repeats": non_retryable_repeats,
            "started_at": started_at,
            "uptime_s": round(uptime_s, 3),
        }
