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

Tokens charged at admission: prompt estimate + max_tokens (max_completion_tokens wins when
both are given; DEFAULT_MAX_TOKENS when neither is) x n x number of prompts. Embeddings charge
the prompt estimate only.
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


def parse_call(kind: str, raw: bytes) -> Call:
    """Parse and validate the body of a `kind` call ("chat", "completion" or "embedding").

    Raises InvalidRequest with an OpenAI-style message naming what is wrong.
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
        call.prompt_tokens = REPLY_PRIMING_TOKENS + sum(
            _message_tokens(i, m) for i, m in enumerate(messages)
        )
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
