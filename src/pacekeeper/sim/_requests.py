"""Parsing and validating request bodies, and the simulator's prompt token estimate.

Token estimate (documented in docs/SIMULATOR.md, and deliberately simple so a client can
reproduce it):

* text counts like a BPE tokenizer roughly would (`count_text_tokens`): plain prose
  ceil(chars / 4); symbol-dense text (code, JSON: more than 10% of its characters are ASCII
  punctuation) ceil(chars / 3); each CJK character (and kana, hangul, full-width forms) 1
  token; any other non-ASCII character half a token. chars/4 undercounts the latter kinds.
* chat: 3 tokens of reply priming + for each message 4 tokens of overhead + the tokens of the
  message's text (string content, the `text` of content parts, and `name`, counted together);
  every non-text content part (image, audio, ...) counts 85 tokens.
* completions / embeddings: a string counts its text tokens; a list of token ids counts its
  length; a list of prompts/inputs counts the sum of its items.

* messages (Anthropic): 3 tokens of priming + the `system` text + for each message 4 tokens of
  overhead + each content block's text (85 for a non-text block), block by block.
* responses: `instructions` + `input` (a string: its text; a list: counted like chat messages).

Tokens charged at admission: prompt estimate + max_tokens (max_completion_tokens wins when
both are given; DEFAULT_MAX_TOKENS when neither is) x n x number of prompts. Embeddings charge
the prompt estimate only.

Prompt caching: a chat or responses prompt of at least CACHE_MIN_TOKENS whose leading messages
(all but the last) the server has seen before reads them from the cache, in steps of
CACHE_STEP_TOKENS (OpenAI's rule). An Anthropic request caches the prefix up to its last
content block marked with `cache_control`: written the first time, read afterwards.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._draws import digest64

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Call",
    "InvalidRequest",
    "count_text_tokens",
    "parse_call",
]

DEFAULT_MAX_TOKENS = 256
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_PRIMING_TOKENS = 3
NON_TEXT_PART_TOKENS = 85
MAX_N = 128
MAX_DIMENSIONS = 4096
DEFAULT_DIMENSIONS = 64
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128


# CJK ideographs and their punctuation, kana, hangul, full-width forms: about a token each in
# the common BPE vocabularies (often more), where chars/4 would count a quarter.
_WIDE = re.compile(
    "[\u2e80-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
    "\U00020000-\U0003ffff]"
)
_ASCII_SYMBOL = re.compile(r"[!-/:-@\[-`{-~]")
#: Above this share of ASCII punctuation, text is code or JSON: about 3 characters per token.
SYMBOL_DENSE_SHARE = 0.10


def count_text_tokens(text: str) -> int:
    """The simulator's token count of `text` (see the module docstring)."""
    if text.isascii():
        n = len(text)
        if n and len(_ASCII_SYMBOL.findall(text)) > SYMBOL_DENSE_SHARE * n:
            return (n + 2) // 3
        return (n + 3) // 4
    wide = len(_WIDE.findall(text))
    ascii_text = text.encode("ascii", "ignore").decode("ascii")
    other = len(text) - wide - len(ascii_text)
    return wide + (other + 1) // 2 + count_text_tokens(ascii_text)


class InvalidRequest(Exception):
    """A request the API would answer with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        #: The model the request named, when it got that far (for per-model stats).
        self.model: str | None = None


class Call:
    """One validated API call: what it asks for and what it costs.

    `hashes` holds one 64-bit hash per prompt (chat: one; completions/embeddings: one per
    item); replies and embedding vectors are derived from them. `identity_hash` covers the
    model and the whole prompt field and identifies the request when the client sends no
    x-client-request-id.
    """

    __slots__ = (
        "cache_key",
        "cache_read",
        "cache_tokens",
        "cache_write",
        "dimensions",
        "encoding_format",
        "hashes",
        "identity_hash",
        "include_usage",
        "kind",
        "max_tokens",
        "model",
        "n",
        "prompt_tokens",
        "stream",
        "token_cost",
    )

    def __init__(self, kind: str, model: str) -> None:
        self.kind = kind
        self.model = model
        self.stream = False
        self.include_usage = False
        self.n = 1
        self.max_tokens = DEFAULT_MAX_TOKENS
        self.prompt_tokens = 0
        self.token_cost = 0
        self.hashes: list[int] = []
        self.identity_hash = 0
        self.dimensions = DEFAULT_DIMENSIONS
        self.encoding_format = "float"
        #: The cacheable prefix: its hash (0: nothing cacheable) and its tokens.
        self.cache_key = 0
        self.cache_tokens = 0
        #: Decided at admission by the server's cache: prompt tokens read from / written to it.
        self.cache_read = 0
        self.cache_write = 0


def _canonical(value: object) -> bytes:
    # Sorted keys: two clients serialising the same messages differently are the same request.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "an array", dict: "an object", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def _positive_int(body: dict[str, Any], key: str, maximum: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < 1
        or (maximum is not None and value > maximum)
    ):
        bound = "a positive integer" if maximum is None else f"an integer between 1 and {maximum}"
        raise InvalidRequest(
            f"Invalid value for '{key}': must be {bound}, got {value!r}.", key, "invalid_value"
        )
    return value


def _message_tokens(index: int, message: object) -> int:
    if not isinstance(message, dict):
        raise InvalidRequest(
            f"Invalid type for 'messages[{index}]': expected an object, "
            f"but got {_type_name(message)} instead.",
            f"messages[{index}]",
            "invalid_type",
        )
    role = message.get("role")
    if not isinstance(role, str):
        raise _missing(f"messages[{index}].role")
    texts: list[str] = []
    extra = 0
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                texts.append(text)
            else:
                extra += NON_TEXT_PART_TOKENS
    name = message.get("name")
    if isinstance(name, str):
        texts.append(name)
    text = texts[0] if len(texts) == 1 else "".join(texts)
    return MESSAGE_OVERHEAD_TOKENS + count_text_tokens(text) + extra


def _block_tokens(param: str, blocks: object) -> list[tuple[int, bool]]:
    """Anthropic content (a string or a list of blocks) as (tokens, marked for caching) per
    block."""
    if isinstance(blocks, str):
        return [(count_text_tokens(blocks), False)]
    if not isinstance(blocks, list):
        raise InvalidRequest(
            f"{param}: Input should be a valid string or list of content blocks",
            param,
            "invalid_type",
        )
    out: list[tuple[int, bool]] = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(
                f"{param}.{i}: Input should be a content block object with a type",
                f"{param}.{i}",
                "invalid_type",
            )
        text = block.get("text")
        tokens = count_text_tokens(text) if isinstance(text, str) else NON_TEXT_PART_TOKENS
        out.append((tokens, block.get("cache_control") is not None))
    return out


def _anthropic_prompt(call: Call, body: dict[str, Any]) -> None:
    """Prompt tokens of a Messages request, and its cacheable prefix (up to the last block
    marked with cache_control)."""
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("messages: Field required", "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required", "messages")
    parts: list[tuple[int, bool]] = [(REPLY_PRIMING_TOKENS, False)]
    system = body.get("system")
    if system is not None:
        parts += _block_tokens("system", system)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(
                f"messages.{i}.role: Input should be 'user' or 'assistant'", f"messages.{i}.role"
            )
        if "content" not in message:
            raise InvalidRequest(f"messages.{i}.content: Field required", f"messages.{i}.content")
        parts.append((MESSAGE_OVERHEAD_TOKENS, False))
        parts += _block_tokens(f"messages.{i}.content", message["content"])
    call.prompt_tokens = sum(t for t, _ in parts)
    marked = [i for i, (_, cached) in enumerate(parts) if cached]
    if marked:
        call.cache_tokens = sum(t for t, _ in parts[: marked[-1] + 1])
        # The prefix's identity: the model and the content up to the last mark.
        call.cache_key = digest64(
            call.model.encode() + b"\x00cache\x00" + _canonical(_prefix_of(body, marked[-1]))
        )


def _prefix_of(body: dict[str, Any], last_part: int) -> list[object]:
    """The request's content up to part number `last_part` (in _anthropic_prompt's order)."""
    out: list[object] = []
    index = 1  # part 0 is the priming
    system = body.get("system")
    pieces: list[object] = []
    if system is not None:
        pieces += [system] if isinstance(system, str) else list(system)
    for message in body["messages"]:
        pieces.append(message.get("role"))
        content = message["content"]
        pieces += [content] if isinstance(content, str) else list(content)
    for piece in pieces:
        if index > last_part:
            break
        out.append(piece)
        index += 1
    return out


def _openai_cache(call: Call, prefix_tokens: int, prefix: object) -> None:
    """OpenAI's automatic prefix caching: prompts of CACHE_MIN_TOKENS or more cache their
    leading messages in steps of CACHE_STEP_TOKENS."""
    cacheable = prefix_tokens // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS
    if call.prompt_tokens >= CACHE_MIN_TOKENS and cacheable >= CACHE_MIN_TOKENS:
        call.cache_tokens = cacheable
        call.cache_key = digest64(call.model.encode() + b"\x00cache\x00" + _canonical(prefix))


def _text_tokens(param: str, item: object) -> int:
    """Tokens of one prompt/input item: a string, or a list of token ids."""
    if isinstance(item, str):
        return count_text_tokens(item)
    if isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
        return len(item)
    raise InvalidRequest(
        f"Invalid type for '{param}': expected a string or an array of token ids, "
        f"but got {_type_name(item)} instead.",
        param,
        "invalid_type",
    )


def _items(param: str, value: object, *, allow_empty_string: bool) -> list[object]:
    """A prompt/input field as a list of items (a string or one token-id list is one item)."""
    if isinstance(value, str) and (value or allow_empty_string):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            return [value]
        return list(value)
    raise InvalidRequest(
        f"Invalid value for '{param}': expected a non-empty string or array, "
        f"got {_type_name(value)}{' (empty)' if value in ('', []) else ''}.",
        param,
        "invalid_value",
    )


def _common_stream(call: Call, body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise InvalidRequest(
                f"Invalid type for 'stream': expected a boolean, but got {_type_name(stream)}.",
                "stream",
                "invalid_type",
            )
        call.stream = stream


def _common(call: Call, body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise InvalidRequest(
                f"Invalid type for 'stream': expected a boolean, but got {_type_name(stream)}.",
                "stream",
                "invalid_type",
            )
        call.stream = stream
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest(
                "Invalid type for 'stream_options': expected an object.",
                "stream_options",
                "invalid_type",
            )
        call.include_usage = options.get("include_usage") is True
    n = _positive_int(body, "n", MAX_N)
    if n is not None:
        call.n = n
    # max_completion_tokens superseded max_tokens; the newer one wins when both are given.
    max_tokens = _positive_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(body, "max_tokens")
    if max_tokens is not None:
        call.max_tokens = max_tokens


def parse_call(kind: str, raw: bytes, model: str | None = None) -> Call:
    """Parse and validate the body of a `kind` call ("chat", "completion", "embedding",
    "messages" or "responses"); `model` (an Azure deployment) stands for the body's model.

    Raises InvalidRequest with a message naming what is wrong.
    """
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). "
            "The API expects a JSON object; check the body and the content type."
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"Invalid request body: expected a JSON object, got {_type_name(body)}."
        )
    if model is None:
        model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            f"Invalid type for 'model': expected a non-empty string, got {_type_name(model)}.",
            "model",
            "invalid_type",
        )
    try:
        return _parse_fields(Call(kind, model), body)
    except InvalidRequest as exc:
        exc.model = model
        raise


def _parse_fields(call: Call, body: dict[str, Any]) -> Call:
    kind = call.kind
    prefix = call.model.encode() + b"\x00"
    if kind == "messages":
        if "max_tokens" not in body:
            raise InvalidRequest("max_tokens: Field required", "max_tokens")
        max_tokens = _positive_int(body, "max_tokens")
        assert max_tokens is not None
        call.max_tokens = max_tokens
        _anthropic_prompt(call, body)
        _common_stream(call, body)
        call.identity_hash = digest64(prefix + _canonical([body.get("system"), body["messages"]]))
        call.hashes = [call.identity_hash]
        call.token_cost = call.prompt_tokens + call.max_tokens
        return call
    if kind == "responses":
        if "input" not in body:
            raise _missing("input")
        items = body["input"]
        instructions = body.get("instructions")
        base = count_text_tokens(instructions) if isinstance(instructions, str) else 0
        if isinstance(items, str):
            call.prompt_tokens = base + count_text_tokens(items)
        elif isinstance(items, list) and items:
            tokens = [_message_tokens(i, m) for i, m in enumerate(items)]
            call.prompt_tokens = base + REPLY_PRIMING_TOKENS + sum(tokens)
            if len(items) > 1:
                _openai_cache(call, base + REPLY_PRIMING_TOKENS + sum(tokens[:-1]), items[:-1])
        else:
            raise InvalidRequest(
                "Invalid value for 'input': expected a non-empty string or array of items.",
                "input",
                "invalid_value",
            )
        _common_stream(call, body)
        max_tokens = _positive_int(body, "max_output_tokens")
        if max_tokens is not None:
            call.max_tokens = max_tokens
        call.identity_hash = digest64(prefix + _canonical([instructions, items]))
        call.hashes = [call.identity_hash]
        call.token_cost = call.prompt_tokens + call.max_tokens
        return call
    if kind == "chat":
        messages = body.get("messages")
        if messages is None:
            raise _missing("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest(
                "Invalid value for 'messages': expected a non-empty array of message objects.",
                "messages",
                "invalid_value",
            )
        _common(call, body)
        tokens = [_message_tokens(i, m) for i, m in enumerate(messages)]
        call.prompt_tokens = REPLY_PRIMING_TOKENS + sum(tokens)
        if len(messages) > 1:
            _openai_cache(call, REPLY_PRIMING_TOKENS + sum(tokens[:-1]), messages[:-1])
        call.identity_hash = digest64(prefix + _canonical(messages))
        call.hashes = [call.identity_hash]
        call.token_cost = call.prompt_tokens + call.max_tokens * call.n
    elif kind == "completion":
        if "prompt" not in body:
            raise _missing("prompt")
        prompts = _items("prompt", body["prompt"], allow_empty_string=True)
        _common(call, body)
        call.prompt_tokens = sum(_text_tokens("prompt", p) for p in prompts)
        call.identity_hash = digest64(prefix + _canonical(body["prompt"]))
        call.hashes = [digest64(prefix + _canonical(p)) for p in prompts]
        call.token_cost = call.prompt_tokens + call.max_tokens * call.n * len(prompts)
    else:
        if "input" not in body:
            raise _missing("input")
        # Embedding an empty string is an error at OpenAI; completing one is not.
        inputs = _items("input", body["input"], allow_empty_string=False)
        call.prompt_tokens = sum(_text_tokens("input", p) for p in inputs)
        dimensions = _positive_int(body, "dimensions", MAX_DIMENSIONS)
        if dimensions is not None:
            call.dimensions = dimensions
        encoding = body.get("encoding_format")
        if encoding is not None:
            if encoding not in ("float", "base64"):
                raise InvalidRequest(
                    f"Invalid value for 'encoding_format': expected 'float' or 'base64', "
                    f"got {encoding!r}.",
                    "encoding_format",
                    "invalid_value",
                )
            call.encoding_format = encoding
        call.identity_hash = digest64(prefix + _canonical(body["input"]))
        # Per item and independent of the batch: the same text always embeds the same way.
        call.hashes = [digest64(prefix + _canonical(p)) for p in inputs]
        call.token_cost = call.prompt_tokens
    return call
