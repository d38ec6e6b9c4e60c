"""Reading what a provider's response headers say about its limits and when to come back.

Providers describe their limits in headers on every response, not only on 429s:

* OpenAI (and Azure OpenAI, and most OpenAI-compatible gateways) send
  ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``. The resets are Go durations
  (``"6m0s"``, ``"120ms"``) as OpenAI writes them, or plain seconds (``"33"``) as Azure does.
* Anthropic sends ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
  {limit,remaining,reset}`` whose resets are RFC 3339 timestamps.
* Gateways (OpenRouter and many others) send unsuffixed ``X-RateLimit-{Limit,Remaining,Reset}``:
  a request budget per window whose length they do not say, the reset in seconds, a duration, or
  a Unix time in seconds or milliseconds. They fill the requests fields, with
  :attr:`RateLimitSnapshot.requests_window_unknown` set. So do the IETF draft's
  ``RateLimit-{Limit,Remaining,Reset}`` (Kong, Envoy and other API gateways), whose limit may
  carry its policy after the number (``"10, 10;w=60"``: the number is read), and its later
  structured ``RateLimit`` with ``RateLimit-Policy`` (Cloudflare), whose window, when a
  minute, makes the budget a minute's.
* Some name the minute in the header: Mistral's ``x-ratelimit-{limit,remaining}-req-minute``
  and ``-tokens-minute``, Cerebras's ``x-ratelimit-{limit,remaining,reset}-tokens-minute``.
  They fill the requests and tokens fields as OpenAI's names do. A day's budget
  (``-requests-day``) is no pace and is not read.
* LiteLLM's proxy states a key's limits per descriptor, ``x-ratelimit-{descriptor}-{limit,
  remaining}-{requests,tokens,max_parallel_requests}`` (``api_key``, ``team``, ...): the
  least ``max_parallel_requests`` limit is read as the requests it takes in flight
  (:attr:`RateLimitSnapshot.limit_in_flight`), and of its per-minute requests and tokens
  the descriptor with the least left, where no other header states them.
* Anyone may send ``retry-after`` (seconds or an HTTP date, RFC 9110) and the OpenAI/Anthropic
  extension ``retry-after-ms``; the SDKs prefer the latter because it is more precise.

:func:`parse_rate_limit_headers` runs on every response, so it makes one pass over the headers,
lower-cases each name once and looks it up in a dict of the names it cares about; only the
handful of matching values get parsed. Everything here is forgiving: a value that cannot be read
is treated as not sent (None), never as an exception, because a gateway's odd header must not
turn a good answer into a crash.

All times are seconds. Absolute times (HTTP dates, RFC 3339 timestamps) are turned into "seconds
from now" against a ``now_wall_s`` the caller passes (a :func:`time.time` value), which keeps
these functions pure and testable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

__all__ = [
    "RateLimitSnapshot",
    "parse_duration_s",
    "parse_rate_limit_headers",
    "parse_retry_after_s",
    "reset_grain_s",
    "retry_hint_s",
]

_UNIT_LETTERS = "hmsunµμ"
# The precision of the resets seen, by their texts: read for every answer, and resets repeat
# ("1ms", "6m0s").
_GRAINS_S: dict[tuple[str, ...], float] = {}
_GRAINS_KEPT = 4096
# Go's time.ParseDuration units as (multiplier, divisor): dividing by 1000 rather than
# multiplying by 1e-3 keeps "120ms" exactly 0.12. Go accepts both the micro sign (U+00B5) and
# the Greek mu (U+03BC) for microseconds.
_UNIT_S: dict[str, tuple[float, float]] = {
    "ns": (1.0, 1e9),
    "us": (1.0, 1e6),
    "\u00b5s": (1.0, 1e6),
    "\u03bcs": (1.0, 1e6),
    "ms": (1.0, 1e3),
    "s": (1.0, 1.0),
    "m": (60.0, 1.0),
    "h": (3600.0, 1.0),
}
_NUMBER_CHARS = frozenset("0123456789.")

# A bare number this large in a *reset* header is an epoch timestamp (some gateways send one),
# not a wait: 1e9 seconds is 31 years, 1e9 as a timestamp is September 2001.
_EPOCH_THRESHOLD_S = 1e9
# And one this large is an epoch in milliseconds (OpenRouter's X-RateLimit-Reset): 1e12 seconds
# is 31,000 years away, 1e12 milliseconds September 2001.
_EPOCH_MS_THRESHOLD = 1e12


def _non_negative_float(text: str) -> float | None:
    """``float(text)`` if it is a finite number >= 0, else None (never raises)."""
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number + 0.0  # folds -0.0 into 0.0


def _is_plain_number(text: str) -> bool:
    """Digits with at most one dot (ASCII only: ``float`` also reads other scripts' digits)."""
    return _is_digits(text.replace(".", "", 1))


def _is_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_duration_s(value: str) -> float | None:
    """Seconds in a Go-style duration (as OpenAI sends resets) or a plain number of seconds.

    Returns None for anything unparseable or negative; never raises.

    >>> parse_duration_s("6m0s")
    360.0
    >>> parse_duration_s("120ms")
    0.12
    >>> parse_duration_s("2h3m4.5s")
    7384.5
    >>> parse_duration_s("33")  # Azure and gateways send plain seconds
    33.0
    >>> parse_duration_s("500\u00b5s")
    0.0005
    >>> parse_duration_s("-1s") is None, parse_duration_s("soon") is None
    (True, True)
    """
    text = value.strip()
    if not text:
        return None
    last = text[-1]
    if "0" <= last <= "9" or last == ".":
        # No unit: plain seconds (Go itself writes only "0" this way).
        return _non_negative_float(text)
    # Fast paths for what Go's Duration.String() writes ("120ms", "1.5s", "6m0s", "1h2m3.5s");
    # the general loop below handles the rest ("500us", "1m30ms", "+5s").
    if last == "s":
        if text[-2:-1] == "m":
            head = text[:-2]
            if _is_plain_number(head):
                millis = _non_negative_float(head)
                return None if millis is None else millis / 1000.0
        else:
            head = text[:-1]
            hours = minutes = "0"
            if "h" in head:
                hours, _, head = head.partition("h")
            if "m" in head:
                minutes, _, head = head.partition("m")
            if _is_plain_number(head) and _is_digits(hours) and _is_digits(minutes):
                seconds = _non_negative_float(head)
                if seconds is not None:
                    # float, not int: a 5,000-digit hour count must not raise
                    total = float(hours) * 3600.0 + float(minutes) * 60.0 + seconds
                    return total if math.isfinite(total) else None
    if text[0] == "+":  # Go accepts a sign; a "-" falls through to the unit check and fails.
        text = text[1:]
    total = 0.0
    i, n = 0, len(text)
    if n == 0:
        return None
    while i < n:
        j = i
        while j < n and text[j] in _NUMBER_CHARS:
            j += 1
        k = j
        while k < n and text[k] not in _NUMBER_CHARS:
            k += 1
        unit = _UNIT_S.get(text[j:k])
        if unit is None or j == i:
            return None
        number = _non_negative_float(text[i:j])  # "." and "1.2.3" fail here
        if number is None:
            return None
        total += number * unit[0] / unit[1]
        i = k
    return total if math.isfinite(total) else None


def _http_date_delay_s(text: str, now_wall_s: float) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about the local zone
        when = when.replace(tzinfo=timezone.utc)
    try:
        return max(0.0, when.timestamp() - now_wall_s)
    except (OverflowError, OSError, ValueError):
        return None


def _retry_after_s(ms: str | None, plain: str | None, now_wall_s: float) -> float | None:
    if ms is not None:
        millis = _non_negative_float(ms.strip())
        if millis is not None:
            return millis / 1000.0
    if plain is not None:
        text = plain.strip()
        seconds = _non_negative_float(text)
        if seconds is not None:
            return seconds
        if text and not ("0" <= text[0] <= "9" or text[0] in "+-."):
            return _http_date_delay_s(text, now_wall_s)
    return None


def parse_retry_after_s(headers: Mapping[str, str], *, now_wall_s: float) -> float | None:
    """The server's ``retry-after-ms`` or ``retry-after`` as seconds from ``now_wall_s``.

    ``retry-after-ms`` wins when it is readable; ``retry-after`` may be seconds (int or float)
    or an HTTP date, which is measured from ``now_wall_s`` and clamped at 0.

    >>> parse_retry_after_s({"retry-after-ms": "360000", "retry-after": "360"}, now_wall_s=0)
    360.0
    >>> parse_retry_after_s({"Retry-After": "Thu, 01 Jan 1970 00:01:00 GMT"}, now_wall_s=30)
    30.0
    >>> parse_retry_after_s({"retry-after": "whenever"}, now_wall_s=0) is None
    True
    """
    found = _scan(headers)
    if found is None:
        return None
    return _retry_after_s(found.get(_S_RETRY_AFTER_MS), found.get(_S_RETRY_AFTER), now_wall_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSnapshot:
    """What one response's rate-limit headers said; None wherever a value was not sent.

    ``limit_*`` is the budget per window, ``remaining_*`` what is left of it (negative values
    are read as 0) and ``reset_*_s`` the seconds until it is refilled, counted from the
    response. OpenAI and Azure fill the requests and tokens fields; Anthropic fills requests,
    tokens (its ``anthropic-ratelimit-tokens-*``, the stricter of input and output) and the
    input/output token fields.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    limit_input_tokens: int | None = None
    remaining_input_tokens: int | None = None
    reset_input_tokens_s: float | None = None
    limit_output_tokens: int | None = None
    remaining_output_tokens: int | None = None
    reset_output_tokens_s: float | None = None
    resets_to_the_second: bool = False
    """The resets were sent as times of day in whole seconds (RFC 3339, an epoch number), not
    as durations: they are up to a second late and several share one instant by rounding."""
    reset_grain_s: float = field(default=1.0, compare=False)
    """How precise the coarsest reset read is (:func:`reset_grain_s`): a duration in ms ("49ms",
    OpenAI's) is exact to the ms, a time of day to the second. 1 when no reset was read."""
    requests_window_unknown: bool = False
    """The requests fields came from unsuffixed ``X-RateLimit-Limit/-Remaining/-Reset`` (a
    gateway's): ``limit_requests`` is what one window holds, a window whose length nobody
    stated (10 s at some gateways), not a minute's budget. The reader infers the window."""
    limit_in_flight: int | None = None
    """How many requests the server takes in flight at once, stated (LiteLLM's
    ``max_parallel_requests``; the least of its descriptors'): None when not stated."""

    @property
    def is_empty(self) -> bool:
        """True when no field could be read (the headers were there but unreadable)."""
        return all(getattr(self, name) is None for name in _FIELD_NAMES)

    def exhausted_reset_s(self) -> float | None:
        """Seconds until the longest-waiting exhausted budget (remaining 0) refills, if any.

        >>> RateLimitSnapshot(remaining_requests=0, reset_requests_s=0.12,
        ...                   remaining_tokens=5, reset_tokens_s=9.0).exhausted_reset_s()
        0.12
        """
        longest: float | None = None
        for remaining, reset in (
            (self.remaining_requests, self.reset_requests_s),
            (self.remaining_tokens, self.reset_tokens_s),
            (self.remaining_input_tokens, self.reset_input_tokens_s),
            (self.remaining_output_tokens, self.reset_output_tokens_s),
        ):
            if remaining is not None and remaining <= 0 and reset is not None:
                longest = reset if longest is None else max(longest, reset)
        return longest


_N_RATE_FIELDS = 12
_FIELD_NAMES: tuple[str, ...] = tuple(RateLimitSnapshot.__dataclass_fields__)[:_N_RATE_FIELDS]

# One slot per interesting header. Slots 0..11 are the x-ratelimit-* values and 12..23 the
# anthropic-ratelimit-* ones, each as (limit, remaining, reset) for requests, tokens, input
# tokens and output tokens: the order of RateLimitSnapshot's fields. Then the retry headers.
_ANTHROPIC = 12
_S_RETRY_AFTER_MS = 24
_S_RETRY_AFTER = 25
_S_SHOULD_RETRY = 26
# Unsuffixed X-RateLimit-Limit/-Remaining/-Reset (gateways): read as the requests budget when
# the suffixed requests headers are absent.
_S_UNSUFFIXED = 27
# The IETF draft's structured RateLimit-Policy and RateLimit (its versions from -07): read as
# the requests budget when nothing above states one.
_S_IETF_POLICY = 30
_S_IETF = 31

# LiteLLM's statements per descriptor of a key (its v3 limiter): 8 slots per descriptor from
# here on, in the order of _DESCRIBED (the remaining of max_parallel_requests is not read).
_S_DESCRIBED = 40
_DESCRIBED = (
    "limit-requests",
    "remaining-requests",
    "limit-tokens",
    "remaining-tokens",
    "limit-max_parallel_requests",
)
_DESCRIPTORS_READ = 8
_NAMES_KEPT = 1024
_DESCRIBED_NAME = re.compile(
    r"x-ratelimit-(?P<descriptor>[a-z0-9_]+)"
    r"-(?P<what>(?:limit|remaining)-(?:requests|tokens|max_parallel_requests))"
)


class _SlotOf(dict[str, "int | None"]):
    """The slot of each lower-cased header name: the fixed names below, and the names read
    by their shape (LiteLLM's descriptors: ``x-ratelimit-api_key-limit-requests``), judged
    once when first seen and kept (None: not of interest), so that a response's headers
    cost one lookup each however they are named. Past ``_NAMES_KEPT`` names (a server that
    names a header anew per response) a new one is judged each time it comes."""

    __slots__ = ("_descriptors",)

    def __init__(self, fixed: dict[str, int]) -> None:
        super().__init__(fixed)
        self._descriptors: dict[str, int] = {}

    def __missing__(self, name: str) -> int | None:
        slot = None
        matched = _DESCRIBED_NAME.fullmatch(name)
        if matched is not None and matched["what"] in _DESCRIBED:
            descriptors = self._descriptors
            k = descriptors.setdefault(matched["descriptor"], len(descriptors))
            if k < _DESCRIPTORS_READ:
                slot = _S_DESCRIBED + 8 * k + _DESCRIBED.index(matched["what"])
        if len(self) < _NAMES_KEPT:
            self[name] = slot
        return slot


_SLOT_OF = _SlotOf(
    {
        "retry-after-ms": _S_RETRY_AFTER_MS,
        "retry-after": _S_RETRY_AFTER,
        "x-should-retry": _S_SHOULD_RETRY,
    }
)
_LIMIT, _REMAINING, _RESET = 0, 1, 2
# Per rate slot: (RateLimitSnapshot field, which value, whether it is an Anthropic header).
_SLOT_META: list[tuple[str, int, bool]] = [
    (_FIELD_NAMES[field], field % 3, anthropic)
    for anthropic in (False, True)
    for field in range(_N_RATE_FIELDS)
]
for _i, _budget in enumerate(("requests", "tokens", "input-tokens", "output-tokens")):
    for _j, _what in enumerate(("limit", "remaining", "reset")):
        _SLOT_OF[f"x-ratelimit-{_what}-{_budget}"] = _i * 3 + _j
        _SLOT_OF[f"anthropic-ratelimit-{_budget}-{_what}"] = _ANTHROPIC + _i * 3 + _j
del _i, _j, _budget, _what
for _j, _what in enumerate(("limit", "remaining", "reset")):
    _SLOT_OF[f"x-ratelimit-{_what}"] = _S_UNSUFFIXED + _j
    _SLOT_OF[f"ratelimit-{_what}"] = _S_UNSUFFIXED + _j  # the IETF draft's (Kong, Envoy)
    _SLOT_OF[f"x-ratelimit-{_what}-tokens-minute"] = 3 + _j  # Cerebras, Mistral
    if _what != "reset":
        _SLOT_OF[f"x-ratelimit-{_what}-req-minute"] = _j  # Mistral
del _j, _what
_SLOT_OF["ratelimit-policy"] = _S_IETF_POLICY
_SLOT_OF["ratelimit"] = _S_IETF


def _scan(headers: Mapping[str, object]) -> dict[int, str] | None:
    """One pass over the headers: the interesting values by slot, or None if there are none."""
    found: dict[int, str] | None = None
    slot_of = _SLOT_OF
    for key, value in headers.items():
        slot = slot_of[key.lower()]
        if slot is None:
            continue
        if found is None:
            found = {}
        found[slot] = value if isinstance(value, str) else str(value)
    return found


def _read_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        number = _non_negative_float(text.strip())
        if number is None:
            # The IETF draft's limit followed by its policies ("10, 10;w=60"): the number.
            head = text.partition(",")[0].partition(";")[0]
            return _read_int(head) if head != text else None
        if not number.is_integer():
            return None
        return int(number)


def _rfc3339_delay_s(text: str, now_wall_s: float) -> float | None:
    text = text.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        # Python 3.10 reads only 3 or 6 fraction digits; providers send 0 to 9.
        when_or_none = _fromisoformat_lenient(text)
        if when_or_none is None:
            return None
        when = when_or_none
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        return max(0.0, when.timestamp() - now_wall_s)
    except (OverflowError, OSError, ValueError):
        return None


def _fromisoformat_lenient(text: str) -> datetime | None:
    dot = text.find(".", text.find("T") + 1)
    if dot < 0:
        return None
    end = dot + 1
    while end < len(text) and "0" <= text[end] <= "9":
        end += 1
    fraction = text[dot + 1 : end][:6].ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{text[:dot]}.{fraction}{text[end:]}")
    except ValueError:
        return None


def _read_reset_s(text: str, now_wall_s: float, *, timestamp: bool) -> float | None:
    """A reset header: a duration or seconds (OpenAI, Azure), an RFC 3339 time (Anthropic)."""
    if timestamp and ("T" in text or "t" in text):
        return _rfc3339_delay_s(text, now_wall_s)
    seconds = parse_duration_s(text)
    if seconds is not None and seconds >= _EPOCH_MS_THRESHOLD:
        seconds /= 1000.0
    if seconds is not None and seconds >= _EPOCH_THRESHOLD_S:
        return max(0.0, seconds - now_wall_s)  # an epoch timestamp, not a wait
    if seconds is None and ("T" in text or "t" in text):
        return _rfc3339_delay_s(text, now_wall_s)
    return seconds


def _is_time_of_day(text: str) -> bool:
    """Whether a reset is a time (RFC 3339, an epoch number) rather than a duration."""
    if "T" in text or "t" in text:
        return True
    seconds = parse_duration_s(text)
    return seconds is not None and seconds >= _EPOCH_THRESHOLD_S


def reset_grain_s(text: str) -> float:
    """How precise a reset header is, in seconds: the unit of its last digit. A time of day
    counts whole seconds (RFC 3339, an epoch in seconds) or milliseconds (an epoch in
    milliseconds: OpenRouter's); a duration says as much as it prints. (A time of day is
    also off by the difference between the provider's clock and ours, which its readers add
    where it matters: it cancels between two readings.)

    >>> reset_grain_s("49ms"), reset_grain_s("1.25s"), reset_grain_s("6m0s")
    (0.001, 0.01, 1.0)
    >>> reset_grain_s("2026-11-30T12:00:01Z"), reset_grain_s("3"), reset_grain_s("0.5")
    (1.0, 1.0, 0.1)
    >>> reset_grain_s("1764590410000"), reset_grain_s("1764590410")
    (0.001, 1.0)
    """
    text = text.strip()
    if not _is_time_of_day(text):
        return _duration_grain_s(text)
    seconds = _non_negative_float(text)
    return 0.001 if seconds is not None and seconds >= _EPOCH_MS_THRESHOLD else 1.0


def _duration_grain_s(text: str) -> float:
    number = text.rstrip(_UNIT_LETTERS)
    multiplier, divisor = _UNIT_S.get(text[len(number) :], (1.0, 1.0))
    dot = number.rfind(".")
    if dot < 0:
        return multiplier / divisor
    return multiplier / divisor * 10.0 ** (dot + 1 - len(number))


def _snapshot(found: dict[int, str], now_wall_s: float) -> RateLimitSnapshot | None:
    fields: dict[str, Any] = {}
    reset_texts: tuple[str, ...] = ()
    described: dict[int, dict[int, str]] | None = None
    for found_slot, text in found.items():
        slot = found_slot
        if slot >= _S_UNSUFFIXED:
            if slot >= _S_DESCRIBED:
                k, what = divmod(slot - _S_DESCRIBED, 8)
                if described is None:
                    described = {}
                described.setdefault(k, {})[what] = text
                continue
            if slot >= _S_IETF_POLICY:
                continue  # read after the others (below)
            # The requests slots (0-2) hold them, unless suffixed requests headers were sent.
            if any(requests in found for requests in range(3)):
                continue
            slot -= _S_UNSUFFIXED
            fields["requests_window_unknown"] = True
        elif slot >= _S_RETRY_AFTER_MS:
            continue
        name, what, anthropic = _SLOT_META[slot]
        if anthropic and slot - _ANTHROPIC in found:
            continue  # OpenAI-style names win when a gateway sends both
        if what == _RESET:
            fields[name] = _read_reset_s(text, now_wall_s, timestamp=anthropic)
            if _is_time_of_day(text):
                fields["resets_to_the_second"] = True
            reset_texts += (text,)  # no call: this runs for every answer
            continue
        number = _read_int(text)
        if number is not None and number < 0:
            # A negative remaining means over budget: as good as none left, but -1 under a
            # limit of -1 is Azure's Responses API saying "not known". A negative limit means
            # nothing.
            unknown = what != _REMAINING or (number == -1 and found.get(found_slot - 1) == "-1")
            number = None if unknown else 0
        fields[name] = number
    if described is not None:
        _read_described(described, fields)
    if _S_IETF in found and "remaining_requests" not in fields:
        reset_texts += _read_ietf_structured(found[_S_IETF], found.get(_S_IETF_POLICY), fields)
    if not fields:
        return None
    if reset_texts:
        grain_s = _GRAINS_S.get(reset_texts)  # one call: this runs for every answer
        if grain_s is None:
            grain_s = _coarsest_grain_s(reset_texts)
        fields["reset_grain_s"] = grain_s
    return RateLimitSnapshot(**fields)


def _read_described(described: dict[int, dict[int, str]], fields: dict[str, Any]) -> None:
    """LiteLLM's limits per descriptor of a key (``api_key``, ``team``, ...), into
    ``fields``: the least in-flight limit, and for requests and tokens (per minute, as its
    ``rpm_limit`` and ``tpm_limit`` are), where no other header stated that budget, the
    least limit and the least left, each the tightest of its kind (of two windows, the
    pace is held to the slower and the headroom to the emptier)."""

    def least(at: int, *, positive: bool) -> int | None:
        read = [_read_int(d[at]) for d in described.values() if at in d]
        numbers = [n for n in read if n is not None and (n > 0 or not positive)]
        return max(0, min(numbers)) if numbers else None

    fields["limit_in_flight"] = least(4, positive=True)  # what is left: the lane counts it
    for at, budget in ((0, "requests"), (2, "tokens")):
        if f"limit_{budget}" not in fields and f"remaining_{budget}" not in fields:
            fields[f"limit_{budget}"] = least(at, positive=True)
            fields[f"remaining_{budget}"] = least(at + 1, positive=False)


def _structured_items(text: str) -> list[tuple[str, dict[str, str]]]:
    """The members of a structured-field list (RFC 8941), simply read: each a name (a string
    or a token) and its parameters' values as text. A comma inside a quoted name splits it
    (no policy name seen so far holds one).

    >>> _structured_items('"burst";q=100;w=60, "daily";q=1000;w=86400')
    [('burst', {'q': '100', 'w': '60'}), ('daily', {'q': '1000', 'w': '86400'})]
    """
    items = []
    for member in text.split(","):
        name, *params = member.split(";")
        values = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip()] = value.strip().strip('"')
        items.append((name.strip().strip('"'), values))
    return items


def _read_ietf_structured(
    ratelimit: str, policy: str | None, fields: dict[str, Any]
) -> tuple[str, ...]:
    """The IETF draft's ``RateLimit: "default";r=50;t=30`` with its ``RateLimit-Policy:
    "default";q=100;w=60`` (Cloudflare's API sends them): the requests budget of the first
    policy it reports whose quota counts requests (``qu`` absent or ``requests``), into
    ``fields``. A window of 60 s is a minute's, as OpenAI's names state; any other is left
    to be inferred. Returns the reset's text (for its grain), or nothing."""
    quotas = dict(_structured_items(policy)) if policy else {}
    for name, values in _structured_items(ratelimit):
        quota = quotas.get(name, {})
        remaining = _read_int(values.get("r", ""))
        if quota.get("qu", "requests") != "requests" or remaining is None:
            continue
        fields["remaining_requests"] = max(remaining, 0)
        fields["limit_requests"] = _read_int(quota.get("q", ""))
        fields["requests_window_unknown"] = quota.get("w") != "60"
        reset = values.get("t")
        if reset is None:
            return ()
        fields["reset_requests_s"] = _non_negative_float(reset)
        return (reset,)
    return ()


def _coarsest_grain_s(reset_texts: tuple[str, ...]) -> float:
    if len(_GRAINS_S) >= _GRAINS_KEPT:
        _GRAINS_S.clear()
    grain_s = _GRAINS_S[reset_texts] = max(reset_grain_s(text) for text in reset_texts)
    return grain_s


def parse_rate_limit_headers(
    headers: Mapping[str, str], *, now_wall_s: float
) -> RateLimitSnapshot | None:
    """Everything the ``x-ratelimit-*`` or ``anthropic-ratelimit-*`` headers said.

    None when no rate-limit header is present at all; a snapshot whose :attr:`is_empty` is
    true when some were present but none could be read.

    >>> snap = parse_rate_limit_headers(
    ...     {"X-RateLimit-Limit-Requests": "500", "x-ratelimit-remaining-requests": "0",
    ...      "x-ratelimit-reset-requests": "120ms"}, now_wall_s=0)
    >>> snap.limit_requests, snap.remaining_requests, snap.reset_requests_s
    (500, 0, 0.12)
    >>> parse_rate_limit_headers({"content-type": "application/json"}, now_wall_s=0) is None
    True
    """
    found = _scan(headers)
    if found is None:
        return None
    return _snapshot(found, now_wall_s)


def _retry_hint_from(
    found: dict[int, str], snapshot: RateLimitSnapshot | None, now_wall_s: float
) -> float | None:
    hint = _retry_after_s(found.get(_S_RETRY_AFTER_MS), found.get(_S_RETRY_AFTER), now_wall_s)
    if hint is not None:
        return hint
    if snapshot is None:
        return None
    return snapshot.exhausted_reset_s()


def retry_hint_s(
    headers: Mapping[str, str],
    *,
    now_wall_s: float,
    snapshot: RateLimitSnapshot | None = None,
) -> float | None:
    """The server's hint for when to come back, in seconds; None if it gave none.

    ``retry-after-ms``/``retry-after`` first; else the reset of an exhausted budget
    (remaining 0), the longest if several are exhausted. Pass ``snapshot`` when the headers
    were already parsed, to skip parsing them again.

    >>> retry_hint_s({"x-ratelimit-remaining-requests": "0",
    ...               "x-ratelimit-reset-requests": "120ms",
    ...               "x-ratelimit-remaining-tokens": "29000",
    ...               "x-ratelimit-reset-tokens": "2s"}, now_wall_s=0)
    0.12
    """
    found = _scan(headers)
    if found is None:
        return snapshot.exhausted_reset_s() if snapshot is not None else None
    if snapshot is None:
        snapshot = _snapshot(found, now_wall_s)
    return _retry_hint_from(found, snapshot, now_wall_s)


def _should_retry(found: dict[int, str]) -> bool | None:
    """The ``x-should-retry`` header as a bool, or None when absent or neither true nor false."""
    text = found.get(_S_SHOULD_RETRY)
    if text is None:
        return None
    text = text.strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    return None
