"""Deterministic reply content and the OpenAI-shaped JSON bodies that carry it.

A reply's length and text are derived from the prompt hash: the same prompt always gets the
same answer, of `16 + hash % 185` tokens (capped by max_tokens), 4 characters per token, so the
sim's own estimate of the reply (ceil(chars / 4)) equals its completion_tokens.
"""

from __future__ import annotations

import base64
import json
import math
import random
import struct
from typing import Any

from ._draws import mix64
from ._requests import Call

__all__ = [
    "CHARS_PER_TOKEN",
    "Choice",
    "TOKENS_PER_CHUNK",
    "chat_body",
    "chat_chunk",
    "choices_for",
    "completion_body",
    "completion_chunk",
    "embedding_body",
    "model_object",
    "models_body",
    "reply_for",
    "usage_chunk",
]

CHARS_PER_TOKEN = 4
MIN_REPLY_TOKENS = 16
REPLY_TOKENS_SPREAD = 185  # replies are 16..200 tokens before the max_tokens cap
TOKENS_PER_CHUNK = 4  # streamed content chunks carry this many tokens each
SYSTEM_FINGERPRINT = "fp_pacekeeper_sim"
OWNED_BY = "pacekeeper-sim"

_WORDS_TEXT = """
the a of to and in that it is was for on are with as be at this have from or one by but
not what all were when we there can an your which their said if do will each about how up
out them then she many some so these would other into has more her two like him see time
could no make than first been its who now people my made over did down only way find use
may water long little very after words called just where most know get through back much
before go good new write our used me man too any day same right look think also around
another came come work three word must because does part even place well such here take
why things help put years different away again off went old number great tell men say
small
"""
_WORDS = tuple(_WORDS_TEXT.split())


def _build_corpus(size_chars: int = 1 << 16) -> tuple[str, tuple[int, ...]]:
    # Built once at import with a fixed seed: replies are slices of it, which costs nothing per
    # request and keeps every reply identical across runs and machines.
    rng = random.Random(0x5EED)
    words: list[str] = []
    length = 0
    while length < size_chars:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    text = " ".join(words) + " "
    starts = [0]
    starts.extend(i + 1 for i, ch in enumerate(text) if ch == " ")
    max_reply_chars = (MIN_REPLY_TOKENS + REPLY_TOKENS_SPREAD) * CHARS_PER_TOKEN
    return text, tuple(s for s in starts if s + max_reply_chars < len(text))


_CORPUS, _WORD_STARTS = _build_corpus()


class Choice:
    """One generated choice: its text, its token count and why it stopped."""

    __slots__ = ("finish_reason", "text", "tokens")

    def __init__(self, text: str, tokens: int, finish_reason: str) -> None:
        self.text = text
        self.tokens = tokens
        self.finish_reason = finish_reason


def reply_for(prompt_hash: int, index: int, max_tokens: int) -> Choice:
    """The deterministic reply to a prompt with hash `prompt_hash`, choice number `index`."""
    h = mix64(prompt_hash ^ (index * 0x9E3779B97F4A7C15))
    natural = MIN_REPLY_TOKENS + h % REPLY_TOKENS_SPREAD
    tokens = natural if natural <= max_tokens else max_tokens
    start = _WORD_STARTS[(h >> 16) % len(_WORD_STARTS)]
    # 4 chars per token, so that ceil(len(text) / 4) == tokens (the sim's own estimate).
    body = _CORPUS[start : start + tokens * CHARS_PER_TOKEN - 1].rstrip()
    text = body[:1].upper() + body[1:] + "."
    return Choice(text, tokens, "stop" if natural <= max_tokens else "length")


def choices_for(call: Call) -> list[Choice]:
    """All choices of a chat/completion call: n per prompt, prompt-major (OpenAI's order)."""
    return [reply_for(h, j, call.max_tokens) for h in call.hashes for j in range(call.n)]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def chat_body(call: Call, response_id: str, created: int, choices: list[Choice]) -> bytes:
    """A `chat.completion` JSON body."""
    return _dumps(
        {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": call.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                for i, c in enumerate(choices)
            ],
            "usage": _usage(call.prompt_tokens, sum(c.tokens for c in choices)),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + _dumps(chunk) + b"\n\n"


def chat_chunk(
    call: Call,
    response_id: str,
    created: int,
    *,
    index: int,
    delta: dict[str, Any],
    finish: str | None = None,
) -> bytes:
    """One SSE event carrying a `chat.completion.chunk` (usage null when usage was asked for)."""
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": call.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if call.include_usage:
        chunk["usage"] = None
    return _event(chunk)


def completion_chunk(
    call: Call,
    response_id: str,
    created: int,
    *,
    index: int,
    text: str = "",
    finish: str | None = None,
) -> bytes:
    """One SSE event of a streamed text completion."""
    chunk: dict[str, Any] = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": call.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if call.include_usage:
        chunk["usage"] = None
    return _event(chunk)


def usage_chunk(call: Call, response_id: str, created: int, choices: list[Choice]) -> bytes:
    """The final `include_usage` event: empty choices and the usage of the whole reply."""
    return _event(
        {
            "id": response_id,
            "object": "chat.completion.chunk" if call.kind == "chat" else "text_completion",
            "created": created,
            "model": call.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
            "usage": _usage(call.prompt_tokens, sum(c.tokens for c in choices)),
        }
    )


def completion_body(call: Call, response_id: str, created: int, choices: list[Choice]) -> bytes:
    """A `text_completion` JSON body."""
    return _dumps(
        {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": call.model,
            "choices": [
                {"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                for i, c in enumerate(choices)
            ],
            "usage": _usage(call.prompt_tokens, sum(c.tokens for c in choices)),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def _vector(seed_hash: int, dimensions: int) -> list[float]:
    # A splitmix64 stream mapped to [-1, 1), then normalised like real embeddings are.
    out = []
    x = seed_hash
    for _ in range(dimensions):
        x = mix64(x)
        out.append((x >> 11) * (2.0**-52) - 1.0)
    norm = math.sqrt(sum(v * v for v in out)) or 1.0
    return [round(v / norm, 7) for v in out]


def embedding_body(call: Call) -> bytes:
    """A `list` of `embedding` objects: one deterministic unit vector per input item."""
    data: list[dict[str, Any]] = []
    for i, h in enumerate(call.hashes):
        vector = _vector(h, call.dimensions)
        embedding: list[float] | str = vector
        if call.encoding_format == "base64":
            # OpenAI's base64 format: little-endian float32s.
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return _dumps(
        {
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens},
        }
    )


def model_object(model: str, created: int) -> dict[str, Any]:
    """One `model` object."""
    return {"id": model, "object": "model", "created": created, "owned_by": OWNED_BY}


def models_body(models: list[str], created: int) -> bytes:
    """The `list` answer of GET /v1/models."""
    return _dumps({"object": "list", "data": [model_object(m, created) for m in models]})
