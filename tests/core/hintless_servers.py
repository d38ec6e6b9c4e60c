"""Hintless servers of the robustness bench's kinds, and a finite workload run against them
on a simulated clock: a lane with nothing configured, ``n`` requests to have accepted, each
refusal retried as the attempt loop retries it (after its hint, or a jittered backoff).

The kinds are those of ``bare`` (requests in a bucket or fixed windows of a given length,
bare 429s) and ``gemini`` (requests and input tokens in buckets of 1 or 5 s, Google's
RESOURCE_EXHAUSTED 429 with a whole-second retryDelay, a few 503s). What a run reports is
what the bench scores: efficiency over the ideal time the true limits force, 429s, and
sends over the requests needed. Models only: no code is shared with ``pacekeeper.sim``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

from pacekeeper.core.classify import classify_response
from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.lane import Lane, Permit, _ThreadWaiter

from .simclock import Answers, SimClock

STEP_S = 0.005


class Meter:
    """A bucket ``depth_s`` deep refilling at ``per_s`` (full at 0), or fixed windows of
    ``depth_s`` starting at ``phase_s`` + k ``depth_s`` (``fixed``) holding ``per_s`` x
    ``depth_s`` each."""

    def __init__(self, per_s: float, depth_s: float, *, fixed: bool, phase_s: float = 0.0) -> None:
        self.per_s = per_s
        self.depth_s = depth_s
        self.capacity = per_s * depth_s
        if fixed:
            self.capacity = float(max(1, round(self.capacity)))
        self.fixed = fixed
        self.phase_s = phase_s
        self.level = self.capacity
        self.at = 0.0
        self.window = math.floor((0.0 - phase_s) / depth_s)

    def wait_s(self, cost: float, now: float) -> float:
        """0.0: ``cost`` fits now; else the seconds until it would."""
        if self.fixed:
            window = math.floor((now - self.phase_s) / self.depth_s)
            if window != self.window:
                self.window, self.level = window, self.capacity
            if self.level >= cost:
                return 0.0
            return self.phase_s + (window + 1) * self.depth_s - now
        self.level = min(self.capacity, self.level + (now - self.at) * self.per_s)
        self.at = now
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.per_s

    def take(self, cost: float) -> None:
        self.level -= cost


@dataclass
class Server:
    """One drawn server: its meters, latencies and faults, and the ideal time of a run."""

    kind: str
    rpm: float
    depth_s: float
    fixed: bool
    ttft_s: float
    per_token_s: float
    phase_s: float = 0.0
    input_tpm: float | None = None
    p503: float = 0.0
    p_busy: float = 0.0
    """The share of requests refused at random whatever the pace (a busy upstream: llmock's
    ``--error-rate 429``): a 429 with ``retry-after: 1`` and no headers, counted against the
    limit (the request was admitted first, as ``pacekeeper.sim`` counts its busy 429s)."""
    seed: int = 0
    summary: str = field(default="")

    def meters(self) -> tuple[Meter, Meter | None]:
        requests = Meter(self.rpm / 60.0, self.depth_s, fixed=self.fixed, phase_s=self.phase_s)
        tokens = None
        if self.input_tpm is not None:
            tokens = Meter(self.input_tpm / 60.0, self.depth_s, fixed=False)
        return requests, tokens


def draw_bare(rng: random.Random, seed: int) -> Server:
    """``bare``'s class, widened: 300-3000/min, a bucket or fixed windows of 1-2 s, first
    tokens in 0.2-2 s (answers of 0.2-3 s)."""
    fixed = rng.random() < 0.5
    depth_s = rng.choice((1.0, 1.0, 2.0))
    rpm = rng.uniform(300, 3000)
    if fixed:
        rpm = max(1, round(rpm * depth_s / 60)) * 60 / depth_s
    ttft = rng.choice((rng.uniform(0.2, 0.6), rng.uniform(0.2, 2.0)))
    server = Server(
        kind="bare",
        rpm=rpm,
        depth_s=depth_s,
        fixed=fixed,
        ttft_s=ttft,
        per_token_s=rng.uniform(0.002, 0.006),
        phase_s=rng.uniform(0, depth_s),
        seed=seed,
    )
    server.summary = (
        f"bare {rpm:.0f}/min {'windows' if fixed else 'bucket'} {depth_s:g}s ttft {ttft:.2f}"
    )
    return server


def draw_bare_bench(rng: random.Random, seed: int) -> Server:
    """``bare``'s own draws: 600-1500/min in a 1-s bucket or 1-s windows, first tokens in
    0.2-0.6 s."""
    fixed = rng.random() < 0.5
    rpm = rng.uniform(600, 1500)
    if fixed:
        rpm = max(1, round(rpm / 60)) * 60.0
    ttft = rng.uniform(0.2, 0.6)
    server = Server(
        kind="bare",
        rpm=rpm,
        depth_s=1.0,
        fixed=fixed,
        ttft_s=ttft,
        per_token_s=rng.uniform(0.002, 0.006),
        phase_s=rng.uniform(0, 1.0),
        seed=seed,
    )
    server.summary = f"bare {rpm:.0f}/min {'windows' if fixed else 'bucket'} 1s ttft {ttft:.2f}"
    return server


def draw_gemini(rng: random.Random, seed: int) -> Server:
    """``gemini``'s class: 600-1500/min and 120k-300k input tokens a minute, both in buckets
    of 1 or 5 s, first tokens in 0.3-0.9 s, 0-1% 503s."""
    depth_s = rng.choice((1.0, 5.0))
    server = Server(
        kind="gemini",
        rpm=rng.uniform(600, 1500),
        depth_s=depth_s,
        fixed=False,
        ttft_s=rng.uniform(0.3, 0.9),
        per_token_s=rng.uniform(0.002, 0.006),
        input_tpm=rng.uniform(120, 300) * 1000,
        p503=rng.uniform(0.0, 0.01),
        seed=seed,
    )
    server.summary = (
        f"gemini {server.rpm:.0f}/min {server.input_tpm or 0:.0f} in-tpm bucket {depth_s:g}s "
        f"ttft {server.ttft_s:.2f}"
    )
    return server


def _gemini_429(quota: str, wait_s: float) -> bytes:
    metric = (
        "generate_content_input_token_count"
        if "Token" in quota
        else "generate_content_free_tier_requests"
    )
    delay_s = max(1, math.ceil(wait_s - 1e-9))
    error = {
        "code": 429,
        "message": f"Quota {quota} exhausted. Please retry in {delay_s}s.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {"quotaMetric": f"generativelanguage.googleapis.com/{metric}", "quotaId": quota}
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay_s}s"},
        ],
    }
    return json.dumps([{"error": error}]).encode()


@dataclass
class Result:
    server: Server
    n: int
    ideal_s: float
    wall_s: float
    sent: int
    refusals: list[tuple[float, float, str]]
    """(sent at, answered at, what refused) per 429 of a limit."""
    lane: Lane
    busy: list[float] = field(default_factory=list)
    """When each busy 429 (noise) was sent."""
    sends: list[float] = field(default_factory=list)
    """When each request was sent."""

    @property
    def efficiency(self) -> float:
        return self.ideal_s / self.wall_s

    @property
    def share_429(self) -> float:
        return len(self.refusals) / self.sent


def _workload(server: Server, rng: random.Random, run_s: float) -> tuple[list[int], float]:
    """Prompts (input tokens) of a run about ``run_s`` of ideal time, and that ideal time."""
    mean_prompt = 275.0 if server.input_tpm is not None else 80.0
    per_s = server.rpm / 60.0
    if server.input_tpm is not None:
        per_s = min(per_s, server.input_tpm / 60.0 / mean_prompt)
    burst = 0.0 if server.fixed else server.depth_s
    n = max(10, round((run_s + burst) * per_s))
    low, high = (50, 500) if server.input_tpm is not None else (50, 110)
    prompts = [rng.randint(low, high) for _ in range(n)]
    last_answer_s = (server.ttft_s + server.per_token_s * 60) * math.exp(0.3**2 / 2)
    bounds = []
    # Busy 429s count against the limit: n accepted take n / (1 - p_busy) sends of it.
    sends = n / (1.0 - server.p_busy)
    for units, minute in ((sends, server.rpm), (float(sum(prompts)), server.input_tpm)):
        if minute is None:
            continue
        rate = minute / 60.0
        if server.fixed:
            budget = math.floor(rate * server.depth_s + 1e-9)
            windows = math.ceil(units / budget - 1e-9)
            bounds.append(
                0.0
                if windows <= 1
                else server.depth_s
                - (-server.phase_s) % server.depth_s
                + (windows - 2) * server.depth_s
            )
        else:
            bounds.append(max(0.0, units - rate * server.depth_s) / rate)
    return prompts, max(bounds) + last_answer_s


def run(server: Server, *, run_s: float = 10.0, max_tokens: int = 100) -> Result:
    """The lane against ``server`` until every request was accepted and answered."""
    rng = random.Random(f"{server.summary}:{server.seed}")
    prompts, ideal = _workload(server, rng, run_s)
    n = len(prompts)
    clock = SimClock()
    retry = RetryPolicy()
    lane = Lane(("/v1/chat/completions", "m"), limits=Limits(), retry=retry, clock=clock)
    lane.queue.join(_ThreadWaiter())
    requests, tokens = server.meters()
    answers: Answers[tuple[Permit, int, int, str, float]] = Answers()
    ready: list[tuple[float, int, int]] = [(0.0, i, 1) for i in range(n)]  # (at, index, attempt)
    refusals: list[tuple[float, float, str]] = []
    busy: list[float] = []
    sends: list[float] = []
    sent = done = 0
    last_answer = 0.0
    gemini = server.input_tpm is not None
    now = 0.0
    while done < n and now < 20 * run_s:
        clock.now = now
        for permit, index, attempt, status, wait_s in answers.due(now):
            last_answer = now
            if status == "ok":
                verdict = classify_response(200, {}, None, now_wall_s=0.0)
                done += 1
            elif status == "503":
                verdict = classify_response(503, {}, None, now_wall_s=0.0)
            elif status == "busy":
                verdict = classify_response(429, {"retry-after": "1"}, None, now_wall_s=0.0)
            elif gemini:
                verdict = classify_response(
                    429,
                    {"content-type": "application/json"},
                    _gemini_429(status, wait_s),
                    now_wall_s=0.0,
                )
            else:
                verdict = classify_response(429, {}, None, now_wall_s=0.0)
            lane.settle(permit, verdict, now=now, max_hint_s=600.0, retry=attempt > 1)
            if status != "ok":
                if verdict.hint_s is not None:
                    delay = verdict.hint_s + rng.uniform(0, 0.05 + 0.05 * verdict.hint_s)
                else:
                    delay = rng.uniform(0, min(30.0, 0.5 * 2 ** (attempt - 1)))
                ready.append((now + delay, index, attempt + 1))
        ready.sort()
        while ready and ready[0][0] <= now:
            _, index, attempt = ready[0]
            prompt = prompts[index]
            if gemini:
                admitted = lane._try_admit(now, prompt + max_tokens, max_tokens) == 0.0
                permit_args = (now, prompt + max_tokens, now, max_tokens)
            else:
                admitted = lane._try_admit(now, 0) == 0.0
                permit_args = (now, 0, now, 0)
            if not admitted:
                break
            ready.pop(0)
            permit = lane._grant(*permit_args)
            sent += 1
            sends.append(now)
            arrive = now + rng.uniform(0.002, 0.012)
            wait_r = requests.wait_s(1, arrive)
            wait_t = 0.0 if tokens is None else tokens.wait_s(prompt, arrive)
            if wait_r > 0.0 or wait_t > 0.0:
                what = (
                    "GenerateContentInputTokensPerModelPerMinute"
                    if wait_t > wait_r
                    else "GenerateRequestsPerMinutePerProjectPerModel"
                )
                refusals.append((now, arrive + 0.005, "tokens" if wait_t > wait_r else "requests"))
                answers.add(arrive + 0.005, (permit, index, attempt, what, max(wait_r, wait_t)))
                continue
            if server.p_busy and rng.random() < server.p_busy:
                requests.take(1)
                busy.append(now)
                answers.add(arrive + 0.005, (permit, index, attempt, "busy", 1.0))
                continue
            if rng.random() < server.p503:
                answers.add(arrive + 0.05, (permit, index, attempt, "503", 0.0))
                continue
            requests.take(1)
            if tokens is not None:
                tokens.take(prompt)
            completion = rng.randint(20, max_tokens)
            latency = (server.ttft_s + server.per_token_s * completion) * math.exp(
                rng.gauss(0, 0.3)
            )
            answers.add(arrive + latency, (permit, index, attempt, "ok", 0.0))
        now = round(now + STEP_S, 6)
    return Result(server, n, ideal, max(last_answer, 1e-9), sent, refusals, lane, busy, sends)
