"""What an outcome means: is it a success, backpressure, a permanent error, worth a retry?

Every attempt ends in a :class:`Verdict`. Surfaces build one from an HTTP answer with
:func:`classify_response`, from any exception with :func:`verdict_for_exception` (httpx, httpx2,
aiohttp, the openai and anthropic SDKs, asyncio: read by the names in the exception's class
hierarchy, so the core imports none of them), or with :func:`verdict_for_failure` for a
failure they found themselves (a malformed body). The governor acts on the verdict alone, so
this is the one place that knows the providers' error shapes and the libraries' exceptions.

Why the distinctions matter:

* ``RATE_LIMITED`` and ``OVERLOADED`` are *backpressure*: the provider is telling us to slow down,
  so they lower an adaptive concurrency limit and (with a hint) close the gate for a while.
* ``QUOTA_EXHAUSTED`` also arrives as a 429 (OpenAI ``insufficient_quota``, Anthropic
  ``enforced_spend_limit_reached``), but no amount of waiting fixes a billing limit within a
  run: retrying it only burns time, so it is never retryable.
* Other 4xx answers are about the request itself and would fail the same way again; 408 and 409
  are the exceptions the SDKs also retry (a timed-out or conflicting request may succeed later).
* ``x-should-retry: true|false`` overrides all of that in either direction, exactly as the
  OpenAI and Anthropic SDKs honour it: the server knows better than any status table.

Error bodies are read defensively: only for status >= 400, only the first 64 KiB, as JSON in the
OpenAI, Anthropic or Azure shape when they parse, else as text (HTML tags dropped). A body that is
empty, truncated, binary or nonsense gives a verdict all the same; nothing here raises.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pacekeeper.core.headers import (
    RateLimitSnapshot,
    _non_negative_float,
    _retry_hint_from,
    _scan,
    _should_retry,
    _snapshot,
)

__all__ = [
    "OutcomeKind",
    "Verdict",
    "classify_response",
    "describe_exception",
    "verdict_for_exception",
    "verdict_for_failure",
]


class OutcomeKind(enum.Enum):
    """The kind of an attempt's outcome; ``.value`` is a short lowercase name for records."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    """A 429 about rate (requests or tokens per window): wait and retry."""
    QUOTA_EXHAUSTED = "quota_exhausted"
    """A 429 (or 402) about billing or a spend limit: retrying cannot help."""
    OVERLOADED = "overloaded"
    """503 or 529: the provider is short of capacity."""
    SERVER_ERROR = "server_error"
    """500, 502, 504 and other 5xx."""
    REQUEST_TIMEOUT = "request_timeout"
    """408 from the server."""
    CONFLICT = "conflict"
    """409 (e.g. a lock or an idempotency clash)."""
    CLIENT_ERROR = "client_error"
    """Any other 4xx: the request itself is wrong (bad input, auth, not found, too large)."""
    TIMEOUT = "timeout"
    """Our own timeout fired before an answer came."""
    CONNECTION_ERROR = "connection_error"
    """Connect refused or reset, dropped mid-response, protocol error."""
    MALFORMED = "malformed"
    """A 2xx whose body was not the JSON it should have been."""
    OTHER = "other"
    """Anything else: 1xx/3xx answers, unknown statuses, unrecognised exceptions."""


# Whether a kind is worth another attempt when nothing (status, x-should-retry) says otherwise.
_RETRYABLE: dict[OutcomeKind, bool] = {
    OutcomeKind.OK: False,
    OutcomeKind.RATE_LIMITED: True,
    OutcomeKind.QUOTA_EXHAUSTED: False,
    OutcomeKind.OVERLOADED: True,
    OutcomeKind.SERVER_ERROR: True,
    OutcomeKind.REQUEST_TIMEOUT: True,
    OutcomeKind.CONFLICT: True,
    OutcomeKind.CLIENT_ERROR: False,
    OutcomeKind.TIMEOUT: True,
    OutcomeKind.CONNECTION_ERROR: True,
    OutcomeKind.MALFORMED: True,
    OutcomeKind.OTHER: False,
}

# 5xx answers that describe the server's permanent configuration, not a passing fault.
_PERMANENT_5XX = frozenset({501, 505})

# Error codes that mean money or a spend cap, not rate. Matched exactly (case-insensitively)
# against the code-like fields of the error object, never against free text: Gemini, for one,
# says "You exceeded your current quota" for ordinary per-minute limits.
_BILLING_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "enforced_spend_limit_reached",
    }
)
# Codes that say which limit refused a 429, matched exactly against the code and type fields.
# OpenAI's type "tokens" names the token budget; a few gateways name an in-flight cap. Anything
# else says nothing: OpenAI's generic "rate_limit_exceeded" and its type "requests" come with
# in-flight refusals too (requests are what is limited, per minute or at once), so the lane
# reads the scope from the answer's structure instead.
_SCOPE_CODES = {
    "tokens": "tokens",
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
}
_CONCURRENCY_SCOPE_CODES = frozenset(
    {
        "concurrency_limit_exceeded",
        "concurrent_requests_limit_exceeded",
        "too_many_concurrent_requests",
        "max_concurrency_exceeded",
        "too_many_requests_in_flight",
    }
)
# Keys whose values can carry an error code, at any depth of the error object.
_CODE_KEYS = frozenset({"code", "type", "error_code", "reason", "status"})

_BODY_LIMIT = 64 * 1024
_MESSAGE_LIMIT = 200
_TAG = re.compile(r"<[^>]{0,500}>")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt's outcome means, and what the server said about it.

    ``reason`` is one human line (status, provider error code, the provider's message cut to
    about 200 characters, and the server's wait hint); it never repeats other header values.
    ``hint_s`` is the server's wait hint (``retry-after-ms``, ``retry-after`` or the reset of an
    exhausted budget), ``limits`` what the rate-limit headers said, ``error_code`` the
    provider's error code or type, ``status`` the HTTP status (None without a response).
    ``limit_scope`` is which limit refused a 429 when its code says so: ``"tokens"`` (input or
    combined: the code does not say which), ``"input_tokens"`` (a quota named as counting
    the input alone: Gemini's), ``"output_tokens"``, ``"concurrency"`` or ``"daily"`` (a
    quota per day or hour ran out: no rate to learn) (None: the code does not say; never
    guessed from the message's words).
    """

    kind: OutcomeKind
    retryable: bool
    reason: str
    hint_s: float | None = None
    limits: RateLimitSnapshot | None = None
    error_code: str | None = None
    status: int | None = None
    limit_scope: str | None = None

    @property
    def is_backpressure(self) -> bool:
        """True when the provider asks us to slow down (lowers an adaptive concurrency limit)."""
        return self.kind is OutcomeKind.RATE_LIMITED or self.kind is OutcomeKind.OVERLOADED


def _one_line(text: str, limit: int = _MESSAGE_LIMIT) -> str:
    line = " ".join(text.split())
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "\u2026"
    return line


def describe_exception(exc: BaseException) -> str:
    """One line for an exception in a reason or an error body: its type and first line.

    >>> describe_exception(TimeoutError("read timed out\\nmore"))
    'TimeoutError: read timed out'
    """
    text = str(exc).splitlines()[0][:_MESSAGE_LIMIT] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def verdict_for_failure(kind: OutcomeKind, reason: str) -> Verdict:
    """A verdict for an attempt that got no usable answer (timeout, dropped connection, bad body).

    Transports map their exception classes to a kind and call this. TIMEOUT, CONNECTION_ERROR
    and MALFORMED are retryable; any other kind gets its usual retryability.

    >>> v = verdict_for_failure(OutcomeKind.TIMEOUT, "ReadTimeout: no answer after 60s")
    >>> v.retryable, v.kind.value, v.status
    (True, 'timeout', None)
    """
    return Verdict(kind=kind, retryable=_RETRYABLE[kind], reason=_one_line(reason))


def _code_text(value: object) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _find_billing_code(node: object, depth: int = 0) -> str | None:
    """A billing code among the code-like fields of an error object, nested up to 3 deep."""
    if depth > 3:
        return None
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                if key in _CODE_KEYS and value.strip().lower() in _BILLING_CODES:
                    return value.strip().lower()
            elif isinstance(value, (dict, list)):
                found = _find_billing_code(value, depth + 1)
                if found is not None:
                    return found
    elif isinstance(node, list):
        for item in node[:8]:
            found = _find_billing_code(item, depth + 1)
            if found is not None:
                return found
    return None


@dataclass(frozen=True, slots=True)
class _ErrorInfo:
    code: str | None = None
    error_type: str | None = None
    message: str | None = None
    billing_code: str | None = None
    retry_delay_s: float | None = None
    """Google's ``google.rpc.RetryInfo`` in the error's details (Gemini), in seconds."""
    quota_scope: str | None = None
    """What Google's ``google.rpc.QuotaFailure`` names: "daily" a quota per day or hour,
    "input_tokens" an input-token quota, "tokens" another token quota."""
    stated_headers: Mapping[str, object] | None = None
    """Rate-limit headers a gateway put in the body instead (OpenRouter's
    ``error.metadata.headers``)."""
    minute_quotas: tuple[tuple[str, int], ...] = ()
    """Per-minute quotas a ``google.rpc.QuotaFailure`` states with their ``quotaValue``
    (Gemini): ``("requests" | "input_tokens" | "tokens", limit per minute)``."""


_NO_INFO = _ErrorInfo()


def _text_message(raw: bytes) -> str | None:
    text = raw.decode("utf-8", errors="replace")
    if "<" in text and ">" in text:  # HTML error pages from gateways and load balancers
        text = _TAG.sub(" ", text)
    line = _one_line(text)
    return line or None


def _error_info(body: bytes | None) -> _ErrorInfo:
    """The provider's error code, type and message from an error body, whatever its shape."""
    if not body:
        return _NO_INFO
    raw = body[:_BODY_LIMIT]
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _ErrorInfo(message=_text_message(raw))
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        doc = doc[0]  # Gemini-style: a list holding one error document
    if not isinstance(doc, dict):
        return _ErrorInfo(message=_text_message(raw))
    error = doc.get("error")
    if isinstance(error, dict):
        # OpenAI/Azure {"error": {...}}, Anthropic {"type": "error", "error": {...}}
        obj: dict[str, Any] = error
    else:
        # {"error": "text"}, {"message": ..., "code": ...}, FastAPI {"detail": ...}
        obj = doc
    message = obj.get("message")
    if not isinstance(message, str):
        message = error if isinstance(error, str) else doc.get("detail")
    if not isinstance(message, str):
        message = None
    error_type = obj.get("type")
    code = obj.get("code")
    status = obj.get("status")
    if isinstance(code, int) and isinstance(status, str):
        code = status  # Google: code 429 repeats the HTTP status; status names the error
    google = _google_details(obj.get("details"))
    metadata = obj.get("metadata")
    stated = metadata.get("headers") if isinstance(metadata, dict) else None
    return _ErrorInfo(
        code=_code_text(code),
        error_type=_code_text(error_type) if error_type != "error" else None,
        message=_one_line(message) if message else None,
        billing_code=_find_billing_code(obj),
        retry_delay_s=google.delay_s,
        quota_scope=google.scope,
        stated_headers=stated if isinstance(stated, dict) and stated else None,
        minute_quotas=google.minute_quotas,
    )


@dataclass(frozen=True, slots=True)
class _GoogleDetails:
    delay_s: float | None = None
    scope: str | None = None
    minute_quotas: tuple[tuple[str, int], ...] = ()


def _google_details(details: object) -> _GoogleDetails:
    """What Google's structured error details (Gemini) say: the ``RetryInfo`` delay, a JSON
    protobuf Duration such as ``"37s"`` or ``"1.5s"``; whether a ``QuotaFailure`` names a
    token quota, and which (:func:`_quota_name_scope`: its ``quotaMetric``/``quotaId``
    identifiers, never the message); and the per-minute quotas it states with their
    ``quotaValue`` (:func:`_minute_quota`): Gemini sends no rate-limit headers, and this is
    the one place it states a limit.

    >>> _google_details([{"@type": "type.googleapis.com/google.rpc.RetryInfo",
    ...                   "retryDelay": "37s"}])
    _GoogleDetails(delay_s=37.0, scope=None, minute_quotas=())
    >>> _google_details([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
    ...   "violations": [{"quotaMetric":
    ...     "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
    ...     "quotaId": "GenerateContentPaidTierInputTokensPerModelPerMinute",
    ...     "quotaValue": "1000000"}]}])
    _GoogleDetails(delay_s=None, scope='input_tokens', minute_quotas=(('input_tokens', 1000000),))
    """
    if not isinstance(details, list):
        return _GoogleDetails()
    delay_s: float | None = None
    scope: str | None = None
    minute_quotas: list[tuple[str, int]] = []
    for detail in details[:8]:
        if not isinstance(detail, dict):
            continue
        kind = detail.get("@type")
        if not isinstance(kind, str):
            continue
        if kind.endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                delay_s = _non_negative_float(delay[:-1].strip())
        elif kind.endswith("google.rpc.QuotaFailure"):
            violations = detail.get("violations")
            for violation in violations[:8] if isinstance(violations, list) else ():
                if not isinstance(violation, dict):
                    continue
                names = (violation.get("quotaMetric"), violation.get("quotaId"))
                for name in names:
                    found = _quota_name_scope(name) if isinstance(name, str) else None
                    if found is not None and (
                        scope is None or _SCOPE_RANK[found] > _SCOPE_RANK[scope]
                    ):
                        scope = found
                quota = _minute_quota(violation)
                if quota is not None:
                    minute_quotas.append(quota)
    if scope != "input_tokens":
        # An input-token limit is paced in input tokens alone, a unit the lane switches to
        # only on a 429 scoped to it: beside a day's quota (scope "daily") it would be taken
        # in prompt and reserve, a fraction of the limit.
        minute_quotas = [quota for quota in minute_quotas if quota[0] != "input_tokens"]
    return _GoogleDetails(delay_s, scope, tuple(minute_quotas))


def _minute_quota(violation: dict[str, Any]) -> tuple[str, int] | None:
    """The per-minute limit a ``QuotaFailure`` violation states: which budget (its
    ``quotaId`` must say "PerMinute": a day's quota is no rate, and a metric alone names no
    period; and "PerModel": a lane is one model's) and its ``quotaValue``. A value of 0 (the
    model is not in the plan) states no rate.

    >>> _minute_quota({"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
    ...                "quotaValue": "15"})
    ('requests', 15)
    >>> _minute_quota({"quotaId": "GenerateRequestsPerDayPerProjectPerModel", "quotaValue": "50"})
    >>> _minute_quota({"quotaId": "GenerateRequestsPerMinutePerProject", "quotaValue": "50"})
    >>> _minute_quota({"quotaMetric": "x/generate_content_input_token_count", "quotaValue": "9"})
    """
    quota_id = violation.get("quotaId")
    if not isinstance(quota_id, str):
        return None
    flat = quota_id.lower().replace("_", "").replace("-", "")
    if "perminute" not in flat or "perday" in flat or "perhour" in flat:
        return None
    if "permodel" not in flat:
        # A lane is one model's: a quota over the project or a region would be taken by
        # every model's lane whole.
        return None
    if "outputtoken" in flat or "counttoken" in flat:
        return None  # not a budget the lane paces under this name
    raw = violation.get("quotaValue")
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    if value <= 0:
        return None
    return _quota_name_scope(quota_id) or "requests", value


# Which scope a QuotaFailure naming several quotas gives: a quota per day or hour run out
# says the most (no rate to learn, nothing to send before it refills), then input tokens.
_SCOPE_RANK = {"tokens": 0, "input_tokens": 1, "daily": 2}


def _quota_name_scope(name: str) -> str | None:
    """Which limit a Google quota identifier names: ``"daily"`` a quota per day or hour
    (``GenerateRequestsPerDayPerProjectPerModel``), ``"input_tokens"`` input tokens
    (``..._input_token_count``, ``...InputTokensPerModelPerMinute``: Gemini's TPM counts the
    prompt alone), ``"tokens"`` another token quota, None anything else (requests per minute).

    >>> _quota_name_scope("GenerateContentPaidTierInputTokensPerModelPerMinute")
    'input_tokens'
    >>> _quota_name_scope("generate_content_token_count"), _quota_name_scope("requests")
    ('tokens', None)
    >>> _quota_name_scope("GenerateRequestsPerDayPerProjectPerModel-FreeTier")
    'daily'
    """
    flat = name.lower().replace("_", "").replace("-", "")
    if "perday" in flat or "perhour" in flat:
        return "daily"
    if "inputtoken" in flat:
        return "input_tokens"
    return "tokens" if "token" in flat else None


def _kind_for(status: int, info: _ErrorInfo) -> tuple[OutcomeKind, bool]:
    if status == 429:
        if info.billing_code is not None:
            return OutcomeKind.QUOTA_EXHAUSTED, False
        return OutcomeKind.RATE_LIMITED, True
    if status == 408:
        return OutcomeKind.REQUEST_TIMEOUT, True
    if status == 409:
        return OutcomeKind.CONFLICT, True
    if 400 <= status < 500:
        if status == 402 or info.billing_code is not None:  # 402: OpenRouter's "no credits"
            return OutcomeKind.QUOTA_EXHAUSTED, False
        return OutcomeKind.CLIENT_ERROR, False
    if status in (503, 529) or (500 <= status < 600 and info.error_type == "overloaded_error"):
        return OutcomeKind.OVERLOADED, True
    if 500 <= status < 600:
        return OutcomeKind.SERVER_ERROR, status not in _PERMANENT_5XX
    return OutcomeKind.OTHER, False


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    now_wall_s: float,
    read_limits: bool = True,
) -> Verdict:
    """Classify an HTTP answer. Never raises, whatever the headers and body hold.

    ``read_limits=False`` skips the rate-limit headers of a 2xx (a busy lane need not read
    them on every answer); an error's headers are always read.

    ``now_wall_s`` (a :func:`time.time` value) anchors absolute times in the headers. A 2xx is
    OK without looking at the body: checking that a 2xx body is valid JSON is the caller's job
    (see :data:`OutcomeKind.MALFORMED`). The rate-limit headers are read on every answer.

    >>> v = classify_response(429, {"retry-after": "12"},
    ...     b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down."}}',
    ...     now_wall_s=0)
    >>> v.kind.value, v.retryable, v.hint_s, v.error_code
    ('rate_limited', True, 12.0, 'rate_limit_error')
    >>> v.reason
    'HTTP 429 rate_limit_error: Slow down. (server hint: retry in 12s)'
    >>> classify_response(429, {}, b'{"error":{"code":"insufficient_quota"}}', now_wall_s=0).kind
    <OutcomeKind.QUOTA_EXHAUSTED: 'quota_exhausted'>
    """
    if not read_limits and 200 <= status < 300:
        return Verdict(kind=OutcomeKind.OK, retryable=False, reason=f"HTTP {status}", status=status)
    found = _scan(headers)
    limits = _snapshot(found, now_wall_s) if found is not None else None
    if 200 <= status < 300:
        return Verdict(
            kind=OutcomeKind.OK,
            retryable=False,
            reason=f"HTTP {status}",
            limits=limits,
            status=status,
        )

    info = _error_info(body) if status >= 400 else _NO_INFO
    if info.stated_headers is not None:
        # OpenRouter states its limit only here: read as if sent as headers (the real
        # headers win where both say something).
        in_body = _scan(info.stated_headers)
        if in_body is not None:
            found = in_body if found is None else {**in_body, **found}
            limits = _snapshot(found, now_wall_s)
    if info.minute_quotas:
        limits = _with_minute_quotas(limits, info.minute_quotas)
    kind, retryable = _kind_for(status, info)
    hint = _retry_hint_from(found, limits, now_wall_s) if found is not None else None
    if hint is None:
        hint = info.retry_delay_s
    override = _should_retry(found) if found is not None else None
    if override is not None:
        retryable = override

    error_code = info.billing_code or info.code or info.error_type
    reason = f"HTTP {status}"
    if error_code:
        reason += f" {_one_line(error_code, 60)}"
    if info.message:
        reason += f": {info.message}"
    if hint is not None:
        reason += f" (server hint: retry in {hint:g}s)"
    if override is not None and override != _RETRYABLE[kind]:
        reason += " (server asks to retry)" if override else " (server asks not to retry)"
    return Verdict(
        kind=kind,
        retryable=retryable,
        reason=reason,
        hint_s=hint,
        limits=limits,
        error_code=error_code,
        status=status,
        limit_scope=_limit_scope(info) if kind is OutcomeKind.RATE_LIMITED else None,
    )


def _with_minute_quotas(
    limits: RateLimitSnapshot | None, quotas: tuple[tuple[str, int], ...]
) -> RateLimitSnapshot:
    """``limits`` with the per-minute quotas an error body states, as if sent as limit
    headers (a header that says the same wins): a stated limit is the ceiling to aim at.

    >>> _with_minute_quotas(None, (("input_tokens", 250000),)).limit_input_tokens
    250000
    """
    snapshot = limits if limits is not None else RateLimitSnapshot()
    stated: dict[str, int] = {}
    for budget, value in quotas:  # two quotas of one budget (per model, per project): both bind
        stated[budget] = min(value, stated.get(budget, value))
    # A gateway's window of unknown length (unsuffixed X-RateLimit-*) is not a minute: its
    # count with a minute's limit would read as a window that holds a minute's requests.
    requests = None if snapshot.requests_window_unknown else stated.get("requests")
    return replace(
        snapshot,
        limit_requests=_first(snapshot.limit_requests, requests),
        limit_input_tokens=_first(snapshot.limit_input_tokens, stated.get("input_tokens")),
        limit_tokens=_first(snapshot.limit_tokens, stated.get("tokens")),
    )


def _first(a: int | None, b: int | None) -> int | None:
    return a if a is not None else b


def _limit_scope(info: _ErrorInfo) -> str | None:
    """Which limit a 429's code names, if any.

    >>> _limit_scope(_ErrorInfo(code="rate_limit_exceeded", error_type="tokens"))
    'tokens'
    >>> _limit_scope(_ErrorInfo(code="concurrency_limit_exceeded")) , _limit_scope(_NO_INFO)
    ('concurrency', None)
    """
    for value in (info.code, info.error_type):
        if value is None:
            continue
        code = value.strip().lower()
        if code in _CONCURRENCY_SCOPE_CODES:
            return "concurrency"
        scope = _SCOPE_CODES.get(code)
        if scope is not None:
            return scope
    return info.quota_scope


# Exception classes by name, anywhere in the class hierarchy: httpx and httpx2
# (TimeoutException < TransportError), openai and anthropic (APITimeoutError <
# APIConnectionError), aiohttp (ServerTimeoutError, ClientConnectionError, ClientPayloadError),
# the standard library (TimeoutError, ConnectionError). Timeouts are looked for first: in every
# one of these libraries a timeout is also a connection error.
_TIMEOUT_NAMES = frozenset(
    {"TimeoutError", "TimeoutException", "APITimeoutError", "ServerTimeoutError"}
)
_CONNECTION_NAMES = frozenset(
    {
        "ConnectionError",
        "APIConnectionError",
        "TransportError",
        "NetworkError",
        "ConnectError",
        "RemoteProtocolError",
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerDisconnectedError",
    }
)


def verdict_for_exception(exc: BaseException, *, now_wall_s: float) -> Verdict | None:
    """What an exception says about an attempt; None when it is not an outcome to classify
    (a bug in the caller's code, say), which the caller should let propagate.

    An exception that carries an HTTP status (``status_code``, as the SDKs' API errors do, with
    ``response.headers`` and ``response.content`` when they have them) is classified like the
    answer itself; timeouts and connection errors by their class names.

    >>> verdict_for_exception(TimeoutError("read timed out"), now_wall_s=0).kind.value
    'timeout'
    >>> verdict_for_exception(ConnectionResetError("reset"), now_wall_s=0).kind.value
    'connection_error'
    >>> verdict_for_exception(KeyError("x"), now_wall_s=0) is None
    True
    """
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        body = getattr(response, "content", None)
        return classify_response(
            status, headers, body if isinstance(body, bytes) else None, now_wall_s=now_wall_s
        )
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & _TIMEOUT_NAMES:
        return verdict_for_failure(OutcomeKind.TIMEOUT, describe_exception(exc))
    if names & _CONNECTION_NAMES:
        return verdict_for_failure(OutcomeKind.CONNECTION_ERROR, describe_exception(exc))
    return None
