"""The requests every contender sends: the same bodies, identities and token costs.

Each logical request ``i`` carries ``x-client-request-id: req-i`` on every attempt, so the
simulator can tell a retry of it (fine) from duplicated successful work (a bug).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pacekeeper.sim import count_text_tokens

__all__ = ["PromptKind", "Workload"]

PromptKind = Literal["prose", "mixed", "cjk"]

# Prompt text is varied in length so that token costs differ per request, as in real batches
# (a constant cost would let a tpm pacer get lucky).
_TEXT = (
    "quarterly revenue grew across regions while margins narrowed on logistics costs and the "
    "board asked for a plan to reduce churn among small customers before the next review "
    "cycle with clear owners dates and measurable outcomes for each initiative"
)
_WORDS = tuple(_TEXT.split(" "))
# Text that chars/4 undercounts: CJK (about a token per character), JSON and code (about
# three characters per token).
_CJK = (
    "季度收入在各地区均有增长、但物流成本上升导致利润率收窄。董事会要求在下一次审查之前制定"
    "减少小客户流失的计划、并为每项举措明确负责人、日期和可衡量的结果。"
)
_JSON_RECORD = '{"id": %d, "tags": ["a", "b"], "ok": true, "score": [1.5, -2], "note": null}'
_CODE = (
    "def f_%d(xs: list[int]) -> dict[str, int]:\n    return {str(x): x * 2 for x in xs if x > 0}\n"
)


@dataclass(frozen=True, slots=True)
class Workload:
    """``n`` chat completions, each asking for at most ``max_tokens``; request ``i`` goes to
    ``models[i % len(models)]`` when ``models`` is given, else to ``model``."""

    n: int
    model: str = "gpt-4o-mini"
    max_tokens: int = 100
    short: bool = False
    """One-line prompts: for the memory runs, where only the count of lines should matter."""
    prompts: PromptKind = "prose"
    """prose: 50-110 tokens of English; mixed: 200-2000 characters of English; cjk: in
    rotation CJK text, JSON and code (which chars/4 undercounts)."""
    models: tuple[str, ...] = ()

    def model_for(self, i: int) -> str:
        return self.models[i % len(self.models)] if self.models else self.model

    def prompt(self, i: int) -> str:
        if self.short:
            return f"Summarise item {i} in one line."
        if self.prompts == "mixed":
            chars = 200 + (i * 7919) % 1801
            text = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(chars // 5 + 1))
            return f"Request {i}. Summarise in one line: {text}"[:chars]
        if self.prompts == "cjk":
            size = 1 + (i * 7919) % 4
            if i % 3 == 0:
                return f"请求 {i}。用一句话总结。" + _CJK * size
            if i % 3 == 1:
                records = ", ".join(_JSON_RECORD % (i * 10 + k) for k in range(2 * size))
                return f"Summarise this JSON: [{records}]"
            return "Explain this code:\n" + "".join(_CODE % (i * 10 + k) for k in range(size + 1))
        words = 30 + (i * 7919) % 50  # 30..79 words: about 50..110 prompt tokens
        text = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(words))
        return f"Request {i}. Summarise in one line: {text}"

    def messages(self, i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt(i)}]

    def body(self, i: int) -> dict[str, Any]:
        return {
            "model": self.model_for(i),
            "messages": self.messages(i),
            "max_tokens": self.max_tokens,
        }

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

    def prompt_tokens(self, i: int) -> int:
        """The simulator's prompt estimate for request ``i``, by its documented rule
        (docs/SIMULATOR.md): 3 priming + per message 4 + the text's tokens."""
        return 3 + 4 + count_text_tokens(self.prompt(i))

    def sim_charge(self, i: int) -> int:
        """Tokens the simulator charges request ``i`` at admission: prompt + max_tokens."""
        return self.prompt_tokens(i) + self.max_tokens

    def total_charge(self) -> int:
        return sum(self.sim_charge(i) for i in range(self.n))
