"""What the lines still to send will take and cost: the dry run's forecast, and what a run
stopped by its spend cap leaves.

Per model: requests, prompt tokens (exact where the offline tokenizer applies), the completion
budget (the sum of max_tokens), the cost range (the prompt's cost, plus the answers' from zero
to the whole budget) and, once answers are known (a sample, or the run so far), the expected
cost (the prompt's plus the mean answer's); and the time the limits force: requests over rpm or
tokens charged over tpm, whichever binds, plus one answer's latency (the last one's). The
process's start-up (loading the tokenizer, about a second) is not in it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pacekeeper.batch._input import BadLine, read_lines
from pacekeeper.batch._keys import KeySet
from pacekeeper.batch._output import DoneSet, record_key
from pacekeeper.core.tokens import estimate_request_tokens, route_generates

if TYPE_CHECKING:
    from pacekeeper.batch._runner import BatchJob
    from pacekeeper.core.governor import Governor

__all__ = ["Forecast", "ModelForecast", "forecast"]


@dataclass(slots=True)
class ModelForecast:
    """The forecast of one model's lines."""

    model: str
    route: str
    requests: int = 0
    prompt_tokens: int = 0
    exact_tokens: bool = True
    """Every prompt was counted with the model's tokenizer (else some are heuristic)."""
    completion_budget: int = 0
    """The sum of max_tokens (or the reserve of lines without one)."""
    prompt_scale: float = 1.0
    """The provider's prompt counts over our estimates, as answers showed (a sample's): the
    prompt's cost and the tokens charged are forecast at the provider's count."""
    prompt_cost_usd: float | None = 0.0
    completion_budget_cost_usd: float | None = 0.0
    expected_completion_tokens: float | None = None
    """Known once answers are: the mean answer (capped by each line's max_tokens), summed."""
    expected_cost_usd: float | None = None
    expected_margin_usd: float | None = None
    """How far the expected cost may be off, at 95%: the sampled answers' mean is an estimate
    (1.96 standard errors of it, over every line)."""
    rpm: float | None = None
    tpm: float | None = None
    limits_learned: bool = False
    latency_s: float = 0.0
    """The mean answer's latency seen (a sample's): the last answer comes this long after the
    last request leaves."""
    minutes: float | None = None
    binding: str | None = None
    """``rpm`` or ``tpm``: the limit that sets the time."""

    @property
    def cost_low_usd(self) -> float | None:
        return self.prompt_cost_usd

    @property
    def cost_high_usd(self) -> float | None:
        if self.prompt_cost_usd is None or self.completion_budget_cost_usd is None:
            return None
        return self.prompt_cost_usd + self.completion_budget_cost_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "route": self.route,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_exact": self.exact_tokens,
            "prompt_scale": self.prompt_scale,
            "completion_budget_tokens": self.completion_budget,
            "expected_completion_tokens": self.expected_completion_tokens,
            "cost_low_usd": self.cost_low_usd,
            "cost_high_usd": self.cost_high_usd,
            "cost_expected_usd": self.expected_cost_usd,
            "cost_expected_margin_usd": self.expected_margin_usd,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "limits_learned": self.limits_learned,
            "latency_s": self.latency_s,
            "minutes": self.minutes,
            "binding_limit": self.binding,
        }


@dataclass(slots=True)
class Forecast:
    models: dict[str, ModelForecast] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)
    skipped_done: int = 0
    skipped_shard: int = 0

    @property
    def requests(self) -> int:
        return sum(m.requests for m in self.models.values())

    @property
    def minutes(self) -> float | None:
        """The longest model's time (models have limits of their own and run side by side)."""
        times = [m.minutes for m in self.models.values()]
        if not times or any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def _total(self, name: str) -> float | None:
        values = [getattr(m, name) for m in self.models.values()]
        if any(v is None for v in values):
            return None
        return float(sum(values))

    @property
    def cost_low_usd(self) -> float | None:
        return self._total("cost_low_usd")

    @property
    def cost_high_usd(self) -> float | None:
        return self._total("cost_high_usd")

    @property
    def expected_cost_usd(self) -> float | None:
        return self._total("expected_cost_usd")

    @property
    def expected_margin_usd(self) -> float | None:
        return self._total("expected_margin_usd")

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bad_lines": len(self.bad),
            "skipped_done": self.skipped_done,
            "skipped_shard": self.skipped_shard,
            "minutes": self.minutes,
            "cost_low_usd": self.cost_low_usd,
            "cost_high_usd": self.cost_high_usd,
            "cost_expected_usd": self.expected_cost_usd,
            "cost_expected_margin_usd": self.expected_margin_usd,
            "models": [m.as_dict() for m in self.models.values()],
        }


def forecast(job: BatchJob, gov: Governor, done: DoneSet, *, capacity: int = 1024) -> Forecast:
    """Read every line of ``job`` not in ``done`` (nothing is sent) and forecast it with what
    ``gov`` knows: its prices, its limits (configured or learned) and the answers it saw.
    ``capacity``: the number of lines, when known, so that the duplicate check is sized once
    (a growing table holds the old and the new one together at its peak)."""
    from pacekeeper.batch._runner import shard_of

    result = Forecast()
    seen = KeySet(capacity=capacity)
    for item in read_lines(
        job.input, fmt=job.fmt, model=job.model, url=job.url, default_model=job.default_model
    ):
        if job.shard is not None and shard_of(item.custom_id, job.shard[1]) != job.shard[0]:
            result.skipped_shard += 1
            continue
        id_key = record_key(item.custom_id)
        if isinstance(item, BadLine) or id_key in seen:
            seen.add(id_key)
            if record_key(item.custom_id, item.line_no) in done:
                result.skipped_done += 1
                continue
            result.bad.append(item if isinstance(item, BadLine) else _duplicate(item.line_no, item))
            continue
        seen.add(id_key)
        if id_key in done:
            result.skipped_done += 1
            continue
        model = str(item.body.get("model"))
        row = result.models.get(model)
        if row is None:
            row = result.models[model] = ModelForecast(model=model, route=item.url)
            lane = next((ln for ln in gov.lanes if ln.key == (item.url, model)), None)
            row.prompt_scale = lane.prompt_scale if lane is not None else 1.0
        _add(row, gov, item.body, item.url, model)
    for row in result.models.values():
        _time(row, gov)
    return result


def _add(row: ModelForecast, gov: Governor, body: dict[str, Any], route: str, model: str) -> None:
    estimate = estimate_request_tokens(body, model=model)
    limits = gov.limits_for(model)
    reserve = (
        estimate.max_completion_tokens
        if estimate.max_completion_tokens is not None
        else limits.default_completion_tokens
        if route_generates(route)
        else 0  # embeddings and the like: no answer
    )
    row.requests += 1
    row.prompt_tokens += estimate.prompt_tokens
    row.exact_tokens = row.exact_tokens and estimate.method.startswith("bpe")
    row.completion_budget += reserve
    lengths = gov.completion_lengths(route, model)
    expected = min(float(reserve), lengths.mean) if lengths.count else None
    if expected is not None:
        row.expected_completion_tokens = (row.expected_completion_tokens or 0.0) + expected
    price = gov.price_of(model)
    if price is None:
        row.prompt_cost_usd = row.completion_budget_cost_usd = row.expected_cost_usd = None
        return
    prompt = estimate.prompt_tokens * row.prompt_scale
    rate_in, _, rate_out = price.rates(round(prompt))
    prompt_usd = prompt * rate_in / 1e6
    if row.prompt_cost_usd is not None and row.completion_budget_cost_usd is not None:
        row.prompt_cost_usd += prompt_usd
        row.completion_budget_cost_usd += reserve * rate_out / 1e6
    if expected is not None:
        row.expected_cost_usd = (
            (row.expected_cost_usd or 0.0) + prompt_usd + (expected * rate_out / 1e6)
        )
        # Every line's answer is estimated by the same mean: its error adds up, line by line.
        standard_error = lengths.stdev / math.sqrt(lengths.count)
        row.expected_margin_usd = (row.expected_margin_usd or 0.0) + (
            1.96 * min(standard_error, float(reserve)) * rate_out / 1e6
        )


def _time(row: ModelForecast, gov: Governor) -> None:
    """The minutes the limits force: configured, else learned (a sample's headers)."""
    limits = gov.limits_for(row.model)
    lane = next((lane for lane in gov.lanes if lane.key == (row.route, row.model)), None)
    rpm, tpm = limits.rpm, limits.tpm
    if lane is not None:
        learned_rpm, learned_tpm = lane.rpm_limit, lane.tpm_limit
        row.limits_learned = (rpm is None and learned_rpm is not None) or (
            tpm is None and learned_tpm is not None
        )
        rpm = rpm if rpm is not None else learned_rpm
        tpm = tpm if tpm is not None else learned_tpm
        latency = lane.stats.latency
        row.latency_s = latency.sum_s / latency.count if latency.count else 0.0
    row.rpm, row.tpm = rpm, tpm
    charged = row.prompt_tokens * row.prompt_scale + (
        row.expected_completion_tokens
        if limits.refund_unused_completion and row.expected_completion_tokens is not None
        else row.completion_budget
    )
    candidates = []
    if rpm:
        candidates.append((row.requests / (rpm * limits.utilisation), "rpm"))
    if tpm:
        candidates.append((charged / (tpm * limits.utilisation), "tpm"))
    if candidates:
        minutes, row.binding = max(candidates)
        row.minutes = minutes + row.latency_s / 60.0


def _duplicate(line_no: int, item: Any) -> BadLine:
    return BadLine(
        line_no,
        item.custom_id,
        "duplicate_custom_id",
        f"line {line_no}: custom_id {json.dumps(item.custom_id)[:200]} was already used by "
        "an earlier line",
    )
