"""Costs and the spend cap in the governor, without HTTP: usage in, costs and refusals out."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacekeeper import Governor, Limits, SpendCapReached
from pacekeeper.core.classify import OutcomeKind, classify_response, verdict_for_failure
from pacekeeper.core.cost import LocalSpendLedger, Price, SpendCap
from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.tokens import TokenEstimate

ROUTE = "/v1/chat/completions"
PRICE = Price(input_usd_per_mtok=1.0, output_usd_per_mtok=10.0)
OK = classify_response(200, {}, None, now_wall_s=time.time())


def prices(model: str | None) -> Price | None:
    return PRICE if model == "priced" else None


def estimate(prompt: int = 1000, max_tokens: int = 1000) -> TokenEstimate:
    return TokenEstimate(prompt_tokens=prompt, max_completion_tokens=max_tokens, method="exact")


def governor(cap_usd: float | None = None, **cap: Any) -> Governor:
    budget = SpendCap(usd=cap_usd, **cap) if cap_usd is not None else None
    return Governor(limits=Limits(concurrency=64), prices=prices, budget=budget)


async def test_a_request_costs_its_usage_at_the_models_price() -> None:
    gov = governor()
    call = gov.call(route=ROUTE, model="priced", estimate=estimate())
    permit = await call.admit()
    decision = call.settle(permit, OK, prompt_tokens=1000, completion_tokens=200)
    assert decision.record is not None
    assert decision.record.cost_usd == pytest.approx((1000 * 1.0 + 200 * 10.0) / 1e6)
    assert gov.stats()[0].cost_usd == pytest.approx(0.003)


async def test_a_model_without_a_price_has_an_unknown_cost_not_zero() -> None:
    gov = governor()
    call = gov.call(route=ROUTE, model="unpriced", estimate=estimate())
    permit = await call.admit()
    decision = call.settle(permit, OK, prompt_tokens=1000, completion_tokens=200)
    assert decision.record is not None
    assert decision.record.cost_usd is None
    assert gov.stats()[0].cost_usd is None


def test_a_cap_needs_prices() -> None:
    with pytest.raises(ConfigurationError, match="needs prices"):
        Governor(budget=SpendCap(usd=1))


async def test_the_cap_refuses_an_unpriced_model_saying_how_to_price_it() -> None:
    gov = governor(1.0)
    call = gov.call(route=ROUTE, model="unpriced", estimate=estimate())
    with pytest.raises(SpendCapReached, match=r'\[models."unpriced".price\]'):
        await call.admit()


async def test_the_cap_refuses_when_nothing_in_flight_can_free_room() -> None:
    # Worst case of one request: 1000 prompt + 1000 answer = $0.011.
    gov = governor(0.02)
    first = gov.call(route=ROUTE, model="priced", estimate=estimate())
    permit = await first.admit()
    first.settle(permit, OK, prompt_tokens=1000, completion_tokens=900)  # $0.010
    second = gov.call(route=ROUTE, model="priced", estimate=estimate())
    with pytest.raises(SpendCapReached, match=r"spend cap of \$0.02 is reached") as info:
        await second.admit()
    assert info.value.spent_usd == pytest.approx(0.010)
    assert info.value.need_usd == pytest.approx(0.011)
    assert gov.spend is not None
    assert gov.spend.totals().reserved_usd == 0


async def test_a_request_waits_for_answers_in_flight_then_goes() -> None:
    gov = governor(0.02)
    first = gov.call(route=ROUTE, model="priced", estimate=estimate())
    permit = await first.admit()  # holds $0.011 of the $0.02
    second = gov.call(route=ROUTE, model="priced", estimate=estimate())
    waiting = asyncio.ensure_future(second.admit())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    first.settle(permit, OK, prompt_tokens=1000, completion_tokens=0)  # $0.001 spent
    second_permit = await asyncio.wait_for(waiting, 2)
    second.settle(second_permit, OK, prompt_tokens=1000, completion_tokens=0)
    assert gov.spend is not None
    assert gov.spend.totals().spent_usd == pytest.approx(0.002)


async def test_the_worst_case_bills_the_prompt_at_the_most_seen_over_its_estimate() -> None:
    """Prompts billed mostly as estimated and one a quarter over: the worst case that must fit
    the cap counts a prompt at that quarter over, not at the charged mean-and-spread (with it,
    a batch run once ended $0.00008 past its cap)."""
    gov = governor(1.0)
    for billed in (1000,) * 9 + (1250,):
        call = gov.call(route=ROUTE, model="priced", estimate=estimate(max_tokens=1))
        permit = await call.admit()
        call.settle(permit, OK, prompt_tokens=billed, completion_tokens=1)
    call = gov.call(route=ROUTE, model="priced", estimate=estimate())
    costs = call.expected_cost_usd()
    assert costs is not None
    held_usd, worst_usd = costs
    assert worst_usd == pytest.approx((1250 * 1.0 + 1000 * 10.0) / 1e6)
    assert held_usd < (1250 * 1.0 + 1000 * 10.0) / 1e6  # the hold stays at the usual factor


async def test_a_failed_attempt_without_usage_releases_its_reservation() -> None:
    gov = governor(1.0)
    call = gov.call(route=ROUTE, model="priced", estimate=estimate())
    permit = await call.admit()
    assert gov.spend is not None
    assert gov.spend.totals().reserved_usd == pytest.approx(0.011)
    call.settle(permit, verdict_for_failure(OutcomeKind.TIMEOUT, "timed out"))
    assert (gov.spend.totals().spent_usd, gov.spend.totals().reserved_usd) == (0.0, 0.0)


async def test_admission_holds_the_observed_quantile_once_enough_answers_are_known() -> None:
    gov = governor(100.0, completion_quantile=0.9, learn_after=20)
    assert gov.spend is not None
    for n in range(20):
        call = gov.call(route=ROUTE, model="priced", estimate=estimate(prompt=0))
        permit = await call.admit()
        if n == 0:  # before 20 answers: max_tokens
            assert gov.spend.totals().reserved_usd == pytest.approx(1000 * 10 / 1e6)
        call.settle(permit, OK, prompt_tokens=0, completion_tokens=10 * (n + 1))
    call = gov.call(route=ROUTE, model="priced", estimate=estimate(prompt=0))
    permit = await call.admit()
    assert gov.spend.totals().reserved_usd == pytest.approx(180 * 10 / 1e6)  # p90 of 10..200
    call.settle(permit, OK, prompt_tokens=0, completion_tokens=0)


class CheckedLedger(LocalSpendLedger):
    """Asserts the cap's invariant after every change, under the ledger's lock."""

    __slots__ = ("violations",)

    def __init__(self, cap: SpendCap) -> None:
        super().__init__(cap)
        self.violations: list[float] = []

    def _check(self) -> None:
        total = self.spent_usd + self.reserved_usd
        if total > self.cap.usd + 1e-12:
            self.violations.append(total)

    def reserve(self, **kw: float) -> Any:
        answer = super().reserve(**kw)
        with self._lock:
            self._check()
        return answer

    def settle(self, reservation: Any, spent_usd: float) -> None:
        super().settle(reservation, spent_usd)
        with self._lock:
            self._check()


def capped(cap_usd: float) -> tuple[Governor, CheckedLedger]:
    cap = SpendCap(usd=cap_usd, completion_quantile=1.0)
    gov = Governor(limits=Limits(concurrency=16), prices=prices, budget=cap)
    ledger = CheckedLedger(cap)
    gov.spend = ledger
    return gov, ledger


def one_sync(gov: Governor, prompt: int, max_tokens: int, answer: int) -> bool:
    call = gov.call(route=ROUTE, model="priced", estimate=estimate(prompt, max_tokens))
    try:
        permit = call.admit_sync()
    except SpendCapReached:
        return False
    call.settle(permit, OK, prompt_tokens=prompt, completion_tokens=answer)
    return True


async def one_async(gov: Governor, prompt: int, max_tokens: int, answer: int) -> bool:
    call = gov.call(route=ROUTE, model="priced", estimate=estimate(prompt, max_tokens))
    try:
        permit = await call.admit()
    except SpendCapReached:
        return False
    await asyncio.sleep(0)
    call.settle(permit, OK, prompt_tokens=prompt, completion_tokens=answer)
    return True


requests = st.lists(
    st.tuples(
        st.integers(0, 2000), st.integers(1, 2000), st.floats(0, 1)
    ),  # prompt, max_tokens, answer as a share of max_tokens
    min_size=1,
    max_size=40,
)


@settings(max_examples=25, deadline=None)
@given(requests=requests, cap_usd=st.floats(0.001, 0.2))
def test_spent_plus_reserved_never_passes_the_cap_under_concurrent_admissions(
    requests: list[tuple[int, int, float]], cap_usd: float
) -> None:
    gov, ledger = capped(cap_usd)
    jobs = [(p, m, int(m * share)) for p, m, share in requests]

    def in_threads() -> None:
        threads = [
            threading.Thread(target=one_sync, args=(gov, *job)) for job in jobs[: len(jobs) // 2]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    async def in_tasks() -> None:
        await asyncio.gather(*(one_async(gov, *job) for job in jobs[len(jobs) // 2 :]))

    side = threading.Thread(target=in_threads)
    side.start()
    asyncio.run(in_tasks())
    side.join()
    totals = ledger.totals()
    assert not ledger.violations
    assert totals.reserved_usd == 0
    assert totals.spent_usd <= cap_usd + 1e-12
