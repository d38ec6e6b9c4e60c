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
    "message_body",
    "message_stream_steps",
    "model_object",
    "models_body",
    "reply_for",
    "response_body",
    "response_stream_steps",
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


def _chat_usage(call: Call, completion_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = _usage(call.prompt_tokens, completion_tokens)
    usage["prompt_tokens_details"] = {"cached_tokens": call.cache_read, "audio_tokens": 0}
    usage["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0}
    return usage


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
            "usage": _chat_usage(call, sum(c.tokens for c in choices)),
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
            "usage": (
                _chat_usage(call, sum(c.tokens for c in choices))
                if call.kind == "chat"
                else _usage(call.prompt_tokens, sum(c.tokens for c in choices))
            ),
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


# --- Anthropic Messages -----------------------------------------------------------------------

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _anthropic_usage(call: Call, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": call.prompt_tokens - call.cache_read - call.cache_write,
        "cache_creation_input_tokens": call.cache_write,
        "cache_read_input_tokens": call.cache_read,
        "output_tokens": output_tokens,
    }


def message_body(call: Call, message_id: str, choice: Choice) -> bytes:
    """An Anthropic `message` JSON body."""
    return _dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": choice.text}],
            "model": call.model,
            "stop_reason": _STOP_REASONS[choice.finish_reason],
            "stop_sequence": None,
            "usage": _anthropic_usage(call, choice.tokens),
        }
    )


def _named_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def message_stream_steps(call: Call, message_id: str, choice: Choice) -> list[bytes]:
    """A streamed Anthropic message as paced steps: message_start and the block's start with
    the first text delta, one delta per TOKENS_PER_CHUNK tokens, then the closing events."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": call.model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _anthropic_usage(call, 1),
    }
    piece_chars = TOKENS_PER_CHUNK * CHARS_PER_TOKEN
    text = choice.text
    deltas = [
        _named_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text[i : i + piece_chars]},
            },
        )
        for i in range(0, len(text), piece_chars)
    ]
    opening = _named_event("message_start", {"type": "message_start", "message": start})
    opening += _named_event(
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    opening += _named_event("ping", {"type": "ping"})
    steps = [opening + deltas[0], *deltas[1:]]
    closing = _named_event("content_block_stop", {"type": "content_block_stop", "index": 0})
    closing += _named_event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP_REASONS[choice.finish_reason], "stop_sequence": None},
            "usage": {"output_tokens": choice.tokens},
        },
    )
    closing += _named_event("message_stop", {"type": "message_stop"})
    steps.append(closing)
    return steps


# --- OpenAI Responses -------------------------------------------------------------------------


def _response_object(
    call: Call, response_id: str, created: int, choice: Choice | None
) -> dict[str, Any]:
    done = choice is not None
    incomplete = choice is not None and choice.finish_reason == "length"
    output: list[dict[str, Any]] = []
    if choice is not None:
        output.append(_output_message(response_id, choice.text, "completed"))
    usage = None
    if choice is not None:
        usage = {
            "input_tokens": call.prompt_tokens,
            "input_tokens_details": {"cached_tokens": call.cache_read},
            "output_tokens": choice.tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": call.prompt_tokens + choice.tokens,
        }
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": ("incomplete" if incomplete else "completed") if done else "in_progress",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": None,
        "max_output_tokens": call.max_tokens,
        "model": call.model,
        "output": output,
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "usage": usage,
    }


def _output_message(response_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_" + response_id[len("resp_") :],
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def response_body(call: Call, response_id: str, created: int, choice: Choice) -> bytes:
    """A Responses API `response` JSON body."""
    return _dumps(_response_object(call, response_id, created, choice))


def response_stream_steps(
    call: Call, response_id: str, created: int, choice: Choice
) -> list[bytes]:
    """A streamed response as paced steps, ending with `response.completed` and its usage."""
    seq = iter(range(1_000_000))

    def event(name: str, **data: Any) -> bytes:
        return _named_event(name, {"type": name, "sequence_number": next(seq), **data})

    item_id = "msg_" + response_id[len("resp_") :]
    piece_chars = TOKENS_PER_CHUNK * CHARS_PER_TOKEN
    text = choice.text
    opening = event("response.created", response=_response_object(call, response_id, created, None))
    opening += event(
        "response.in_progress", response=_response_object(call, response_id, created, None)
    )
    opening += event(
        "response.output_item.added",
        output_index=0,
        item={**_output_message(response_id, "", "in_progress"), "content": []},
    )
    opening += event(
        "response.content_part.added",
        item_id=item_id,
        output_index=0,
        content_index=0,
        part={"type": "output_text", "text": "", "annotations": []},
    )
    deltas = [
        event(
            "response.output_text.delta",
            item_id=item_id,
            output_index=0,
            content_index=0,
            delta=text[i : i + piece_chars],
        )
        for i in range(0, len(text), piece_chars)
    ]
    steps = [opening + deltas[0], *deltas[1:]]
    final = _response_object(call, response_id, created, choice)
    closing = event(
        "response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text
    )
    closing += event(
        "response.content_part.done",
        item_id=item_id,
        output_index=0,
        content_index=0,
        part={"type": "output_text", "text": text, "annotations": []},
    )
    closing += event("response.output_item.done", output_index=0, item=final["output"][0])
    name = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    closing += event(name, response=final)
    steps.append(closing)
    return steps
