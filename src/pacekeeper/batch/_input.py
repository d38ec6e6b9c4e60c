"""Reading a batch input file lazily, line by line, telling the formats apart per line.

Accepted, per line of a JSON-lines file:

- the OpenAI Batch API line: ``{"custom_id": ..., "method": "POST", "url": ..., "body": {...}}``;
- a bare request body (an object with a ``model``, ``messages``, ``input`` or ``prompt`` field
  that is not a prompt-only object): its custom_id is ``line-N`` (N counts from 1);
- ``{"prompt": "..."}`` (optionally with ``custom_id``): one user message, with ``--model``.

With ``--format text`` every non-empty line is one prompt. A line of a JSON-lines file that is
not valid JSON is a bad line (never silently taken as a prompt): it becomes an error record
naming its line number, and the run goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["BadLine", "BatchLine", "InputFormat", "count_lines", "read_lines"]

InputFormat = Literal["jsonl", "text"]

_BATCH_KEYS = frozenset({"custom_id", "method", "url", "body"})
_MAX_CUSTOM_ID = 512


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request to send."""

    line_no: int
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that cannot be sent; ``code`` is machine-readable, ``message`` names the line."""

    line_no: int
    custom_id: str
    code: str
    message: str


def count_lines(path: Path) -> int:
    """Non-empty lines, counted in 1 MiB blocks (fast, constant memory)."""
    count = 0
    last = b"\n"
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            count += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        count += 1
    return count


def read_lines(
    path: Path,
    *,
    fmt: InputFormat = "jsonl",
    model: str | None = None,
    url: str = "/v1/chat/completions",
) -> Iterator[BatchLine | BadLine]:
    """Yield each line as a :class:`BatchLine` or a :class:`BadLine`, reading lazily.

    ``model`` overrides (or fills) the body's model; ``url`` is the route for bare bodies and
    prompts. Blank lines are skipped (they are not requests).
    """
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            stripped = raw.strip()
            if not stripped:
                continue
            try:
                text = stripped.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadLine(
                    line_no,
                    f"line-{line_no}",
                    "invalid_encoding",
                    f"line {line_no}: not UTF-8 ({exc.reason} at byte {exc.start})",
                )
                continue
            if fmt == "text":
                yield _prompt_line(line_no, f"line-{line_no}", text, model=model, url=url)
            else:
                yield _json_line(line_no, text, model=model, url=url)


def _json_line(line_no: int, text: str, *, model: str | None, url: str) -> BatchLine | BadLine:
    fallback_id = f"line-{line_no}"
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return BadLine(
            line_no, fallback_id, "invalid_json", f"line {line_no}: not valid JSON ({exc})"
        )
    if not isinstance(obj, dict):
        return BadLine(
            line_no,
            fallback_id,
            "invalid_line",
            f"line {line_no}: expected a JSON object, got {type(obj).__name__}",
        )
    if "body" in obj or ("custom_id" in obj and ("url" in obj or "method" in obj)):
        return _batch_api_line(line_no, obj, model=model)
    if set(obj) <= {"prompt", "custom_id"} and "prompt" in obj:
        custom_id = obj.get("custom_id", fallback_id)
        if not isinstance(custom_id, str) or not custom_id:
            return BadLine(
                line_no, fallback_id, "invalid_custom_id", _bad_id_message(line_no, custom_id)
            )
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            return BadLine(
                line_no,
                custom_id,
                "invalid_prompt",
                f"line {line_no}: 'prompt' must be a string, got {type(prompt).__name__}",
            )
        return _prompt_line(line_no, custom_id, prompt, model=model, url=url)
    # a bare request body
    body = dict(obj)
    if model is not None:
        body["model"] = model
    if not isinstance(body.get("model"), str):
        return BadLine(
            line_no,
            fallback_id,
            "missing_model",
            f"line {line_no}: the request body names no model; add one or pass --model",
        )
    return BatchLine(line_no, fallback_id, url, body)


def _batch_api_line(line_no: int, obj: dict[str, Any], *, model: str | None) -> BatchLine | BadLine:
    fallback_id = f"line-{line_no}"
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > _MAX_CUSTOM_ID:
        return BadLine(
            line_no,
            fallback_id,
            "invalid_custom_id" if "custom_id" in obj else "missing_custom_id",
            _bad_id_message(line_no, custom_id),
        )
    missing = sorted(_BATCH_KEYS - set(obj))
    if missing:
        return BadLine(
            line_no,
            custom_id,
            "missing_field",
            f"line {line_no} ({custom_id}): missing {', '.join(missing)}",
        )
    method, url, body = obj["method"], obj["url"], obj["body"]
    if method != "POST":
        return BadLine(
            line_no,
            custom_id,
            "invalid_method",
            f"line {line_no} ({custom_id}): method must be POST, got {method!r}",
        )
    if not isinstance(url, str) or not url.startswith("/"):
        return BadLine(
            line_no,
            custom_id,
            "invalid_url",
            f"line {line_no} ({custom_id}): url must be a path such as /v1/chat/completions, "
            f"got {url!r}",
        )
    if not isinstance(body, dict):
        return BadLine(
            line_no,
            custom_id,
            "invalid_body",
            f"line {line_no} ({custom_id}): body must be a JSON object",
        )
    if model is not None:
        body["model"] = model
    if not isinstance(body.get("model"), str):
        return BadLine(
            line_no,
            custom_id,
            "missing_model",
            f"line {line_no} ({custom_id}): the body names no model; add one or pass --model",
        )
    return BatchLine(line_no, custom_id, url, body)


def _prompt_line(
    line_no: int, custom_id: str, prompt: str, *, model: str | None, url: str
) -> BatchLine | BadLine:
    if model is None:
        return BadLine(
            line_no,
            custom_id,
            "missing_model",
            f"line {line_no}: a prompt line needs --model to say which model answers it",
        )
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    return BatchLine(line_no, custom_id, url, body)


def _bad_id_message(line_no: int, custom_id: object) -> str:
    if custom_id is None:
        return f"line {line_no}: custom_id is missing"
    if isinstance(custom_id, str) and len(custom_id) > _MAX_CUSTOM_ID:
        return f"line {line_no}: custom_id is longer than {_MAX_CUSTOM_ID} characters"
    return f"line {line_no}: custom_id must be a non-empty string, got {custom_id!r}"[:300]
