"""Reading a batch input file lazily, line by line, telling the formats apart per line.

Accepted, per line of a JSON-lines file:

- the OpenAI Batch API line: ``{"custom_id": ..., "method": "POST", "url": ..., "body": {...}}``
  (any object with a ``custom_id``, ``method``, ``url`` or ``body`` that is not a prompt
  object is read as one, so a missing field is reported, never guessed);
- a bare request body (an object with a ``messages``, ``input`` or ``prompt`` field): its
  custom_id is ``line-N`` (N counts from 1) and its route is ``--url``;
- ``{"prompt": "..."}`` (optionally with ``custom_id`` and ``model``): on a chat route, one user
  message to ``--model`` (or the line's model); on another route (``/v1/completions``, images)
  the body ``{"model", "prompt"}``. On Anthropic's ``/v1/messages`` the body also gets
  ``max_tokens`` (:data:`DEFAULT_MESSAGES_MAX_TOKENS`), which Anthropic requires;
- the Anthropic Message Batches line: ``{"custom_id": ..., "params": {...}}``, sent to
  ``/v1/messages``; its result is written in the Message Batches results format.

``model`` (``--model``) overrides every line's model; ``default_model`` (``--default-model``)
fills it in only where a line names none.

With ``--format text`` every non-blank line is one prompt. Blank lines are not requests and are
skipped in both formats (line numbers still count them). A line of a JSON-lines file that is not
valid JSON is a bad line (never silently taken as a prompt): it becomes an error record naming
its line number, and the run goes on. Reading never raises for any content of a line.

custom_id rules: a non-empty string of at most 512 characters. Lines without one get
``line-N``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_MESSAGES_MAX_TOKENS",
    "MAX_CUSTOM_ID",
    "Dialect",
    "BadLine",
    "BatchLine",
    "InputFormat",
    "check_route",
    "count_lines",
    "read_lines",
]

InputFormat = Literal["jsonl", "text"]
Dialect = Literal["openai", "anthropic"]
"""The format of a line, and of its result: OpenAI Batch, or Anthropic Message Batches."""

DEFAULT_MESSAGES_MAX_TOKENS = 1024
"""``max_tokens`` of a prompt sent to Anthropic's Messages API, which requires one."""
MESSAGES_ROUTE = "/v1/messages"
MAX_CUSTOM_ID = 512
_BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})
_PROMPT_KEYS = frozenset({"prompt", "custom_id", "model"})
_REQUEST_KEYS = frozenset({"messages", "input", "prompt"})
_BOM = b"\xef\xbb\xbf"
_ROUTE = re.compile(r"/[\x21-\x7e]*")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_NO_STREAM = 'a batch cannot stream its answers; remove "stream": true from the body'


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request to send."""

    line_no: int
    custom_id: str
    url: str
    body: dict[str, Any]
    size: int = 0
    """Bytes of the input line (what holding it in memory roughly costs)."""
    dialect: Dialect = "openai"


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that cannot be sent; ``code`` is machine-readable, ``message`` names the line.

    ``custom_id`` is the line's own when it had a valid one, else ``line-N``.
    """

    line_no: int
    custom_id: str
    code: str
    message: str
    dialect: Dialect = "openai"


def count_lines(path: Path) -> int:
    """The lines :func:`read_lines` yields (non-blank lines), in constant memory."""
    count = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]  # noqa: PLW2901 (as read_lines does)
            if raw.strip():
                count += 1
    return count


def check_route(url: object) -> str | None:
    """Why ``url`` is not a usable route (a path such as /v1/chat/completions), or None."""
    if not isinstance(url, str) or not _ROUTE.fullmatch(url):
        return f"url must be a path such as /v1/chat/completions, got {_short(url)}"
    return None


def read_lines(
    path: Path,
    *,
    fmt: InputFormat = "jsonl",
    model: str | None = None,
    url: str = "/v1/chat/completions",
    default_model: str | None = None,
) -> Generator[BatchLine | BadLine, None, None]:
    """Yield each non-blank line as a :class:`BatchLine` or a :class:`BadLine`, lazily.

    ``model`` overrides (or fills) the body's model; ``url`` is the route for bare bodies and
    prompts.
    """
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            stripped = (raw[len(_BOM) :] if line_no == 1 and raw.startswith(_BOM) else raw).strip()
            if not stripped:
                continue
            yield parse_line(
                line_no, stripped, fmt=fmt, model=model, url=url, default_model=default_model
            )


def parse_line(
    line_no: int,
    raw: bytes,
    *,
    fmt: InputFormat = "jsonl",
    model: str | None = None,
    url: str = "/v1/chat/completions",
    default_model: str | None = None,
) -> BatchLine | BadLine:
    """One line (without its newline) as a request or a bad line; never raises."""
    fallback_id = f"line-{line_no}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadLine(
            line_no,
            fallback_id,
            "invalid_encoding",
            f"line {line_no}: not UTF-8 ({exc.reason} at byte {exc.start})",
        )
    if fmt == "text":
        return _prompt_line(
            line_no, fallback_id, text, model=model or default_model, url=url, size=len(raw)
        )
    return _json_line(
        line_no, text, model=model, url=url, size=len(raw), default_model=default_model
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_line(
    line_no: int, text: str, *, model: str | None, url: str, size: int, default_model: str | None
) -> BatchLine | BadLine:
    fallback_id = f"line-{line_no}"
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return BadLine(
            line_no, fallback_id, "invalid_json", f"line {line_no}: not valid JSON ({reason})"
        )
    if _SURROGATE_ESCAPE.search(text) and not _encodable(obj):
        return BadLine(
            line_no,
            fallback_id,
            "invalid_json",
            f"line {line_no}: not valid JSON (an unpaired UTF-16 surrogate escape: the text "
            "cannot be sent as UTF-8)",
        )
    if not isinstance(obj, dict):
        return BadLine(
            line_no,
            fallback_id,
            "invalid_line",
            f"line {line_no}: expected a JSON object, got {_json_type(obj)}",
        )
    keys = set(obj)
    if "prompt" in keys and keys <= _PROMPT_KEYS:
        return _prompt_object(
            line_no, obj, model=model, url=url, size=size, default_model=default_model
        )
    if "params" in keys and not keys & {"method", "url", "body"}:
        return _message_batch_line(line_no, obj, model=model, size=size, default=default_model)
    if keys & _BATCH_KEYS:
        return _batch_api_line(line_no, obj, model=model, size=size, default=default_model)
    if not keys & _REQUEST_KEYS:
        return BadLine(
            line_no,
            fallback_id,
            "unrecognized_line",
            f"line {line_no}: not a request: expected a Batch API line (custom_id, method, url, "
            'body), a request body (with messages, input or prompt) or {"prompt": ...}',
        )
    # a bare request body
    return _request_line(
        line_no,
        fallback_id,
        f"line {line_no}",
        url=url,
        body=dict(obj),
        size=size,
        model=model,
        default_model=default_model,
    )


def _set_model(body: dict[str, Any], model: str | None, default_model: str | None) -> None:
    """--model overrides the body's model; --default-model fills in a missing one."""
    if model is not None:
        body["model"] = model
    elif default_model is not None and "model" not in body:
        body["model"] = default_model


def _prompt_object(
    line_no: int,
    obj: dict[str, Any],
    *,
    model: str | None,
    url: str,
    size: int,
    default_model: str | None,
) -> BatchLine | BadLine:
    fallback_id = f"line-{line_no}"
    if "custom_id" in obj:
        problem = _custom_id_problem(obj["custom_id"])
        if problem is not None:
            return BadLine(line_no, fallback_id, "invalid_custom_id", f"line {line_no}: {problem}")
        custom_id: str = obj["custom_id"]
    else:
        custom_id = fallback_id
    if model is None and "model" in obj:
        if not _is_model(obj["model"]):
            return BadLine(
                line_no,
                custom_id,
                "missing_model",
                f"line {line_no}: 'model' must be a non-empty string, got {_short(obj['model'])}",
            )
        model = obj["model"]
    if model is None:
        model = default_model
    prompt = obj["prompt"]
    if not is_chat_route(url):
        # Another route (completions, images...) takes the prompt as it is, in a body.
        if model is None:
            return BadLine(
                line_no,
                custom_id,
                "missing_model",
                f"line {line_no}: the line names no model; add one or pass --default-model",
            )
        return BatchLine(line_no, custom_id, url, {"model": model, "prompt": prompt}, size)
    if not isinstance(prompt, str):
        return BadLine(
            line_no,
            custom_id,
            "invalid_prompt",
            f"line {line_no}: 'prompt' must be a string, got {_json_type(prompt)}",
        )
    return _prompt_line(line_no, custom_id, prompt, model=model, url=url, size=size)


def is_chat_route(url: str) -> bool:
    """Whether prompts on this route become chat messages (OpenAI chat, Anthropic messages)."""
    return url.split("?", 1)[0].rstrip("/").endswith(("/chat/completions", "/messages"))


def _message_batch_line(
    line_no: int, obj: dict[str, Any], *, model: str | None, size: int, default: str | None
) -> BatchLine | BadLine:
    """An Anthropic Message Batches line: ``{"custom_id": ..., "params": {...}}``."""
    fallback_id = f"line-{line_no}"
    if "custom_id" not in obj:
        return BadLine(
            line_no,
            fallback_id,
            "missing_custom_id",
            f"line {line_no}: custom_id is missing (a Message Batches line needs custom_id and "
            "params)",
            "anthropic",
        )
    problem = _custom_id_problem(obj["custom_id"])
    if problem is not None:
        return BadLine(
            line_no, fallback_id, "invalid_custom_id", f"line {line_no}: {problem}", "anthropic"
        )
    custom_id: str = obj["custom_id"]
    where = f"line {line_no} ({_short(custom_id)})"
    extra = sorted(set(obj) - {"custom_id", "params"})
    params = obj["params"]
    if not isinstance(params, dict):
        return BadLine(
            line_no,
            custom_id,
            "invalid_body",
            f"{where}: params must be a JSON object, got {_json_type(params)}",
            "anthropic",
        )
    if extra:
        return BadLine(
            line_no,
            custom_id,
            "unrecognized_line",
            f"{where}: a Message Batches line has custom_id and params only; also got "
            f"{', '.join(extra)[:200]}",
            "anthropic",
        )
    _set_model(params, model, default)
    if not _is_model(params.get("model")):
        return BadLine(
            line_no,
            custom_id,
            "missing_model",
            f"{where}: params names no model; add one or pass --default-model",
            "anthropic",
        )
    if params.get("stream") is True:
        return BadLine(line_no, custom_id, "invalid_body", f"{where}: {_NO_STREAM}", "anthropic")
    return BatchLine(line_no, custom_id, MESSAGES_ROUTE, params, size, "anthropic")


def _batch_api_line(
    line_no: int, obj: dict[str, Any], *, model: str | None, size: int, default: str | None
) -> BatchLine | BadLine:
    fallback_id = f"line-{line_no}"
    if "custom_id" not in obj:
        return BadLine(
            line_no,
            fallback_id,
            "missing_custom_id",
            f"line {line_no}: custom_id is missing (a Batch API line needs custom_id, method, "
            "url and body)",
        )
    problem = _custom_id_problem(obj["custom_id"])
    if problem is not None:
        return BadLine(line_no, fallback_id, "invalid_custom_id", f"line {line_no}: {problem}")
    custom_id: str = obj["custom_id"]
    where = f"line {line_no} ({_short(custom_id)})"
    missing = sorted(_BATCH_KEYS - set(obj))
    if missing:
        return BadLine(
            line_no,
            custom_id,
            "missing_field",
            f"{where}: missing {', '.join(missing)} (a Batch API line needs custom_id, method, "
            "url and body)",
        )
    method, url, body = obj["method"], obj["url"], obj["body"]
    if method != "POST":
        return BadLine(
            line_no,
            custom_id,
            "invalid_method",
            f"{where}: method must be POST, got {_short(method)}",
        )
    route_problem = check_route(url)
    if route_problem is not None:
        return BadLine(line_no, custom_id, "invalid_url", f"{where}: {route_problem}")
    if not isinstance(body, dict):
        return BadLine(
            line_no,
            custom_id,
            "invalid_body",
            f"{where}: body must be a JSON object, got {_json_type(body)}",
        )
    return _request_line(
        line_no, custom_id, where, url=url, body=body, size=size, model=model, default_model=default
    )


def _request_line(
    line_no: int,
    custom_id: str,
    where: str,
    *,
    url: str,
    body: dict[str, Any],
    size: int,
    model: str | None,
    default_model: str | None,
) -> BatchLine | BadLine:
    """A request body, read from a bare body line or a Batch API line's ``body`` (``where``
    names it in errors), with --model and --default-model applied: it must name a model
    and must not stream."""
    _set_model(body, model, default_model)
    if not _is_model(body.get("model")):
        return BadLine(
            line_no,
            custom_id,
            "missing_model",
            f"{where}: the body names no model; add one or pass --default-model",
        )
    if body.get("stream") is True:
        return BadLine(line_no, custom_id, "invalid_body", f"{where}: {_NO_STREAM}")
    return BatchLine(line_no, custom_id, url, body, size)


def _prompt_line(
    line_no: int, custom_id: str, prompt: str, *, model: str | None, url: str, size: int
) -> BatchLine | BadLine:
    if model is None:
        return BadLine(
            line_no,
            custom_id,
            "missing_model",
            f"line {line_no}: a prompt line needs --model or --default-model to say which "
            "model answers it",
        )
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if url.split("?", 1)[0].rstrip("/").endswith("/messages"):
        body["max_tokens"] = DEFAULT_MESSAGES_MAX_TOKENS
    return BatchLine(line_no, custom_id, url, body, size)


def _custom_id_problem(custom_id: object) -> str | None:
    if not isinstance(custom_id, str) or not custom_id:
        return f"custom_id must be a non-empty string, got {_short(custom_id)}"
    if len(custom_id) > MAX_CUSTOM_ID:
        return f"custom_id is longer than {MAX_CUSTOM_ID} characters ({len(custom_id)})"
    return None


def _is_model(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: object, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (ValueError, RecursionError):  # pragma: no cover (parsed JSON always dumps)
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
