"""The depth of a provider's bucket, read from its limit, remaining and whole-second resets."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from pacekeeper.core.depth import StatedDepth


def _reading(
    *, limit: int, depth_s: float, missing: float, phase_s: float, age_s: float = 0.0
) -> tuple[int, float]:
    """What a continuously refilling bucket ``depth_s`` deep, missing a share ``missing`` when
    it counts a request, sends: remaining as a share of the stated limit (rounded down) and
    its RFC 3339 reset, whole seconds rounded up, from a wall clock ``phase_s`` into its
    second; read ``age_s`` later, when the answer comes (a reset already past reads 0)."""
    remaining = math.floor(limit * (1.0 - missing))
    full_at = phase_s + missing * depth_s
    return remaining, max(0.0, math.ceil(full_at) - phase_s - age_s)


@given(
    limit=st.integers(60, 100_000),
    depth_s=st.floats(1.0, 30.0),
    readings=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 0.999), st.floats(0.0, 15.0)), max_size=40
    ),
)
def test_the_depth_used_is_never_deeper_than_the_bucket(
    limit: int, depth_s: float, readings: list[tuple[float, float, float]]
) -> None:
    depth = StatedDepth()
    for missing, phase_s, age_s in readings:
        remaining, reset_s = _reading(
            limit=limit, depth_s=depth_s, missing=missing, phase_s=phase_s, age_s=age_s
        )
        depth.observe(limit=limit, remaining=remaining, reset_s=reset_s, age_s=age_s)
        assert depth.depth_s is None or depth.depth_s <= depth_s + 1e-9


@given(
    limit=st.integers(60, 100_000),
    readings=st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 0.999), st.floats(0.0, 15.0)), max_size=40
    ),
)
def test_a_bucket_of_a_minute_is_never_spent_at_once(
    limit: int, readings: list[tuple[float, float, float]]
) -> None:
    # OpenAI and Anthropic state a minute's bucket and may enforce it over shorter intervals.
    depth = StatedDepth()
    for missing, phase_s, age_s in readings:
        remaining, reset_s = _reading(
            limit=limit, depth_s=60.0, missing=missing, phase_s=phase_s, age_s=age_s
        )
        depth.observe(limit=limit, remaining=remaining, reset_s=reset_s, age_s=age_s)
    assert depth.depth_s is None


def test_readings_of_a_five_second_bucket_converge_on_five_seconds() -> None:
    # A lane pacing from a half-second burst, then spending what each reading proves.
    depth = StatedDepth()
    missing = 0.1
    for step in range(30):
        phase_s = (step * 0.37) % 1.0
        age_s = 0.3 + (step * 0.23) % 0.6  # answers in 0.3-0.9 s
        remaining, reset_s = _reading(
            limit=1500, depth_s=5.0, missing=missing, phase_s=phase_s, age_s=age_s
        )
        depth.observe(limit=1500, remaining=remaining, reset_s=reset_s, age_s=age_s)
        proven = depth.depth_s or 0.5
        missing = min(1.0, proven / 5.0)
    assert depth.depth_s is not None
    assert 4.5 <= depth.depth_s <= 5.0


def test_a_full_or_unstated_bucket_proves_nothing() -> None:
    depth = StatedDepth()
    depth.observe(limit=1000, remaining=1000, reset_s=0.0)
    depth.observe(limit=1000, remaining=999, reset_s=1.0)  # too little missing to bound
    depth.observe(limit=1000, remaining=500, reset_s=None)  # Azure sends no reset
    assert depth.depth_s is None
    assert repr(depth) == "<StatedDepth unknown (0-inf s)>"


def test_a_reset_to_the_ms_proves_a_bucket_of_a_second() -> None:
    # OpenAI's format: 1222/min, one request missing (60 of the limit scaled to a minute),
    # full again in 50 ms. Whole-second grain proved nothing here (a lower bound below 0).
    depth = StatedDepth()
    depth.observe(limit=1222, remaining=1162, reset_s=0.050, grain_s=0.001)
    assert depth.depth_s is not None
    assert 0.95 <= depth.depth_s <= 1.05
    assert not depth.continuous  # one reading: a window at that instant reads the same
    depth.observe(limit=1222, remaining=611, reset_s=0.5, grain_s=0.001)  # half, in 0.5 s
    assert depth.continuous


@given(
    per_window=st.integers(5, 40),
    counts=st.lists(st.floats(0.05, 0.95), min_size=2, max_size=6),
)
def test_fixed_windows_never_read_as_a_continuous_bucket(
    per_window: int, counts: list[float]
) -> None:
    # A 1-s window of ``per_window`` under a per-minute limit, remaining unscaled: a window
    # refills nothing before its end, so its readings must not pass for a continuous bucket
    # (which a lane lets refill between the count and the answer).
    limit = per_window * 60
    depth = StatedDepth()
    for i, at in enumerate(sorted(counts)):
        left = max(0, per_window - 1 - i)
        depth.observe(limit=limit, remaining=left, reset_s=round(1.0 - at, 3), grain_s=0.001)
    assert not depth.continuous
