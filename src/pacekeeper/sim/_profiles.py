"""Provider profiles: named, randomised presets of the behaviours real providers document.

A profile is a family of scenarios. `draw_profile(name, seed)` draws one member (limits,
window lengths, error rates, latencies drawn within documented ranges, reproducibly from the
seed) and returns it with the *truth* about it: the limits really enforced, which a reference
client may be told and which a client under test must discover. A benchmark reports the worst
case over profiles and seeds, never the best: a result on the simulator proves little unless
the simulator disagrees with the client's assumptions.

Each draw also says what traffic exposes the profile's behaviour (models, the kind of prompts,
max_tokens) and a per-attempt timeout long enough for its latencies. Sources of each profile's
behaviour: docs/SIMULATOR.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ._scenario import (
    CapacityChange,
    Faults,
    HeaderMode,
    InFlightReply,
    Latency,
    ModelLimits,
    Queueing,
    Scenario,
)

__all__ = ["PROFILES", "ProfileDraw", "PromptKind", "TrueLimits", "draw_profile"]

PromptKind = Literal["prose", "mixed", "cjk"]
"""prose: 50-110 token English prompts; mixed: English prompts of 200-2000 characters;
cjk: prompts that chars/4 undercounts, in rotation CJK text, JSON and code."""

DEFAULT_MODEL = "gpt-4o-mini"
_NON_BINDING_TPM = 10_000_000.0


@dataclass(frozen=True, kw_only=True, slots=True)
class TrueLimits:
    """What one model's provider really enforces (None: no such limit).

    `max_in_flight` is the in-flight cap beyond which requests get 429s, or for a queueing
    server (no 429s) the best concurrency: the number of requests it processes at once.
    `window_s` is set when rpm/tpm are enforced in fixed windows of that length.
    At `change_at_s` seconds after the server started every limit is multiplied by
    `change_factor`.
    """

    rpm: float | None = None
    tpm: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None
    max_in_flight: int | None = None
    window_s: float | None = None
    burst_s: float = 1.0
    """With buckets (no window_s): their depth in seconds of the rate, spendable at once."""
    change_at_s: float | None = None
    change_factor: float = 1.0


def _no_models() -> dict[str, TrueLimits]:
    return {}


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfileDraw:
    """One randomised member of a profile: the scenario, the truth, and the traffic to send."""

    profile: str
    seed: int
    scenario: Scenario
    truth: Mapping[str, TrueLimits] = field(default_factory=_no_models)
    """Per model the traffic uses."""
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    prompts: PromptKind = "prose"
    max_tokens: int = 100
    timeout_s: float = 10.0
    summary: str = ""
    """One line: what was drawn."""


@dataclass(frozen=True, slots=True)
class _Profile:
    summary: str
    draw: Callable[[random.Random, int, float], ProfileDraw]


def _u(rng: random.Random, low: float, high: float, digits: int = 0) -> float:
    """A uniform draw, rounded so that summaries and headers stay readable."""
    value = rng.uniform(low, high)
    return round(value, digits) if digits else float(round(value))


def _latency(rng: random.Random, ttft_s: tuple[float, float] = (0.2, 0.6)) -> Latency:
    return Latency(
        ttft_s=_u(rng, *ttft_s, digits=2),
        per_token_s=_u(rng, 0.002, 0.006, digits=4),
        spread=0.3,
    )


def _timeout_s(latency: Latency, max_tokens: int, slowdown: float = 0.0) -> float:
    # Long enough that only hangs time out: 3x the slowest plausible answer (+3 sigma).
    worst_s = (latency.ttft_s + latency.per_token_s * max_tokens) * math.exp(3 * latency.spread)
    return float(max(10, math.ceil(3 * worst_s * (1 + slowdown))))


def _rpm_profile(
    name: str,
    seed: int,
    rng: random.Random,
    *,
    headers: HeaderMode,
    window_s: float | None = None,
    burst_s: float = 1.0,
    latency: Latency | None = None,
    faults: Faults | None = None,
    changes: tuple[CapacityChange, ...] = (),
    rpm_range: tuple[float, float] = (600, 1500),
) -> ProfileDraw:
    rpm = _u(rng, *rpm_range)
    if window_s is not None:
        # A whole number of requests per window: with 14.7 per window only 14 fit, and the
        # truth would overstate the limit.
        per_window = max(1, round(rpm * window_s / 60))
        rpm = per_window * 60 / window_s
    latency = latency or _latency(rng)
    limits = ModelLimits(rpm=rpm, tpm=_NON_BINDING_TPM, burst_s=burst_s, window_s=window_s)
    change = changes[0] if changes else None
    truth = TrueLimits(
        rpm=rpm,
        tpm=_NON_BINDING_TPM,
        window_s=window_s,
        burst_s=burst_s,
        change_at_s=None if change is None else change.at_s,
        change_factor=1.0 if change is None else change.factor,
    )
    scenario = Scenario(
        default=limits,
        latency=latency,
        faults=faults or Faults(),
        rate_limit_headers=headers,
        capacity_changes=changes,
        seed=seed,
    )
    enforcement = f"{window_s:g} s windows" if window_s else f"bucket of {burst_s:g} s"
    return ProfileDraw(
        profile=name,
        seed=seed,
        scenario=scenario,
        truth={DEFAULT_MODEL: truth},
        timeout_s=_timeout_s(latency, 100),
        summary=f"{rpm:.0f} rpm ({enforcement}), headers {headers}, ttft {latency.ttft_s:g} s",
    )


def _openai(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    return _rpm_profile("openai", seed, rng, headers="openai")


def _window(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    return _rpm_profile("window", seed, rng, headers="window", window_s=rng.choice((1.0, 2.0)))


def _bare(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    window_s = rng.choice((None, 1.0))
    return _rpm_profile("bare", seed, rng, headers="none", window_s=window_s)


def _halving(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    at_s = _u(rng, 0.35 * run_s, 0.55 * run_s, digits=1)
    change = CapacityChange(at_s=at_s, factor=0.5)
    draw = _rpm_profile("halving", seed, rng, headers="openai", changes=(change,))
    return _with_summary(draw, f"{draw.summary}, halved at {at_s:g} s")


def _slow(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    latency = Latency(
        ttft_s=_u(rng, 4.0, 10.0, digits=1), per_token_s=_u(rng, 0.01, 0.04, digits=3), spread=0.3
    )
    return _rpm_profile("slow", seed, rng, headers="openai", latency=latency)


def _flaky(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    errors = _u(rng, 0.06, 0.10, digits=3)
    faults = Faults(
        http_500=round(errors * 0.25, 4),
        http_502=round(errors * 0.25, 4),
        http_503=round(errors * 0.25, 4),
        http_529=round(errors * 0.25, 4),
        drop=_u(rng, 0.01, 0.03, digits=3),
        hang=_u(rng, 0.005, 0.015, digits=3),
        hang_s=3600.0,  # only the client's timeout ends a hang
    )
    draw = _rpm_profile("flaky", seed, rng, headers="openai", faults=faults)
    return _with_summary(
        draw,
        f"{draw.summary}, {errors:.1%} 5xx/529, {faults.drop:.1%} drops, {faults.hang:.1%} hangs",
    )


def _busy(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    # 429s that the client's rate does not cause, in the body and code of a rate limit's: a
    # provider's shared capacity busy (Gemini's dynamic shared quota, an Azure deployment at
    # capacity, a gateway passing on an upstream's 429); llmock's --error-rate 429 sends such
    # 429s with retry-after 1 and no rate-limit headers. The real limit binds as well.
    share = _u(rng, 0.02, 0.08, digits=3)
    retry_after_s = rng.choice((1.0, 2.0, None))
    with_headers = rng.random() < 0.5
    faults = Faults(
        busy_429=share, busy_429_retry_after_s=retry_after_s, busy_429_headers=with_headers
    )
    draw = _rpm_profile("busy", seed, rng, headers="openai", faults=faults)
    hint = "no retry-after" if retry_after_s is None else f"retry-after {retry_after_s:g}"
    headers = "with" if with_headers else "without"
    return _with_summary(
        draw, f"{draw.summary}, {share:.1%} busy 429s ({hint}, {headers} rate-limit headers)"
    )


def _tpm(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    rpm = _u(rng, 1000, 1500)
    tpm = _u(rng, 180, 300) * 1000
    latency = _latency(rng)
    limits = ModelLimits(rpm=rpm, tpm=tpm, window_s=1.0)
    return ProfileDraw(
        profile="tpm",
        seed=seed,
        scenario=Scenario(default=limits, latency=latency, rate_limit_headers="window", seed=seed),
        truth={DEFAULT_MODEL: TrueLimits(rpm=rpm, tpm=tpm, window_s=1.0)},
        prompts="mixed",
        max_tokens=256,
        timeout_s=_timeout_s(latency, 256),
        summary=f"{rpm:.0f} rpm, {tpm:,.0f} tpm (binding) in 1 s windows, headers window",
    )


def _azure(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    # Azure sets RPM in proportion to the deployment's TPM: 6 RPM per 1000 TPM.
    tpm = _u(rng, 100, 300) * 1000
    rpm = tpm * 6 / 1000
    latency = _latency(rng)
    limits = ModelLimits(rpm=rpm, tpm=tpm, window_s=10.0)
    return ProfileDraw(
        profile="azure",
        seed=seed,
        scenario=Scenario(default=limits, latency=latency, rate_limit_headers="azure", seed=seed),
        truth={DEFAULT_MODEL: TrueLimits(rpm=rpm, tpm=tpm, window_s=10.0)},
        timeout_s=_timeout_s(latency, 100),
        summary=f"{rpm:.0f} rpm, {tpm:,.0f} tpm in 10 s windows, headers azure (remaining only)",
    )


def _anthropic(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    rpm = _u(rng, 1000, 2000)
    input_tpm = _u(rng, 80, 160) * 1000
    output_tpm = _u(rng, 25, 50) * 1000
    burst_s = rng.choice((1.0, 5.0))
    latency = _latency(rng)
    limits = ModelLimits(rpm=rpm, input_tpm=input_tpm, output_tpm=output_tpm, burst_s=burst_s)
    faults = Faults(http_529=_u(rng, 0.005, 0.02, digits=3))
    return ProfileDraw(
        profile="anthropic",
        seed=seed,
        scenario=Scenario(
            default=limits,
            latency=latency,
            faults=faults,
            rate_limit_headers="anthropic",
            seed=seed,
            # The robustness bench's reference pacer and ideal time count output as generated
            # (bench/contenders.py, bench/robustness.py): the profile keeps that rule until
            # they reserve max_tokens as Anthropic does (the simulator's default).
            otpm_counting="generated",
        ),
        truth={
            DEFAULT_MODEL: TrueLimits(
                rpm=rpm, input_tpm=input_tpm, output_tpm=output_tpm, burst_s=burst_s
            )
        },
        timeout_s=_timeout_s(latency, 100),
        summary=(
            f"{rpm:.0f} rpm, {input_tpm:,.0f} input tpm, {output_tpm:,.0f} output tpm "
            f"(bucket of {burst_s:g} s), {faults.http_529:.1%} 529 overloaded"
        ),
    )


#: How gateways and servers answer a request beyond an in-flight cap.
IN_FLIGHT_STYLES: tuple[InFlightReply, ...] = (
    # As observed on an independent server: a rate-limit code, retry-after 1.
    InFlightReply(
        message="Rate limit reached: too many requests in flight (limit {limit})",
        code="rate_limit_exceeded",
        retry_after_s=1.0,
        rate_limit_headers=True,
    ),
    InFlightReply(
        message="Concurrency limit exceeded: at most {limit} concurrent requests are allowed.",
        code="concurrency_limit_exceeded",
        retry_after_s=None,
        rate_limit_headers=False,
    ),
    InFlightReply(
        message="Too many concurrent requests. Please slow down.",
        code="too_many_requests",
        retry_after_s=2.0,
        rate_limit_headers=False,
    ),
    InFlightReply(),  # the simulator's default: rate_limit_exceeded, no retry-after
)


def _inflight(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    cap = rng.randint(4, 16)
    style = rng.randrange(len(IN_FLIGHT_STYLES))
    latency = _latency(rng, (0.3, 1.0))
    # A non-binding rpm so that the styles with headers have some to send.
    limits = ModelLimits(rpm=100_000, max_in_flight=cap)
    reply = IN_FLIGHT_STYLES[style]
    return ProfileDraw(
        profile="inflight",
        seed=seed,
        scenario=Scenario(default=limits, latency=latency, in_flight_reply=reply, seed=seed),
        truth={DEFAULT_MODEL: TrueLimits(rpm=100_000, max_in_flight=cap)},
        timeout_s=_timeout_s(latency, 100),
        summary=(
            f"at most {cap} in flight (style {style}: code {reply.code}, retry-after "
            f"{reply.retry_after_s}, headers {reply.rate_limit_headers}), "
            f"ttft {latency.ttft_s:g} s"
        ),
    )


def _queueing_draw(
    profile: str, seed: int, queueing: Queueing, latency: Latency, summary: str
) -> ProfileDraw:
    """A server that never answers 429 and queues past its capacity (its best concurrency)."""
    return ProfileDraw(
        profile=profile,
        seed=seed,
        scenario=Scenario(latency=latency, rate_limit_headers="none", queueing=queueing, seed=seed),
        truth={DEFAULT_MODEL: TrueLimits(max_in_flight=queueing.capacity)},
        # A queue of the whole workload must not time out: the client is what is measured.
        timeout_s=_timeout_s(latency, 100, queueing.slowdown) * 4,
        summary=summary,
    )


def _selfhosted(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    capacity = rng.randint(8, 24)
    slowdown = _u(rng, 0.1, 0.4, digits=2)
    latency = Latency(
        ttft_s=_u(rng, 0.3, 1.0, digits=2), per_token_s=_u(rng, 0.005, 0.015, digits=4), spread=0.2
    )
    return _queueing_draw(
        "selfhosted",
        seed,
        Queueing(capacity=capacity, slowdown=slowdown),
        latency,
        f"queueing server, no 429s: processes {capacity} at once, {slowdown:.0%} slower "
        f"when the queue is long, ttft {latency.ttft_s:g} s",
    )


def _deepseek(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    """DeepSeek states and enforces no rate limit; under load a request waits, answered 200 at
    once and held open with empty lines (streams: ``: keep-alive`` comments) until its answer:
    the time to the headers says nothing of the queue, only the answer's end does."""
    capacity = rng.randint(8, 32)
    slowdown = _u(rng, 0.0, 0.2, digits=2)
    keep_alive_s = _u(rng, 0.2, 1.0, digits=2)
    latency = Latency(
        ttft_s=_u(rng, 0.5, 1.5, digits=2), per_token_s=_u(rng, 0.005, 0.02, digits=4), spread=0.3
    )
    return _queueing_draw(
        "deepseek",
        seed,
        Queueing(capacity=capacity, slowdown=slowdown, keep_alive_s=keep_alive_s),
        latency,
        f"no limit; serves {capacity} at once, the rest answered 200 at once and held open "
        f"(a blank line every {keep_alive_s:g} s), {slowdown:.0%} slower when the queue is "
        f"long, ttft {latency.ttft_s:g} s",
    )


def _multimodel(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    models = {
        "gpt-4o-mini": ModelLimits(rpm=_u(rng, 900, 1500), tpm=_NON_BINDING_TPM),
        "gpt-4o": ModelLimits(rpm=_u(rng, 300, 600), tpm=_NON_BINDING_TPM),
        "gpt-4.1-mini": ModelLimits(rpm=_u(rng, 500, 900), tpm=_u(rng, 60, 120) * 1000),
    }
    latency = _latency(rng)
    truth = {name: TrueLimits(rpm=lim.rpm, tpm=lim.tpm) for name, lim in models.items()}
    return ProfileDraw(
        profile="multimodel",
        seed=seed,
        scenario=Scenario(models=models, latency=latency, seed=seed),
        truth=truth,
        models=tuple(models),
        timeout_s=_timeout_s(latency, 100),
        summary="; ".join(
            f"{name} {lim.rpm:.0f} rpm"
            + (f" {lim.tpm:,.0f} tpm" if lim.tpm != _NON_BINDING_TPM else "")
            for name, lim in models.items()
        ),
    )


def _cjk(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    tpm = _u(rng, 100, 200) * 1000
    latency = _latency(rng)
    limits = ModelLimits(rpm=3000, tpm=tpm)
    return ProfileDraw(
        profile="cjk",
        seed=seed,
        scenario=Scenario(default=limits, latency=latency, seed=seed),
        truth={DEFAULT_MODEL: TrueLimits(rpm=3000, tpm=tpm)},
        prompts="cjk",
        timeout_s=_timeout_s(latency, 100),
        summary=f"{tpm:,.0f} tpm (binding), CJK/JSON/code prompts that chars/4 undercounts",
    )


def _gemini(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    # Gemini: RPM, input TPM and RPD per project and model, no rate-limit headers, the wait
    # only in the 429 body's RetryInfo. Google does not say how the minute is enforced: a
    # refilling bucket of a drawn depth stands for it.
    rpm = _u(rng, 600, 1500)
    input_tpm = _u(rng, 120, 300) * 1000
    rpd = rng.choice((10_000.0, 50_000.0, 100_000.0))
    burst_s = rng.choice((1.0, 5.0))
    latency = _latency(rng, (0.3, 0.9))
    faults = Faults(http_503=_u(rng, 0.0, 0.01, digits=3))  # "The model is overloaded."
    limits = ModelLimits(rpm=rpm, input_tpm=input_tpm, rpd=rpd, burst_s=burst_s)
    model = "gemini-2.5-flash"
    return ProfileDraw(
        profile="gemini",
        seed=seed,
        scenario=Scenario(
            default=limits, latency=latency, faults=faults, rate_limit_headers="gemini", seed=seed
        ),
        truth={model: TrueLimits(rpm=rpm, input_tpm=input_tpm, burst_s=burst_s)},
        models=(model,),
        prompts="mixed",
        max_tokens=256,
        timeout_s=_timeout_s(latency, 256),
        summary=(
            f"{rpm:.0f} rpm, {input_tpm:,.0f} input tpm (bucket of {burst_s:g} s), {rpd:,.0f} "
            f"rpd; no headers, RESOURCE_EXHAUSTED with retryDelay in whole seconds, "
            f"{faults.http_503:.1%} 503"
        ),
    )


def _groq(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    # Groq: x-ratelimit-*-requests state the per-day budget, *-tokens the per-minute one;
    # the per-minute request limit binds too but is stated only in its 429's message.
    # With ~530 tokens charged per request either limit may bind, depending on the draw.
    rpm = _u(rng, 300, 700)
    tpm = _u(rng, 150, 400) * 1000
    rpd = rng.choice((14_400.0, 50_000.0, 500_000.0))
    latency = _latency(rng, (0.1, 0.4))  # Groq answers fast
    # Short answers let the unstated rpm bind; long ones the stated tpm.
    max_tokens = rng.choice((64, 256))
    limits = ModelLimits(rpm=rpm, tpm=tpm, rpd=rpd, day_refill=True)
    model = "llama-3.1-8b-instant"
    return ProfileDraw(
        profile="groq",
        seed=seed,
        scenario=Scenario(
            default=limits,
            latency=latency,
            rate_limit_headers="groq",
            charge_cached_tokens=False,
            seed=seed,
        ),
        truth={model: TrueLimits(rpm=rpm, tpm=tpm)},
        models=(model,),
        prompts="mixed",
        max_tokens=max_tokens,
        timeout_s=_timeout_s(latency, max_tokens),
        summary=(
            f"{rpm:.0f} rpm (stated nowhere), {tpm:,.0f} tpm; limit-requests states {rpd:,.0f} "
            f"per day (refilling), max_tokens {max_tokens}, ttft {latency.ttft_s:g} s"
        ),
    )


def _gateway(rng: random.Random, seed: int, run_s: float) -> ProfileDraw:
    # OpenRouter-like gateways: N requests per 10 s window, X-RateLimit-Limit/-Remaining/-Reset
    # without a suffix, the reset a Unix time in milliseconds, no retry-after; some send them
    # as headers, OpenRouter only inside the 429's body; API gateways the IETF draft's.
    # API gateways in front of a model (Kong, Envoy) send the IETF draft's names, the reset in
    # whole seconds: a quarter of the draws, taken from the plain gateway's half.
    style = rng.random()
    headers: HeaderMode = "gateway" if style < 0.25 else "ietf" if style < 0.5 else "openrouter"
    window_s = 10.0
    per_window = rng.randint(100, 250)
    rpm = per_window * 60 / window_s
    latency = _latency(rng)
    limits = ModelLimits(rpm=rpm, tpm=_NON_BINDING_TPM, window_s=window_s)
    return ProfileDraw(
        profile="gateway",
        seed=seed,
        scenario=Scenario(default=limits, latency=latency, rate_limit_headers=headers, seed=seed),
        truth={DEFAULT_MODEL: TrueLimits(rpm=rpm, tpm=_NON_BINDING_TPM, window_s=window_s)},
        timeout_s=_timeout_s(latency, 100),
        summary=(
            f"{per_window} requests per {window_s:g} s window ({rpm:.0f} rpm), reset in "
            f"{'whole seconds' if headers == 'ietf' else 'epoch ms'}, headers {headers}, "
            f"ttft {latency.ttft_s:g} s"
        ),
    )


def _with_summary(draw: ProfileDraw, summary: str) -> ProfileDraw:
    return ProfileDraw(
        profile=draw.profile,
        seed=draw.seed,
        scenario=draw.scenario,
        truth=draw.truth,
        models=draw.models,
        prompts=draw.prompts,
        max_tokens=draw.max_tokens,
        timeout_s=draw.timeout_s,
        summary=summary,
    )


PROFILES: Mapping[str, _Profile] = {
    "openai": _Profile("rpm bucket of 1 s, OpenAI headers (remaining of the minute)", _openai),
    "window": _Profile(
        "rpm in 1-2 s windows; remaining/reset describe the window, limit the minute", _window
    ),
    "tpm": _Profile("binding tpm in 1 s windows, 200-2000 char prompts, max_tokens 256", _tpm),
    "azure": _Profile("rpm and tpm in 10 s windows, remaining headers only", _azure),
    "anthropic": _Profile(
        "rpm, input and output tpm (output charged when generated), RFC 3339 resets, 529s",
        _anthropic,
    ),
    "bare": _Profile("rpm, no rate-limit headers, bare 429s", _bare),
    "inflight": _Profile("in-flight cap answered in one of several 429 styles", _inflight),
    "flaky": _Profile("rpm plus 6-10% 5xx/529, 1-3% drops, 0.5-1.5% hangs", _flaky),
    "busy": _Profile("rpm plus 2-8% 429s the client's rate does not cause", _busy),
    "selfhosted": _Profile("no 429s: a queue past capacity, slower when long", _selfhosted),
    "deepseek": _Profile(
        "DeepSeek: no limit; a request that waits is answered 200 at once and held open",
        _deepseek,
    ),
    "slow": _Profile("rpm with 4-10 s to first token (reasoning models)", _slow),
    "halving": _Profile("rpm halved 35-55% into the run", _halving),
    "multimodel": _Profile("three models with their own limits", _multimodel),
    "cjk": _Profile("binding tpm, prompts chars/4 undercounts (CJK, JSON, code)", _cjk),
    "gemini": _Profile(
        "Gemini: rpm + input tpm + rpd, no headers, RESOURCE_EXHAUSTED with retryDelay", _gemini
    ),
    "groq": _Profile(
        "Groq: limit-requests is per day, tokens per minute; the rpm is stated nowhere", _groq
    ),
    "gateway": _Profile(
        "requests per 10 s window, X-RateLimit-* unsuffixed with epoch-ms reset (or body only)",
        _gateway,
    ),
}


def draw_profile(name: str, seed: int = 0, *, run_s: float = 15.0) -> ProfileDraw:
    """One randomised scenario of profile `name`, reproducible from `seed`.

    `run_s` is the run length the traffic will be sized to; time-based parameters (when a
    limit changes) are drawn as fractions of it. Raises KeyError for an unknown profile.
    """
    try:
        profile = PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})") from None
    rng = random.Random(f"{name}:{seed}")
    return profile.draw(rng, seed, run_s)
