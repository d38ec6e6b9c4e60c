"""What a provider's rate-limit headers say about the budgets right now, read as evidence.

``remaining`` is what a budget held when the provider counted one of our requests, in a window
whose length it does not say (a minute at OpenAI, a second at some gateways, 10 s at Azure, a
continuous refill at Anthropic). These functions read it without assuming the window: as the
headroom left now (:func:`drain_to_headroom`), and, on a 429, as a sign of which limit refused
(:func:`budget_exhausted`, :func:`budgets_have_room`).

>>> from pacekeeper.core.headers import RateLimitSnapshot
>>> budget_exhausted(RateLimitSnapshot(remaining_requests=0), tokens=100)
True
>>> budgets_have_room(RateLimitSnapshot(limit_requests=1200, remaining_requests=1190), tokens=1)
True
>>> budgets_have_room(RateLimitSnapshot(limit_requests=1200, remaining_requests=29), tokens=1)
False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pacekeeper.core.headers import RateLimitSnapshot

if TYPE_CHECKING:
    from pacekeeper.core.bucket import TokenBucket

__all__ = [
    "budget_exhausted",
    "budgets_have_room",
    "drain_to_first_window",
    "drain_to_headroom",
    "outlasts_a_minute",
    "output_budget_short",
    "short_window",
    "spent_budget",
]

# A per-minute budget is whole again within a minute of any use, however it is enforced; a
# reset further away than this (with room for rounding and clock skew) is a longer window.
_LONGEST_MINUTE_RESET_S = 90.0
_SHORT_WINDOW_S = 40.0
"""A budget whose remaining and reset add up to less than this many seconds of its stated
rate is counted over a short window: a minute's bucket always adds up to a minute."""


def outlasts_a_minute(reset_s: float | None) -> bool:
    """Whether a budget's reset shows a window longer than a minute: its stated limit is then
    a quota per hour or day, not a rate to pace at. Groq's ``x-ratelimit-*-requests`` state
    requests per day under the names OpenAI uses per minute.

    >>> outlasts_a_minute(179.56), outlasts_a_minute(0.12), outlasts_a_minute(None)
    (True, False, False)
    """
    return reset_s is not None and reset_s > _LONGEST_MINUTE_RESET_S


def short_window(
    *, remaining: float, rate_per_s: float, reset_s: float | None, within_s: float = _SHORT_WINDOW_S
) -> bool:
    """Whether ``remaining`` and ``reset`` describe a short window (or bucket), not a
    minute's: ``remaining + rate x reset`` is about the budget's capacity, a minute's worth
    for OpenAI's buckets (remaining scaled to the per-minute limit), a second's for a gateway
    that counts per second.

    >>> short_window(remaining=12, rate_per_s=20.0, reset_s=0.4)
    True
    >>> short_window(remaining=1180, rate_per_s=20.0, reset_s=1.0)
    False
    """
    if reset_s is None or rate_per_s <= 0:
        return False
    return max(0.0, remaining) / rate_per_s + reset_s <= within_s


def spent_budget(
    limits: RateLimitSnapshot | None, tokens: int, *, unstated: bool = False
) -> Literal["requests", "tokens"] | None:
    """Which budget a 429's own headers show too low for this request (``tokens`` its
    cost): "requests", "tokens" or None. With ``unstated``, only a budget whose limit the
    headers do not state (Azure's ``remaining`` of a 10-s window): its 429 says only that
    the window is spent, and its hint when the next begins.

    >>> spent_budget(RateLimitSnapshot(remaining_tokens=300), tokens=900)
    'tokens'
    >>> stated = RateLimitSnapshot(limit_requests=600, remaining_requests=0)
    >>> spent_budget(stated, tokens=900), spent_budget(stated, tokens=900, unstated=True)
    ('requests', None)
    """
    if limits is None:
        return None
    requests = limits.remaining_requests
    if requests is not None and requests < 1 and not (unstated and limits.limit_requests):
        return "requests"
    tokens_left = limits.remaining_tokens
    if tokens_left is None or tokens_left >= tokens:
        return None
    if unstated and (limits.limit_tokens is not None or limits.limit_input_tokens is not None):
        return None
    return "tokens"


def budget_exhausted(limits: RateLimitSnapshot, tokens: int) -> bool:
    """Whether a 429's own headers show a budget too low for this request."""
    return spent_budget(limits, tokens) is not None


def output_budget_short(limits: RateLimitSnapshot, output_tokens: int) -> bool:
    """Whether a 429's own headers show the output-token budget (limited apart: Anthropic's
    OTPM, which reserves ``max_tokens`` at admission) too low for the ``output_tokens`` this
    request reserved: below them, or below half its limit, because a provider that states a
    minute's budget may enforce it over a shorter window and refuse with part of the minute
    left (as :func:`budgets_have_room` reads the other budgets).

    >>> from pacekeeper.core.headers import RateLimitSnapshot
    >>> short = RateLimitSnapshot(limit_output_tokens=60000, remaining_output_tokens=13000)
    >>> output_budget_short(short, 256), output_budget_short(short, 0)
    (True, False)
    >>> output_budget_short(RateLimitSnapshot(remaining_output_tokens=40000), 256)
    False
    """
    remaining = limits.remaining_output_tokens
    if remaining is None or output_tokens <= 0:
        return False
    limit = limits.limit_output_tokens
    return remaining < output_tokens or (limit is not None and remaining < 0.5 * limit)


def budgets_have_room(limits: RateLimitSnapshot, tokens: int) -> bool:
    """Whether a 429's own rate-limit headers show room in both budgets: remaining at least
    this request and (where the limit is stated) at least half of it. Half, because a provider
    that reports a minute's budget but enforces it per second (OpenAI) refuses with some of the
    minute left; a refusal with half of it left is not about the rate. With no reading of the
    requests budget (none stated, or a quota per day set aside) room in tokens says nothing of
    a request rate stated nowhere (Groq's rpm).

    >>> from pacekeeper.core.headers import RateLimitSnapshot
    >>> budgets_have_room(RateLimitSnapshot(limit_tokens=6000, remaining_tokens=5900), tokens=9)
    False
    """
    if limits.remaining_requests is None:
        return False
    for remaining, limit, need in (
        (limits.remaining_requests, limits.limit_requests, 1),
        (limits.remaining_tokens, limits.limit_tokens, tokens),
    ):
        if remaining is None:
            continue
        if remaining < need or (limit is not None and remaining < 0.5 * limit):
            return False
    return True


def drain_to_headroom(
    bucket: TokenBucket | None,
    *,
    now: float,
    remaining: int,
    reset_s: float | None,
    elapsed_s: float,
    used_since: float,
    slack: float,
    fixed_window: bool = False,
    continuous: bool = False,
) -> None:
    """Drain ``bucket`` to the provider's headroom now, when that is lower than its level.

    ``remaining`` was left when the provider counted a request sent ``elapsed_s`` ago; what
    this lane sent after it (``used_since``) has been counted since. What refilled since depends
    on the window, whose length we never assume: with a ``reset_s`` the window is the same
    until then and nothing is assumed refilled (exact for fixed windows, a little cautious for
    a continuous bucket); once ``reset_s`` has passed, the snapshot describes a window that is
    gone and says nothing. Without a reset (Azure sends none), the stated rate refills
    continuously. ``slack`` (one request) absorbs the moment between the provider's clock and
    ours; the level never goes below empty, since what was refused took nothing.

    With ``fixed_window`` (the resets showed windows that end at one instant), the window
    refills nothing before its reset while our bucket refills continuously: the bucket then
    drains to what lets no more than ``remaining`` through before the reset, a debt repaid as
    the window ends, and without slack (a request too many is the 429 this avoids). A bucket
    that keeps to windows of a known length (:meth:`TokenBucket.set_windows`) refills
    nothing within one: it drains to ``remaining`` itself.

    With ``continuous`` (the answers proved a bucket that refills all along,
    :attr:`~pacekeeper.core.depth.StatedDepth.continuous`), the reset is when it is full
    again, not when it starts to refill: the rate refilled it since the count, as with no
    reset. Assuming nothing refilled pinned a drained 1-s bucket at empty on every answer
    (its reset is a second away, its answers 0.9 s late) and held the lane to a few requests
    a second after a limit halved."""
    if bucket is None:
        return
    if reset_s is not None and fixed_window:
        if elapsed_s >= reset_s:
            return
        if bucket.window_s is not None:
            # It keeps to the windows: what is left of this one is all it holds until it ends
            # (less than nothing: the provider refuses the excess, and carries none over).
            ends_at = now + reset_s - elapsed_s
            bucket.drain_window_to(now=now, level=max(0.0, remaining - used_since), ends_at=ends_at)
            return
        left = remaining - used_since - bucket.rate_per_s * (reset_s - elapsed_s)
        bucket.drain_to(now=now, level=left)
        return
    if reset_s is not None and not continuous:
        if elapsed_s >= reset_s:
            return
        refilled = 0.0
    else:
        refilled = bucket.rate_per_s * elapsed_s
    bucket.drain_to(now=now, level=max(0.0, remaining - used_since + refilled + slack))


def drain_to_first_window(
    bucket: TokenBucket | None,
    *,
    now: float,
    remaining: int,
    reset_s: float,
    elapsed_s: float,
    used_since: float,
    late_s: float = 0.0,
    short_s: float = _SHORT_WINDOW_S,
) -> None:
    """Drain a ``bucket`` just made from the first statement of its limit to what a careful
    client knows of the provider's window, when that window is short.

    ``remaining + rate x reset`` is about the provider's capacity: a minute's worth for a
    bucket of a minute (OpenAI's), about a second's for a gateway that counts one-second
    windows. Only the short one matters here: our burst (half a second) is then a large part
    of the window, and before any answer from a window is back, nothing says how much of it
    is left. So: while the counted window lasts (its reset not yet passed), no more than
    ``remaining``, less what this lane sent after the counted request (``used_since``),
    goes before it ends, and nothing refills before then (a fixed window's rule, cautious for
    a bucket); once it has passed, the next window started then, and the bucket holds what
    the rate refilled since, less ``used_since`` (started empty at the first answer instead,
    the first whole window lost half its requests: `window` seed 1). A bucket made full
    spent its burst into a window that had just started and then paced the rate through all
    of it: a window and a half.
    ``short_s``: the longest window read as short (a minute's bucket scaled to its limit
    and drained below its share of that reads short too). ``late_s``: how much later than
    sent the counted request may have reached the provider
    (its first connection's handshakes): the reset counts from then, so the window may end
    that much later than ``reset_s`` after the send, and nothing refills before (counted from
    the send, a request sent 0.05 s after the end read went into the window it had refilled
    for, which was full).

    >>> from pacekeeper.core.bucket import TokenBucket
    >>> b = TokenBucket(rate_per_s=3300.0, burst=1650.0)  # 198,000 tpm, counted per second
    >>> drain_to_first_window(
    ...     b, now=0.0, remaining=2987, reset_s=0.38, elapsed_s=0.485, used_since=1301
    ... )
    >>> b.level(0.0)
    0.0
    >>> minute = TokenBucket(rate_per_s=3300.0, burst=1650.0)  # a minute's bucket: untouched
    >>> drain_to_first_window(
    ...     minute, now=0.0, remaining=196_000, reset_s=0.6, elapsed_s=0.7, used_since=1301
    ... )
    >>> minute.level(0.0)
    1650.0
    """
    if bucket is None:
        return
    rate = bucket.rate_per_s
    if not short_window(remaining=remaining, rate_per_s=rate, reset_s=reset_s, within_s=short_s):
        return
    if elapsed_s >= reset_s + late_s:
        # The next window began at the latest then, and refills from empty as the rate
        # would since, less what went after the counted request (in it, at worst).
        since_s = elapsed_s - reset_s - late_s
        bucket.drain_to(now=now, level=max(0.0, rate * since_s - used_since))
        return
    level = remaining - used_since - rate * (reset_s + late_s - elapsed_s)
    if elapsed_s >= reset_s:  # the window may be over: the next began as late as now
        level = min(level, 0.0)
    bucket.drain_to(now=now, level=level)
