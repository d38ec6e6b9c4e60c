"""What a running batch shows: a live display on a terminal, plain lines elsewhere.

Both show the same figures: lines done of the total, the rate of results against the rpm
limit in force, requests in flight against the concurrency limit (and queued), retries, 429s,
failures and the ETA. The live display refreshes four times a second; plain lines come every
``every_s`` seconds (and once at the end), whether or not anything finished meanwhile.
"""

from __future__ import annotations

import asyncio
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
_LIVE_EVERY_S = 0.25


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
        self._printed_final = False

    @property
    def live(self) -> bool:
        return self._live_mode

    def __enter__(self) -> BatchProgress:
        if self._live_mode:
            self._live = Live(
                self._render(None),
                console=self._console,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render(self._last))
            self._live.__exit__(None, None, None)
            self._live = None
        elif self._last is not None and not self._printed_final:
            self._printed_final = True
            self._print_line(self._last)

    def update(self, result: BatchResult) -> None:
        """A result was written (or lines were skipped): refresh when one is due."""
        self._last = result
        self.tick()

    def tick(self) -> None:
        """Refresh when one is due (called periodically, even when nothing finishes)."""
        now = time.monotonic()
        if self._live is not None:
            if now - self._last_print >= _LIVE_EVERY_S:
                self._last_print = now
                self._live.update(self._render(self._last))
        elif now - self._last_print >= self._every_s:
            self._last_print = now
            self._print_line(self._last)

    async def ticker(self) -> None:
        """Call :meth:`tick` periodically until cancelled."""
        every = _LIVE_EVERY_S if self._live_mode else min(self._every_s, 1.0)
        while True:
            await asyncio.sleep(every)
            self.tick()

    def notice(self, text: str) -> None:
        """A line that must be seen (above the live display, or among the plain lines)."""
        if self._live is not None:
            self._live.console.print(f"pacekeeper run: {text}", style="yellow", highlight=False)
        else:
            self._stream.write(f"pacekeeper run: {text}\n")
            self._stream.flush()

    def abort(self) -> None:
        """The process is about to exit at once: give the terminal its cursor back."""
        if self._live is not None:
            live, self._live = self._live, None
            try:
                live.stop()
            except Exception:  # pragma: no cover (best effort on the way out)
                self._stream.write("\x1b[?25h\n")
                self._stream.flush()

    def figures(self, result: BatchResult | None) -> dict[str, str]:
        """The displayed figures, by name."""
        now = time.monotonic()
        written = result.written if result else 0
        settled = result.settled if result else 0
        self._samples.append((now, written))
        while len(self._samples) > 1 and now - self._samples[0][0] > _RATE_WINDOW_S:
            self._samples.popleft()
        t0, w0 = self._samples[0]
        rate_per_min = 60.0 * (written - w0) / (now - t0) if now - t0 > 0.5 else 0.0
        lanes = self._gov.lanes
        in_flight = sum(lane.slots.in_flight for lane in lanes)
        queued = sum(lane.queued for lane in lanes)
        limit = sum(lane.slots.limit for lane in lanes)
        rpm_limits = [lane.rpm for lane in lanes if lane.rpm]
        stats = [lane.stats for lane in lanes]
        retries = sum(s.retries for s in stats)
        throttled = sum(s.rate_limited for s in stats)
        remaining = max(0, self._total - settled)
        if remaining == 0:
            eta = "0s"
        elif rate_per_min > 0:
            eta = _duration(60.0 * remaining / rate_per_min)
        else:
            eta = "-"
        failed = (result.failed + result.bad_lines) if result else 0
        spent, projected = self._cost(remaining)
        figures: dict[str, str] = {}
        parked = result.parked_until_wall_s if result else None
        if parked is not None and parked > time.time():
            # A long refusal (a daily limit): say so, never a silent wait.
            figures["parked until"] = time.strftime("%H:%M:%S UTC", time.gmtime(parked))
            eta = f"after {_duration(parked - time.time())} parked"
        return {
            **figures,
            "done": f"{settled}/{self._total}",
            "rate": f"{rate_per_min:.0f}/min",
            "limit": f"{sum(rpm_limits):.0f}/min" if rpm_limits else "-",
            "in flight": str(in_flight),
            "concurrency": str(limit) if lanes else "-",
            "queued": str(queued),
            "retries": str(retries),
            "429s": str(throttled),
            "failed": str(failed),
            "spent": spent,
            "projected": projected,
            "eta": eta,
        }

    def _cost(self, remaining: int) -> tuple[str, str]:
        """What was spent so far, and the total projected at the mean cost per request so far
        for the lines left (``unknown`` when a model has no price)."""
        from pacekeeper.report.summary import usd

        lanes = self._gov.lanes
        costs = [lane.stats.cost_usd for lane in lanes]
        if not lanes or any(c is None for c in costs):
            return ("unknown", "unknown") if lanes else ("-", "-")
        spent = sum(c for c in costs if c is not None)
        requests = sum(lane.stats.requests for lane in lanes)
        if not requests:
            return usd(spent), "-"
        return usd(spent), usd(spent + spent / requests * remaining)

    def _render(self, result: BatchResult | None) -> Text:
        f = self.figures(result)
        settled = result.settled if result else 0
        width = 30
        filled = min(width, int(width * settled / self._total)) if self._total else width
        text = Text()
        if "parked until" in f:
            text.append(
                f"parked until {f['parked until']}: the provider's limit is exhausted until "
                "then (Ctrl-C stops, resumable)\n",
                style="yellow",
            )
        text.append("[" + "#" * filled + "-" * (width - filled) + "] ", style="cyan")
        text.append(
            f"{f['done']}  rate {f['rate']} (limit {f['limit']})  in flight {f['in flight']} "
            f"(concurrency {f['concurrency']}, queued {f['queued']})  retries {f['retries']}  "
            f"429s {f['429s']}  failed {f['failed']}  spent {f['spent']} "
            f"(projected {f['projected']})  ETA {f['eta']}"
        )
        return text

    def _print_line(self, result: BatchResult | None) -> None:
        figures = self.figures(result)
        elapsed = time.monotonic() - self._started
        line = " ".join(f"{k.replace(' ', '_')}={v}" for k, v in figures.items())
        self._stream.write(f"pacekeeper: t={elapsed:.0f}s {line}\n")
        self._stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"
