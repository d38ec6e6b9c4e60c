"""The retry budget: retries may use at most a set share of traffic.

Per-request retry limits do not stop a storm: when the upstream degrades, every request retries
its maximum, multiplying the load exactly when the upstream can take least. A token-bucket
retry quota (as in gRPC's retry throttling, Finagle's RetryBudget and the AWS SDKs) ties the
number of retries to the number of requests instead.
"""

from __future__ import annotations

__all__ = ["RetryBudget"]


class RetryBudget:
    """Each request deposits ``ratio`` tokens (up to ``maximum``); each retry spends one.

    >>> budget = RetryBudget(ratio=0.5, initial=1.0, maximum=2.0)
    >>> budget.try_spend()
    True
    >>> budget.try_spend()              # spent
    False
    >>> budget.deposit(); budget.deposit()
    >>> budget.try_spend(), budget
    (True, <RetryBudget 0.00 of 2 (ratio 0.5), 1 refused>)
    """

    __slots__ = ("_balance", "_maximum", "_ratio", "refused", "spent")

    def __init__(self, *, ratio: float, initial: float, maximum: float) -> None:
        self._ratio = ratio
        self._maximum = maximum
        self._balance = min(initial, maximum)
        self.spent = 0
        self.refused = 0

    @property
    def balance(self) -> float:
        return self._balance

    @property
    def maximum(self) -> float:
        return self._maximum

    def set_balance(self, balance: float) -> None:
        """Replace the balance (kept within 0 and ``maximum``): a budget shared with other
        processes settles to the store's.

        >>> budget = RetryBudget(ratio=0.2, initial=1.0, maximum=3.0)
        >>> budget.set_balance(7.5); budget.balance
        3.0
        """
        self._balance = max(0.0, min(self._maximum, balance))

    def deposit(self) -> None:
        """A new request (first attempt) was sent."""
        balance = self._balance + self._ratio
        self._balance = balance if balance < self._maximum else self._maximum

    def try_spend(self) -> bool:
        """Take one token for a retry; False (and nothing taken) when the budget is spent."""
        if self._balance >= 1.0:
            self._balance -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False

    def __repr__(self) -> str:
        return (
            f"<RetryBudget {self._balance:.2f} of {self._maximum:g} (ratio {self._ratio:g}), "
            f"{self.refused} refused>"
        )
