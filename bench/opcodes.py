"""Counting the bytecodes each Python function executes (``sys.settrace`` with opcode events):
exact, and unmoved by the machine's load. Used by bench/hotpath_ops.py and
bench/proxy_opcodes.py."""

from __future__ import annotations

from collections import Counter
from types import CodeType, FrameType
from typing import Any

__all__ = ["opcode_counter"]


def opcode_counter() -> tuple[Counter[CodeType], Any]:
    """(the counts per code object, the trace function to pass to ``sys.settrace``): every
    frame entered while it is set counts its opcodes."""
    counts: Counter[CodeType] = Counter()

    def each(frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "opcode":
            counts[frame.f_code] += 1
        return each

    def entered(frame: FrameType, _event: str, _arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return each

    return counts, entered
