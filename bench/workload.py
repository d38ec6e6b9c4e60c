"""The requests every contender sends: the same bodies, identities and token costs.

Each logical request ``i`` carries ``x-client-request-id: req-i`` on every attempt, so the
simulator can tell a retry of it (fine) from duplicated successful work (a bug).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Workload"]

# Prompt text is varied in length so that token costs differ per request, as in real batches
# (a constant cost would let a tpm pacer get lucky).
_TEXT = (
    "quarterly revenue grew across regions while margins narrowed on logistics costs and the "
    "board asked for a plan to reduce churn among small customers before the next review "
    "cycle with clear owners dates and measurable outcomes for each initiative"
)
_WORDS = tuple(_TEXT.split(" "))


@dataclass(frozen=True, slots=True)
class Workload:
    """``n`` chat completions of one model, each asking for at most ``max_tokens``."""

    n: int
    model: str = "gpt-4o-mini"
    max_tokens: int = 100
    short: bool = False
    """One-line prompts: for the memory runs, where only the count of lines should matter."""

    def prompt(self, i: int) -> str:
        if self.short:
            return f"Summarise item {i} in one line."
        words = 30 + (i * 7919) % 50  # 30..79 words: about 50..110 prompt tokens
        text = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(words))
        return f"Request {i}. Summarise in one line: {text}"

    def messages(self, i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt(i)}]

    def body(self, i: int) -> dict[str, Any]:
        return {"model": self.model, "messages": self.messages(i), "max_tokens": self.max_tokens}

    @staticmethod
    def request_id(i: int) -> str:
        return f"req-{i}"

    def batch_line(self, i: int) -> str:
        """The OpenAI Batch API line of request ``i`` (what ``pacekeeper run`` reads)."""
        line = {
            "custom_id": self.request_id(i),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": self.body(i),
        }
        return json.dumps(line, separators=(",", ":"))

    def sim_charge(self, i: int) -> int:
        """Tokens the simulator charges request ``i`` at admission, by its documented rule
        (docs/SIMULATOR.md): 3 priming + per message 4 + ceil(chars / 4), plus max_tokens."""
        return 3 + 4 + math.ceil(len(self.prompt(i)) / 4) + self.max_tokens

    def total_charge(self) -> int:
        return sum(self.sim_charge(i) for i in range(self.n))
