"""A small real HTTP server speaking each provider's dialect, for the provider tests.

A raw ASGI app on uvicorn, on loopback, in a thread of the test process. It checks the key the
way its provider does (401 otherwise), answers in the provider's format with a known usage,
sends the provider's rate-limit headers, streams in the provider's event format, and can refuse
like a daily limit does (429 with a retry-after far beyond the governor's max hint). It records
every request it got (path, query, headers, body) for the tests to inspect.

With `sim=Scenario(...)` the answers come from the simulator (pacekeeper.sim), which speaks
OpenAI's, Azure's and Anthropic's dialects: this server then only checks the key strictly and
records what it got, and the sim answers (its usage, its headers, its validation: a Messages
call without anthropic-version or max_tokens, or an Azure deployment call without
api-version, fails there). Its own canned answers remain for what the sim does not do: a
daily-limit refusal with a chosen retry-after, Gemini's RetryInfo refusal, and fixed usage
figures.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from pacekeeper.sim import Scenario
from pacekeeper.sim._app import SimApp

KEY = "sk-provtest-9d8c7b6a5f4e3d2c1b0aXYZ"

Scope = dict[str, Any]

USAGE_OPENAI = {
    "prompt_tokens": 120,
    "completion_tokens": 30,
    "total_tokens": 150,
    "prompt_tokens_details": {"cached_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 20},
}
USAGE_ANTHROPIC = {
    "input_tokens": 11,
    "cache_creation_input_tokens": 200,
    "cache_read_input_tokens": 5000,
    "output_tokens": 42,
}
USAGE_RESPONSES = {
    "input_tokens": 77,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 33,
    "output_tokens_details": {"reasoning_tokens": 10},
    "total_tokens": 110,
}


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


@dataclass
class Upstream:
    """Which key it expects, how; and what it has seen."""

    auth: str = "bearer"
    """bearer | api-key (Azure) | x-api-key (Anthropic, strictly: x-api-key and an
    anthropic-version, no Authorization) | anthropic (either key header, as the
    anthropic SDK may send a Bearer key, with any anthropic-version) | none."""
    key: str = KEY
    refuse_first: int = 0
    """Answer the first N requests with a daily-limit 429."""
    refuse_retry_after_s: float = 3600.0
    refuse_like_google: bool = False
    """Refuse as Gemini does: no retry-after header, the wait in the body's RetryInfo."""
    sim: Scenario | None = None
    """Let the simulator answer (after the key check and the recording)."""
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _refused: int = 0
    _sim_app: SimApp | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- the ASGI app -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        path = scope["path"]
        self.seen.append(
            Seen(scope["method"], path, scope["query_string"].decode(), headers, parsed)
        )
        if not self._authorized(headers):
            # Echo what was presented, as some gateways do: it must be redacted downstream.
            presented = headers.get("api-key") or headers.get("x-api-key") or ""
            presented = presented or headers.get("authorization", "")
            message = f"bad key {presented!r}"
            await _send_json(send, 401, {"error": {"message": message, "type": "auth"}}, {})
            return
        if self._refused < self.refuse_first and self.refuse_like_google:
            self._refused += 1
            google = {
                "code": 429,
                "message": "Quota exceeded for metric: generate_content_free_tier_requests",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": f"{self.refuse_retry_after_s:g}s",
                    }
                ],
            }
            await _send_json(send, 429, [{"error": google}], {})
            return
        if self._refused < self.refuse_first:
            self._refused += 1
            await _send_json(
                send,
                429,
                {"error": {"message": "daily request limit reached", "type": "requests"}},
                {"retry-after": f"{self.refuse_retry_after_s:g}"},
            )
            return
        if self._sim_app is not None:
            await self._sim_app(scope, _replay(body), send)
            return
        body_obj = parsed if isinstance(parsed, dict) else {}
        if path.endswith("/messages"):
            await self._anthropic(send, body_obj, headers)
        elif path.endswith("/responses"):
            await self._responses(send, body_obj)
        elif path.endswith("/embeddings"):
            await _send_json(
                send,
                200,
                {
                    "object": "list",
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
                    "usage": {"prompt_tokens": 9, "total_tokens": 9},
                },
                _openai_limits(),
            )
        else:
            await self._chat(send, body_obj)

    def _authorized(self, headers: dict[str, str]) -> bool:
        if self.auth == "none":
            return True
        if self.auth == "bearer":
            return headers.get("authorization") == f"Bearer {self.key}"
        if self.auth == "api-key":
            return headers.get("api-key") == self.key and "authorization" not in headers
        if self.auth == "anthropic":
            return "anthropic-version" in headers and (
                headers.get("x-api-key") == self.key
                or headers.get("authorization") == f"Bearer {self.key}"
            )
        return (
            headers.get("x-api-key") == self.key
            and "anthropic-version" in headers
            and "authorization" not in headers
        )

    async def _chat(self, send: Any, body: dict[str, Any]) -> None:
        model = body.get("model", "deployment")
        if body.get("stream"):
            events = [
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
                }
                for word in ("Hello", " there")
            ]
            events.append(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                }
            )
            options = body.get("stream_options") or {}
            if options.get("include_usage"):
                events.append(
                    {
                        "id": "c1",
                        "object": "chat.completion.chunk",
                        "model": model,
                        "choices": [],
                        "usage": USAGE_OPENAI,
                    }
                )
            chunks = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
            chunks.append(b"data: [DONE]\n\n")
            await _send_stream(send, chunks, _openai_limits())
            return
        await _send_json(
            send,
            200,
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello there"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE_OPENAI,
            },
            _openai_limits(),
        )

    async def _anthropic(self, send: Any, body: dict[str, Any], headers: dict[str, str]) -> None:
        model = body.get("model", "claude")
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "Hello there"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": USAGE_ANTHROPIC,
        }
        limits = _anthropic_limits()
        if body.get("stream"):
            start = {**message, "content": [], "usage": {**USAGE_ANTHROPIC, "output_tokens": 1}}
            events = [
                ("message_start", {"type": "message_start", "message": start}),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                (
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": "Hello there"},
                    },
                ),
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": USAGE_ANTHROPIC["output_tokens"]},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
            chunks = [f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events]
            await _send_stream(send, chunks, limits)
            return
        await _send_json(send, 200, message, limits)

    async def _responses(self, send: Any, body: dict[str, Any]) -> None:
        response = {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "model": body.get("model"),
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
                }
            ],
            "usage": USAGE_RESPONSES,
        }
        if body.get("stream"):
            created = {**response, "status": "in_progress", "output": [], "usage": None}
            events = [
                ("response.created", {"type": "response.created", "response": created}),
                (
                    "response.output_text.delta",
                    {"type": "response.output_text.delta", "delta": "Hello"},
                ),
                ("response.completed", {"type": "response.completed", "response": response}),
            ]
            chunks = [f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events]
            await _send_stream(send, chunks, _openai_limits())
            return
        await _send_json(send, 200, response, _openai_limits())

    # --- running ------------------------------------------------------------------------

    def start(self) -> Upstream:
        if self.sim is not None:
            self._sim_app = SimApp(self.sim)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self, log_level="error", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[sock])),  # type: ignore[union-attr]
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test upstream did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def _replay(body: bytes) -> Any:
    """An ASGI receive that gives `body` once, then waits for a disconnect that never comes."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


def _openai_limits() -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-limit-tokens": "800000",
        "x-ratelimit-remaining-tokens": "799000",
        "x-ratelimit-reset-tokens": "75ms",
        "x-request-id": "req_test",
    }


def _anthropic_limits() -> dict[str, str]:
    # Anthropic's buckets refill continuously: one request of 4,000/min is back in 15 ms,
    # which its whole-second reset rounds up to the next second.
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
    return {
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3999",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-input-tokens-limit": "400000",
        "anthropic-ratelimit-input-tokens-remaining": "399000",
        "anthropic-ratelimit-input-tokens-reset": reset,
        "anthropic-ratelimit-output-tokens-limit": "80000",
        "anthropic-ratelimit-output-tokens-remaining": "79000",
        "anthropic-ratelimit-output-tokens-reset": reset,
        "request-id": "req_anthropic",
    }


async def _send_json(send: Any, status: int, body: Any, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def _send_stream(send: Any, chunks: list[bytes], headers: dict[str, str]) -> None:
    raw = [(b"content-type", b"text/event-stream")]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})
