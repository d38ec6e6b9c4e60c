"""What a user configures: limits per model, the adaptive concurrency, the retry policy.

All keyword-only, frozen, validated at construction so that a bad value fails where it is
written, not an hour into a batch. Durations are float seconds (``_s``); rates are per minute
where the provider states them per minute (``rpm``, ``tpm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pacekeeper.core.errors import ConfigurationError

__all__ = ["AdaptiveConcurrency", "Limits", "RetryPolicy"]


def _positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise ConfigurationError(f"{name} is required")
        return
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveConcurrency:
    """An adaptive concurrency limit.

    It starts at ``initial`` and, like TCP, grows fast at first (one more slot per success, so
    it doubles every round trip, up to 1.5 times what the upstream served at once; before any
    answer, a slot every 0.1 s up to 8, then it doubles every second of silence, up to 128)
    until the first sign of load, then by one slot per round trip. It is cut by
    ``decrease_factor``, at most once per round trip, on evidence of load: overload answers
    (503, 529, timeouts) whose recent share rises above the upstream's baseline, or answers that
    swell as more are in flight (a server queueing our requests). A single 503 does not cut it,
    and 429s move the pacing rate or the learned in-flight cap instead. It only grows while the
    limit is really used, never falls below what a known rate needs in flight (rate x mean
    latency), and never rises above ``max`` (2048: 6000 requests a minute at 15 s an answer
    need 1500).
    """

    initial: int = 4
    min: int = 1
    max: int = 2048
    decrease_factor: float = 0.7
    utilisation_to_grow: float = 0.8
    """Grow only when at least this fraction of the limit was in flight at send time."""

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.initial <= self.max:
            raise ConfigurationError(
                f"adaptive concurrency needs 1 <= min <= initial <= max, got "
                f"min={self.min} initial={self.initial} max={self.max}"
            )
        if not 0 < self.decrease_factor < 1:
            raise ConfigurationError(
                f"decrease_factor must be in (0, 1), got {self.decrease_factor!r}"
            )
        if not 0 < self.utilisation_to_grow <= 1:
            raise ConfigurationError(
                f"utilisation_to_grow must be in (0, 1], got {self.utilisation_to_grow!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The limits of one model (or the default for all models).

    ``rpm`` and ``tpm`` are the provider's per-minute limits. Left as None, they are learned
    from the rate-limit headers of the responses (x-ratelimit-limit-*, anthropic-ratelimit-*)
    when ``learn_from_headers`` is on. ``concurrency`` is a fixed number of requests in flight
    or ``"auto"`` (an :class:`AdaptiveConcurrency` with its defaults).

    Pacing is even: a budget of ``rpm`` per minute is spent at ``rpm/60`` per second with at
    most ``burst_s`` seconds' worth at once, because providers enforce per-minute limits over
    windows of about a second: a client that sends its minute's allowance in the first second
    gets 429s.
    """

    rpm: float | None = None
    tpm: float | None = None
    output_tpm: float | None = None
    """Output tokens per minute, where the provider limits them apart from input (Anthropic's
    OTPM); then ``tpm`` is the input limit (ITPM). Learned from headers when left as None."""
    concurrency: int | Literal["auto"] | AdaptiveConcurrency = "auto"
    burst_s: float = 0.5
    learn_from_headers: bool = True
    utilisation: float = 1.0
    """Pace at this fraction of the limits (e.g. 0.9 to leave room for another client)."""
    default_completion_tokens: int = 256
    """Tokens reserved for the answer when a request names no max_tokens."""
    refund_unused_completion: bool = False
    """Give back reserved-but-unused answer tokens once usage is known. Off by default because
    OpenAI counts max_tokens toward the limit whatever the answer's length; turn it on for
    providers that count only what was generated."""
    min_share: float = 0.1
    """The share of the lane's admissions each priority class below ``interactive`` keeps
    while it has work, however much the classes above send (0 to 1/3; 0: strict priority)."""

    def __post_init__(self) -> None:
        _positive("rpm", self.rpm)
        if not 0.0 <= self.min_share <= 1.0 / 3.0:
            raise ConfigurationError(
                f"min_share must be in [0, 1/3] (batch and background each keep it), "
                f"got {self.min_share!r}"
            )
        _positive("tpm", self.tpm)
        _positive("output_tpm", self.output_tpm)
        _positive("burst_s", self.burst_s, allow_none=False)
        if not 0 < self.utilisation <= 1:
            raise ConfigurationError(f"utilisation must be in (0, 1], got {self.utilisation!r}")
        if isinstance(self.concurrency, bool) or (
            isinstance(self.concurrency, int) and self.concurrency < 1
        ):
            raise ConfigurationError(
                f"concurrency must be a positive integer or 'auto', got {self.concurrency!r}"
            )
        if isinstance(self.concurrency, str) and self.concurrency != "auto":
            raise ConfigurationError(
                f"concurrency must be a positive integer or 'auto', got {self.concurrency!r}"
            )
        if self.default_completion_tokens < 0:
            raise ConfigurationError("default_completion_tokens must be >= 0")

    @property
    def adaptive(self) -> AdaptiveConcurrency | None:
        """The adaptive settings, or None when the concurrency is fixed."""
        if isinstance(self.concurrency, AdaptiveConcurrency):
            return self.concurrency
        if self.concurrency == "auto":
            return AdaptiveConcurrency()
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When and how long to wait before trying again.

    Only outcomes that can succeed on retry are retried (429 rate limits, 408, 409, 5xx, 529,
    connection errors, timeouts); never other 4xx, never a billing 429 such as insufficient_quota.

    The wait is the server's hint when it gives one (retry-after-ms, retry-after, the reset of an
    exhausted x-ratelimit budget) plus a little jitter, else exponential backoff with full
    jitter: uniform(0, min(backoff_cap_s, backoff_base_s * 2**(attempt-1))).

    Retries other than for 429s (which pacing and the cooldown gate already slow down) draw on
    a retry budget: every first attempt deposits ``retry_budget_ratio`` tokens (up to
    ``retry_budget_max``) and every retry spends one, so retries stay near that fraction of
    traffic however degraded the upstream is.
    """

    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    max_hint_s: float = 600.0
    """A server hint longer than this fails the request at once instead of sleeping for it."""
    deadline_s: float | None = None
    """Total time allowed per request, queueing and waiting included; None: no deadline."""
    attempt_timeout_s: float | None = None
    """Time allowed per attempt, on top of the HTTP client's own timeouts; None: the client's."""
    retry_budget_ratio: float = 0.2
    retry_budget_initial: float = 10.0
    retry_budget_max: float = 100.0
    hint_jitter_s: float = field(default=0.05)
    """Hints get uniform(0, hint_jitter_s + 5% of the hint) added, so waiters spread out."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        _positive("backoff_base_s", self.backoff_base_s, allow_none=False)
        _positive("backoff_cap_s", self.backoff_cap_s, allow_none=False)
        _positive("max_hint_s", self.max_hint_s, allow_none=False)
        _positive("deadline_s", self.deadline_s)
        _positive("attempt_timeout_s", self.attempt_timeout_s)
        if not 0 <= self.retry_budget_ratio <= 1:
            raise ConfigurationError(
                f"retry_budget_ratio must be in [0, 1], got {self.retry_budget_ratio!r}"
            )
        if self.retry_budget_initial < 0 or self.retry_budget_max < self.retry_budget_initial:
            raise ConfigurationError(
                "retry budget needs 0 <= retry_budget_initial <= retry_budget_max"
            )
        if self.hint_jitter_s < 0:
            raise ConfigurationError("hint_jitter_s must be >= 0")
