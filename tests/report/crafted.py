"""Crafted runs: the records a governor would write for a batch under given limits and faults.

A small deterministic discrete-event model of pacekeeper in front of a provider: every request
is ready at the start (a batch); each attempt leaves when pacing to the known rpm/tpm, a
concurrency slot and any 429 cooldown allow; the provider has its own buckets (possibly shared
with another client, possibly unknown to the client) and its own faults. No randomness unless a
seed is given. Only for testing the report, which reads records and nothing else.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from pacekeeper.core.records import AttemptRecord, RequestRecord

CHAT = "/v1/chat/completions"
T0 = 1_780_000_000.0

Record = AttemptRecord | RequestRecord
Fault = tuple[str, "int | None", str]
FaultFn = Callable[[int, int], "Fault | None"]


@dataclass
class Provider:
    """The provider's limits (None: unlimited); ``other_rpm`` is another client on the key."""

    rpm: float | None = None
    tpm: float | None = None
    other_rpm: float = 0.0
    other_tpm: float = 0.0
    burst_s: float = 1.0
    send_headers: bool = True
    """Whether answers state the limits (so the client learns them)."""


@dataclass
class Run:
    requests: int = 200
    model: str = "gpt-4o-mini"
    route: str = CHAT
    provider: Provider = field(default_factory=Provider)
    known_rpm: float | None = None
    """The client's configured rpm (learned ones come from the provider's headers)."""
    known_tpm: float | None = None
    concurrency: int = 8
    latency_s: Callable[[int, int], float] = lambda i, attempt: 0.5
    prompt_tokens: int = 150
    max_tokens: int = 256
    completion_tokens: Callable[[int], int] = lambda i: 100
    fault: FaultFn = lambda i, attempt: None
    """(outcome, status, error) for attempt ``attempt`` of request ``i``, or None: success."""
    max_attempts: int = 6
    backoff_s: float = 1.0
    non_retryable: frozenset[str] = frozenset({"client_error", "quota_exhausted"})
    start: float = T0
    arrival_every_s: float = 0.0
    """Request i is ready at start + i * arrival_every_s (0: all at once, a batch)."""
    tag_prefix: str = "req"


class _Bucket:
    def __init__(self, per_min: float, burst_s: float, now: float) -> None:
        self.rate = per_min / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.at = now

    def refill(self, now: float, drain_per_s: float = 0.0) -> None:
        if now > self.at:
            self.level = min(
                self.capacity, self.level + (now - self.at) * (self.rate - drain_per_s)
            )
            self.at = now

    def try_take(self, now: float, cost: float, drain_per_s: float = 0.0) -> float:
        """0.0 when taken, else seconds until it would fit."""
        self.refill(now, drain_per_s)
        # epoch-scale timestamps carry ~1e-7 s of rounding: tolerate that much refill
        if self.level + 1e-4 * max(1.0, self.rate) >= min(cost, self.capacity):
            self.level -= cost
            return 0.0
        return (min(cost, self.capacity) - self.level) / max(1e-9, self.rate - drain_per_s)


def simulate(run: Run) -> list[Record]:
    """The records, in the order a governor would emit them (by the time they are made)."""
    p = run.provider
    cost = run.prompt_tokens + run.max_tokens
    out: list[tuple[float, int, Record]] = []
    seq = 0
    # the client's pacing: the next time a request and a token budget allow
    next_rpm = next_tpm = gate = run.start
    slots = [run.start] * run.concurrency
    heapq.heapify(slots)
    prov_req = _Bucket(p.rpm, p.burst_s, run.start) if p.rpm else None
    prov_tok = _Bucket(p.tpm, p.burst_s, run.start) if p.tpm else None
    learned_rpm: float | None = None
    learned_tpm: float | None = None
    known_from = math.inf  # the first answer stating the limits arrives then
    # (ready_at, priority, request, attempt); retries first (priority 0) among equals
    arrival = [run.start + i * run.arrival_every_s for i in range(run.requests)]
    ready: list[tuple[float, int, int, int]] = [(arrival[i], 1, i, 1) for i in range(run.requests)]
    heapq.heapify(ready)
    queued_total = [0.0] * run.requests
    while ready:
        ready_at, _, i, attempt = heapq.heappop(ready)
        free = heapq.heappop(slots)
        earliest = max(ready_at, free, gate)
        learned = earliest >= known_from
        rpm = _lower(run.known_rpm, learned_rpm if learned else None)
        tpm = _lower(run.known_tpm, learned_tpm if learned else None)
        send = max(earliest, next_rpm if rpm else 0.0, next_tpm if tpm else 0.0)
        if rpm:
            next_rpm = max(next_rpm, send) + 60.0 / rpm
        if tpm:
            next_tpm = max(next_tpm, send) + 60.0 * cost / tpm
        in_flight = sum(1 for s in slots if s > send) + 1
        queued = send - ready_at
        queued_total[i] += queued

        wait = 0.0
        if prov_req is not None:
            wait = max(wait, prov_req.try_take(send, 1, p.other_rpm / 60.0))
        if prov_tok is not None and not wait:
            wait = max(wait, prov_tok.try_take(send, cost, p.other_tpm / 60.0))
            if wait and prov_req is not None:  # give the request back
                prov_req.level += 1
        if wait:
            outcome: Fault | None = (
                "rate_limited",
                429,
                f"HTTP 429 rate_limit_exceeded: Rate limit reached (retry in {wait:.2f}s)",
            )
            latency = 0.05
        else:
            outcome = run.fault(i, attempt)
            latency = run.latency_s(i, attempt) if outcome is None else 0.05
        end = send + latency
        if p.send_headers:  # the governor learns from the answer before recording it
            learned_rpm, learned_tpm = p.rpm or learned_rpm, p.tpm or learned_tpm
            known_from = min(known_from, end)
            rpm = _lower(run.known_rpm, learned_rpm)
            tpm = _lower(run.known_tpm, learned_tpm)
        heapq.heappush(slots, end)

        ok = outcome is None
        completion = min(run.completion_tokens(i), run.max_tokens) if ok else None
        kind = "ok" if outcome is None else outcome[0]
        retry = (
            not ok
            and kind not in run.non_retryable
            and attempt < run.max_attempts
            and outcome is not None
        )
        delay = 0.0
        if retry:
            delay = wait + 0.05 if wait else run.backoff_s * 2 ** (attempt - 1)
            if wait:
                gate = max(gate, end + wait)
        record = AttemptRecord(
            route=run.route,
            model=run.model,
            attempt=attempt,
            outcome=kind,
            status=200 if ok else (outcome[1] if outcome else None),
            started_at=send,
            queued_s=queued,
            latency_s=latency,
            tokens_estimated=cost,
            prompt_tokens=run.prompt_tokens if ok else None,
            completion_tokens=completion,
            retry_in_s=delay if retry else None,
            error=None if outcome is None else outcome[2],
            tag=f"{run.tag_prefix}-{i}",
            in_flight=in_flight,
            concurrency_limit=run.concurrency,
            rpm_limit=rpm,
            tpm_limit=tpm,
        )
        out.append((end, seq, record))
        seq += 1
        if retry:
            heapq.heappush(ready, (end + delay, 0, i, attempt + 1))
            continue
        error_type = None
        if not ok:
            error_type = "NonRetryableError" if kind in run.non_retryable else "RetriesExhausted"
        out.append(
            (
                end,
                seq,
                RequestRecord(
                    route=run.route,
                    model=run.model,
                    outcome=kind,
                    status=record.status,
                    ok=ok,
                    attempts=attempt,
                    started_at=arrival[i],
                    total_s=end - arrival[i],
                    queued_s=queued_total[i],
                    latency_s=latency,
                    tokens_estimated=cost,
                    prompt_tokens=record.prompt_tokens,
                    completion_tokens=completion,
                    error=None if ok else f"{run.route} model={run.model}: {record.error}",
                    error_type=error_type,
                    tag=record.tag,
                ),
            )
        )
        seq += 1
    out.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in out]


def _lower(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def every(n: int, fault: Fault) -> FaultFn:
    """A fault on the first attempt of every ``n``-th request."""

    def pick(i: int, attempt: int) -> Fault | None:
        return fault if attempt == 1 and i % n == 0 else None

    return pick


def seeded(rate: float, faults: list[Fault], seed: int = 1) -> FaultFn:
    """Each attempt fails with probability ``rate`` (a fault drawn from ``faults``),
    reproducibly from (seed, request, attempt)."""

    def pick(i: int, attempt: int) -> Fault | None:
        rng = random.Random(f"{seed}:{i}:{attempt}")
        return rng.choice(faults) if rng.random() < rate else None

    return pick


def spread(base: float, i: int, attempt: int = 1, spread: float = 0.3) -> float:
    """A reproducible lognormal latency around ``base``."""
    return base * math.exp(spread * random.Random(f"lat:{i}:{attempt}").gauss(0, 1))
