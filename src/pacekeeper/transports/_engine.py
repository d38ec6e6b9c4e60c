"""What the httpx and httpx2 transports share: reading requests and answers for the governor.

httpx2 (the HTTP layer of the current openai and anthropic SDKs) and httpx (older SDKs, other
libraries) have the same transport interface but distinct classes, so everything here works
through a :class:`Flavour`, one per library, and the two transports differ only in the base
class they declare.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pacekeeper.core.classify import (
    OutcomeKind,
    Verdict,
    classify_response,
    describe_exception,
    verdict_for_exception,
    verdict_for_failure,
)
from pacekeeper.core.tokens import TokenEstimate, estimate_request_tokens

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pacekeeper.core.governor import Call

__all__ = [
    "Flavour",
    "RequestFacts",
    "flavour_of",
    "read_request",
    "route_of",
    "usage_from_json",
]

_EMPTY_ESTIMATE = TokenEstimate(prompt_tokens=0, max_completion_tokens=0, method="none")
_USAGE_NUMBER = re.compile(
    rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)'
)


@dataclass(frozen=True, slots=True)
class Flavour:
    """The classes of one HTTP library (httpx or httpx2) that the transports need."""

    name: str
    module: ModuleType

    def decode(self, raw: bytes, headers: Mapping[str, str]) -> bytes:
        """The body as the caller will see it (gzip/br/zstd undone), for reading usage."""
        encoding = headers.get("content-encoding")
        if not encoding or encoding == "identity":
            return raw
        tmp = self.module.Response(200, headers={"content-encoding": encoding}, content=raw)
        return bytes(tmp.read())

    def verdict_for_exception(self, exc: BaseException) -> Verdict | None:
        return verdict_for_exception(exc, now_wall_s=time.time())


@cache
def flavour_of(module: ModuleType) -> Flavour:
    return Flavour(
        name=module.__name__,
        module=module,
    )


_ID_SEGMENT = re.compile(
    r"[a-z]{2,12}[-_](?=[A-Za-z]*\d)[A-Za-z0-9]{16,}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{24,}|\d{6,}"
)


def route_of(path: str) -> str:
    """The governor's route for a URL path: ids of objects replaced by ``{id}``, so that
    ``/v1/files/file-abc...`` and its kin share one lane (and one set of metric labels)
    instead of making one per object.

    >>> route_of("/v1/files/file-AbC123dEf456GhI789/content")
    '/v1/files/{id}/content'
    >>> route_of("/v1/responses/resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")
    '/v1/responses/{id}'
    >>> route_of("/v1/models/gpt-4o-2024-08-06"), route_of("/v1/chat/completions")
    ('/v1/models/gpt-4o-2024-08-06', '/v1/chat/completions')
    >>> route_of("/openai/deployments/text-embedding-3-small/embeddings")
    '/openai/deployments/text-embedding-3-small/embeddings'
    """
    folded = _ROUTES.get(path)
    if folded is None:
        folded = _fold_ids(path)
        if len(_ROUTES) < _ROUTES_CACHED:  # paths repeat: remember a bounded number
            _ROUTES[path] = folded
    return folded


_ROUTES: dict[str, str] = {}
_ROUTES_CACHED = 4096


def _fold_ids(path: str) -> str:
    if not any(c.isdigit() for c in path):
        return path
    segments = path.split("/")
    changed = False
    for i, segment in enumerate(segments):
        if len(segment) >= 6 and _ID_SEGMENT.fullmatch(segment):
            segments[i] = "{id}"
            changed = True
    return "/".join(segments) if changed else path


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the governor needs to know of a request before it leaves."""

    route: str
    model: str | None
    estimate: TokenEstimate
    streaming: bool


def read_request(request: Any) -> RequestFacts:
    """Route (the URL path, object ids folded), model and token estimate of a request.

    Only JSON bodies are parsed; anything else (a file upload, a GET) costs no tokens and goes
    on the lane of (route, None).
    """
    route = route_of(request.url.path)
    if request.method != "POST":
        return RequestFacts(route, None, _EMPTY_ESTIMATE, streaming=False)
    try:
        content = request.content
    except Exception:  # a streaming upload that was not read: nothing to estimate
        return RequestFacts(route, None, _EMPTY_ESTIMATE, streaming=False)
    if not content or content[:1] not in (b"{", b" ", b"\n"):
        return RequestFacts(route, None, _EMPTY_ESTIMATE, streaming=False)
    try:
        body = json.loads(content)
    except ValueError:
        return RequestFacts(route, None, _EMPTY_ESTIMATE, streaming=False)
    if not isinstance(body, dict):
        return RequestFacts(route, None, _EMPTY_ESTIMATE, streaming=False)
    model = body.get("model")
    model = model if isinstance(model, str) else None
    return RequestFacts(
        route,
        model,
        estimate_request_tokens(body, model=model),
        streaming=body.get("stream") is True,
    )


def usage_from_json(body: bytes) -> tuple[int | None, int | None, bool]:
    """(prompt tokens, completion tokens, body is valid JSON) of a JSON answer."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None, False
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None, None, True
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        prompt if isinstance(prompt, int) else None,
        completion if isinstance(completion, int) else None,
        True,
    )


class UsageScanner:
    """Picks the token counts out of a server-sent event stream as it passes.

    OpenAI sends usage in the last chunk (with ``stream_options.include_usage``), Anthropic in
    ``message_start`` (input) and ``message_delta`` (output). Only chunks that mention
    ``"usage"`` are searched, so the cost per chunk is one substring test.
    """

    __slots__ = ("completion_tokens", "prompt_tokens")

    def __init__(self) -> None:
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def feed(self, chunk: bytes) -> None:
        if b'"usage"' not in chunk:
            return
        for name, value in _USAGE_NUMBER.findall(chunk):
            if name in (b"prompt_tokens", b"input_tokens"):
                self.prompt_tokens = int(value)
            else:
                self.completion_tokens = int(value)


def is_json(headers: Mapping[str, str]) -> bool:
    return "json" in headers.get("content-type", "")


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").startswith("text/event-stream")


def request_id(headers: Mapping[str, str]) -> str | None:
    return headers.get("x-request-id") or headers.get("request-id")


def verdict_for_answer(
    status: int,
    headers: Mapping[str, str],
    body: bytes | None,
    *,
    json_valid: bool = True,
    read_limits: bool = True,
) -> Verdict:
    """Classify a complete answer; a 2xx whose JSON does not parse is MALFORMED."""
    if status < 300 and not json_valid and body is not None:
        return verdict_for_failure(
            OutcomeKind.MALFORMED,
            f"{status} with a body that is not valid JSON ({len(body)} bytes)",
        )
    return classify_response(status, headers, body, now_wall_s=time.time(), read_limits=read_limits)


_ESSENTIAL = frozenset({b"content-type", b"content-encoding", b"x-request-id", b"request-id"})


def essential_headers(headers: Any) -> dict[str, str]:
    """Only the headers a successful answer needs when its rate-limit headers are not read
    this time (see ``Lane.limits_due``): decoding the other fifteen costs more than the rest
    of the answer's handling."""
    found: dict[str, str] = {}
    for name, value in headers.raw:
        lowered = name.lower()
        if lowered in _ESSENTIAL:
            found[lowered.decode("ascii")] = value.decode("latin-1")
    return found


def plain_headers(headers: Any) -> dict[str, str]:
    """The headers as a plain dict with lower-case names, read once: httpx's Headers.get is
    a scan of the list, and an answer's headers are read several times."""
    return dict(headers.multi_items())


def bounded_timeout(extensions: dict[str, Any], attempt_timeout_s: float | None) -> None:
    """Apply the policy's per-attempt timeout on top of the client's own timeouts."""
    if attempt_timeout_s is None:
        return
    current = extensions.get("timeout") or {}
    extensions["timeout"] = {
        phase: attempt_timeout_s
        if current.get(phase) is None
        else min(current[phase], attempt_timeout_s)
        for phase in ("connect", "read", "write", "pool")
    }


def settle_stream(
    call: Call,
    permit: Any,
    *,
    scanner: UsageScanner,
    ok: Verdict,
    error: BaseException | None,
    request_id: str | None,
    abandoned: bool = False,
) -> None:
    """A streamed answer ended (closed, broken or abandoned): record it and free the slot."""
    if error is not None:
        verdict = verdict_for_failure(
            OutcomeKind.CONNECTION_ERROR,
            f"stream broke after the answer began: {describe_exception(error)}",
        )
    elif abandoned:
        verdict = verdict_for_failure(
            OutcomeKind.OTHER, "stream abandoned: the caller stopped reading without closing it"
        )
    else:
        verdict = ok
    call.settle(
        permit,
        verdict,
        prompt_tokens=scanner.prompt_tokens,
        completion_tokens=scanner.completion_tokens,
        request_id=request_id,
        final=True,
    )
