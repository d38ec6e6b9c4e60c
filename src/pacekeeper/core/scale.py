"""How a provider's token counts compare with our estimates, and what to charge because of it.

Our prompt estimate is exact for OpenAI's tokenizers and a conservative heuristic for the rest;
the provider counts with its own tokenizer and adds its own framing. Usage tells, answer by
answer, the ratio of its count to our estimate. :class:`EstimateScale` keeps the ratio's mean
and spread (exponentially weighted, a plain mean over the first ten so the first answers set
it at once). Admission charges the mean plus 1.5 times the spread: a provider counts at
admission, and charging the mean would overfill its window with every run of prompts that cost
more than average (code, CJK, JSON); what was overcharged comes back when usage arrives.

>>> scale = EstimateScale()
>>> scale.charge_factor
1.0
>>> for ratio in (1.4, 1.6) * 10:
...     scale.observe(estimated=100, actual=round(100 * ratio))
>>> round(scale.mean, 2), round(scale.charge_factor, 2)
(1.5, 1.65)
"""

from __future__ import annotations

import math

__all__ = ["EstimateScale"]

_ALPHA = 0.1  # weight of the newest ratio, once past the first ten
# The heuristic counts English at about 2x its real tokens (it must never undercount other
# scripts), so the scale may go well below 1.
_MIN, _MAX = 0.3, 3.0
_SPREADS_CHARGED = 1.5


class EstimateScale:
    """The provider's token count over our estimate: its mean and spread.

    ``initial``, ``lowest`` and ``highest`` bound the ratio: a scale of character counts
    (:func:`~pacekeeper.core.tokens.estimate_request_chars`) starts at 1 token per character,
    which no real text exceeds, and may fall to a few hundredths.
    """

    __slots__ = ("_high", "_low", "_n", "_variance", "charge_factor", "highest_seen", "mean")

    def __init__(
        self, *, initial: float = 1.0, lowest: float = _MIN, highest: float = _MAX
    ) -> None:
        self.mean = initial
        self._low = lowest
        self._high = highest
        self._variance = 0.0
        self._n = 0
        self.charge_factor = initial if initial < highest else highest
        """What a prompt estimate is multiplied by at admission: mean + 1.5 x spread (kept
        up to date by :meth:`observe`: admission reads it on every request)."""
        self.highest_seen = self.charge_factor
        """The highest ratio one answer showed (or the initial factor): the spend cap's worst
        case charges it, since a prompt charged at the mean-and-spread factor can still be
        billed a few tokens more, and a run then ended a few tokens past its cap."""

    @property
    def count(self) -> int:
        """Answers observed."""
        return self._n

    def observe(self, estimated: int, actual: int) -> None:
        """One answer's usage: ``actual`` tokens counted for a prompt we estimated at
        ``estimated``."""
        if estimated <= 0:
            return
        # Comparisons, not min()/max(): every answer with usage comes here.
        ratio = actual / estimated
        ratio = self._low if ratio < self._low else ratio
        ratio = self._high if ratio > self._high else ratio
        highest = self.highest_seen
        self.highest_seen = ratio if ratio > highest else highest
        self._n += 1
        weight = 1.0 / self._n
        weight = _ALPHA if weight < _ALPHA else weight
        error = ratio - self.mean
        self.mean += weight * error
        self._variance = (1.0 - weight) * (self._variance + weight * error**2)
        charged = self.mean + _SPREADS_CHARGED * math.sqrt(self._variance)
        self.charge_factor = charged if charged < self._high else self._high

    def __repr__(self) -> str:
        return f"<EstimateScale mean {self.mean:.3f} charged x{self.charge_factor:.3f}>"
