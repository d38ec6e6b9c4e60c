"""Prices, the cost of a request, and the spend cap's accounting.

The core holds no price data: a surface hands the governor a *lookup* (``model -> Price``;
``pacekeeper.prices`` builds one from genai-prices and pacekeeper.toml). A model without a price
has an unknown cost (``None``), never a cost of zero.

The spend cap (:class:`SpendCap`) is kept by a ledger of what was spent and what is reserved::

    admission   need = prompt cost + completion cost at max_tokens (the worst case)
                hold = prompt cost + completion cost at the lane's observed quantile
                       (max_tokens until ``learn_after`` answers are known)
                spent + reserved + need <= cap  ->  reserved += hold, the request goes
                otherwise, while others hold reservations: wait (their answers free room)
                otherwise (nothing in flight could free room): refused, SpendCapReached
    usage       reserved -= hold, spent += the real cost
    no usage    reserved -= hold (a failed attempt costs nothing)

Each request thus reserves what it is likely to cost, not its worst case, so the cap is
reached with many requests in flight; and each is admitted only if its own worst case fits
on top of the others' reservations, so the last requests before the cap go one by one and the
run stops within one request's worst-case cost below the cap. Only answers longer than the
quantile *and* arriving together at the very end could pass it; ``completion_quantile=1.0``
reserves every request at max_tokens and makes the cap absolute.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pacekeeper.core.errors import ConfigurationError

__all__ = [
    "BilledUsage",
    "CompletionLengths",
    "LocalSpendLedger",
    "Price",
    "PriceLookup",
    "PriceTier",
    "Reservation",
    "SpendCap",
    "SpendLedger",
    "SpendRefusal",
    "SpendTotals",
]

_PER = 1_000_000.0


def _rate(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a price in USD >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BilledUsage:
    """What an answer's usage bills: every input token (cache reads included, and among them
    ``cached_input_tokens`` at the cached price) and every output token (reasoning included)."""

    input_tokens: int
    output_tokens: int = 0
    cached_input_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PriceTier:
    """The rates from ``from_input_tokens`` input tokens on (the whole request pays them)."""

    from_input_tokens: int
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float | None = None

    def __post_init__(self) -> None:
        _rate("input_usd_per_mtok", self.input_usd_per_mtok)
        _rate("output_usd_per_mtok", self.output_usd_per_mtok)
        _rate("cached_input_usd_per_mtok", self.cached_input_usd_per_mtok)


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """A model's prices in USD per million tokens; ``tiers`` apply by the request's input size.

    >>> p = Price(input_usd_per_mtok=0.15, output_usd_per_mtok=0.6, cached_input_usd_per_mtok=0.075)
    >>> round(p.cost_usd(BilledUsage(input_tokens=1000, cached_input_tokens=500,
    ...                              output_tokens=100)), 7)
    0.0001725
    >>> big = Price(input_usd_per_mtok=3, output_usd_per_mtok=15,
    ...             tiers=(PriceTier(from_input_tokens=200_000, input_usd_per_mtok=6,
    ...                              output_usd_per_mtok=22.5),))
    >>> big.cost_usd(BilledUsage(input_tokens=200_000, output_tokens=0))
    1.2
    """

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float | None = None
    """None: cache reads cost the input price."""
    tiers: tuple[PriceTier, ...] = ()
    source: str = ""
    """Where the price comes from (``genai-prices openai/gpt-4o-mini``, ``pacekeeper.toml``)."""

    def __post_init__(self) -> None:
        _rate("input_usd_per_mtok", self.input_usd_per_mtok)
        _rate("output_usd_per_mtok", self.output_usd_per_mtok)
        _rate("cached_input_usd_per_mtok", self.cached_input_usd_per_mtok)
        starts = [t.from_input_tokens for t in self.tiers]
        if starts != sorted(starts):
            raise ConfigurationError(f"price tiers must be sorted by from_input_tokens: {starts}")

    def rates(self, input_tokens: int) -> tuple[float, float, float]:
        """(input, cached input, output) USD per million tokens for a request this big."""
        inp, out, cached = (
            self.input_usd_per_mtok,
            self.output_usd_per_mtok,
            self.cached_input_usd_per_mtok,
        )
        for tier in self.tiers:
            if input_tokens < tier.from_input_tokens:
                break
            inp, out, cached = (
                tier.input_usd_per_mtok,
                tier.output_usd_per_mtok,
                tier.cached_input_usd_per_mtok,
            )
        return inp, (inp if cached is None else cached), out

    def cost_usd(self, usage: BilledUsage) -> float:
        """The cost of one answer's usage."""
        inp, cached_rate, out = self.rates(usage.input_tokens)
        cached = min(max(usage.cached_input_tokens, 0), usage.input_tokens)
        return (
            (usage.input_tokens - cached) * inp + cached * cached_rate + usage.output_tokens * out
        ) / _PER


PriceLookup = Callable[[str | None], "Price | None"]
"""A model's price, or None when it has none (its cost is then unknown, never zero)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpendCap:
    """Never spend more than ``usd`` (see the module's rule).

    ``completion_quantile`` of the completion lengths seen on a lane is what admission holds
    for an answer once ``learn_after`` answers are known (max_tokens before); 1.0 holds
    max_tokens always.

    >>> SpendCap(usd=5)
    SpendCap(usd=5, completion_quantile=0.99, learn_after=20)
    """

    usd: float
    completion_quantile: float = 0.99
    learn_after: int = 20

    def __post_init__(self) -> None:
        if isinstance(self.usd, bool) or not math.isfinite(self.usd) or self.usd < 0:
            raise ConfigurationError(f"SpendCap.usd must be a number of USD >= 0, got {self.usd!r}")
        if not 0 < self.completion_quantile <= 1:
            raise ConfigurationError(
                f"completion_quantile must be in (0, 1], got {self.completion_quantile!r}"
            )
        if self.learn_after < 1:
            raise ConfigurationError(f"learn_after must be >= 1, got {self.learn_after!r}")


class CompletionLengths:
    """The completion lengths (tokens) of a lane's last ``window`` answers, and their quantiles.

    >>> lengths = CompletionLengths()
    >>> for n in range(1, 101):
    ...     lengths.add(n)
    >>> lengths.count, lengths.quantile(0.99), lengths.quantile(0.5), lengths.mean
    (100, 99, 50, 50.5)
    >>> round(lengths.stdev, 2)
    29.01
    """

    __slots__ = ("_lock", "_recent", "_sorted", "count", "total", "total_sq")

    def __init__(self, window: int = 1000) -> None:
        self._recent: deque[int] = deque(maxlen=window)
        self._sorted: list[int] | None = None
        """The recent lengths in order, kept from the first quantile asked on (a spend cap
        asks at every admission); until then every answer costs an append alone."""
        self._lock = threading.Lock()
        self.count = 0
        self.total = 0
        self.total_sq = 0

    def add(self, tokens: int) -> None:
        with self._lock:
            ordered = self._sorted
            if ordered is not None:
                if len(self._recent) == self._recent.maxlen:
                    del ordered[bisect.bisect_left(ordered, self._recent[0])]
                bisect.insort(ordered, tokens)
            self._recent.append(tokens)
            self.count += 1
            self.total += tokens
            self.total_sq += tokens * tokens

    def quantile(self, q: float) -> int:
        """The smallest length at least ``q`` of the recent answers do not exceed (0: none)."""
        with self._lock:
            ordered = self._sorted
            if ordered is None:
                ordered = self._sorted = sorted(self._recent)
            if not ordered:
                return 0
            index = max(0, math.ceil(q * len(ordered)) - 1)
            return ordered[min(index, len(ordered) - 1)]

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    @property
    def stdev(self) -> float:
        """The sample standard deviation of every length seen (0 before two)."""
        if self.count < 2:
            return 0.0
        variance = (self.total_sq - self.total * self.total / self.count) / (self.count - 1)
        return math.sqrt(max(0.0, variance))

    def __repr__(self) -> str:
        return f"<CompletionLengths count={self.count} mean={self.mean:.1f}>"


@dataclass(frozen=True, slots=True)
class Reservation:
    """Room held for one admitted attempt until its usage (or its failure) is known."""

    id: int | str
    usd: float


@dataclass(frozen=True, slots=True)
class SpendRefusal:
    """Admission did not fit. ``wait``: others hold reservations whose answers may free room;
    otherwise nothing can (the cap is reached for a request this big)."""

    wait: bool
    spent_usd: float
    reserved_usd: float


@dataclass(frozen=True, slots=True)
class SpendTotals:
    spent_usd: float
    reserved_usd: float
    cap_usd: float


@runtime_checkable
class SpendLedger(Protocol):
    """Where spend and reservations are kept: this process (:class:`LocalSpendLedger`) or
    shared (the Redis backend's)."""

    cap: SpendCap

    def reserve(self, *, hold_usd: float, need_usd: float) -> Reservation | SpendRefusal: ...

    def settle(self, reservation: Reservation, spent_usd: float) -> None: ...

    def release(self, reservation: Reservation) -> None: ...

    def totals(self) -> SpendTotals: ...


class LocalSpendLedger:
    """The spend cap's ledger in this process; thread-safe.

    >>> ledger = LocalSpendLedger(SpendCap(usd=1.0))
    >>> r = ledger.reserve(hold_usd=0.4, need_usd=0.6)
    >>> ledger.reserve(hold_usd=0.4, need_usd=0.7)
    SpendRefusal(wait=True, spent_usd=0.0, reserved_usd=0.4)
    >>> ledger.settle(r, 0.3)
    >>> ledger
    <LocalSpendLedger spent=0.300000 reserved=0.000000 cap=1 holds=0>
    >>> ledger.reserve(hold_usd=0.5, need_usd=0.8)
    SpendRefusal(wait=False, spent_usd=0.3, reserved_usd=0.0)
    """

    __slots__ = ("_holds", "_ids", "_lock", "cap", "reserved_usd", "spent_usd")

    def __init__(self, cap: SpendCap) -> None:
        self.cap = cap
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self._holds = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def reserve(self, *, hold_usd: float, need_usd: float) -> Reservation | SpendRefusal:
        with self._lock:
            if self.spent_usd + self.reserved_usd + max(need_usd, hold_usd) <= self.cap.usd:
                self.reserved_usd += hold_usd
                self._holds += 1
                return Reservation(next(self._ids), hold_usd)
            return SpendRefusal(self._holds > 0, self.spent_usd, self.reserved_usd)

    def settle(self, reservation: Reservation, spent_usd: float) -> None:
        with self._lock:
            self._drop(reservation)
            self.spent_usd += spent_usd

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            self._drop(reservation)

    def _drop(self, reservation: Reservation) -> None:
        self._holds -= 1
        # Sums of floats drift: with nothing held, nothing is reserved.
        self.reserved_usd = self.reserved_usd - reservation.usd if self._holds else 0.0

    def totals(self) -> SpendTotals:
        with self._lock:
            return SpendTotals(self.spent_usd, self.reserved_usd, self.cap.usd)

    def __repr__(self) -> str:
        return (
            f"<LocalSpendLedger spent={self.spent_usd:.6f} reserved={self.reserved_usd:.6f} "
            f"cap={self.cap.usd:g} holds={self._holds}>"
        )
