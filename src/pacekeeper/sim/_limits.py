"""Admission control: continuously refilling buckets and the per-model limiter built on them.

Everything here is pure: time comes in as a `now` argument (seconds on a monotonic clock), so
the exactness of the limits can be property-tested with an injected clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._scenario import CapacityChange, ModelLimits, Scenario

__all__ = ["FixedWindow", "LimiterRegistry", "Meter", "ModelLimiter", "Rejection", "TokenBucket"]


class TokenBucket:
    """A bucket holding up to `capacity` units, refilling continuously at `rate_per_s`.

    Admission rule (the providers' rule): a cost that fits in the capacity is admitted when the
    level is >= the cost; a cost larger than the capacity is admitted when the bucket is full,
    and the level goes negative (debt) so such a request never starves. Over any interval of T
    seconds the admitted cost is therefore at most capacity + rate_per_s * T (plus, with debt,
    the excess of the largest oversize cost over the capacity).
    """

    __slots__ = ("capacity", "level", "rate_per_s", "updated_at")

    def __init__(self, capacity: float, rate_per_s: float, now: float) -> None:
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.level = capacity
        self.updated_at = now

    def refill(self, now: float) -> None:
        """Bring the level up to date at time `now` (a clock going backwards refills nothing)."""
        elapsed_s = now - self.updated_at
        if elapsed_s > 0:
            level = self.level + elapsed_s * self.rate_per_s
            self.level = self.capacity if level > self.capacity else level
            self.updated_at = now

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds from `now` until `cost` would be admitted; 0.0 means admit now."""
        self.refill(now)
        need = cost if cost <= self.capacity else self.capacity
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate_per_s

    def take(self, cost: float) -> None:
        """Spend `cost` (call right after `wait_s` returned 0.0 for the same `now`)."""
        self.level -= cost

    def full_in_s(self, now: float) -> float:
        """Seconds from `now` until the bucket is full again."""
        self.refill(now)
        missing = self.capacity - self.level
        return missing / self.rate_per_s if missing > 0 else 0.0

    def reconfigure(self, capacity: float, rate_per_s: float, now: float) -> None:
        """Switch to a new capacity and rate at `now`; time before `now` refills at the old rate.

        A shrinking bucket loses the level above its new capacity; a growing one keeps its level
        and refills towards the new capacity.
        """
        self.refill(now)
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.level = min(self.level, capacity)

    def __repr__(self) -> str:
        return (
            f"TokenBucket(level={self.level:.3f}, capacity={self.capacity:g}, "
            f"rate_per_s={self.rate_per_s:g}, updated_at={self.updated_at:.3f})"
        )


class FixedWindow:
    """A budget of `capacity` units per fixed window of `window_s` seconds.

    Windows are aligned to `origin` (server start): [origin + k * window_s, origin + (k+1) *
    window_s). The count starts over at each window boundary, so a client may spend a whole
    window's budget at once and then must wait for the next window. `level` is what is left
    in the current window. A cost larger than the whole budget is admitted at the start of a
    window (level full) and leaves the window in debt, so it never starves.

    It offers the same methods as TokenBucket, so ModelLimiter and the headers treat both alike;
    `full_in_s` is the time to the end of the current window (when the count resets).
    """

    __slots__ = ("capacity", "level", "origin", "rate_per_s", "window_s", "window_start")

    def __init__(
        self,
        capacity: float,
        rate_per_s: float,
        now: float,
        window_s: float,
        origin: float | None = None,
    ) -> None:
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.window_s = window_s
        self.origin = now if origin is None else origin
        self.window_start = self.origin
        self.level = capacity
        self.refill(now)

    def refill(self, now: float) -> None:
        """Start a new window (full budget) if `now` is past the current one."""
        if now >= self.window_start + self.window_s:
            elapsed_windows = (now - self.origin) // self.window_s
            self.window_start = self.origin + elapsed_windows * self.window_s
            self.level = self.capacity

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds from `now` until `cost` would be admitted: 0.0, or the end of the window."""
        self.refill(now)
        need = cost if cost <= self.capacity else self.capacity
        if self.level >= need:
            return 0.0
        return self.window_start + self.window_s - now

    def take(self, cost: float) -> None:
        """Spend `cost` in the current window."""
        self.level -= cost

    def full_in_s(self, now: float) -> float:
        """Seconds from `now` until the count resets (the end of the current window)."""
        self.refill(now)
        if self.level >= self.capacity:
            return 0.0
        return self.window_start + self.window_s - now

    def reconfigure(self, capacity: float, rate_per_s: float, now: float) -> None:
        """Switch to a new budget at `now`: what was used in this window stays used."""
        self.refill(now)
        used = self.capacity - self.level
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.level = capacity - used

    def __repr__(self) -> str:
        return (
            f"FixedWindow(level={self.level:.3f}, capacity={self.capacity:g}, "
            f"window_s={self.window_s:g}, window_start={self.window_start:.3f})"
        )


Meter = TokenBucket | FixedWindow


def _meter(
    per_minute: float | None, limits: ModelLimits, now: float, origin: float | None
) -> Meter | None:
    if per_minute is None:
        return None
    rate_per_s = per_minute / 60.0
    if limits.window_s is not None:
        return FixedWindow(
            rate_per_s * limits.window_s, rate_per_s, now, limits.window_s, origin=origin
        )
    return TokenBucket(rate_per_s * limits.burst_s, rate_per_s, now)


def _day_meter(
    per_day: float | None, limits: ModelLimits, now: float, day_origin: float | None
) -> Meter | None:
    if per_day is None:
        return None
    if limits.day_refill:
        return TokenBucket(per_day, per_day / limits.day_s, now)
    return FixedWindow(per_day, per_day / limits.day_s, now, limits.day_s, origin=day_origin)


def _window_of(limits: ModelLimits) -> float:
    return limits.window_s if limits.window_s is not None else limits.burst_s


class Rejection:
    """Why a request was not admitted and when it would be.

    kind is "requests", "tokens", "input_tokens", "output_tokens", "requests_day" or
    "tokens_day" (the meter that needs the longest wait) or "concurrency" (max_in_flight
    reached; wait_s is then 0.0 because no time bound is known).
    """

    __slots__ = ("kind", "requested", "wait_s")

    def __init__(self, kind: str, wait_s: float, requested: float) -> None:
        self.kind = kind
        self.wait_s = wait_s
        self.requested = requested

    def __repr__(self) -> str:
        return (
            f"Rejection(kind={self.kind!r}, wait_s={self.wait_s:.3f}, requested={self.requested:g})"
        )


class ModelLimiter:
    """The limits of one model: a request bucket, a token bucket and an in-flight cap.

    `rpm`, `tpm`, `input_tpm`, `output_tpm` and `max_in_flight` are the current
    (capacity-change adjusted) values; the meters hold `burst_s` seconds of the per-minute
    budgets (buckets), or `window_s` seconds of them (fixed windows).
    """

    __slots__ = (
        "_base",
        "_changes",
        "_factor",
        "_next_change",
        "in_flight",
        "input_tokens",
        "input_tpm",
        "max_in_flight",
        "model",
        "output_tokens",
        "output_tpm",
        "requests",
        "requests_day",
        "rpd",
        "rpm",
        "tokens",
        "tokens_day",
        "tpd",
        "tpm",
    )

    def __init__(
        self,
        model: str,
        limits: ModelLimits,
        now: float,
        changes: Iterable[tuple[float, float]] = (),
        *,
        origin: float | None = None,
        day_origin: float | None = None,
    ) -> None:
        """`changes` are (monotonic time, factor) pairs, applied lazily when time passes them;
        fixed windows are aligned to `origin` (server start; default `now`), days to
        `day_origin` (the monotonic time a day began; default `origin`)."""
        self.model = model
        self._base = limits
        self._factor = 1.0
        self._changes = sorted(changes)
        self._next_change = 0
        self.rpm = limits.rpm
        self.tpm = limits.tpm
        self.input_tpm = limits.input_tpm
        self.output_tpm = limits.output_tpm
        self.max_in_flight = limits.max_in_flight
        self.in_flight = 0
        self.requests = _meter(limits.rpm, limits, now, origin)
        self.tokens = _meter(limits.tpm, limits, now, origin)
        self.input_tokens = _meter(limits.input_tpm, limits, now, origin)
        self.output_tokens = _meter(limits.output_tpm, limits, now, origin)
        # Daily budgets: fixed days, never changed by capacity changes.
        self.rpd = limits.rpd
        self.tpd = limits.tpd
        day_start = day_origin if day_origin is not None else origin
        self.requests_day = _day_meter(limits.rpd, limits, now, day_start)
        self.tokens_day = _day_meter(limits.tpd, limits, now, day_start)

    def _apply_due_changes(self, now: float) -> None:
        changes = self._changes
        while self._next_change < len(changes) and changes[self._next_change][0] <= now:
            at, factor = changes[self._next_change]
            self._next_change += 1
            self._factor *= factor
            base = self._base
            span_s = _window_of(base)
            # Recompute from the base values so that rounding never compounds.
            if base.rpm is not None and self.requests is not None:
                self.rpm = base.rpm * self._factor
                self.requests.reconfigure(self.rpm / 60.0 * span_s, self.rpm / 60.0, at)
            if base.tpm is not None and self.tokens is not None:
                self.tpm = base.tpm * self._factor
                self.tokens.reconfigure(self.tpm / 60.0 * span_s, self.tpm / 60.0, at)
            if base.input_tpm is not None and self.input_tokens is not None:
                self.input_tpm = base.input_tpm * self._factor
                rate = self.input_tpm / 60.0
                self.input_tokens.reconfigure(rate * span_s, rate, at)
            if base.output_tpm is not None and self.output_tokens is not None:
                self.output_tpm = base.output_tpm * self._factor
                rate = self.output_tpm / 60.0
                self.output_tokens.reconfigure(rate * span_s, rate, at)
            if base.max_in_flight is not None:
                self.max_in_flight = max(1, round(base.max_in_flight * self._factor))

    def admit(
        self,
        token_cost: float,
        now: float,
        input_cost: float = 0.0,
        output_reserve: float | None = None,
    ) -> Rejection | None:
        """Admit one request costing `token_cost` tokens (and `input_cost` input tokens) at
        `now`, or say why not.

        The output-token meter, where there is one, counts in one of two ways. With an
        `output_reserve` (Anthropic's documented rule: max_tokens), that much must fit and is
        taken now, and `settle_output` corrects it to what was generated at the end. With None,
        nothing is taken now and the request is admitted while the meter is not in debt;
        `charge_output` charges what was generated.

        On admission the meters are charged and `in_flight` is incremented (the caller calls
        `release` when the request is done). A rejected request spends nothing.
        """
        if self._next_change < len(self._changes):
            self._apply_due_changes(now)
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return Rejection("concurrency", 0.0, 1)
        requests, tokens = self.requests, self.tokens
        wait_requests_s = 0.0 if requests is None else requests.wait_s(1, now)
        wait_tokens_s = 0.0 if tokens is None else tokens.wait_s(token_cost, now)
        worst = Rejection("requests", wait_requests_s, 1)
        if wait_tokens_s > worst.wait_s:
            worst = Rejection("tokens", wait_tokens_s, token_cost)
        input_tokens, output_tokens = self.input_tokens, self.output_tokens
        if input_tokens is not None:
            wait_s = input_tokens.wait_s(input_cost, now)
            if wait_s > worst.wait_s:
                worst = Rejection("input_tokens", wait_s, input_cost)
        if output_tokens is not None:
            # Reserved: the reserve must fit. Charged as generated: admit while not in debt.
            output_need = (
                min(1.0, output_tokens.capacity) if output_reserve is None else output_reserve
            )
            wait_s = output_tokens.wait_s(output_need, now)
            if wait_s > worst.wait_s:
                worst = Rejection("output_tokens", wait_s, output_need)
        requests_day, tokens_day = self.requests_day, self.tokens_day
        if requests_day is not None:
            wait_s = requests_day.wait_s(1, now)
            if wait_s > worst.wait_s:
                worst = Rejection("requests_day", wait_s, 1)
        if tokens_day is not None:
            wait_s = tokens_day.wait_s(token_cost, now)
            if wait_s > worst.wait_s:
                worst = Rejection("tokens_day", wait_s, token_cost)
        if worst.wait_s > 0.0:
            # Name the meter that binds longest: that is when the request would fit.
            return worst
        if requests is not None:
            requests.take(1)
        if tokens is not None:
            tokens.take(token_cost)
        if input_tokens is not None:
            input_tokens.take(input_cost)
        if output_tokens is not None and output_reserve:
            output_tokens.take(output_reserve)
        if requests_day is not None:
            requests_day.take(1)
        if tokens_day is not None:
            tokens_day.take(token_cost)
        self.in_flight += 1
        return None

    def charge_output(self, tokens: float, now: float) -> None:
        """Output tokens were generated (only the output-token meter counts them)."""
        if self.output_tokens is not None:
            self.output_tokens.refill(now)
            self.output_tokens.take(tokens)

    def settle_output(self, reserved: float, generated: float, now: float) -> None:
        """A request that reserved `reserved` output tokens at admission generated `generated`
        (0 if it failed or was cut short): give back the difference, never filling the meter
        beyond its capacity (or charge the excess, had more been generated)."""
        meter = self.output_tokens
        if meter is not None and reserved != generated:
            meter.refill(now)
            level = meter.level + reserved - generated
            meter.level = meter.capacity if level > meter.capacity else level

    def release(self) -> None:
        """One admitted request finished (whatever its outcome)."""
        self.in_flight -= 1

    def refresh(self, now: float) -> None:
        """Apply due capacity changes and refill, e.g. before reporting headers or stats."""
        if self._next_change < len(self._changes):
            self._apply_due_changes(now)
        if self.requests is not None:
            self.requests.refill(now)
        for meter in (
            self.tokens,
            self.input_tokens,
            self.output_tokens,
            self.requests_day,
            self.tokens_day,
        ):
            if meter is not None:
                meter.refill(now)

    def __repr__(self) -> str:
        return (
            f"ModelLimiter(model={self.model!r}, rpm={self.rpm}, tpm={self.tpm}, "
            f"in_flight={self.in_flight}/{self.max_in_flight}, requests={self.requests!r}, "
            f"tokens={self.tokens!r})"
        )


class LimiterRegistry:
    """One ModelLimiter per model name, created on first use from the scenario.

    Models without any limit get None (the request path then skips limiting entirely). The
    number of distinct limiters is capped so that clients inventing model names cannot grow
    memory without bound; beyond the cap, unknown models share one limiter.
    """

    __slots__ = (
        "_changes",
        "_limiters",
        "_max_models",
        "_scenario",
        "_started_at",
        "_started_wall",
    )

    OVERFLOW_MODEL = "(other models)"

    def __init__(
        self,
        scenario: Scenario,
        started_at: float,
        max_models: int = 10_000,
        started_wall: float | None = None,
    ) -> None:
        """`started_at` is the monotonic time capacity changes count from; `started_wall`,
        the Unix time of that instant, aligns days to Unix time (None: days start at
        `started_at`)."""
        self._scenario = scenario
        self._started_at = started_at
        self._started_wall = started_wall
        self._limiters: dict[str, ModelLimiter | None] = {}
        self._changes: tuple[CapacityChange, ...] = scenario.capacity_changes
        self._max_models = max_models

    def get(self, model: str, now: float) -> ModelLimiter | None:
        """The limiter for `model`, or None if it is unlimited."""
        try:
            return self._limiters[model]
        except KeyError:
            pass
        if len(self._limiters) >= self._max_models and model not in self._scenario.models:
            model = self.OVERFLOW_MODEL
            if model in self._limiters:
                return self._limiters[model]
        limits = self._scenario.limits_for(model)
        limiter = None
        if not limits.unlimited:
            changes = [
                (self._started_at + c.at_s, c.factor)
                for c in self._changes
                if c.model is None or c.model == model
            ]
            day_origin = self._started_at
            if self._started_wall is not None:
                day_origin -= self._started_wall % limits.day_s
            limiter = ModelLimiter(
                model, limits, now, changes, origin=self._started_at, day_origin=day_origin
            )
        self._limiters[model] = limiter
        return limiter

    def limiters(self) -> list[ModelLimiter]:
        """The limiters created so far."""
        return [lim for lim in self._limiters.values() if lim is not None]
