"""Auto mode against a server we did not write: llmock (``python -m bench --only independent``).

A result on pacekeeper's own simulator proves little unless the simulator disagrees with the
governor's assumptions; this section asks a mock server written by others. llmock
(https://pypi.org/project/llmock/, pinned below) rate-limits the way its authors read the
providers' documents: a bucket per API key of a whole minute's capacity, refilling
continuously, `x-ratelimit-*` (or `anthropic-ratelimit-*`) headers on every answer, and
`retry-after` with the real wait on its 429s. Its chaos options add random errors of any
status, random 429s among them, with `retry-after: 1` and no rate-limit headers.

It runs from its own virtual environment (``make bench`` makes ``.venv/llmock``; or set
``PACEKEEPER_LLMOCK`` to its ``llmock`` command), so nothing of it is imported here.

Each case runs pacekeeper auto (``wrap()``, nothing configured) and a reference pacer told the
stated limits (an even schedule at the stated rate, raw httpx2, retrying 429s and 5xx in its
next slot), each on a fresh API key (fresh buckets). llmock's buckets start full with a
minute's capacity, which neither spends: the reference is the even pace, not the burst.
llmock draws its random errors unseeded, so each case runs ``reps`` times and the worst is
reported.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from bench.runner import free_port, log

__all__ = ["LLMOCK_VERSION", "independent_lines", "measure_independent"]

LLMOCK_VERSION = "0.2.2"
_ROOT = Path(__file__).resolve().parent.parent
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504, 529})
_MAX_ATTEMPTS = 8
_PROMPT = "Summarise the history of rate limiting in distributed systems. " * 6


@dataclass(frozen=True)
class Case:
    name: str
    summary: str
    args: tuple[str, ...]
    rpm: float
    requests: int
    dialect: str = "openai"  # or "anthropic"
    tpm: float | None = None
    max_tokens: int = 64


CASES: tuple[Case, ...] = (
    Case("rpm", "1200 rpm, latency 0.3 s", ("--rpm", "1200", "--latency-ms", "300"), 1200, 400),
    Case(
        "errors",
        "1200 rpm + 2% 500, 3% 503, 2% 529 at random",
        (
            *("--rpm", "1200", "--latency-ms", "300"),
            *("--error-rate", "500=0.02", "--error-rate", "503=0.03", "--error-rate", "529=0.02"),
        ),
        1200,
        400,
    ),
    Case(
        "busy429",
        "1200 rpm + 5% 429 at random (retry-after 1, no rate-limit headers)",
        ("--rpm", "1200", "--latency-ms", "300", "--error-rate", "429=0.05"),
        1200,
        400,
    ),
    Case(
        "tpm",
        "60k tpm binding (prompt bytes / 4 + max_tokens), rpm 3000",
        ("--rpm", "3000", "--tpm", "60000", "--latency-ms", "300"),
        3000,
        250,
        tpm=60_000,
    ),
    Case(
        "anthropic",
        "Messages API, 1200 rpm, anthropic-ratelimit-* headers (resets in whole seconds)",
        ("--rpm", "1200", "--latency-ms", "300"),
        1200,
        400,
        dialect="anthropic",
    ),
)


def llmock_command() -> list[str] | None:
    """How to start llmock, or None when it is not installed."""
    given = os.environ.get("PACEKEEPER_LLMOCK")
    if given:
        return [given]
    local = _ROOT / ".venv" / "llmock" / "bin" / "llmock"
    return [str(local)] if local.exists() else None


class _Server:
    """One llmock process on loopback for the life of a ``with`` block."""

    def __init__(self, command: list[str], case: Case) -> None:
        self.port = free_port()
        argv = [*command, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += [*case.args, "--log-level", "warning", "--tool-mode", "off"]
        self._argv = argv
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Server:
        self._proc = subprocess.Popen(
            self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_server_env()
        )
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"llmock exited at start: {err[-500:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("llmock did not listen within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _server_env() -> dict[str, str]:
    # Its own virtual environment: not the benchmark's PYTHONPATH.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _clear_journal(base_url: str) -> None:
    httpx2.delete(f"{base_url}/_llmock/requests", timeout=10.0).raise_for_status()


def _server_view(base_url: str) -> dict[str, Any]:
    """What llmock saw since the journal was cleared: statuses, and its rate-limit 429s apart
    from the random ones (its journal labels a quota's refusal ``ratelimit:<kind>``)."""
    response = httpx2.get(f"{base_url}/_llmock/requests", timeout=30.0)
    response.raise_for_status()
    records = response.json()["requests"]
    statuses = Counter(str(r["status"]) for r in records)
    limit_429s = sum(1 for r in records if str(r.get("fault") or "").startswith("ratelimit"))
    return {"server_statuses": dict(statuses), "server_limit_429s": limit_429s}


def _body(case: Case, i: int) -> dict[str, Any]:
    content = f"{i}: {_PROMPT}"
    if case.dialect == "anthropic":
        return {
            "model": "claude-sonnet-4-5",
            "max_tokens": case.max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
    return {
        "model": "gpt-4o-mini",
        "max_tokens": case.max_tokens,
        "messages": [{"role": "user", "content": content}],
    }


def _sdk_client(case: Case, base_url: str, key: str, *, proxied: bool) -> Any:
    """The SDK's async client for ``case``: at llmock, or at a proxy in front of it."""
    import anthropic
    import openai

    if case.dialect == "anthropic":
        # llmock serves the Messages API under /anthropic; the proxy's base path is /v1.
        url = base_url if proxied else f"{base_url}/anthropic"
        return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


async def _send_all(client: Any, case: Case, limit_s: float) -> dict[str, Any]:
    """Every request of ``case`` at once through ``client``; what came of them."""
    if case.dialect == "anthropic":
        create = client.messages.create
    else:
        create = client.chat.completions.create

    first_s: list[float] = []

    async def one(i: int) -> None:
        await create(**_body(case, i))
        if not first_s:
            first_s.append(time.monotonic() - started)

    started = time.monotonic()
    tasks = [asyncio.create_task(one(i)) for i in range(case.requests)]
    done, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall_s = time.monotonic() - started
    failures = Counter(type(t.exception()).__name__ for t in done if t.exception() is not None)
    await client.close()
    return {
        "wall_s": wall_s,
        "first_answer_s": first_s[0] if first_s else None,
        "ok": len(done) - sum(failures.values()),
        "failed": sum(failures.values()),
        "unfinished": len(pending),
        "failures": dict(failures),
    }


async def _run_auto(base_url: str, case: Case, key: str, limit_s: float) -> dict[str, Any]:
    import pacekeeper

    gov = pacekeeper.Governor()
    client = pacekeeper.wrap(_sdk_client(case, base_url, key, proxied=False), gov)
    result = await _send_all(client, case, limit_s)
    gov.close()
    return result


async def _run_proxy(base_url: str, case: Case, key: str, limit_s: float) -> dict[str, Any]:
    """``pacekeeper proxy`` (nothing configured) in front of llmock; a plain SDK client."""
    from bench.cost import _start_proxy

    upstream = f"{base_url}/anthropic/v1" if case.dialect == "anthropic" else f"{base_url}/v1"
    proc, port = _start_proxy(upstream)
    try:
        client = _sdk_client(case, f"http://127.0.0.1:{port}", key, proxied=True)
        return await _send_all(client, case, limit_s)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _run_reference(base_url: str, case: Case, key: str, limit_s: float) -> dict[str, Any]:
    """The stated limits on an even schedule; a retry takes the next free slot."""
    if case.dialect == "anthropic":
        url = f"{base_url}/anthropic/v1/messages"
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    else:
        url = f"{base_url}/v1/chat/completions"
        headers = {"authorization": f"Bearer {key}"}
    todo = list(range(case.requests))[::-1]
    attempts: Counter[int] = Counter()
    ok = failed = 0
    tasks: set[asyncio.Task[None]] = set()
    started = time.monotonic()
    next_at = started

    async def send(http: httpx2.AsyncClient, i: int) -> None:
        nonlocal ok, failed
        attempts[i] += 1
        try:
            response = await http.post(url, json=_body(case, i), headers=headers)
            status = response.status_code
        except httpx2.HTTPError:
            status = 0
        if status == 200:
            ok += 1
        elif (status in _RETRYABLE or status == 0) and attempts[i] < _MAX_ATTEMPTS:
            todo.append(i)
        else:
            failed += 1

    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx2.AsyncClient(limits=limits, timeout=60.0) as http:
        while (todo or tasks) and time.monotonic() - started < limit_s:
            if not todo:
                await asyncio.sleep(0.005)
                continue
            i = todo[-1]
            gap_s = 60.0 / case.rpm
            if case.tpm is not None:
                charged = len(httpx2.Request("POST", url, json=_body(case, i)).content) // 4
                gap_s = max(gap_s, (charged + case.max_tokens) * 60.0 / case.tpm)
            now = time.monotonic()
            next_at = max(next_at, now - gap_s)  # no catching up in a burst after a pause
            if next_at + gap_s > now:
                await asyncio.sleep(next_at + gap_s - now)
            next_at += gap_s
            todo.pop()
            task = asyncio.create_task(send(http, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "wall_s": time.monotonic() - started,
        "ok": ok,
        "failed": failed,
        "unfinished": case.requests - ok - failed,
        "failures": {},
    }


def _ideal_s(case: Case) -> float:
    return case.requests * 60.0 / case.rpm


_CONTENDERS = (("reference", _run_reference), ("auto", _run_auto), ("proxy", _run_proxy))


def measure_independent(
    *, quick: bool, reps: int = 2, only: list[str] | None = None
) -> dict[str, Any]:
    """Every case (or those named in ``only``) ``reps`` times, auto and the reference side by
    side on one server."""
    command = llmock_command()
    if command is None:
        log("[independent] llmock not installed (make .venv/llmock/bin/llmock): skipped")
        return {"skipped": f"llmock {LLMOCK_VERSION} not installed: make .venv/llmock/bin/llmock"}
    if only:
        unknown = set(only) - {c.name for c in CASES}
        if unknown:
            known = ", ".join(c.name for c in CASES)
            raise SystemExit(f"--cases: no case {', '.join(sorted(unknown))} (the cases: {known})")
        cases = [c for c in CASES if c.name in only]
    else:
        cases = list(CASES[:2] if quick else CASES)
    if quick:
        cases = [Case(**{**c.__dict__, "requests": 40}) for c in cases]
    rows: list[dict[str, Any]] = []
    for case in cases:
        with _Server(command, case) as server:
            base_url = f"http://127.0.0.1:{server.port}"
            for rep in range(1, (1 if quick else reps) + 1):
                pair: dict[str, dict[str, Any]] = {}
                for contender, run in _CONTENDERS:
                    key = f"sk-bench-{case.name}-{contender}-{rep}"
                    limit_s = 6 * _ideal_s(case) + 20
                    _clear_journal(base_url)
                    result = asyncio.run(run(base_url, case, key, limit_s))
                    pair[contender] = {**result, **_server_view(base_url)}
                ref_wall = pair["reference"]["wall_s"]
                for contender, result in pair.items():
                    row = {"case": case.name, "rep": rep, "contender": contender, **result}
                    row["x_ref"] = ref_wall / result["wall_s"] if result["wall_s"] else None
                    rows.append(row)
                    log(
                        f"[independent {case.name}#{rep}] {contender}: {result['wall_s']:.1f} s"
                        f" ({row['x_ref']:.2f} x ref), server saw {result['server_statuses']}"
                        f" ({result['server_limit_429s']} rate-limit 429s), "
                        f"failed {result['failed']}, unfinished {result['unfinished']}"
                    )
    return {
        "server": f"llmock {LLMOCK_VERSION}",
        "cases": {c.name: c.summary for c in cases},
        "requests": {c.name: c.requests for c in cases},
        "rows": rows,
    }


def _cells(rows: list[dict[str, Any]], name: str, contender: str) -> str:
    """The worst repetition of ``contender`` on case ``name``: x ref, 429s, failures."""
    mine = [r for r in rows if r["case"] == name and r["contender"] == contender]
    if not mine:
        return "- | - | -"
    worst = min(mine, key=lambda r: r["x_ref"] or 0.0)
    seen = worst["server_statuses"]
    first = worst.get("first_answer_s")
    first_text = "" if first is None else f"; first answer {first:.1f} s"
    return (
        f"{worst['x_ref']:.2f} ({worst['wall_s']:.1f} s{first_text}) "
        f"| {seen.get('429', 0)} ({worst['server_limit_429s']} of the limit) "
        f"| {worst['failed']} / {worst['unfinished']}"
    )


def independent_lines(section: dict[str, Any]) -> list[str]:
    """The section's markdown: per case, the worst repetition of auto and of the proxy."""
    if not section:
        return []
    lines = ["## Against a server we did not write (llmock)", ""]
    if "skipped" in section:
        return [*lines, f"Not measured: {section['skipped']}.", ""]
    measured = section.get("measured", {})
    lines += [
        f"Measured {measured.get('date', '?')} (git {measured.get('git', '?')}, load average "
        f"{measured.get('load_at_start', '?')} at start) against {section['server']}, "
        "bench/independent.py: pacekeeper auto through `wrap()`, and `pacekeeper proxy` with "
        "a plain SDK client, each against a pacer told the stated limits in the same "
        "repetition (x ref = the reference's wall / its own); the worst of the repetitions. "
        "429s: all that llmock answered (its random ones included), of them those its "
        "rate limit refused. Failed / unfinished: requests the caller did not get answered. "
        "First answer: when the caller had its first answer back. A plain SDK client sends "
        "every request it is given at once (here all of them: it builds each, opens a "
        "connection for each and sends it before it reads an answer), so its first answer "
        "comes late whatever paces it; `wrap()` holds a call before the SDK builds its "
        "request.",
        "",
        "| case | requests | reference s | auto x ref | auto 429s | auto failed / unfinished "
        "| proxy x ref | proxy 429s | proxy failed / unfinished |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = section["rows"]
    for name, summary in section["cases"].items():
        refs = [r["wall_s"] for r in rows if r["case"] == name and r["contender"] == "reference"]
        if not refs:
            continue
        lines.append(
            f"| {name}: {summary} | {section['requests'][name]} | "
            f"{min(refs):.1f}-{max(refs):.1f} | {_cells(rows, name, 'auto')} "
            f"| {_cells(rows, name, 'proxy')} |"
        )
    return [*lines, ""]
