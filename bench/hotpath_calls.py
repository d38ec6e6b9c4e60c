"""Every call the governed transport adds to a request, grouped by what it is for (issue 15).

``python -m bench.hotpath_calls [--json FILE]``; for another tree, ``PYTHONPATH=DIR/src``.

The cost-budget test's harness (tests/transports/test_cost_budget.py: an inner transport
that answers at once, 16 workers, 400 requests after 400 of warm-up, the governor on a clock
that ticks per reading), counted with ``sys.setprofile``: each Python or C call is counted
for the innermost pacekeeper function on its stack, that function's file and name give its
area, and the bare client's calls outside pacekeeper are taken off (so "outside" is what
the governed transport adds to or saves of httpx2's and asyncio's own work). Counts, not
time: the same from run to run, whatever the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["AREAS", "main", "measure"]

AREAS: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (area, tuple(names.split()))
    for area, names in (
        (
            "stream: pass-through, usage scan, usage-chunk filter",
            "_Governed _StreamState UsageScanner _empty_choices _is_usage_only _event_end"
            " _whole_events_end"
            " _stream_response Attempts.streaming Attempts.ended",
        ),
        ("request: include_usage copy", "with_stream_usage _with_usage_option _spliced"),
        (
            "request: JSON, facts, token estimate",
            "read_request facts_of RequestFacts parse_body route_of model_of_path core/tokens.py"
            " core/bpe.py"
            " estimate_request charge_factor cost_of wants_exact EstimateScale.count",
        ),
        (
            "admission: call, queue, slot, buckets",
            "Governor.call Governor._open Call.__init__ next_attempt Attempts.__ Attempts._waited"
            " Attempts._join Attempts._queued Attempts.first_turn Lane.join"
            " Lane.turn _grant _count_admission core/admission.py core/queue.py core/waiting.py"
            " core/cooldown.py TokenBucket.wait_s TokenBucket.spend Limit.acquire Limit.limit"
            " Limit.has_room Permit.__init__ budget.py priority.py Lane.shared"
            " Call.prompt_cheap TokenBucket.level TokenBucket.debt _waiting_for_slot",
        ),
        (
            "answer: headers, limits learned, verdict, usage",
            "headers verdict_for_answer classify usage_from_json _usage_at_end _billed"
            " core/depth.py core/evidence.py Lane.learn limits_due _per_minute_part"
            " _observe_depths Lane.requests _snapshot _read",
        ),
        (
            "settle: controller observers (rate, latency, AIMD, congestion)",
            "core/rate.py core/latency.py core/congestion.py AimdLimit _succeeded Lane.rpm"
            " _observe_fixed_windows",
        ),
        (
            "settle: slot release, reconcile, stats, record, decision",
            "Call.settle Call._record Lane.settle _release Limit.release _reconcile"
            " EstimateScale.observe TokenBucket.adjust charge_tokens core/stats.py core/cost.py"
            " Permit.__del__ Attempts.answered Attempts._report wake_head Reconciliation"
            " Call._count_exactly"
            " Call.cost",
        ),
        ("the transport's loop", "transports/_flow.py"),
    )
)
"""Each area and the file or function names whose calls it counts; the first match wins."""

_OUTSIDE = "outside pacekeeper (httpx2, asyncio; net of the bare client)"


def _owner(frame: FrameType | None) -> str:
    while frame is not None:
        name = frame.f_code.co_filename
        if "/pacekeeper/" in name and "/pacekeeper/sim" not in name:
            qualname: str = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
            return name.rsplit("pacekeeper/", 1)[-1] + ":" + qualname
        frame = frame.f_back
    return ""


def _area(owner: str) -> str:
    if not owner:
        return _OUTSIDE
    for area, names in AREAS:
        if any(name in owner for name in names):
            return area
    return "other: " + owner


class _ByOwner:
    def __init__(self) -> None:
        self.count = 0
        self.by: Counter[str] = Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            self.count += 1
            self.by[_owner(frame)] += 1


def measure() -> dict[str, dict[str, Any]]:
    """{kind: {"bare", "added", "areas": {area: calls per request}}} for fixed, adaptive
    and a stream."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "transports"))
    import test_cost_budget as harness

    made: list[_ByOwner] = []

    def counter() -> _ByOwner:
        made.append(_ByOwner())
        return made[-1]

    harness._Calls = counter  # type: ignore[misc,assignment]  # the harness's counter, by owner
    requests = harness._REQUESTS
    result: dict[str, dict[str, Any]] = {}
    for kind, stream in (("fixed", False), ("adaptive", False), ("fixed", True)):
        asyncio.run(harness._calls_per_request("bare", stream=stream))
        bare = made[-1]
        asyncio.run(harness._calls_per_request(kind, stream=stream))
        governed = made[-1]
        areas: Counter[str] = Counter()
        for owner, calls in governed.by.items():
            areas[_area(owner)] += calls
        areas[_OUTSIDE] -= bare.by[""]
        result["stream" if stream else kind] = {
            "bare": bare.count / requests,
            "added": (governed.count - bare.count) / requests,
            "areas": {area: calls / requests for area, calls in areas.most_common()},
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the counts to this file")
    args = parser.parse_args(argv)
    result = measure()
    for kind, counts in result.items():
        print(f"{kind}: {counts['added']:.1f} calls added to the bare {counts['bare']:.1f}")
        for area, calls in counts["areas"].items():
            print(f"  {calls:7.1f}  {area}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
