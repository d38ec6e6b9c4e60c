"""Provider profiles and the behaviours they combine, checked over real HTTP on loopback:
window and Azure header semantics, Anthropic's separate input/output token limits, in-flight
reply styles, the queueing server, BPE-like token counts, and the drawn profiles themselves."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx2
import pytest

from pacekeeper.sim import (
    PROFILES,
    InFlightReply,
    Latency,
    ModelLimits,
    Queueing,
    Scenario,
    count_text_tokens,
    draw_profile,
)
from pacekeeper.sim._cli import build_scenario, configure_parser
from pacekeeper.sim._profiles import IN_FLIGHT_STYLES

from .helpers import StartSim, chat

GO_MS = 1000.0


def _go_seconds(text: str) -> float:
    """A Go duration of the forms the simulator prints for short waits ("20ms", "1.5s")."""
    if text.endswith("ms"):
        return float(text[:-2]) / GO_MS
    assert text.endswith("s"), text
    return float(text[:-1])


# -- the profiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_draws_reproducibly_and_round_trips_through_toml(
    name: str, tmp_path: Path
) -> None:
    first, again, other = draw_profile(name, 1), draw_profile(name, 1), draw_profile(name, 2)
    assert first.scenario == again.scenario
    assert first.truth == again.truth
    assert first.summary
    assert set(first.models) == set(first.truth)
    assert other.scenario != first.scenario  # the seed changes what is drawn
    path = tmp_path / "drawn.toml"
    path.write_text(first.scenario.to_toml(), encoding="utf-8")
    assert Scenario.from_toml(path) == first.scenario


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: openai"):
        draw_profile("nope", 1)


def test_cli_profile_is_the_drawn_scenario_and_flags_override_it() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--profile", "inflight", "--seed", "3"])
    assert build_scenario(args) == draw_profile("inflight", 3).scenario
    args = parser.parse_args(["--profile", "window", "--seed", "3", "--rpm", "60"])
    assert build_scenario(args).default.rpm == 60
    assert (
        build_scenario(args).default.window_s == draw_profile("window", 3).scenario.default.window_s
    )


def test_halving_draws_its_change_within_the_run() -> None:
    for seed in range(1, 6):
        draw = draw_profile("halving", seed, run_s=20.0)
        (change,) = draw.scenario.capacity_changes
        assert 7.0 <= change.at_s <= 11.0
        assert change.factor == 0.5
        assert draw.truth["gpt-4o-mini"].change_at_s == change.at_s


# -- window headers: remaining and reset describe a short window, limit the minute ---------------


def test_window_headers_count_the_current_window(start_sim: StartSim) -> None:
    sim = start_sim(
        Scenario(default=ModelLimits(rpm=1200, window_s=1.0), rate_limit_headers="window")
    )
    with httpx2.Client(base_url=sim.base_url) as http:
        answers = [http.post("/chat/completions", json=chat(f"w{i}")) for i in range(25)]
    ok = [a for a in answers if a.status_code == 200]
    first = ok[0]
    assert first.headers["x-ratelimit-limit-requests"] == "1200"  # per minute
    assert first.headers["x-ratelimit-remaining-requests"] == "19"  # of this second's 20
    assert _go_seconds(first.headers["x-ratelimit-reset-requests"]) <= 1.0
    remaining = [int(a.headers["x-ratelimit-remaining-requests"]) for a in ok]
    # Counted down within a window, back up at the next one: never a per-minute figure.
    assert max(remaining) <= 19
    rejected = [a for a in answers if a.status_code == 429]
    if rejected:  # unless the 25 straddled a window boundary
        assert rejected[0].headers["x-ratelimit-remaining-requests"] == "0"
        assert int(rejected[0].headers["retry-after-ms"]) <= 1000
    assert len(ok) <= 40  # at most two windows' worth


def test_a_fixed_window_starts_over_at_its_end(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(default=ModelLimits(rpm=600, window_s=0.5)))  # 5 per window
    with httpx2.Client(base_url=sim.base_url) as http:
        statuses = [
            http.post("/chat/completions", json=chat(f"f{i}")).status_code for i in range(8)
        ]
        assert statuses.count(429) >= 2
        wait = http.post("/chat/completions", json=chat("late"))
        if wait.status_code == 429:
            time.sleep(int(wait.headers["retry-after-ms"]) / 1000 + 0.02)
        time.sleep(0.5)  # a whole window later everything is fresh
        fresh = [http.post("/chat/completions", json=chat(f"g{i}")).status_code for i in range(3)]
    assert fresh == [200, 200, 200]


# -- Azure: remaining of a 10 s window, retry-after in whole seconds, no limit or reset ----------


def test_azure_headers(start_sim: StartSim) -> None:
    sim = start_sim(
        Scenario(
            default=ModelLimits(rpm=60, tpm=600_000, window_s=10.0), rate_limit_headers="azure"
        )
    )  # 10 requests per 10 s window
    with httpx2.Client(base_url=sim.base_url) as http:
        answers = [http.post("/chat/completions", json=chat(f"a{i}")) for i in range(12)]
    assert [a.status_code for a in answers] == [200] * 10 + [429] * 2
    first = answers[0]
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000
    present = {h for h in first.headers if h.startswith("x-ratelimit-")}
    assert present == {"x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"}
    rejected = answers[-1]
    assert rejected.headers["retry-after"].isdigit()
    assert 1 <= int(rejected.headers["retry-after"]) <= 10
    assert "retry-after-ms" not in rejected.headers
    error = rejected.json()["error"]
    assert error["code"] == "429"
    assert "exceeded call rate limit" in error["message"]


# -- Anthropic: input tokens at admission, output tokens reserved and settled -------------------


def test_anthropic_output_tokens_are_charged_apart(start_sim: StartSim) -> None:
    # 10 output tokens per second, bucket of 1 s; every reply has at least 16 tokens.
    sim = start_sim(
        Scenario(
            default=ModelLimits(rpm=6000, input_tpm=60_000, output_tpm=600),
            rate_limit_headers="anthropic",
        )
    )
    with httpx2.Client(base_url=sim.base_url) as http:
        first = http.post("/chat/completions", json=chat("o1", max_tokens=1000))
        second = http.post("/chat/completions", json=chat("o2", max_tokens=1000))
    # Admitted although max_tokens is far beyond the output budget: from a full meter, as any
    # oversize cost is; the reserve leaves the meter deep in debt.
    assert first.status_code == 200
    assert first.headers["anthropic-ratelimit-output-tokens-limit"] == "600"
    assert first.headers["anthropic-ratelimit-input-tokens-limit"] == "60000"
    # The input charge is the prompt estimate only (not max_tokens): 1000 / 1000 left nearly.
    assert int(first.headers["anthropic-ratelimit-input-tokens-remaining"]) > 59_000
    assert "anthropic-ratelimit-tokens-limit" in first.headers  # the most restrictive
    # Settled to the reply's 16+ tokens, the output meter is still in debt: the next waits.
    assert second.status_code == 429
    assert second.headers["anthropic-ratelimit-output-tokens-remaining"] == "0"
    assert int(second.headers["retry-after"]) >= 1
    message = second.json()["error"]["message"]
    assert "600 output tokens per minute" in message
    assert second.json()["error"]["type"] == "rate_limit_error"


def test_anthropic_input_tokens_bind_on_long_prompts(start_sim: StartSim) -> None:
    sim = start_sim(
        Scenario(default=ModelLimits(input_tpm=6000), rate_limit_headers="anthropic")
    )  # 100 input tokens per second
    with httpx2.Client(base_url=sim.base_url) as http:
        statuses = [
            http.post("/chat/completions", json=chat("x" * 200 + str(i))).status_code
            for i in range(3)
        ]  # about 58 tokens each
    assert statuses[0] == 200
    assert 429 in statuses


# -- in-flight reply styles ----------------------------------------------------------------------


@pytest.mark.parametrize("style", IN_FLIGHT_STYLES, ids=lambda s: s.code)
async def test_in_flight_reply_styles(start_sim: StartSim, style: InFlightReply) -> None:
    sim = start_sim(
        Scenario(
            default=ModelLimits(rpm=100_000, max_in_flight=1),
            latency=Latency(ttft_s=0.4),
            in_flight_reply=style,
        )
    )
    async with httpx2.AsyncClient(base_url=sim.base_url) as http:
        slow = asyncio.ensure_future(http.post("/chat/completions", json=chat("held")))
        await asyncio.sleep(0.1)
        refused = await http.post("/chat/completions", json=chat("refused"))
        assert (await slow).status_code == 200
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == style.code
    assert error["message"] == style.message.format(model="gpt-4o-mini", limit=1)
    if style.retry_after_s is None:
        assert "retry-after" not in refused.headers
    else:
        assert refused.headers["retry-after"] == str(round(style.retry_after_s))
    assert ("x-ratelimit-limit-requests" in refused.headers) == style.rate_limit_headers
    assert sim.stats()["rejected_in_flight"] == 1


def test_in_flight_style_of_the_observed_server_reads_like_it() -> None:
    observed = IN_FLIGHT_STYLES[0]
    text = observed.message.format(model="m", limit=8)
    assert text == "Rate limit reached: too many requests in flight (limit 8)"
    assert observed.retry_after_s == 1.0


# -- the queueing server -------------------------------------------------------------------------


async def _timed_burst(base_url: str, count: int) -> list[tuple[int, float]]:
    async with httpx2.AsyncClient(base_url=base_url, timeout=30) as http:
        # A burst first, timed by nobody: the first answers pay for lazy set-up on both sides
        # (a clean CI run once read the first of a burst 0.3 s late), and each request of the
        # timed burst then finds a connection open: on a loaded machine, opening them spread
        # the burst out, so that fewer requests queued at once.
        warm = [
            http.post("/chat/completions", json=chat(f"warm-{i}", max_tokens=1))
            for i in range(count)
        ]
        await asyncio.gather(*warm)

        async def one(i: int) -> tuple[int, float]:
            started = time.monotonic()
            response = await http.post("/chat/completions", json=chat(f"q{i}", max_tokens=1))
            return response.status_code, time.monotonic() - started

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_queueing_server_never_429s_and_latency_grows_past_capacity(
    start_sim: StartSim,
) -> None:
    sim = start_sim(Scenario(queueing=Queueing(capacity=2), latency=Latency(ttft_s=0.3)))
    answers = await _timed_burst(sim.base_url, 6)
    assert [status for status, _ in answers] == [200] * 6
    latencies = sorted(latency for _, latency in answers)
    # Two at a time: the first pair in about 0.3 s, the last pair waited for two rounds.
    assert latencies[0] < 0.6
    assert latencies[-1] >= 0.85
    assert latencies[-1] >= latencies[0] + 0.5
    stats = sim.stats()
    assert stats["rejected_rate_limited"] == 0
    assert stats["peak_in_flight"] == 6  # all admitted: the queue is inside the server


async def test_queueing_server_slows_down_while_the_queue_is_long(start_sim: StartSim) -> None:
    plain = start_sim(Scenario(queueing=Queueing(capacity=2), latency=Latency(ttft_s=0.2)))
    slowed = start_sim(
        Scenario(queueing=Queueing(capacity=2, slowdown=1.0), latency=Latency(ttft_s=0.2))
    )
    # The worst of each, best of two tries: a burst that a loaded machine sends spread out
    # queues less and is slowed less (CI beside benchmarks read 1.31 s against 1.19 s once).
    plain_worst = slowed_worst = 0.0
    for _ in range(2):
        plain_worst = max(latency for _, latency in await _timed_burst(plain.base_url, 8))
        slowed_worst = max(latency for _, latency in await _timed_burst(slowed.base_url, 8))
        if slowed_worst >= plain_worst + 0.3:
            break
    # 4 rounds of 0.2 s; with the slowdown the rounds that start with a queue take up to 2x.
    # (The upper bound leaves room for a loaded machine: 1.24 s was seen beside a benchmark.
    # A slowdown applied to the plain server too is caught by the comparison below.)
    assert 0.75 <= plain_worst < 1.5
    assert slowed_worst >= plain_worst + 0.3


# -- token counts closer to a real BPE --------------------------------------------------------


def test_token_counts_of_text_chars_per_4_undercounts() -> None:
    assert count_text_tokens("a" * 400) == 100  # plain text: chars / 4, as before
    assert count_text_tokens("你好世界" * 25) == 100  # CJK: a token per character
    blob = json.dumps([{"id": i, "tags": ["a", "b"], "ok": True} for i in range(10)])
    assert count_text_tokens(blob) == -(-len(blob) // 3)  # JSON: chars / 3
    code = "def f(x):\n    return {k: v for k, v in x.items()}\n" * 5
    assert count_text_tokens(code) == -(-len(code) // 3)


def test_prompt_tokens_reported_for_cjk_prompts(plain_sim: object) -> None:
    from pacekeeper.sim import Simulator

    assert isinstance(plain_sim, Simulator)
    with httpx2.Client(base_url=plain_sim.base_url) as http:
        reply = http.post("/chat/completions", json=chat("季度收入" * 50)).json()
    assert reply["usage"]["prompt_tokens"] == 3 + 4 + 200


def test_a_scenario_file_can_start_from_a_profile(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(
        'profile = "inflight"\nseed = 2\n[default]\nmax_in_flight = 3\n', encoding="utf-8"
    )
    drawn = draw_profile("inflight", 2).scenario
    scenario = Scenario.from_toml(path)
    assert scenario.default.max_in_flight == 3  # the file's key overrides the draw
    assert scenario.default.rpm == drawn.default.rpm  # the rest of the table is the draw's
    assert scenario.in_flight_reply == drawn.in_flight_reply
    assert scenario.latency == drawn.latency
    path.write_text('profile = "nope"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"scenario\.toml: profile: unknown profile 'nope'"):
        Scenario.from_toml(path)


def test_cli_help_lists_every_profile() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    text = parser.format_help()  # the summaries' percent signs must not break it
    assert all(name in text for name in PROFILES)
