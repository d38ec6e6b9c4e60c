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
again (1512 -> 552 -> 435 -> ... -> 55/min). Since session 35 (``Lane._unexplained_discovered``)
the same draws hold 0.74 at worst, 0.91 at the median; the draw left (3% busy, a 1427/min
bucket) takes its first busy 429, at slow start's peak, for the rate, and with so little
noise judges none as such for 20 s. Left open: see docs/CONTROLLER.md.
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


def _noisy_draws() -> list[tuple[float, str, float]]:
    """(share of the limit held, server, share busy) on each of 8 draws: 2-8% busy 429s on
    a ``bare`` server (no headers), 20 s of work."""
    held = []
    for seed in range(8):
        rng = random.Random(f"noise:{seed}")
        server = draw_bare_bench(rng, seed)
        server.p_busy = rng.uniform(0.02, 0.08)
        result = run(server, run_s=20.0)
        assert result.busy, server.summary  # the noise was drawn
        held.append((_held(result), server.summary, server.p_busy))
    return held


@pytest.mark.xfail(
    strict=True,
    reason="issue #10: with no limit stated, a busy 429 at slow start's peak is taken for the "
    "rate, and a draw with 3% busy 429s judges none noise for 20 s (0.74)",
)
def test_random_429s_with_no_limit_stated_leave_the_limit_in_reach() -> None:
    """The lane sends at least 0.8 of the true limit after its start, on each draw."""
    worst = min(_noisy_draws())
    assert worst[0] >= 0.8, f"{worst[0]:.2f} of the limit on {worst[1]} at {worst[2]:.1%} busy"


def test_random_429s_with_no_limit_stated_are_mostly_told_from_the_limit() -> None:
    """What is in reach already: most draws near the limit (median 0.91 measured, 0.09 when
    every busy 429 was taken as the rate), none held to a fraction (0.74 at worst, 0.07)."""
    held = sorted(h for h, _, _ in _noisy_draws())
    assert held[0] >= 0.6, held
    assert held[len(held) // 2] >= 0.8, held


def test_a_bare_limit_without_noise_is_found_as_before() -> None:
    """The same draws with no busy 429s: the harness's ``p_busy`` changes nothing (the
    lane sends 0.9 of the limit after its start at worst; 0.92-0.98 measured)."""
    for seed in range(8):
        rng = random.Random(f"noise:{seed}")
        server = draw_bare_bench(rng, seed)
        result = run(server, run_s=10.0)
        assert not result.busy
        assert _held(result) >= 0.9, server.summary
