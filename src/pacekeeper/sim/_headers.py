"""Rate-limit headers and rate-limit/error bodies, in the providers' formats.

Three header modes:

* "openai": x-ratelimit-{limit,remaining,reset}-{requests,tokens} on every response of a limited
  model, resets as Go durations ("6m0s", "1.5s", "20ms"); a rate 429 adds retry-after-ms and
  retry-after and OpenAI's rate_limit_exceeded body.
* "anthropic": anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
  reset}, resets as RFC 3339 UTC timestamps; a rate 429 adds retry-after (seconds) and
  Anthropic's rate_limit_error body. The sim has a single token bucket, so the input-tokens and
  output-tokens headers mirror it.
* "none": no hint headers at all and a bare `Too Many Requests` 429 (like many gateways).
"""

from __future__ import annotations

import json
import math
import time

from ._limits import ModelLimiter, Rejection, TokenBucket

__all__ = [
    "Headers",
    "error_body",
    "go_duration",
    "rate_limit_headers",
    "rejection_response",
    "rfc3339",
]

Headers = list[tuple[bytes, bytes]]

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
TEXT_CONTENT_TYPE = (b"content-type", b"text/plain; charset=utf-8")


def go_duration(seconds: float) -> str:
    """Format a duration the way Go's time.Duration prints it, at millisecond resolution.

    Rounded up so that waiting the printed time is always enough:
    0 -> "0s", 0.02 -> "20ms", 1.5 -> "1.5s", 360 -> "6m0s", 3723.5 -> "1h2m3.5s".
    """
    # The epsilon keeps float noise (0.12 * 1000 = 120.00000000000001) from adding a whole ms.
    ms = math.ceil(seconds * 1000.0 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac_ms = divmod(rest, 1000)
    sec_text = f"{secs}.{frac_ms:03d}".rstrip("0") if frac_ms else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def rfc3339(wall_s: float) -> str:
    """A Unix time as an RFC 3339 UTC timestamp with whole seconds, rounded up."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(wall_s)))


def _per_minute(value: float) -> int:
    # Headers carry integers; a fractional budget below 1/min still shows as a limit of 1.
    return max(1, round(value))


def _remaining(limit: int, bucket: TokenBucket) -> int:
    # The bucket holds burst_s seconds of the budget; scale its level to the per-minute limit.
    remaining = math.floor(limit * bucket.level / bucket.capacity)
    return remaining if remaining > 0 else 0


# (limit, remaining, reset) header names per bucket, encoded once rather than per response.
_NameSet = tuple[tuple[bytes, bytes, bytes], ...]


def _names(mode: str, buckets: tuple[str, ...]) -> _NameSet:
    if mode == "openai":
        return tuple(
            (
                f"x-ratelimit-limit-{b}".encode(),
                f"x-ratelimit-remaining-{b}".encode(),
                f"x-ratelimit-reset-{b}".encode(),
            )
            for b in buckets
        )
    return tuple(
        (
            f"anthropic-ratelimit-{b}-limit".encode(),
            f"anthropic-ratelimit-{b}-remaining".encode(),
            f"anthropic-ratelimit-{b}-reset".encode(),
        )
        for b in buckets
    )


_REQUEST_NAMES = {mode: _names(mode, ("requests",)) for mode in ("openai", "anthropic")}
# The sim has one token bucket; Anthropic's input/output token headers mirror it.
_TOKEN_NAMES = {
    "openai": _names("openai", ("tokens",)),
    "anthropic": _names("anthropic", ("tokens", "input-tokens", "output-tokens")),
}


def _bucket_headers(
    out: Headers,
    mode: str,
    names: _NameSet,
    per_minute: float,
    bucket: TokenBucket,
    *,
    now: float,
    wall: float,
) -> None:
    limit = _per_minute(per_minute)
    limit_value = str(limit).encode()
    remaining = str(_remaining(limit, bucket)).encode()
    full_in_s = bucket.full_in_s(now)
    if mode == "openai":
        reset = go_duration(full_in_s).encode()
    else:
        reset = rfc3339(wall + full_in_s).encode()
    for limit_name, remaining_name, reset_name in names:
        out.append((limit_name, limit_value))
        out.append((remaining_name, remaining))
        out.append((reset_name, reset))


def rate_limit_headers(mode: str, limiter: ModelLimiter, now: float, wall: float) -> Headers:
    """The informational rate-limit headers of `limiter` at `now` (wall: Unix time of `now`)."""
    out: Headers = []
    if mode == "none":
        return out
    if limiter.requests is not None and limiter.rpm is not None:
        _bucket_headers(
            out, mode, _REQUEST_NAMES[mode], limiter.rpm, limiter.requests, now=now, wall=wall
        )
    if limiter.tokens is not None and limiter.tpm is not None:
        _bucket_headers(
            out, mode, _TOKEN_NAMES[mode], limiter.tpm, limiter.tokens, now=now, wall=wall
        )
    return out


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    """An OpenAI-shaped error body."""
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def anthropic_error_body(type_: str, message: str) -> bytes:
    """An Anthropic-shaped error body."""
    return _dumps({"type": "error", "error": {"type": type_, "message": message}})


def _openai_rejection_message(limiter: ModelLimiter, rejection: Rejection) -> str:
    if rejection.kind == "concurrency":
        return (
            f"Too many concurrent requests for {limiter.model}: limit {limiter.max_in_flight} "
            "in flight. Please retry after a request in flight completes."
        )
    if rejection.kind == "requests":
        bucket, per_minute, label = limiter.requests, limiter.rpm, "requests per min (RPM)"
    else:
        bucket, per_minute, label = limiter.tokens, limiter.tpm, "tokens per min (TPM)"
    assert bucket is not None
    assert per_minute is not None
    limit = _per_minute(per_minute)
    used = limit - _remaining(limit, bucket)
    return (
        f"Rate limit reached for {limiter.model} on {label}: Limit {limit}, Used {used}, "
        f"Requested {round(rejection.requested)}. "
        f"Please try again in {go_duration(rejection.wait_s)}."
    )


def _anthropic_rejection_message(limiter: ModelLimiter, rejection: Rejection) -> str:
    if rejection.kind == "concurrency":
        return "Number of concurrent connections has exceeded your rate limit."
    if rejection.kind == "requests":
        what = f"{_per_minute(limiter.rpm or 0):,} requests per minute"
    else:
        what = f"{_per_minute(limiter.tpm or 0):,} tokens per minute"
    return f"This request would exceed the rate limit for your organization of {what}."


def rejection_response(
    mode: str, limiter: ModelLimiter, rejection: Rejection, now: float, wall: float
) -> tuple[Headers, bytes]:
    """Headers (content type included) and body of a 429 for `rejection` in header `mode`."""
    if mode == "none":
        return [TEXT_CONTENT_TYPE], b"Too Many Requests"
    headers = rate_limit_headers(mode, limiter, now, wall)
    headers.append(JSON_CONTENT_TYPE)
    timed = rejection.kind != "concurrency"
    if mode == "openai":
        if timed:
            wait_ms = max(1, math.ceil(rejection.wait_s * 1000.0 - 1e-6))
            headers.append((b"retry-after-ms", str(wait_ms).encode()))
            headers.append((b"retry-after", str(max(1, math.ceil(wait_ms / 1000))).encode()))
        body = error_body(
            _openai_rejection_message(limiter, rejection),
            "requests" if rejection.kind != "tokens" else "tokens",
            "rate_limit_exceeded",
        )
    else:
        if timed:
            wait_s = max(1, math.ceil(rejection.wait_s - 1e-9))
            headers.append((b"retry-after", str(wait_s).encode()))
        body = anthropic_error_body(
            "rate_limit_error", _anthropic_rejection_message(limiter, rejection)
        )
    return headers, body
