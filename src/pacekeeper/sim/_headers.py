"""Rate-limit headers and rate-limit/error bodies, in the providers' formats.

Header modes:

* "openai": x-ratelimit-{limit,remaining,reset}-{requests,tokens} on every response of a limited
  model, remaining scaled to the per-minute limit, resets as Go durations ("6m0s", "1.5s",
  "20ms"); a rate 429 adds retry-after-ms and retry-after and OpenAI's rate_limit_exceeded body.
* "window": the same names, but remaining counts what is left in the current short window (or
  bucket), unscaled, and reset is the time to the end of that window, while limit still states
  the per-minute figure (as observed on a server enforcing 1200 rpm per second).
* "azure": only x-ratelimit-remaining-{requests,tokens} (what is left in the current window); no
  limit and no reset headers; a rate 429 adds retry-after in whole seconds and Azure's body.
* "anthropic": anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
  reset}, resets as RFC 3339 UTC timestamps; a rate 429 adds retry-after (seconds) and
  Anthropic's rate_limit_error body. With input_tpm/output_tpm the input- and output-token
  headers describe those meters; without them they mirror the single token meter.
* "groq": as Groq documents them: x-ratelimit-*-requests describe the requests-per-day budget
  (limit = RPD; reset the time to the day's end, or with `day_refill` as at Groq the time to
  regain what was used, "2m59.56s" after 30 of 14400) and x-ratelimit-*-tokens the
  per-minute token budget; the per-minute request limit is enforced but stated nowhere (only
  in its 429's message).
* "gemini": no rate-limit headers at all (Gemini sends none); a 429 is Google's error shape as
  the OpenAI-compatible endpoint returns it, a JSON *list* holding one
  `{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [...]}}` whose details
  carry a `google.rpc.QuotaFailure` (which quota: per minute or per day, requests or input
  tokens, and its value) and a `google.rpc.RetryInfo` `retryDelay` in whole seconds ("37s"),
  and no retry-after header.
* "gateway": unsuffixed X-RateLimit-Limit / -Remaining / -Reset on every response of a model
  with an rpm, as many gateways send them: the limit is the requests per *window* (or bucket
  depth), remaining what is left of it, and reset the window's end as a Unix time in
  *milliseconds*; a 429 carries the same three headers, no retry-after, and OpenRouter's body
  (`{"error": {"message", "code": 429, "metadata": {"headers": {...}}}}`).
* "openrouter": as "gateway", but the three values appear only inside the 429's body
  (`error.metadata.headers`), never as headers: the only statement of the limit is in the body.
* "ietf": the IETF draft's RateLimit-Limit / -Remaining / -Reset, as Kong's rate-limiting
  plugin and Envoy send them in front of a model: the limit is the requests per window
  followed by its policy (``"124, 124;w=10"``), remaining what is left of it, and reset the
  whole seconds to the window's end (rounded up); a 429 carries them, retry-after in whole
  seconds and Kong's body (``{"message": "API rate limit exceeded"}``).
* "none": no hint headers at all and a bare `Too Many Requests` 429 (like many gateways).

A 429 for the in-flight cap is shaped by the scenario's InFlightReply (message, code,
retry-after, with or without the rate-limit headers) in every mode.
"""

from __future__ import annotations

import json
import math
import time

from ._limits import FixedWindow, Meter, ModelLimiter, Rejection
from ._scenario import DEFAULT_IN_FLIGHT_MESSAGE, InFlightReply

__all__ = [
    "Headers",
    "error_body",
    "go_duration",
    "rate_limit_headers",
    "rejection_response",
    "rfc3339",
    "stated_in_flight_headers",
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


def _remaining(limit: int, meter: Meter) -> int:
    # The meter holds a few seconds of the budget; scale its level to the per-minute limit.
    remaining = math.floor(limit * meter.level / meter.capacity)
    return remaining if remaining > 0 else 0


def _left(meter: Meter) -> int:
    # What is left in the current window (or bucket), unscaled.
    left = math.floor(meter.level + 1e-9)
    return left if left > 0 else 0


# (limit, remaining, reset) header names per meter, encoded once rather than per response.
_NameSet = tuple[tuple[bytes, bytes, bytes], ...]


def _names(prefix_style: str, buckets: tuple[str, ...]) -> _NameSet:
    if prefix_style == "x-ratelimit":
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


_X_REQUESTS = _names("x-ratelimit", ("requests",))
_X_TOKENS = _names("x-ratelimit", ("tokens",))
_A_REQUESTS = _names("anthropic", ("requests",))
_A_TOKENS = _names("anthropic", ("tokens",))
_A_INPUT = _names("anthropic", ("input-tokens",))
_A_OUTPUT = _names("anthropic", ("output-tokens",))
_A_ALL_TOKENS = _A_TOKENS + _A_INPUT + _A_OUTPUT


def _meter_headers(
    out: Headers,
    mode: str,
    names: _NameSet,
    per_minute: float,
    meter: Meter,
    *,
    now: float,
    wall: float,
) -> None:
    limit = _per_minute(per_minute)
    if mode == "azure":
        # Azure: what is left in the current window, and nothing else.
        for _, remaining_name, _ in names:
            out.append((remaining_name, str(_left(meter)).encode()))
        return
    limit_value = str(limit).encode()
    full_in_s = meter.full_in_s(now)
    if mode == "openai":
        remaining = str(_remaining(limit, meter)).encode()
        reset = go_duration(full_in_s).encode()
    elif mode == "window":
        remaining = str(_left(meter)).encode()
        reset = go_duration(full_in_s).encode()
    else:
        remaining = str(_remaining(limit, meter)).encode()
        reset = rfc3339(wall + full_in_s).encode()
    for limit_name, remaining_name, reset_name in names:
        out.append((limit_name, limit_value))
        out.append((remaining_name, remaining))
        out.append((reset_name, reset))


def _anthropic_token_headers(
    out: Headers, limiter: ModelLimiter, *, now: float, wall: float
) -> None:
    token_meters = [
        (names, per_minute, meter)
        for names, per_minute, meter in (
            (_A_INPUT, limiter.input_tpm, limiter.input_tokens),
            (_A_OUTPUT, limiter.output_tpm, limiter.output_tokens),
        )
        if meter is not None and per_minute is not None
    ]
    if limiter.tokens is not None and limiter.tpm is not None:
        # tokens-* is the combined limit; input/output headers mirror it when not set apart.
        names = _A_TOKENS if token_meters else _A_ALL_TOKENS
        _meter_headers(out, "anthropic", names, limiter.tpm, limiter.tokens, now=now, wall=wall)
    elif token_meters:
        # Anthropic: tokens-* reports the most restrictive of the token limits in effect.
        _, per_minute, meter = min(token_meters, key=lambda m: m[2].level / m[2].capacity)
        _meter_headers(out, "anthropic", _A_TOKENS, per_minute, meter, now=now, wall=wall)
    for names, per_minute, meter in token_meters:
        _meter_headers(out, "anthropic", names, per_minute, meter, now=now, wall=wall)


def rate_limit_headers(mode: str, limiter: ModelLimiter, now: float, wall: float) -> Headers:
    """The informational rate-limit headers of `limiter` at `now` (wall: Unix time of `now`)."""
    out: Headers = []
    if mode in ("none", "gemini", "openrouter"):
        return out
    if mode == "gateway":
        return _gateway_headers(limiter, now, wall)
    if mode == "ietf":
        return _ietf_headers(limiter, now)
    anthropic = mode == "anthropic"
    if mode == "groq":
        if limiter.requests_day is not None and limiter.rpd is not None:
            # A day's budget under a minute's names; its reset is the time to the day's end,
            # or with day_refill (as Groq documents) the time to regain what was used.
            _meter_headers(
                out, "openai", _X_REQUESTS, limiter.rpd, limiter.requests_day, now=now, wall=wall
            )
        if limiter.tokens is not None and limiter.tpm is not None:
            _meter_headers(
                out, "openai", _X_TOKENS, limiter.tpm, limiter.tokens, now=now, wall=wall
            )
        return out
    if limiter.requests is not None and limiter.rpm is not None:
        names = _A_REQUESTS if anthropic else _X_REQUESTS
        _meter_headers(out, mode, names, limiter.rpm, limiter.requests, now=now, wall=wall)
    if anthropic:
        _anthropic_token_headers(out, limiter, now=now, wall=wall)
    elif limiter.tokens is not None and limiter.tpm is not None:
        _meter_headers(out, mode, _X_TOKENS, limiter.tpm, limiter.tokens, now=now, wall=wall)
    return out


def _gateway_values(limiter: ModelLimiter, now: float, wall: float) -> tuple[str, str, str]:
    """(limit, remaining, reset) of the request meter: the budget of one window (or the
    bucket's depth), what is left of it, and when it is full again as Unix milliseconds."""
    meter = limiter.requests
    if meter is None:
        return "", "", ""
    # Rounded to 10 µs before the ceiling: answers about one window must state one end, and
    # the float sum is off by a few tenths of a µs from one `now` to the next.
    reset_ms = math.ceil(round((wall + meter.full_in_s(now)) * 1000.0, 2))
    return str(max(1, round(meter.capacity))), str(_left(meter)), str(reset_ms)


_GATEWAY_NAMES = (b"x-ratelimit-limit", b"x-ratelimit-remaining", b"x-ratelimit-reset")


def _gateway_headers(limiter: ModelLimiter, now: float, wall: float) -> Headers:
    values = _gateway_values(limiter, now, wall)
    if not values[0]:
        return []
    return [(name, value.encode()) for name, value in zip(_GATEWAY_NAMES, values, strict=True)]


_IETF_NAMES = (b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset")


def _ietf_headers(limiter: ModelLimiter, now: float) -> Headers:
    meter = limiter.requests
    if meter is None:
        return []
    limit = max(1, round(meter.capacity))
    # The window a fixed window counts, or the time a bucket takes to fill from empty.
    if isinstance(meter, FixedWindow):
        window_s = meter.window_s
    else:
        window_s = meter.capacity / meter.rate_per_s
    values = (
        f"{limit}, {limit};w={max(1, round(window_s))}",
        str(_left(meter)),
        str(math.ceil(meter.full_in_s(now) - 1e-9)),
    )
    return [(name, value.encode()) for name, value in zip(_IETF_NAMES, values, strict=True)]


def _openrouter_body(limiter: ModelLimiter, rejection: Rejection, now: float, wall: float) -> bytes:
    limit, remaining, reset = _gateway_values(limiter, now, wall)
    error: dict[str, object] = {
        "message": f"Rate limit exceeded: {rejection.kind} of {limiter.model}.",
        "code": 429,
    }
    if limit:
        error["metadata"] = {
            "headers": {
                "X-RateLimit-Limit": limit,
                "X-RateLimit-Remaining": remaining,
                "X-RateLimit-Reset": reset,
            }
        }
    return _dumps({"error": error})


# (quota metric, quota id) of each meter, as Google names them in QuotaFailure violations.
_GEMINI_QUOTAS = {
    "requests": ("generate_content_requests", "GenerateRequestsPerMinutePerProjectPerModel"),
    "requests_day": ("generate_content_requests", "GenerateRequestsPerDayPerProjectPerModel"),
    "input_tokens": (
        "generate_content_input_token_count",
        "GenerateContentInputTokensPerModelPerMinute",
    ),
    "tokens": ("generate_content_input_token_count", "GenerateContentInputTokensPerModelPerMinute"),
    "tokens_day": (
        "generate_content_input_token_count",
        "GenerateContentInputTokensPerModelPerDay",
    ),
}


def _gemini_body(limiter: ModelLimiter, rejection: Rejection) -> bytes:
    _, per_period, _ = _meter_of(limiter, rejection.kind)
    metric, quota_id = _GEMINI_QUOTAS.get(rejection.kind, _GEMINI_QUOTAS["requests"])
    # Google states retry delays in whole seconds: waiting them over-waits a refilling bucket.
    delay_s = max(1, math.ceil(rejection.wait_s - 1e-9))
    violation = {
        "quotaMetric": f"generativelanguage.googleapis.com/{metric}",
        "quotaId": quota_id,
        "quotaDimensions": {"location": "global", "model": limiter.model},
        "quotaValue": str(_per_minute(per_period or 0)),
    }
    error = {
        "code": 429,
        "message": (
            f"Quota {quota_id} of model {limiter.model} exhausted (limit {violation['quotaValue']}"
            f"). Please retry in {delay_s}s. See https://ai.google.dev/gemini-api/docs/rate-limits."
        ),
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [violation]},
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay_s}s"},
        ],
    }
    # The OpenAI-compatible endpoint wraps Google's error in a list.
    return _dumps([{"error": error}])


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


def _meter_of(limiter: ModelLimiter, kind: str) -> tuple[Meter | None, float | None, str]:
    if kind == "requests":
        return limiter.requests, limiter.rpm, "requests per min (RPM)"
    if kind == "input_tokens":
        return limiter.input_tokens, limiter.input_tpm, "input tokens per min (ITPM)"
    if kind == "output_tokens":
        return limiter.output_tokens, limiter.output_tpm, "output tokens per min (OTPM)"
    if kind == "requests_day":
        return limiter.requests_day, limiter.rpd, "requests per day (RPD)"
    if kind == "tokens_day":
        return limiter.tokens_day, limiter.tpd, "tokens per day (TPD)"
    return limiter.tokens, limiter.tpm, "tokens per min (TPM)"


def _openai_rejection_message(limiter: ModelLimiter, rejection: Rejection) -> str:
    meter, per_minute, label = _meter_of(limiter, rejection.kind)
    assert meter is not None
    assert per_minute is not None
    limit = _per_minute(per_minute)
    used = limit - _remaining(limit, meter)
    return (
        f"Rate limit reached for {limiter.model} on {label}: Limit {limit}, Used {used}, "
        f"Requested {round(rejection.requested)}. "
        f"Please try again in {go_duration(rejection.wait_s)}."
    )


def _anthropic_rejection_message(limiter: ModelLimiter, rejection: Rejection) -> str:
    _, per_minute, _ = _meter_of(limiter, rejection.kind)
    unit = {
        "requests": "requests",
        "tokens": "tokens",
        "input_tokens": "input tokens",
        "output_tokens": "output tokens",
        "requests_day": "requests",
        "tokens_day": "tokens",
    }[rejection.kind]
    period = "day" if rejection.kind.endswith("_day") else "minute"
    what = f"{_per_minute(per_minute or 0):,} {unit} per {period}"
    return f"This request would exceed the rate limit for your organization of {what}."


def _azure_rejection_message(rejection: Rejection, wait_s: int) -> str:
    what = "call rate limit" if rejection.kind.startswith("requests") else "token rate limit"
    return (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        f"2024-10-21 have exceeded {what} of your current OpenAI S0 pricing tier. "
        f"Please retry after {wait_s} seconds."
    )


_STATED_IN_FLIGHT = (
    b"x-ratelimit-api_key-limit-max_parallel_requests",
    b"x-ratelimit-api_key-remaining-max_parallel_requests",
)


def stated_in_flight_headers(limiter: ModelLimiter) -> Headers:
    """LiteLLM's statement of a key's in-flight cap (InFlightReply.stated), and what is left
    of it as the request was counted."""
    cap = limiter.max_in_flight
    if cap is None:
        return []
    left = max(0, cap - limiter.in_flight)
    return [(_STATED_IN_FLIGHT[0], str(cap).encode()), (_STATED_IN_FLIGHT[1], str(left).encode())]


def _in_flight_response(
    mode: str,
    limiter: ModelLimiter,
    reply: InFlightReply,
    now: float,
    wall: float,
) -> tuple[Headers, bytes]:
    headers: Headers = []
    if reply.rate_limit_headers:
        headers = rate_limit_headers(mode, limiter, now, wall)
    if reply.stated:
        headers += stated_in_flight_headers(limiter)
    headers.append(JSON_CONTENT_TYPE)
    if reply.retry_after_s is not None:
        seconds = max(0, math.ceil(reply.retry_after_s - 1e-9))
        headers.append((b"retry-after", str(seconds).encode()))
    if mode == "anthropic":
        message = reply.message
        if message == DEFAULT_IN_FLIGHT_MESSAGE:
            message = "Number of concurrent connections has exceeded your rate limit."
        body = anthropic_error_body(
            "rate_limit_error", message.format(model=limiter.model, limit=limiter.max_in_flight)
        )
    else:
        message = reply.message.format(model=limiter.model, limit=limiter.max_in_flight)
        body = error_body(message, "requests", reply.code)
    return headers, body


_BUSY_MESSAGE = "The service is busy right now. Please retry your request after a brief wait."


def busy_response(
    mode: str, headers: Headers, retry_after_s: float | None, *, with_headers: bool
) -> tuple[Headers, bytes]:
    """Headers and body of a 429 that the client's rate did not cause (the `busy_429` fault):
    the rate-limit 429 of header `mode` in its body and code, so that nothing but the
    evidence around it tells the two apart. `headers` are the rate-limit headers the request
    was admitted with (kept only `with_headers`)."""
    out: Headers = list(headers) if with_headers else []
    if retry_after_s is not None:
        out.append((b"retry-after", str(max(0, math.ceil(retry_after_s - 1e-9))).encode()))
    if mode == "none":
        out.append(TEXT_CONTENT_TYPE)
        return out, b"Too Many Requests"
    out.append(JSON_CONTENT_TYPE)
    if mode == "anthropic":
        return out, anthropic_error_body("rate_limit_error", _BUSY_MESSAGE)
    if mode == "gemini":
        error = {
            "code": 429,
            "message": "Resource exhausted. Please try again later.",
            "status": "RESOURCE_EXHAUSTED",
        }
        return out, _dumps([{"error": error}])
    if mode == "azure":
        return out, _dumps({"error": {"code": "429", "message": _BUSY_MESSAGE}})
    return out, error_body(_BUSY_MESSAGE, "requests", "rate_limit_exceeded")


def rejection_response(
    mode: str,
    limiter: ModelLimiter,
    rejection: Rejection,
    now: float,
    wall: float,
    *,
    in_flight_reply: InFlightReply | None = None,
) -> tuple[Headers, bytes]:
    """Headers (content type included) and body of a 429 for `rejection` in header `mode`."""
    if rejection.kind == "concurrency":
        reply = in_flight_reply if in_flight_reply is not None else InFlightReply()
        return _in_flight_response(mode, limiter, reply, now, wall)
    if mode == "none":
        return [TEXT_CONTENT_TYPE], b"Too Many Requests"
    headers = rate_limit_headers(mode, limiter, now, wall)
    headers.append(JSON_CONTENT_TYPE)
    if mode == "gemini":
        return headers, _gemini_body(limiter, rejection)
    if mode in ("gateway", "openrouter"):
        return headers, _openrouter_body(limiter, rejection, now, wall)
    if mode == "ietf":
        # Kong: retry-after in whole seconds, and its own one-line body.
        headers.append((b"retry-after", str(max(1, math.ceil(rejection.wait_s - 1e-9))).encode()))
        return headers, _dumps({"message": "API rate limit exceeded"})
    if mode == "groq":
        # Groq: OpenAI's body (the limit stated in its message), retry-after in whole seconds.
        headers.append((b"retry-after", str(max(1, math.ceil(rejection.wait_s - 1e-9))).encode()))
        body = error_body(
            _openai_rejection_message(limiter, rejection),
            "requests" if rejection.kind.startswith("requests") else "tokens",
            "rate_limit_exceeded",
        )
        return headers, body
    if mode in ("openai", "window"):
        wait_ms = max(1, math.ceil(rejection.wait_s * 1000.0 - 1e-6))
        headers.append((b"retry-after-ms", str(wait_ms).encode()))
        headers.append((b"retry-after", str(max(1, math.ceil(wait_ms / 1000))).encode()))
        body = error_body(
            _openai_rejection_message(limiter, rejection),
            "requests" if rejection.kind.startswith("requests") else "tokens",
            "rate_limit_exceeded",
        )
    elif mode == "azure":
        # Whole seconds only: Azure sends no finer hint.
        wait_s = max(1, math.ceil(rejection.wait_s - 1e-9))
        headers.append((b"retry-after", str(wait_s).encode()))
        body = _dumps(
            {"error": {"code": "429", "message": _azure_rejection_message(rejection, wait_s)}}
        )
    else:
        wait_s = max(1, math.ceil(rejection.wait_s - 1e-9))
        headers.append((b"retry-after", str(wait_s).encode()))
        body = anthropic_error_body(
            "rate_limit_error", _anthropic_rejection_message(limiter, rejection)
        )
    return headers, body
