"""A server that states no limit anywhere (``bare``: no rate-limit headers; vLLM-style and
many OpenAI-compatible gateways) and also refuses a steady few percent at random (a busy
upstream: llmock's ``--error-rate 429``, ``retry-after: 1``, no headers), on a simulated
clock (tests/core/hintless_servers.py). Issue #10: every such 429 is taken as the rate.

Measured (20 draws of the ``bare`` bench class, 2-8% busy 429s, 20 s of work): the lane sent
0.15 of the limit at the median after its start, 0.08 at worst. Where the loss comes from
(a trace of a 1424/min bucket at 5%): the first busy 429, to the start's fourth request, is
"at a new peak in flight" and teaches a provisional cap of 3, whose ``ssthresh`` ends slow
start for good (the window then grows one a round trip: 7-11 in flight for 25 s where the
limit needs about 12-34); the discovery then measures the second before a later busy 429 at
that held pace, and each 1-s hint waited whole empties the next second, whose measure cuts
again (1512 -> 552 -> 435 -> ... -> 55/min). Left open: see docs/CONTROLLER.md.
"""

from __future__ import annotations

import random

import pytest

from .hintless_servers import Result, draw_bare_bench, run

_JUDGED_FROM_S = 5.0


def _held(result: Result) -> float:
    """The share of the true limit sent from ``_JUDGED_FROM_S`` to a second before the
    last send (the tail of a finite workload sends less)."""
    end = result.sends[-1] - 1.0
    sent = sum(1 for t in result.sends if _JUDGED_FROM_S <= t < end)
    return sent / ((end - _JUDGED_FROM_S) * result.server.rpm / 60.0)


@pytest.mark.xfail(
    strict=True,
    reason="issue #10: with no limit stated, random 429s are taken as the rate (0.08-0.15)",
)
def test_random_429s_with_no_limit_stated_leave_the_limit_in_reach() -> None:
    """2-8% busy 429s on a ``bare`` server (no headers): the lane sends at least 0.8 of the
    true limit after its start, on each of 8 draws."""
    held = []
    for seed in range(8):
        rng = random.Random(f"noise:{seed}")
        server = draw_bare_bench(rng, seed)
        server.p_busy = rng.uniform(0.02, 0.08)
        result = run(server, run_s=20.0)
        assert result.busy, server.summary  # the noise was drawn
        held.append((_held(result), server.summary, server.p_busy))
    worst = min(held)
    assert worst[0] >= 0.8, f"{worst[0]:.2f} of the limit on {worst[1]} at {worst[2]:.1%} busy"


def test_a_bare_limit_without_noise_is_found_as_before() -> None:
    """The same draws with no busy 429s: the harness's ``p_busy`` changes nothing (the
    lane sends 0.9 of the limit after its start at worst; 0.92-0.98 measured)."""
    for seed in range(8):
        rng = random.Random(f"noise:{seed}")
        server = draw_bare_bench(rng, seed)
        result = run(server, run_s=10.0)
        assert not result.busy
        assert _held(result) >= 0.9, server.summary
