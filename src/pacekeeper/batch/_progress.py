"""What a running batch shows: a live display on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

if TYPE_CHECKING:
    from pacekeeper.batch._runner import BatchResult
    from pacekeeper.core.governor import Governor

__all__ = ["BatchProgress"]

_RATE_WINDOW_S = 10.0


class BatchProgress:
    """done/total, rate against the limit, in flight, concurrency limit, retries, 429s, ETA."""

    def __init__(
        self,
        gov: Governor,
        *,
        total: int,
        stream: TextIO | None = None,
        live: bool | None = None,
        every_s: float = 5.0,
    ) -> None:
        self._gov = gov
        self._total = total
        self._stream = stream or sys.stderr
        self._console = Console(file=self._stream)
        self._live_mode = self._console.is_terminal if live is None else live
        self._every_s = every_s
        self._last_print = 0.0
        self._started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque()
        self._live: Live | None = None
        self._last: BatchResult | None = None

    def __enter__(self) -> BatchProgress:
        if self._live_mode:
            self._live = Live(
                self._render(None), console=self._console, refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render(self._last))
            self._live.__exit__(None, None, None)
        elif self._last is not None:
            self._print_line(self._last)

    def update(self, result: BatchResult) -> None:
        self._last = result
        now = time.monotonic()
        if self._live is not None:
            if now - self._last_print >= 0.25:
                self._last_print = now
                self._live.update(self._render(result))
        elif now - self._last_print >= self._every_s:
            self._last_print = now
            self._print_line(result)

    def _figures(self, result: BatchResult | None) -> dict[str, str]:
        now = time.monotonic()
        done = (result.written + result.skipped_done) if result else 0
        self._samples.append((now, done))
        while self._samples and now - self._samples[0][0] > _RATE_WINDOW_S:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        rate_per_min = 60.0 * (done - d0) / (now - t0) if now - t0 > 0.5 else 0.0
        lanes = self._gov.lanes
        in_flight = sum(lane.slots.in_flight for lane in lanes)
        queued = sum(lane.queued for lane in lanes)
        limit = sum(lane.slots.limit for lane in lanes)
        rpm_limits = [lane.rpm for lane in lanes if lane.rpm]
        stats = [lane.stats for lane in lanes]
        retries = sum(s.retries for s in stats)
        throttled = sum(s.rate_limited for s in stats)
        remaining = max(0, self._total - done)
        eta = f"{remaining / rate_per_min:.1f} min" if rate_per_min > 0 else "-"
        limit_text = f" of {sum(rpm_limits):.0f} limit" if rpm_limits else ""
        return {
            "done": f"{done}/{self._total}",
            "rate": f"{rate_per_min:.0f}/min{limit_text}",
            "in flight": f"{in_flight} (limit {limit}, queued {queued})",
            "retries": str(retries),
            "429s": str(throttled),
            "failed": str((result.failed + result.bad_lines) if result else 0),
            "eta": eta,
        }

    def _render(self, result: BatchResult | None) -> Text:
        figures = self._figures(result)
        done = (result.written + result.skipped_done) if result else 0
        width = 30
        filled = int(width * done / self._total) if self._total else width
        text = Text()
        text.append("[" + "#" * filled + "-" * (width - filled) + "] ", style="cyan")
        text.append("  ".join(f"{k} {v}" for k, v in figures.items()))
        return text

    def _print_line(self, result: BatchResult) -> None:
        figures = self._figures(result)
        elapsed = time.monotonic() - self._started
        line = " ".join(f"{k.replace(' ', '_')}={v.split(' ')[0]}" for k, v in figures.items())
        self._stream.write(f"pacekeeper: t={elapsed:.0f}s {line}\n")
        self._stream.flush()
