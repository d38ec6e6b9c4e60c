"""The simulator as a raw ASGI 3 application (no framework: the request path must stay lean).

Order of checks for an API call: parse the body (identity known), count it, authentication
(401), validation (400), limits (429: a rejected request is not processed and spends nothing),
then faults (permanent, then transient), then the reply after the simulated latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._draws import digest64, unit_normal
from ._faults import FaultPlan
from ._headers import (
    JSON_CONTENT_TYPE,
    Headers,
    anthropic_error_body,
    busy_response,
    error_body,
    rate_limit_headers,
    rejection_response,
    stated_in_flight_headers,
)
from ._held import HeldOpen
from ._limits import LimiterRegistry, ModelLimiter
from ._replies import (
    CHARS_PER_TOKEN,
    TOKENS_PER_CHUNK,
    Choice,
    chat_body,
    chat_chunk,
    choices_for,
    completion_body,
    completion_chunk,
    embedding_body,
    message_body,
    message_stream_steps,
    model_object,
    models_body,
    response_body,
    response_stream_steps,
    usage_chunk,
)
from ._requests import Call, InvalidRequest, parse_call
from ._scenario import Queueing, Scenario
from ._stats import IdRecord, ModelCounts, Stats

__all__ = ["SimApp"]


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
    "/v1/messages": "messages",
    "/v1/responses": "responses",
}
# Azure OpenAI: /openai/deployments/{name}/<op>?api-version=... and the /openai/v1/ routes.
_AZURE_OPS = {"chat/completions": "chat", "completions": "completion", "embeddings": "embedding"}
_AZURE_V1 = {
    "/openai/v1/chat/completions": "chat",
    "/openai/v1/completions": "completion",
    "/openai/v1/embeddings": "embedding",
    "/openai/v1/responses": "responses",
}
_DEPLOYMENTS = "/openai/deployments/"
_CACHE_ENTRIES = 100_000
_DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-small")
_MAX_CLIENT_ID_CHARS = 200
_SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_SSE_DONE = b"data: [DONE]\n\n"
_MALFORMED_JSON = b'{"id":"chatcmpl-sim","object":"chat.completion","choices":[{"index":0,"mess'
_MALFORMED_SSE = b'data: {"id":"chatcmpl-sim","object":"chat.completion.chunk","choices":[{"in\n\n'
_UNAUTHORIZED = error_body(
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    "invalid_request_error",
)
# Transient server faults: (status, body). Bodies as the providers send them.
_SERVER_FAULTS: dict[str, tuple[int, bytes]] = {
    "http_500": (
        500,
        error_body(
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
        ),
    ),
    "http_502": (502, error_body("Bad gateway.", "server_error")),
    "http_503": (
        503,
        error_body("The engine is currently overloaded, please try again later.", "server_error"),
    ),
    "http_529": (529, anthropic_error_body("overloaded_error", "Overloaded")),
}
_A_SERVER_FAULTS: dict[str, tuple[int, bytes]] = {
    "http_500": (500, anthropic_error_body("api_error", "Internal server error")),
    "http_502": (502, anthropic_error_body("api_error", "Bad gateway")),
    "http_503": (503, anthropic_error_body("api_error", "Service unavailable")),
    "http_529": _SERVER_FAULTS["http_529"],
}
_A_UNAUTHORIZED = anthropic_error_body("authentication_error", "x-api-key header is required")
_A_NO_VERSION = anthropic_error_body(
    "invalid_request_error", "anthropic-version: header is required"
)
_A_BILLING = anthropic_error_body(
    "billing_error", "Your credit balance is too low to access the Anthropic API."
)
_AZ_UNAUTHORIZED = _json_bytes(
    {
        "error": {
            "code": "401",
            "message": "Access denied due to invalid subscription key or wrong API endpoint. "
            "Make sure to provide a valid key for an active subscription and use a correct "
            "regional API endpoint for your resource.",
        }
    }
)
_AZ_NO_VERSION = _json_bytes(
    {
        "error": {
            "code": "BadRequest",
            "message": "Missing required query parameter 'api-version' "
            "(e.g. api-version=2024-10-21).",
        }
    }
)
_INSUFFICIENT_QUOTA = error_body(
    "You exceeded your current quota, please check your plan and billing details.",
    "insufficient_quota",
    "insufficient_quota",
)
_INJECTED_INVALID = error_body(
    "Invalid request (injected by the simulator's invalid_request fault): this request will "
    "fail the same way every time it is sent.",
    "invalid_request_error",
    "invalid_value",
)
_GATEWAY_TIMEOUT = error_body(
    "Gateway timeout: the request hung for hang_s seconds (injected hang fault).", "server_error"
)


class _Route:
    """Where an API call came in: its kind, dialect ("openai", "anthropic", "azure") and the
    deployment named in an Azure path (the model key)."""

    __slots__ = ("deployment", "dialect", "kind")

    def __init__(self, kind: str, dialect: str, deployment: str | None = None) -> None:
        self.kind = kind
        self.dialect = dialect
        self.deployment = deployment


def _route_of(path: str) -> _Route | None:
    kind = _ROUTES.get(path)
    if kind is not None:
        return _Route(kind, "anthropic" if kind == "messages" else "openai")
    kind = _AZURE_V1.get(path)
    if kind is not None:
        return _Route(kind, "azure")
    if path.startswith(_DEPLOYMENTS):
        name, _, op = path[len(_DEPLOYMENTS) :].partition("/")
        kind = _AZURE_OPS.get(op)
        if kind is not None and name:
            return _Route(kind, "azure", name)
    return None


def _settle(future: asyncio.Future[str], outcome: str) -> None:
    if not future.done():
        future.set_result(outcome)


def _transport_of(send: Send) -> Any:
    # ASGI has no way to abort a connection; under uvicorn `send` is a bound method of the
    # request cycle, which holds the transport. Only the drop/hang faults and shutdown use it.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if callable(getattr(transport, "close", None)) else None


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _ProcessingQueue:
    """A self-hosted server's batch: at most `capacity` requests processed at once, the
    others waiting in FIFO order (see Queueing)."""

    __slots__ = ("capacity", "keep_alive_s", "processing", "slowdown", "waiting")

    def __init__(self, queueing: Queueing) -> None:
        self.capacity = queueing.capacity
        self.slowdown = queueing.slowdown
        self.keep_alive_s = queueing.keep_alive_s
        self.processing = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    @property
    def must_wait(self) -> bool:
        """Whether a request arriving now waits for a slot."""
        return self.processing >= self.capacity or bool(self.waiting)

    async def enter(self) -> float:
        """Wait for a processing slot; returns the latency factor the request runs at."""
        if not self.must_wait:
            self.processing += 1
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.waiting.append(turn)
            try:
                await turn  # `leave` hands its slot over by resolving the future
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self.leave()  # the slot was ours already: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self.waiting.remove(turn)
                raise
        return 1.0 + self.slowdown * min(1.0, len(self.waiting) / self.capacity)

    def leave(self) -> None:
        """A processing request finished: its slot goes to the longest-waiting request."""
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.processing -= 1

    def release_all(self) -> None:
        """Shutdown: let every waiting request through (each then aborts at once)."""
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                self.processing += 1
                turn.set_result(None)


class _Exchange:
    """One admitted API call on its way to an answer."""

    __slots__ = (
        "attempt",
        "call",
        "counts",
        "fault",
        "headers",
        "identity",
        "limiter",
        "output_reserved",
        "receive",
        "record",
        "send",
        "slowdown",
    )

    def __init__(
        self,
        *,
        call: Call,
        identity: str,
        attempt: int,
        headers: Headers,
        counts: ModelCounts,
        record: IdRecord,
        receive: Receive,
        send: Send,
        limiter: ModelLimiter | None,
    ) -> None:
        self.call = call
        self.limiter = limiter
        self.slowdown = 1.0
        self.identity = identity
        self.attempt = attempt  # how many earlier arrivals of this identity were admitted
        self.headers = headers
        self.counts = counts
        self.record = record
        self.receive = receive
        self.send = send
        self.fault: str | None = None
        #: Output tokens reserved at admission and not yet settled (None: none reserved).
        self.output_reserved: float | None = None


_request_ids = itertools.count(1)


def _request_id() -> tuple[bytes, bytes]:
    """Every answer carries an id, as OpenAI's x-request-id does (support tickets cite it)."""
    return (b"x-request-id", b"req_sim%012d" % next(_request_ids))


async def _send(send: Send, status: int, headers: Headers, body: bytes) -> None:
    headers.append(_request_id())
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SimApp:
    """The simulator's ASGI application: limits, faults, latency and replies for a Scenario.

    All state lives on the event loop the server runs on; `snapshot` and `reset_stats` must be
    called there (Simulator marshals them across threads).
    """

    __slots__ = (
        "_cache",
        "_clock",
        "_closing",
        "_faults",
        "_latency",
        "_limits",
        "_mode",
        "_queue",
        "_require_key",
        "_seed",
        "_seq",
        "_started_mono",
        "_started_wall",
        "_waiters",
        "_wall",
        "scenario",
        "stats",
    )

    def __init__(
        self,
        scenario: Scenario,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Capacity changes count from construction time: build the app when serving starts."""
        self.scenario = scenario
        self._clock = clock
        self._wall = wall_clock
        self._started_mono = clock()
        self._started_wall = wall_clock()
        self._mode = scenario.rate_limit_headers
        self._require_key = scenario.require_api_key
        self._seed = scenario.seed
        self._limits = LimiterRegistry(
            scenario, self._started_mono, started_wall=self._started_wall
        )
        # Prompt prefixes seen (the provider's prompt cache), oldest first, bounded.
        self._cache: dict[int, None] = {}
        self._faults = FaultPlan(scenario.faults, scenario.seed)
        self._latency = scenario.latency
        self._queue = None if scenario.queueing is None else _ProcessingQueue(scenario.queueing)
        self._seq = itertools.count(1)
        self._closing = False
        self._waiters: set[asyncio.Future[str]] = set()
        self.stats = Stats()

    # --- control ----------------------------------------------------------------------------

    def begin_close(self) -> None:
        """Server shutdown: hung and sleeping requests abort their connections right away."""
        self._closing = True
        if self._queue is not None:
            self._queue.release_all()
        for waiter in list(self._waiters):
            _settle(waiter, "closing")

    def snapshot(self) -> dict[str, Any]:
        """The /_stats document."""
        return self.stats.snapshot(
            uptime_s=self._clock() - self._started_mono, started_at=self._started_wall
        )

    def reset_stats(self) -> None:
        """Clear the stats (and with them the per-identity attempt numbers); limits stay."""
        self.stats.clear()

    def restart(self) -> bool:
        """Start over as if the server had just started: full limits, fixed windows and the
        capacity-change clock counted from now, the fault draws from their start, the stats
        cleared. A client that connects long after the server started (several processes,
        each importing an SDK first) then meets the windows at the phase a prompt client
        does. Refused (False) while a request is in flight: its answer belongs to the old
        start."""
        if self.stats.in_flight or (self._queue is not None and self._queue.processing):
            return False
        self._started_mono = self._clock()
        self._started_wall = self._wall()
        self._limits = LimiterRegistry(
            self.scenario, self._started_mono, started_wall=self._started_wall
        )
        self._faults = FaultPlan(self.scenario.faults, self.scenario.seed)
        self.stats.clear()
        return True

    def limiters(self) -> list[ModelLimiter]:
        """The per-model limiters created so far (for inspection and debugging)."""
        return self._limits.limiters()

    # --- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        path = scope["path"]
        method = scope["method"]
        route = _route_of(path) if method == "POST" else None
        if route is not None:
            await self._api_call(route, scope, receive, send)
        elif method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
            await self._models(path, scope, send)
        elif method == "GET" and path == "/_stats":
            await _send(send, 200, [JSON_CONTENT_TYPE], _json(self.snapshot()))
        elif method == "POST" and path == "/_reset":
            self.reset_stats()
            await _send(send, 200, [JSON_CONTENT_TYPE], b'{"reset":true}')
        elif method == "POST" and path == "/_restart":
            if self.restart():
                body = _json({"restarted": True, "started_at": self._started_wall})
                await _send(send, 200, [JSON_CONTENT_TYPE], body)
            else:
                message = "requests are in flight: restart the simulator when it is idle"
                body = error_body(message, "invalid_request_error")
                await _send(send, 409, [JSON_CONTENT_TYPE], body)
        else:
            body = error_body(f"Invalid URL ({method} {path})", "invalid_request_error")
            await _send(send, 404, [JSON_CONTENT_TYPE], body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.begin_close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorized(self, scope: Scope) -> bool:
        if not self._require_key:
            return True
        # Only presence is checked; the value is never stored or logged.
        return any(k == b"authorization" and v.strip() for k, v in scope["headers"])

    async def _models(self, path: str, scope: Scope, send: Send) -> None:
        if not self._authorized(scope):
            await _send(send, 401, [JSON_CONTENT_TYPE], _UNAUTHORIZED)
            return
        created = int(self._started_wall)
        if path == "/v1/models":
            names = list(dict.fromkeys([*self.scenario.models, *_DEFAULT_MODELS]))
            await _send(send, 200, [JSON_CONTENT_TYPE], models_body(names, created))
        else:
            # Every model name is served, so every model exists.
            body = _json(model_object(path[len("/v1/models/") :], created))
            await _send(send, 200, [JSON_CONTENT_TYPE], body)

    # --- API calls --------------------------------------------------------------------------

    async def _api_call(self, route: _Route, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        raw: bytes = message.get("body", b"")
        if message.get("more_body", False):
            parts = [raw]
            while message.get("more_body", False):
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                parts.append(message.get("body", b""))
            raw = b"".join(parts)
        elif message["type"] == "http.disconnect":
            return

        client_id: bytes | None = None
        authorized = not self._require_key
        dialect = route.dialect
        # Presence only: the key itself is never kept. Each dialect has its own key header
        # (Azure also takes a Bearer token from Entra ID).
        key_headers = {
            "openai": (b"authorization",),
            "anthropic": (b"x-api-key",),
            "azure": (b"api-key", b"authorization"),
        }[dialect]
        version = dialect == "openai"
        for name, value in scope["headers"]:
            if name == b"x-client-request-id":
                client_id = value
            elif name in key_headers and value.strip():
                authorized = True
            elif name == b"anthropic-version" and value.strip():
                version = True
        if route.deployment is not None:
            version = b"api-version=" in scope.get("query_string", b"")
        elif dialect == "azure":
            version = True  # the v1 routes need no api-version

        call: Call | None
        try:
            call = parse_call(route.kind, raw, route.deployment)
            invalid = None
        except InvalidRequest as exc:
            call, invalid = None, exc

        if client_id:
            identity = (
                client_id.decode("latin-1")
                if len(client_id) <= _MAX_CLIENT_ID_CHARS
                else f"id:{digest64(client_id):016x}"
            )
        elif call is not None:
            identity = f"{call.identity_hash:016x}"
        else:
            identity = f"{digest64(raw):016x}"

        stats = self.stats
        model = call.model if call is not None else (invalid and invalid.model) or "(invalid)"
        counts, record = stats.received(model, identity)
        if not authorized:
            body = {"openai": _UNAUTHORIZED, "anthropic": _A_UNAUTHORIZED}.get(
                dialect, _AZ_UNAUTHORIZED
            )
            await _send(send, 401, [JSON_CONTENT_TYPE], body)
            stats.answered(counts, record, 401)
            return
        if not version:
            body = _A_NO_VERSION if dialect == "anthropic" else _AZ_NO_VERSION
            await _send(send, 400, [JSON_CONTENT_TYPE], body)
            stats.answered(counts, record, 400, nonretryable=True)
            return
        if call is None:
            assert invalid is not None
            if dialect == "anthropic":
                body = anthropic_error_body("invalid_request_error", invalid.message)
            else:
                body = error_body(
                    invalid.message, "invalid_request_error", invalid.code, invalid.param
                )
            await _send(send, 400, [JSON_CONTENT_TYPE], body)
            stats.answered(counts, record, 400, nonretryable=True)
            return

        # The prompt cache decides what this prompt reads, and so what it costs.
        hit = False
        if call.cache_key:
            hit = call.cache_key in self._cache
            if hit:
                call.cache_read = call.cache_tokens
            elif call.kind == "messages":
                call.cache_write = call.cache_tokens
        input_cost = call.prompt_tokens
        token_cost = call.token_cost
        if call.kind == "messages" or not self.scenario.charge_cached_tokens:
            # Anthropic never counts cache reads toward ITPM; others may not count them.
            input_cost -= call.cache_read
            token_cost -= call.cache_read

        mode = self._mode
        if dialect == "anthropic" and mode != "none":
            mode = "anthropic"  # the Messages route speaks Anthropic's headers
        now = self._clock()
        limiter = self._limits.get(call.model, now)
        headers: Headers = []
        output_reserve: float | None = None
        if limiter is not None:
            # Unix time of `now`, from one offset: read apart from `now`, the two clocks' gap
            # moved a window's stated end from answer to answer (a ms apart under load).
            wall = self._started_wall + (now - self._started_mono)
            if limiter.output_tokens is not None and self.scenario.otpm_counting == "max_tokens":
                output_reserve = float(call.token_cost - call.prompt_tokens)  # max_tokens x n
            rejection = limiter.admit(token_cost, now, input_cost, output_reserve)
            if rejection is not None:
                headers, body = rejection_response(
                    mode,
                    limiter,
                    rejection,
                    now,
                    wall,
                    in_flight_reply=self.scenario.in_flight_reply,
                )
                stats.rejected(in_flight_cap=rejection.kind == "concurrency")
                await _send(send, 429, headers, body)
                stats.answered(counts, record, 429)
                return
            if mode != "none":
                headers = rate_limit_headers(mode, limiter, now, wall)
            if self.scenario.in_flight_reply.stated:
                headers += stated_in_flight_headers(limiter)
        if call.cache_key and not hit:
            cache = self._cache
            if len(cache) >= _CACHE_ENTRIES:
                del cache[next(iter(cache))]
            cache[call.cache_key] = None

        ex = _Exchange(
            call=call,
            identity=identity,
            attempt=record.admitted,
            headers=headers,
            counts=counts,
            record=record,
            receive=receive,
            send=send,
            limiter=limiter,
        )
        ex.output_reserved = output_reserve
        record.admitted += 1
        stats.admitted(counts, token_cost)
        queue = self._queue
        try:
            if queue is None:
                await self._process(ex)
            else:
                held = None
                every_s = queue.keep_alive_s
                if every_s is not None and queue.must_wait:
                    held = await self._hold_open(ex, every_s)
                try:
                    ex.slowdown = await queue.enter()
                    try:
                        await self._process(ex)
                    finally:
                        queue.leave()
                finally:
                    if held is not None:
                        held.stop()
        finally:
            stats.left()
            if limiter is not None:
                if ex.output_reserved is not None:
                    # Failed, or cut short before its output was counted: nothing generated.
                    limiter.settle_output(ex.output_reserved, 0.0, self._clock())
                limiter.release()

    async def _hold_open(self, ex: _Exchange, every_s: float) -> HeldOpen:
        """Answer 200 now and keep the line busy until the answer (Queueing.keep_alive_s):
        the request's own sends go through the returned object from here on."""
        held = HeldOpen(ex.send, _transport_of(ex.send), stream=ex.call.stream)
        content_type = _SSE_HEADERS if ex.call.stream else [JSON_CONTENT_TYPE]
        await held.open([*ex.headers, *content_type, _request_id()], every_s)
        ex.send = held.send
        return held

    async def _process(self, ex: _Exchange) -> None:
        """Answer an admitted call: an injected fault, or the reply after its latency."""
        call = ex.call
        if self._faults.active:
            ex.fault = self._faults.permanent(ex.identity) or self._faults.transient(
                ex.identity, ex.attempt
            )
            if ex.fault is not None:
                self.stats.fault(ex.fault)
                if ex.fault == "malformed":
                    await self._malformed(ex)
                    return
                if ex.fault != "drop":  # a drop needs the real reply, to cut it short
                    await self._inject(ex)
                    return

        latency = self._latency
        factor = ex.slowdown
        if latency.spread > 0:
            z = unit_normal(self._seed, "latency", ex.identity, ex.attempt)
            factor *= math.exp(latency.spread * z)
        ttft_s = latency.ttft_s * factor
        per_token_s = latency.per_token_s * factor

        if call.kind == "embedding":
            body = embedding_body(call)
            if ttft_s > 0 and await self._pause(ttft_s):
                await self._abort(ex)
                return
            await self._reply(ex, body)
            return

        choices = choices_for(call)
        if call.kind in ("messages", "responses"):
            await self._single(ex, choices[0], ttft_s, per_token_s)
            return
        if call.stream:
            if await self._stream(ex, choices, ttft_s, per_token_s):
                self._charge_output(ex, choices)
                self.stats.answered(ex.counts, ex.record, 200, success=True)
            return
        response_id, created = self._response_id(call), int(self._wall())
        if call.kind == "chat":
            body = chat_body(call, response_id, created, choices)
        else:
            body = completion_body(call, response_id, created, choices)
        if ttft_s > 0 or per_token_s > 0:
            # Choices are generated in parallel: the longest one sets the time.
            delay_s = ttft_s + per_token_s * max(c.tokens for c in choices)
            if await self._pause(delay_s):
                await self._abort(ex)
                return
        self._charge_output(ex, choices)
        await self._reply(ex, body)

    async def _single(
        self, ex: _Exchange, choice: Choice, ttft_s: float, per_token_s: float
    ) -> None:
        """Answer a Messages or Responses call (one choice), plain or streamed."""
        call = ex.call
        seq = next(self._seq)
        created = int(self._wall())
        if call.kind == "messages":
            rid = f"msg_sim{seq:012x}"
            steps = message_stream_steps(call, rid, choice) if call.stream else []
            body = b"" if call.stream else message_body(call, rid, choice)
        else:
            rid = f"resp_sim{seq:012x}"
            steps = response_stream_steps(call, rid, created, choice) if call.stream else []
            body = b"" if call.stream else response_body(call, rid, created, choice)
        if call.stream:
            if await self._stream(ex, [choice], ttft_s, per_token_s, steps):
                self._charge_output(ex, [choice])
                self.stats.answered(ex.counts, ex.record, 200, success=True)
            return
        if (ttft_s > 0 or per_token_s > 0) and await self._pause(
            ttft_s + per_token_s * choice.tokens
        ):
            await self._abort(ex)
            return
        self._charge_output(ex, [choice])
        await self._reply(ex, body)

    def _charge_output(self, ex: _Exchange, choices: list[Choice]) -> None:
        """Output tokens count against an output-token limit once they are generated: the
        reserve taken at admission is settled to them, or (nothing reserved) they are charged."""
        limiter = ex.limiter
        if limiter is not None and limiter.output_tokens is not None:
            generated = sum(c.tokens for c in choices)
            if ex.output_reserved is not None:
                limiter.settle_output(ex.output_reserved, generated, self._clock())
                ex.output_reserved = None
            else:
                limiter.charge_output(generated, self._clock())

    def _response_id(self, call: Call) -> str:
        prefix = "chatcmpl-sim" if call.kind == "chat" else "cmpl-sim"
        return f"{prefix}{next(self._seq):012x}"

    async def _reply(self, ex: _Exchange, body: bytes) -> None:
        """Send a JSON reply; under the drop fault, promise it all, send half, cut the line."""
        headers = ex.headers
        headers.append(JSON_CONTENT_TYPE)
        if ex.fault == "drop":
            headers.append((b"content-length", str(len(body)).encode()))
            headers.append(_request_id())
            await ex.send({"type": "http.response.start", "status": 200, "headers": headers})
            half = body[: len(body) // 2]
            await ex.send({"type": "http.response.body", "body": half, "more_body": True})
            await self._abort(ex)
            return
        await _send(ex.send, 200, headers, body)
        self.stats.answered(ex.counts, ex.record, 200, success=True)

    async def _malformed(self, ex: _Exchange) -> None:
        """A 200 whose body does not parse (JSON, or SSE data for a stream)."""
        if ex.call.stream:
            ex.headers.extend(_SSE_HEADERS)
            await _send(ex.send, 200, ex.headers, _MALFORMED_SSE + _SSE_DONE)
        else:
            ex.headers.append(JSON_CONTENT_TYPE)
            await _send(ex.send, 200, ex.headers, _MALFORMED_JSON)
        self.stats.answered(ex.counts, ex.record, 200)

    async def _inject(self, ex: _Exchange) -> None:
        """Answer with an injected error status, or hang."""
        fault, stats = ex.fault, self.stats
        if fault == "hang":
            outcome = await self._hang(ex.receive)
            if outcome == "elapsed":
                ex.headers.append(JSON_CONTENT_TYPE)
                await _send(ex.send, 504, ex.headers, _GATEWAY_TIMEOUT)
                stats.answered(ex.counts, ex.record, 504)
            elif outcome == "closing":
                await self._abort(ex)
            return
        if fault == "busy_429":
            faults = self.scenario.faults
            mode = self._mode
            if ex.call.kind == "messages" and mode != "none":
                mode = "anthropic"  # the Messages route speaks Anthropic's errors
            headers, body = busy_response(
                mode,
                ex.headers,
                faults.busy_429_retry_after_s,
                with_headers=faults.busy_429_headers,
            )
            await _send(ex.send, 429, headers, body)
            stats.answered(ex.counts, ex.record, 429)
            return
        ex.headers.append(JSON_CONTENT_TYPE)
        if ex.call.kind == "messages" and fault != "invalid_request":
            if fault == "insufficient_quota":
                await _send(ex.send, 402, ex.headers, _A_BILLING)
                stats.answered(ex.counts, ex.record, 402, nonretryable=True)
            else:
                status, body = _A_SERVER_FAULTS[str(fault)]
                await _send(ex.send, status, ex.headers, body)
                stats.answered(ex.counts, ex.record, status)
            return
        if fault == "insufficient_quota":
            # No retry-after: there is nothing to wait for.
            await _send(ex.send, 429, ex.headers, _INSUFFICIENT_QUOTA)
            stats.answered(ex.counts, ex.record, 429, nonretryable=True)
        elif fault == "invalid_request":
            await _send(ex.send, 400, ex.headers, _INJECTED_INVALID)
            stats.answered(ex.counts, ex.record, 400, nonretryable=True)
        else:
            status, body = _SERVER_FAULTS[str(fault)]
            await _send(ex.send, status, ex.headers, body)
            stats.answered(ex.counts, ex.record, status)

    async def _stream(
        self,
        ex: _Exchange,
        choices: list[Choice],
        ttft_s: float,
        per_token_s: float,
        steps: list[bytes] | None = None,
    ) -> bool:
        """Send an SSE stream, chunks paced by per_token_s; False if it was cut short."""
        send = ex.send
        if steps is None:
            steps = self._stream_steps(ex.call, choices)
        ex.headers.extend(_SSE_HEADERS)
        ex.headers.append(_request_id())
        await send({"type": "http.response.start", "status": 200, "headers": ex.headers})
        if ex.fault == "drop":
            cut = b"".join(steps[: max(1, len(steps) // 2)])
            await send({"type": "http.response.body", "body": cut, "more_body": True})
            await self._abort(ex)
            return False
        if ttft_s <= 0 and per_token_s <= 0:
            # Nothing to pace: one write is much cheaper than one per chunk.
            await send({"type": "http.response.body", "body": b"".join(steps)})
            return True
        chunk_s = per_token_s * TOKENS_PER_CHUNK
        for i, step in enumerate(steps[:-1]):
            delay_s = ttft_s if i == 0 else chunk_s
            if delay_s > 0 and await self._pause(delay_s):
                await self._abort(ex)
                return False
            await send({"type": "http.response.body", "body": step, "more_body": True})
        await send({"type": "http.response.body", "body": steps[-1]})
        return True

    def _stream_steps(self, call: Call, choices: list[Choice]) -> list[bytes]:
        """The stream as paced steps: step 0 opens every choice with its first content piece;
        each later step carries the next TOKENS_PER_CHUNK tokens of every unfinished choice; the
        last step closes (finish reasons, usage, [DONE]).
        """
        rid, created = self._response_id(call), int(self._wall())
        piece_chars = TOKENS_PER_CHUNK * CHARS_PER_TOKEN
        chat = call.kind == "chat"
        pieces = [
            [c.text[i : i + piece_chars] for i in range(0, len(c.text), piece_chars)]
            for c in choices
        ]
        steps: list[bytes] = []
        for step in range(max(len(p) for p in pieces)):
            events = []
            for index, choice_pieces in enumerate(pieces):
                if step >= len(choice_pieces):
                    continue
                piece = choice_pieces[step]
                if not chat:
                    events.append(completion_chunk(call, rid, created, index=index, text=piece))
                    continue
                if step == 0:
                    opening = {"role": "assistant", "content": "", "refusal": None}
                    events.append(chat_chunk(call, rid, created, index=index, delta=opening))
                events.append(chat_chunk(call, rid, created, index=index, delta={"content": piece}))
            steps.append(b"".join(events))
        closing = []
        for index, choice in enumerate(choices):
            if chat:
                closing.append(
                    chat_chunk(
                        call, rid, created, index=index, delta={}, finish=choice.finish_reason
                    )
                )
            else:
                closing.append(
                    completion_chunk(call, rid, created, index=index, finish=choice.finish_reason)
                )
        if call.include_usage:
            closing.append(usage_chunk(call, rid, created, choices))
        closing.append(_SSE_DONE)
        steps.append(b"".join(closing))
        return steps

    # --- waiting ----------------------------------------------------------------------------

    async def _pause(self, delay_s: float) -> bool:
        """Sleep `delay_s`; True if the server began closing meanwhile (the caller aborts)."""
        if self._closing:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        handle = loop.call_later(delay_s, _settle, waiter, "elapsed")
        self._waiters.add(waiter)
        try:
            return await waiter == "closing"
        finally:
            handle.cancel()
            self._waiters.discard(waiter)

    async def _hang(self, receive: Receive) -> str:
        """Wait until the client disconnects ("disconnect"), hang_s passes ("elapsed") or the
        server closes ("closing").
        """
        if self._closing:
            return "closing"
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        handle = loop.call_later(self.scenario.faults.hang_s, _settle, waiter, "elapsed")
        self._waiters.add(waiter)

        async def watch() -> None:
            await _until_disconnect(receive)
            _settle(waiter, "disconnect")

        watcher = loop.create_task(watch())
        try:
            return await waiter
        finally:
            handle.cancel()
            watcher.cancel()
            self._waiters.discard(waiter)

    async def _abort(self, ex: _Exchange) -> None:
        """Cut the connection (data already sent is flushed first) and wait until it is gone,
        so that the server sees a disconnect rather than an unfinished response.
        """
        transport = _transport_of(ex.send)
        if transport is None:
            return
        transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_until_disconnect(ex.receive), 2.0)


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
