"""Small helpers shared by the simulator tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pacekeeper.sim import Simulator

#: The `start_sim` fixture: start a Simulator (stopped at the end of the test).
StartSim = Callable[..., Simulator]


def chat(content: str = "Hello there", model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    """A chat completion request body."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def sse_events(text: str) -> list[Any]:
    """The data payloads of an SSE body, JSON-decoded, plus the literal "[DONE]"."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
