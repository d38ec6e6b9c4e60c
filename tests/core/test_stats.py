"""A lane's running aggregates: the hot path's combined count (from a success's fields, no
record) equals the two it replaces (from its record)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pacekeeper.core.records import RequestRecord
from pacekeeper.core.stats import KeyStats

_SECONDS = st.floats(min_value=0.0, max_value=600.0, allow_nan=False)


def _record(
    total_s: float, queued_s: float, latency_s: float, status: int | None, **kw: object
) -> RequestRecord:
    return RequestRecord(
        route="/v1/chat/completions",
        model="m",
        outcome="ok",
        status=status,
        ok=True,
        attempts=1,
        started_at=0.0,
        total_s=total_s,
        queued_s=queued_s,
        latency_s=latency_s,
        tokens_estimated=120,
        **kw,  # type: ignore[arg-type]
    )


@given(
    answers=st.lists(
        st.tuples(
            _SECONDS,
            _SECONDS,
            _SECONDS,
            st.sampled_from([200, 201, None]),
            st.sampled_from([None, "a", "b"]),
            st.sampled_from(["interactive", "batch"]),
            st.booleans(),
            st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
            st.one_of(st.none(), st.integers(min_value=0, max_value=10_000)),
        ),
        max_size=30,
    ),
    at=st.floats(min_value=0.0, max_value=1e6),
)
def test_on_answer_counts_as_on_attempt_and_on_record(
    answers: list[
        tuple[float, float, float, int | None, str | None, str, bool, float | None, int | None]
    ],
    at: float,
) -> None:
    combined, apart = KeyStats(route="r", model="m"), KeyStats(route="r", model="m")
    for latency_s, total_s, queued_s, status, tenant, priority, retry, cost, tokens in answers:
        record = _record(
            total_s,
            queued_s,
            latency_s,
            status,
            tenant=tenant,
            priority=priority,
            cost_usd=cost,
            prompt_tokens=tokens,
            completion_tokens=tokens,
        )
        combined.on_answer(
            status=status,
            total_s=total_s,
            queued_s=queued_s,
            priority=priority,
            tenant=tenant,
            tokens_estimated=record.tokens_estimated,
            prompt_tokens=tokens,
            completion_tokens=tokens,
            cost_usd=cost,
            latency_s=latency_s,
            retry=retry,
            at=at,
        )
        apart.on_attempt(status=status, rate_limited=False, latency_s=latency_s, retry=retry, at=at)
        apart.on_record(record, at=at)
    assert combined.snapshot(
        concurrency_limit=4, peak_in_flight=2, rpm_limit=None, tpm_limit=None, cooldowns=0
    ) == apart.snapshot(
        concurrency_limit=4, peak_in_flight=2, rpm_limit=None, tpm_limit=None, cooldowns=0
    )
    for mine, theirs in ((combined.latency, apart.latency), (combined.total, apart.total)):
        assert (mine.count, mine.max_s, dict(mine._buckets)) == (
            theirs.count,
            theirs.max_s,
            dict(theirs._buckets),
        )
        assert abs(mine.sum_s - theirs.sum_s) <= 1e-9 * max(1.0, theirs.sum_s)
