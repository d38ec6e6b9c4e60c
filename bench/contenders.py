"""The contenders: pacekeeper (auto, configured, `pacekeeper run`), a reference pacer, and the
recipes people write today. Each sends the scenario's workload to ``ctx.base_url`` and reports
what its caller saw (:class:`~bench.outcome.Outcome`).

Every client uses the scenario's per-attempt timeout, sends ``x-client-request-id`` on every
attempt, and starts all requests at once (``asyncio.gather`` style): the recipes differ only in
what stands between the tasks and the server.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import tenacity
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

import pacekeeper
from bench.outcome import Outcome, Result, failure
from bench.scenarios import BenchScenario, Truth
from bench.workload import Workload

__all__ = ["CONTENDERS", "Contender", "RunContext", "pacekeeper_command"]

_SAMPLE_EVERY_S = 0.25

SendFn = Callable[[int], Awaitable[object]]
"""Sends logical request i (all its attempts) and returns what the client returned."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    base_url: str
    scenario: BenchScenario
    sim_started_at: float
    """Wall-clock time the simulator started: capacity changes count from it."""
    workdir: Path
    cap_s: float
    """Requests with no answer after this long are cancelled and counted as lost."""
    completion_tokens: tuple[int, ...] = ()
    """Each request's completion length, when the reference pacer must pace output tokens."""

    @property
    def change_wall(self) -> float | None:
        at_s = self.scenario.truth.change_at_s
        return None if at_s is None else self.sim_started_at + at_s


@dataclass(frozen=True, slots=True)
class Contender:
    key: str
    label: str
    run: Callable[[RunContext], Outcome]


# -- shared driver for the SDK-based contenders ----------------------------------------------


def _messages(wl: Workload, i: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": wl.prompt(i)}]


def _sdk_call(client: openai.AsyncOpenAI, wl: Workload) -> SendFn:
    async def call(i: int) -> object:
        return await client.chat.completions.create(
            model=wl.model_for(i),
            messages=_messages(wl, i),
            max_tokens=wl.max_tokens,
            extra_headers={"x-client-request-id": wl.request_id(i)},
        )

    return call


def _judge(reply: object) -> Result:
    """A returned value counts as a success only if it is a real completion: a client that
    hands back garbage without raising has lost the request."""
    if isinstance(reply, ChatCompletion) and reply.choices:
        content = reply.choices[0].message.content
        if isinstance(content, str) and content:
            return Result("ok")
    return Result("lost", f"returned {type(reply).__name__} without a completion or an error")


async def _drive(n: int, call: SendFn, cap_s: float) -> Outcome:
    """Start all ``n`` calls at once and wait for every one (or the cap)."""

    async def one(i: int) -> Result:
        try:
            reply = await call(i)
        except Exception as exc:
            return failure(exc)
        return _judge(reply)

    started_at = time.time()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=cap_s)
    outcome = Outcome(started_at=started_at, wall_s=time.monotonic() - t0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task in done:
            outcome.add(task.result())
        else:
            outcome.add(Result("lost", f"no answer after {cap_s:.0f} s (cancelled by the bench)"))
    return outcome


def _sdk_client(
    ctx: RunContext, outcome_answers: list[tuple[float, int | None]], *, max_retries: int
) -> openai.AsyncOpenAI:
    """An AsyncOpenAI whose every HTTP answer (SDK retries included) is timestamped."""

    async def on_response(response: httpx2.Response) -> None:
        outcome_answers.append((time.time(), response.status_code))

    http = openai.DefaultAsyncHttpx2Client(event_hooks={"response": [on_response]})
    return openai.AsyncOpenAI(
        base_url=ctx.base_url,
        api_key="x",
        timeout=ctx.scenario.timeout_s,
        max_retries=max_retries,
        http_client=http,
    )


def _run_sdk_recipe(
    ctx: RunContext,
    *,
    max_retries: int,
    wrap_call: Callable[[SendFn], SendFn],
) -> Outcome:
    answers: list[tuple[float, int | None]] = []

    async def main() -> Outcome:
        client = _sdk_client(ctx, answers, max_retries=max_retries)
        try:
            return await _drive(
                ctx.scenario.workload.n,
                wrap_call(_sdk_call(client, ctx.scenario.workload)),
                ctx.cap_s,
            )
        finally:
            await client.close()

    outcome = asyncio.run(main())
    outcome.answers = answers
    return outcome


# -- 4. the recipes people write today -------------------------------------------------------


def _semaphore(limit: int) -> Callable[[SendFn], SendFn]:
    def wrap_call(call: SendFn) -> SendFn:
        sem: asyncio.Semaphore | None = None

        async def bounded(i: int) -> object:
            nonlocal sem
            sem = sem or asyncio.Semaphore(limit)  # made inside the running loop
            async with sem:
                return await call(i)

        return bounded

    return wrap_call


def _unbounded(call: SendFn) -> SendFn:
    return call


def _tenacity16(call: SendFn) -> SendFn:
    # The OpenAI cookbook's recipe: retry everything with random exponential backoff, inside a
    # semaphore (a task backing off keeps its slot, as the usual `async with sem:` code does).
    @tenacity.retry(
        wait=tenacity.wait_random_exponential(min=1, max=60), stop=tenacity.stop_after_attempt(6)
    )
    async def with_backoff(i: int) -> object:
        return await call(i)

    return _semaphore(16)(with_backoff)


def run_semaphore5(ctx: RunContext) -> Outcome:
    return _run_sdk_recipe(ctx, max_retries=2, wrap_call=_semaphore(5))


def run_unbounded(ctx: RunContext) -> Outcome:
    return _run_sdk_recipe(ctx, max_retries=2, wrap_call=_unbounded)


def run_tenacity16(ctx: RunContext) -> Outcome:
    return _run_sdk_recipe(ctx, max_retries=0, wrap_call=_tenacity16)


# -- 1, 2. pacekeeper.wrap -------------------------------------------------------------------


class _Recorder:
    """A pacekeeper RecordHook that timestamps every attempt's answer."""

    def __init__(self, answers: list[tuple[float, int | None]]) -> None:
        self.answers = answers

    def on_attempt(self, record: pacekeeper.AttemptRecord) -> None:
        self.answers.append((record.started_at + record.latency_s, record.status))

    def on_request(self, record: pacekeeper.RequestRecord) -> None:
        pass


async def _sample_lanes(gov: pacekeeper.Governor, t0: float, out: list[dict[str, Any]]) -> None:
    """Every quarter second: what the governor believes (for diagnosing misses)."""
    while True:
        out.extend(
            {
                "t": round(time.monotonic() - t0, 3),
                "limit": lane.slots.limit,
                "in_flight": lane.slots.in_flight,
                "queued": lane.queued,
                "rpm": lane.rpm,
                "tpm": lane.tpm,
                "cooldown_s": round(lane.cooldown.remaining_s(now=time.monotonic()), 3),
            }
            for lane in gov.lanes
        )
        await asyncio.sleep(_SAMPLE_EVERY_S)


def _run_pacekeeper(ctx: RunContext, limits: pacekeeper.Limits | None) -> Outcome:
    answers: list[tuple[float, int | None]] = []
    samples: list[dict[str, Any]] = []
    gov = pacekeeper.Governor(limits=limits, hooks=[_Recorder(answers)])
    # A long-running program loads its tokenizer once (about a second); the runs here are a
    # few seconds, so that one-off cost is paid before the clock starts, as the reference
    # pacer (which counts no tokens) pays nothing. bench/overhead.py measures it apart.
    pacekeeper.warm_up(ctx.scenario.workload.models or [ctx.scenario.workload.model])

    async def main() -> Outcome:
        client = pacekeeper.wrap(
            openai.AsyncOpenAI(base_url=ctx.base_url, api_key="x", timeout=ctx.scenario.timeout_s),
            gov,
        )
        sampler = asyncio.create_task(_sample_lanes(gov, time.monotonic(), samples))
        try:
            return await _drive(
                ctx.scenario.workload.n, _sdk_call(client, ctx.scenario.workload), ctx.cap_s
            )
        finally:
            sampler.cancel()
            await client.close()

    outcome = asyncio.run(main())
    outcome.answers = answers
    outcome.diagnostics = {
        "lanes": [repr(lane) for lane in gov.lanes],
        "learned": [
            {
                "rpm": lane.rpm,
                "tpm": lane.tpm,
                "concurrency_limit": lane.slots.limit,
                "peak_in_flight": lane.slots.peak_in_flight,
                "cooldowns": lane.cooldown.times_closed,
                "prompt_scale": round(lane.prompt_scale, 3),
            }
            for lane in gov.lanes
        ],
        "stats": [s.as_dict() for s in gov.stats()],
        "lane_samples": samples,
    }
    return outcome


def run_auto(ctx: RunContext) -> Outcome:
    return _run_pacekeeper(ctx, None)


def run_configured(ctx: RunContext) -> Outcome:
    truth = ctx.scenario.truth
    limits = pacekeeper.Limits(
        rpm=truth.rpm,
        tpm=truth.tpm,
        concurrency=truth.max_in_flight if truth.max_in_flight is not None else "auto",
    )
    return _run_pacekeeper(ctx, limits)


# -- 3. the reference pacer ------------------------------------------------------------------

_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
# A burst of requests reaches the provider over a few ms, later than one request alone: a
# bucket drained to exactly zero would refuse the next request on schedule. Keep a fifth of
# the bucket as slack for that jitter.
_BURST_USED = 0.8
_MAX_ATTEMPTS = 8
# Arrival times jitter by a few ms: near a window's boundary a request could land in the next
# window. Sending nothing this close to a boundary costs under 4% of a 1 s window.
_WINDOW_GUARD_S = 0.02


class _WindowSchedule:
    """Pacing for fixed windows (aligned to the simulator's start): spend each window's
    budget as soon as it opens, then wait for the next one. An even schedule would put one
    request too many into some windows (a window counts whole requests)."""

    def __init__(self, truth: Truth, wl: Workload, origin: float, change_at: float | None):
        assert truth.window_s is not None
        self.truth = truth
        self.wl = wl
        self.window_s = truth.window_s
        self.origin = origin  # monotonic time of the simulator's start
        self.change_at = change_at  # monotonic time of the capacity change, if any
        self.window = -1
        self.requests = 0
        self.tokens = 0

    def wait_s(self, i: int, now: float) -> float:
        """0.0 when request ``i`` may go now (and it is then counted), else how long to wait."""
        window, into_s = divmod(now - self.origin, self.window_s)
        if into_s < _WINDOW_GUARD_S:
            return _WINDOW_GUARD_S - into_s
        if into_s > self.window_s - _WINDOW_GUARD_S:
            return self.window_s - into_s + _WINDOW_GUARD_S
        if window != self.window:
            self.window, self.requests, self.tokens = int(window), 0, 0
        changed = self.change_at is not None and now >= self.change_at
        factor = self.truth.change_factor if changed else 1.0
        per_window = self.window_s / 60 * factor
        cost = self.wl.sim_charge(i)
        fits = True
        if self.truth.rpm is not None:
            fits = self.requests + 1 <= math.floor(self.truth.rpm * per_window + 1e-9)
        if self.truth.tpm is not None and self.tokens > 0:
            fits = fits and self.tokens + cost <= self.truth.tpm * per_window
        if not fits:
            return self.window_s - into_s + _WINDOW_GUARD_S
        self.requests += 1
        self.tokens += cost
        return 0.0


def run_reference(ctx: RunContext) -> Outcome:
    """Told the true limits (and when they change), it starts each request exactly when they
    allow, on an absolute schedule per model, with raw httpx2: the practical ceiling of this
    machine that auto mode should match. It retries only what an honest client must (a
    transient error, a dropped connection, a timeout), in the next free slot of the schedule;
    with the true limits it never meets a 429 unless the clock jitters."""
    wl = ctx.scenario.workload
    truth = ctx.scenario.truth
    change_wall = ctx.change_wall
    answers: list[tuple[float, int | None]] = []
    url = ctx.base_url.rstrip("/") + "/chat/completions"
    results: dict[int, Result] = {}

    async def send(client: httpx2.AsyncClient, i: int) -> Result:
        try:
            response = await client.post(
                url, json=wl.body(i), headers={"x-client-request-id": wl.request_id(i)}
            )
        except httpx2.HTTPError as exc:
            answers.append((time.time(), None))
            return Result("lost", "retry", str(exc)) if _transient(exc) else failure(exc)
        answers.append((time.time(), response.status_code))
        # insufficient_quota is a 429 that waiting does not cure.
        permanent = "insufficient_quota" in response.text
        if response.status_code in _RETRYABLE_STATUSES and not permanent:
            return Result("lost", "retry", f"HTTP {response.status_code}")
        if response.status_code != 200:
            return Result("failed", f"HTTP {response.status_code}", response.text[:200])
        try:
            data = response.json()
        except ValueError:
            return Result("lost", "retry", "malformed body")
        if isinstance(data, dict) and data.get("choices"):
            return Result("ok")
        return Result("failed", "no choices", response.text[:200])

    def intervals_s(model_truth: Truth, i: int, now_wall: float) -> dict[str, float]:
        """Per limit, the time request ``i``'s cost takes to refill at the true rate."""
        changed = change_wall is not None and now_wall >= change_wall
        factor = model_truth.change_factor if changed else 1.0
        out: dict[str, float] = {}
        if model_truth.rpm is not None:
            out["rpm"] = 60.0 / (model_truth.rpm * factor)
        if model_truth.tpm is not None:
            out["tpm"] = wl.sim_charge(i) * 60.0 / (model_truth.tpm * factor)
        if model_truth.input_tpm is not None:
            out["itpm"] = wl.prompt_tokens(i) * 60.0 / (model_truth.input_tpm * factor)
        if model_truth.output_tpm is not None and ctx.completion_tokens:
            out["otpm"] = ctx.completion_tokens[i] * 60.0 / (model_truth.output_tpm * factor)
        return out

    async def pace(client: httpx2.AsyncClient, model: str, indices: list[int]) -> None:
        model_truth = truth.for_model(model)
        cap = model_truth.max_in_flight
        slots = asyncio.Semaphore(cap) if cap else None
        todo: deque[int] = deque(indices)
        unfinished = len(indices)
        tasks: set[asyncio.Task[None]] = set()
        attempts: dict[int, int] = {}
        # GCRA per limit (tat: when the bucket would be full again, were nothing else sent): a
        # request costing T seconds of refill may go once tat + T - burst_s <= now, i.e. the
        # provider's bucket (burst_s deep) holds its cost; a cost deeper than the bucket goes
        # when it is full (tat <= now). With burst_s 0 this is the plain even schedule.
        tats: dict[str, float] = {}
        started = time.monotonic()
        windows = None
        if model_truth.window_s is not None:
            origin = time.monotonic() - (time.time() - ctx.sim_started_at)
            change_at = None if change_wall is None else origin + (change_wall - ctx.sim_started_at)
            windows = _WindowSchedule(model_truth, wl, origin, change_at)

        async def attempt(i: int) -> None:
            nonlocal unfinished
            try:
                result = await send(client, i)
            finally:
                if slots is not None:
                    slots.release()
            attempts[i] = attempts.get(i, 0) + 1
            if result.kind == "lost" and result.reason == "retry":
                if attempts[i] < _MAX_ATTEMPTS:
                    todo.appendleft(i)  # the next free slot of the schedule
                    return
                result = Result("failed", f"gave up after {_MAX_ATTEMPTS} attempts", result.message)
            results[i] = result
            unfinished -= 1

        while unfinished > 0:
            if not todo:
                # Only retries can still come: wait for one, then go on from now (a pause
                # refills the provider's buckets; no catching up in a burst).
                await asyncio.sleep(0.005)
                continue
            if windows is not None:
                delay = windows.wait_s(todo[0], time.monotonic())
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue  # a retry may have come first meanwhile
            else:
                burst_s = model_truth.burst_s * _BURST_USED
                costs_s = intervals_s(model_truth, todo[0], time.time())
                next_at = max(
                    (
                        tats.get(limit, started) + min(cost_s, burst_s) - burst_s
                        for limit, cost_s in costs_s.items()
                    ),
                    default=started,
                )
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue  # a retry may have come first meanwhile
            if slots is not None:
                await slots.acquire()
            if not todo:  # a slot wait let others finish; re-check
                if slots is not None:
                    slots.release()
                continue
            i = todo.popleft()
            task = asyncio.create_task(attempt(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            now = time.monotonic()
            for limit, interval_s in intervals_s(model_truth, i, time.time()).items():
                tats[limit] = max(tats.get(limit, started), now) + interval_s

    async def main() -> Outcome:
        client = httpx2.AsyncClient(
            timeout=ctx.scenario.timeout_s,
            headers={"authorization": "Bearer x"},
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=256),
        )
        by_model: dict[str, list[int]] = {}
        for i in range(wl.n):
            by_model.setdefault(wl.model_for(i), []).append(i)
        started_at = time.time()
        t0 = time.monotonic()
        pacers = [asyncio.create_task(pace(client, m, ids)) for m, ids in by_model.items()]
        try:
            await asyncio.wait(pacers, timeout=max(1.0, ctx.cap_s))
            outcome = Outcome(started_at=started_at, wall_s=time.monotonic() - t0)
            for pacer in pacers:
                pacer.cancel()
            await asyncio.gather(*pacers, return_exceptions=True)
        finally:
            await client.aclose()
        for i in range(wl.n):
            outcome.add(
                results.get(
                    i, Result("lost", f"no answer after {ctx.cap_s:.0f} s (cancelled by the bench)")
                )
            )
        return outcome

    outcome = asyncio.run(main())
    outcome.answers = answers
    return outcome


def _transient(exc: httpx2.HTTPError) -> bool:
    """A timeout or a broken connection: the request may be sent again."""
    return isinstance(exc, (httpx2.TimeoutException, httpx2.TransportError))


# -- 5. pacekeeper run -----------------------------------------------------------------------


def pacekeeper_command() -> list[str]:
    script = Path(sys.executable).with_name("pacekeeper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pacekeeper"]


def run_batch(ctx: RunContext) -> Outcome:
    """`pacekeeper run` as a user runs it: a JSONL file in, a JSONL file out, nothing
    configured but the per-attempt timeout. Its output must hold every custom_id once."""
    wl = ctx.scenario.workload
    work = ctx.workdir
    src, out, log, metrics = (work / n for n in ("in.jsonl", "out.jsonl", "log.jsonl", "m.json"))
    for path in (out, log, metrics):
        path.unlink(missing_ok=True)
    src.write_text("".join(wl.batch_line(i) + "\n" for i in range(wl.n)), encoding="utf-8")
    command = [
        *pacekeeper_command(),
        "run",
        str(src),
        "-o",
        str(out),
        "--base-url",
        ctx.base_url,
        "--progress",
        "none",
        "--timeout",
        f"{ctx.scenario.timeout_s:g}",
        "--log",
        str(log),
        "--metrics",
        str(metrics),
    ]
    env = {**os.environ, "OPENAI_API_KEY": "x"}
    started_at = time.time()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=ctx.cap_s, check=False
        )
        returncode: int | None = proc.returncode
        stderr = proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stderr = None, str(exc.stderr or "")
    outcome = Outcome(started_at=started_at, wall_s=time.monotonic() - t0)
    _tally_batch_output(outcome, out, wl)
    outcome.answers = _attempt_answers(log)
    summary = json.loads(metrics.read_text()) if metrics.exists() else {}
    outcome.diagnostics.update(
        exit_code=returncode,
        # Its own clock: wall_s above also counts the interpreter's start-up.
        elapsed_s_inside=summary.get("elapsed_s"),
        stderr_tail=stderr.strip().splitlines()[-3:],
        models=summary.get("models"),
    )
    return outcome


def _tally_batch_output(outcome: Outcome, out: Path, wl: Workload) -> None:
    """Every custom_id exactly once: an id written twice is counted in ``output_duplicates``,
    an id never written is lost."""
    expected = {wl.request_id(i) for i in range(wl.n)}
    seen: set[str] = set()
    duplicates = unexpected = 0
    lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    for line in lines:
        record = json.loads(line)
        custom_id = record.get("custom_id")
        if custom_id not in expected:
            unexpected += 1
            continue
        if custom_id in seen:
            duplicates += 1
            continue
        seen.add(custom_id)
        error = record.get("error")
        response = record.get("response") or {}
        if error is None and response.get("status_code") == 200:
            outcome.add(Result("ok"))
        else:
            error = error or {}
            outcome.add(
                Result("failed", str(error.get("code") or "?"), str(error.get("message") or ""))
            )
    for _ in expected - seen:
        outcome.add(Result("lost", "custom_id missing from the output"))
    outcome.diagnostics["output_duplicates"] = duplicates
    outcome.diagnostics["output_unexpected"] = unexpected


def _attempt_answers(log: Path) -> list[tuple[float, int | None]]:
    answers: list[tuple[float, int | None]] = []
    if not log.exists():
        return answers
    with log.open(encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record.get("type") == "attempt":
                answers.append((record["started_at"] + record["latency_s"], record["status"]))
    return answers


# -- 6. a fleet: three processes sharing one key through Redis --------------------------------

FLEET_PROCESSES = 3


def run_fleet3(ctx: RunContext) -> Outcome:
    """The workload split over three processes (``python -m bench.fleet_worker``), each
    ``wrap()`` with nothing configured, sharing one Redis namespace on a redis-server of its
    own: what one process learns (a rate, a window, an in-flight cap) must pace the three, so
    the fleet's efficiency is compared with one process's (``auto``) on the same draw."""
    from bench.fleet_worker import workload_arg
    from bench.sharing import LocalRedis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("the fleet3 contender needs redis-server on PATH")
    redis = LocalRedis(binary)
    namespace = f"fleet-{uuid.uuid4().hex[:8]}"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.fleet_worker",
                *("--redis", redis.url, "--namespace", namespace, "--base-url", ctx.base_url),
                *("--workload", workload_arg(ctx.scenario.workload)),
                *("--offset", str(k), "--stride", str(FLEET_PROCESSES)),
                *("--timeout", f"{ctx.scenario.timeout_s:g}", "--cap", f"{ctx.cap_s:g}"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        for k in range(FLEET_PROCESSES)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("a fleet worker did not start")
        # The workers took seconds to start (each imports openai): the simulator starts over
        # now, so the fleet meets its fixed windows and capacity change where one prompt
        # process does (from 4 s into a 10-s window, its first window's budget came early).
        restarted_at = _restart_simulator(ctx.base_url)
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        reports = [
            json.loads(w.communicate(timeout=ctx.cap_s + 60)[0].strip().splitlines()[-1])
            for w in workers
        ]
    finally:
        for w in workers:
            w.kill()
        redis.close()
    started = min(r["started_at"] for r in reports)
    outcome = Outcome(started_at=started, wall_s=max(r["finished_at"] for r in reports) - started)
    for r in reports:
        outcome.ok += r["ok"]
        outcome.failed += r["failed"]
        outcome.lost += r["lost"]
        outcome.unexplained += r["unexplained"]
        outcome.reasons.update(r["reasons"])
        for key, message in r["samples"].items():
            outcome.samples.setdefault(key, message)
        outcome.answers += [(t, status) for t, status in r["answers"]]
    outcome.diagnostics = {
        "lanes": [lane for r in reports for lane in r["lanes"]],
        "sim_restarted_at": restarted_at,
    }
    return outcome


def _restart_simulator(base_url: str) -> float:
    """POST /_restart (the simulator idle: nothing sent yet); returns its new start."""
    root = base_url.removesuffix("/v1")
    answer = httpx2.post(f"{root}/_restart", timeout=10.0)
    answer.raise_for_status()
    return float(answer.json()["started_at"])


CONTENDERS: tuple[Contender, ...] = (
    Contender("auto", "pacekeeper auto (nothing configured)", run_auto),
    Contender("configured", "pacekeeper, true limits configured", run_configured),
    Contender("reference", "reference pacer (true limits, retries faults only)", run_reference),
    Contender("sem5", "Semaphore(5) + SDK retries (2)", run_semaphore5),
    Contender("unbounded", "gather, unbounded + SDK retries (2)", run_unbounded),
    Contender("tenacity16", "Semaphore(16) + tenacity (6 attempts)", run_tenacity16),
    Contender("run", "pacekeeper run (JSONL batch)", run_batch),
    Contender("fleet3", "pacekeeper auto, 3 processes sharing one key (Redis)", run_fleet3),
)
