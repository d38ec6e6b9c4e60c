"""The limiter's buckets as pure classes, with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper.sim import CapacityChange, ModelLimits, Scenario
from pacekeeper.sim._limits import LimiterRegistry, ModelLimiter, TokenBucket

EPS = 1e-6


def test_bucket_starts_full_and_admits_its_capacity() -> None:
    bucket = TokenBucket(capacity=20, rate_per_s=20, now=0.0)
    admitted = 0
    while bucket.wait_s(1, 0.0) == 0.0:
        bucket.take(1)
        admitted += 1
    assert admitted == 20
    assert bucket.wait_s(1, 0.0) == pytest.approx(0.05)
    assert bucket.wait_s(1, 0.05) == 0.0  # exactly when it said


def test_bucket_refills_continuously_up_to_capacity() -> None:
    bucket = TokenBucket(capacity=10, rate_per_s=2, now=0.0)
    bucket.take(10)
    bucket.refill(1.5)
    assert bucket.level == pytest.approx(3.0)
    assert bucket.full_in_s(1.5) == pytest.approx(3.5)
    bucket.refill(100.0)
    assert bucket.level == 10
    assert bucket.full_in_s(100.0) == 0.0


def test_bucket_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(capacity=10, rate_per_s=2, now=5.0)
    bucket.take(4)
    bucket.refill(4.0)
    assert bucket.level == 6


def test_oversize_cost_admitted_only_when_full_then_debt() -> None:
    bucket = TokenBucket(capacity=10, rate_per_s=10, now=0.0)
    assert bucket.wait_s(117, 0.0) == 0.0  # full: admitted although 117 > 10
    bucket.take(117)
    assert bucket.level == -107
    # The next oversize request waits until the bucket is full again: 117 units at 10/s.
    assert bucket.wait_s(117, 0.0) == pytest.approx(11.7)
    assert bucket.wait_s(5, 0.0) == pytest.approx(11.2)
    assert bucket.wait_s(117, 11.7) == 0.0


def test_bucket_reconfigure_refills_at_old_rate_then_shrinks() -> None:
    bucket = TokenBucket(capacity=10, rate_per_s=10, now=0.0)
    bucket.take(10)
    bucket.reconfigure(capacity=5, rate_per_s=5, now=0.4)  # refilled 4 at the old rate
    assert bucket.level == pytest.approx(4)
    bucket.refill(0.6)
    assert bucket.level == pytest.approx(5)  # new rate 5/s, new cap 5
    bucket.reconfigure(capacity=2, rate_per_s=2, now=0.6)
    assert bucket.level == 2


def test_bucket_repr_shows_live_state() -> None:
    bucket = TokenBucket(capacity=20, rate_per_s=20, now=0.0)
    bucket.take(5)
    assert repr(bucket) == (
        "TokenBucket(level=15.000, capacity=20, rate_per_s=20, updated_at=0.000)"
    )


arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=0.5, allow_nan=False),  # gap since previous, s
        st.floats(min_value=0.01, max_value=1.0),  # cost as a fraction of capacity
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.floats(min_value=0.5, max_value=100.0),
    rate=st.floats(min_value=0.1, max_value=100.0),
    arrivals=arrivals,
)
def test_never_more_admitted_than_capacity_plus_rate_times_elapsed(
    capacity: float, rate: float, arrivals: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(capacity, rate, now=0.0)
    now = 0.0
    admitted: list[tuple[float, float]] = []
    for gap, fraction in arrivals:
        now += gap
        cost = fraction * capacity
        if bucket.wait_s(cost, now) == 0.0:
            bucket.take(cost)
            admitted.append((now, cost))
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= capacity + rate * (end - start) + EPS


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(min_value=0.5, max_value=50.0),
    rate=st.floats(min_value=0.1, max_value=50.0),
    arrivals=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
            st.floats(min_value=0.01, max_value=5.0),  # up to 5x the capacity: debt
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_oversize_costs_add_at_most_their_excess(
    capacity: float, rate: float, arrivals: list[tuple[float, float]]
) -> None:
    bucket = TokenBucket(capacity, rate, now=0.0)
    now = 0.0
    admitted: list[tuple[float, float]] = []
    for gap, fraction in arrivals:
        now += gap
        cost = fraction * capacity
        if bucket.wait_s(cost, now) == 0.0:
            bucket.take(cost)
            admitted.append((now, cost))
    excess = max((cost - capacity for _, cost in admitted), default=0.0)
    for i, (start, _) in enumerate(admitted):
        total = 0.0
        for end, cost in admitted[i:]:
            total += cost
            assert total <= capacity + rate * (end - start) + max(0.0, excess) + EPS


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(min_value=0.5, max_value=100.0),
    rate=st.floats(min_value=0.1, max_value=100.0),
    spent=st.floats(min_value=0.0, max_value=1.0),
    cost=st.floats(min_value=0.01, max_value=3.0),
)
def test_a_rejected_request_fits_after_the_wait_it_was_told(
    capacity: float, rate: float, spent: float, cost: float
) -> None:
    bucket = TokenBucket(capacity, rate, now=0.0)
    bucket.take(spent * capacity * 2)  # anywhere from full to in debt
    wait_s = bucket.wait_s(cost * capacity, 0.0)
    assert wait_s >= 0.0
    assert bucket.wait_s(cost * capacity, wait_s * (1 + 1e-9) + 1e-9) == 0.0


def test_limiter_needs_room_in_both_buckets_and_rejection_spends_nothing() -> None:
    limiter = ModelLimiter("m", ModelLimits(rpm=600, tpm=6000), now=0.0)  # caps 10 req, 100 tok
    assert limiter.admit(60, 0.0) is None
    rejection = limiter.admit(60, 0.0)  # 9 requests left but only 40 tokens
    assert rejection is not None
    assert rejection.kind == "tokens"
    assert rejection.requested == 60
    assert rejection.wait_s == pytest.approx(0.2)
    assert limiter.requests is not None
    assert limiter.tokens is not None
    assert limiter.requests.level == 9  # the rejected request took no request either
    assert limiter.tokens.level == 40
    for _ in range(9):
        assert limiter.admit(1, 0.0) is None
    rejection = limiter.admit(1, 0.0)
    assert rejection is not None
    assert rejection.kind == "requests"
    assert rejection.wait_s == pytest.approx(0.1)
    assert limiter.in_flight == 10


def test_limiter_in_flight_cap() -> None:
    limiter = ModelLimiter("m", ModelLimits(max_in_flight=2), now=0.0)
    assert limiter.admit(10, 0.0) is None
    assert limiter.admit(10, 0.0) is None
    rejection = limiter.admit(10, 0.0)
    assert rejection is not None
    assert rejection.kind == "concurrency"
    limiter.release()
    assert limiter.admit(10, 0.0) is None


def test_limiter_capacity_change_applies_at_its_time() -> None:
    limits = ModelLimits(rpm=600, tpm=60_000, max_in_flight=10)
    limiter = ModelLimiter("m", limits, now=0.0, changes=[(30.0, 0.5)])
    assert limiter.admit(1, 29.9) is None
    assert limiter.rpm == 600
    assert limiter.admit(1, 30.0) is None
    assert limiter.rpm == 300
    assert limiter.tpm == 30_000
    assert limiter.max_in_flight == 5
    assert limiter.requests is not None
    assert limiter.requests.capacity == 5
    assert limiter.requests.rate_per_s == 5
    assert "rpm=300" in repr(limiter)


def test_registry_gives_each_model_its_own_default_buckets() -> None:
    scenario = Scenario(
        models={"big": ModelLimits(rpm=6000)},
        default=ModelLimits(rpm=60),
        capacity_changes=(CapacityChange(at_s=10, factor=0.5, model="a"),),
    )
    registry = LimiterRegistry(scenario, started_at=100.0)
    a, b, big = registry.get("a", 100.0), registry.get("b", 100.0), registry.get("big", 100.0)
    assert a is not None
    assert b is not None
    assert big is not None
    assert a is not b
    assert a.rpm == b.rpm == 60
    assert big.rpm == 6000
    assert a.admit(1, 110.0) is None  # the change at start + 10 s hits model a only
    assert b.admit(1, 110.0) is None
    assert (a.rpm, b.rpm) == (30, 60)
    assert LimiterRegistry(Scenario(), 0.0).get("x", 0.0) is None  # unlimited: no limiter
