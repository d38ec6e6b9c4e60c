"""The cooldown gate: after a 429 that says when to come back, nobody goes before then.

Without it every queued request discovers the 429 for itself, each one spending a request of
the provider's budget to learn what the first one already knew.

A hint in whole seconds, rounded up (Google's ``retryDelay: "1s"``, ``retry-after: 1``), says
the wait is anywhere over a second less: a refilling bucket short of one request's tokens needs
a tenth of a second and was told a second. Where no token limit is stated, the lane paces the
tokens from empty anyway (:mod:`pacekeeper.core.rate`), so the gate waits only the part of the
hint that is certain (:meth:`CooldownGate.hinted_wait_s`); refusals of requests sent in
the rest of a hint show that the hints are tight (fixed windows), and from the second one on
they are waited out whole.
"""

from __future__ import annotations

__all__ = ["CooldownGate"]

_TIGHT_AFTER = 2  # refusals inside hints waited short before hints are waited whole
_WHOLE_FOR_S = 10.0  # after one, hints are waited whole this long


class CooldownGate:
    """Holds requests back until a moment on the monotonic clock.

    >>> gate = CooldownGate()
    >>> gate.remaining_s(now=10.0)
    0.0
    >>> gate.close_until(12.5)
    >>> gate.close_until(11.0)         # a shorter hint never shortens the wait
    >>> gate.remaining_s(now=10.0)
    2.5
    >>> gate
    <CooldownGate closed until t=12.500 (2 so far)>
    """

    __slots__ = (
        "_closed_at",
        "_early_refusals",
        "_hint_ends_at",
        "_judges_hint",
        "_times_closed",
        "_until",
        "_whole_until",
    )

    def __init__(self) -> None:
        self._until = 0.0
        self._times_closed = 0
        self._closed_at = 0.0
        self._hint_ends_at = 0.0
        """When the whole of the last hint waited short would have ended."""
        self._judges_hint = False
        """Whether a refusal in the rest of that hint would show hints to be tight."""
        self._early_refusals = 0
        self._whole_until = 0.0
        """Until when hints are waited whole after a refusal in the rest of one."""

    @property
    def until(self) -> float:
        """The monotonic time the gate opens (in the past when open)."""
        return self._until

    @property
    def times_closed(self) -> int:
        return self._times_closed

    def close_until(self, until: float) -> None:
        """Close the gate until ``until``; an earlier time than the current one changes nothing."""
        self._times_closed += 1
        self._until = max(self._until, until)

    def hinted_wait_s(
        self,
        hint_s: float,
        *,
        sent_at: float,
        now: float,
        whole_seconds: bool,
        first: bool = False,
    ) -> float:
        """How long to close for a 429 with a wait hint of ``hint_s``, to a request sent at
        ``sent_at``. ``whole_seconds``: the hint is rounded up to a whole second and the
        budget that refused is paced from empty now (no limit stated, or a limit with nothing
        said of what is left): only the hint less a second is certain. A refusal of a
        request sent in the rest of such a hint has every hint waited whole for 10 s; after
        two, for good: the hints are tight
        (fixed windows refuse until they end). ``first``: the first refusal of a budget
        nothing was known of, whose pace is a first guess: refusals in the rest of its hint
        say more about that guess than about the hint.

        >>> gate = CooldownGate()
        >>> gate.hinted_wait_s(1.0, sent_at=0.0, now=0.1, whole_seconds=True)
        0.0
        >>> gate.hinted_wait_s(3.0, sent_at=0.5, now=0.6, whole_seconds=True)  # sent in it
        3.0
        >>> gate.hinted_wait_s(3.0, sent_at=12.0, now=12.1, whole_seconds=True)  # 10 s on
        2.0
        >>> gate.hinted_wait_s(1.0, sent_at=13.0, now=13.1, whole_seconds=True)  # again
        1.0
        >>> gate.hints_tight, gate.hinted_wait_s(0.25, sent_at=50, now=50.1, whole_seconds=False)
        (True, 0.25)
        """
        if self._judges_hint and self._closed_at <= sent_at < self._hint_ends_at:
            self._early_refusals += 1
            self._judges_hint = False  # one refusal per hint: a burst in flight is one
            # Our pace may be what ran ahead (a rate measured on a deep bucket's burst): for
            # a while, every hint is waited whole, which lets a measured cut settle it.
            self._whole_until = now + _WHOLE_FOR_S
        if not whole_seconds or self._early_refusals >= _TIGHT_AFTER or now < self._whole_until:
            return hint_s
        if sent_at >= self._closed_at:
            self._closed_at = now
            self._hint_ends_at = now + hint_s
            self._judges_hint = not first
        return max(0.0, hint_s - 1.0)

    @property
    def hints_tight(self) -> bool:
        """Whether refusals inside whole-second hints waited short showed them to be tight."""
        return self._early_refusals >= _TIGHT_AFTER

    def remaining_s(self, now: float) -> float:
        """Seconds until the gate opens (0.0 when open)."""
        return self._until - now if self._until > now else 0.0

    def __repr__(self) -> str:
        return f"<CooldownGate closed until t={self._until:.3f} ({self._times_closed} so far)>"
