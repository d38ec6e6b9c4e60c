"""pacekeeper: send thousands of LLM API requests as fast as the provider's limits allow.

Every surface goes through one :class:`Governor`: admission (cooldown gate, even rpm/tpm pacing,
a fixed or adaptive concurrency limit), then the call, then the outcome (classify, wait, spend
from a retry budget, record)::

    import openai, pacekeeper

    client = pacekeeper.wrap(openai.AsyncOpenAI())       # governed, SDK retries off
    gov = pacekeeper.Governor(limits=pacekeeper.Limits(rpm=500, tpm=200_000))
    client = pacekeeper.wrap(openai.AsyncOpenAI(), gov)  # or with known limits
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacekeeper._version import __version__ as __version__
from pacekeeper.core.classify import OutcomeKind, Verdict
from pacekeeper.core.concurrency import Signal
from pacekeeper.core.config import AdaptiveConcurrency, Limits, RetryPolicy
from pacekeeper.core.cost import BilledUsage, Price, PriceTier, SpendCap
from pacekeeper.core.errors import (
    AdmissionClosed,
    ConfigurationError,
    DeadlineExceeded,
    NonRetryableError,
    PacekeeperError,
    RequestFailed,
    RequestTooLarge,
    RetriesExhausted,
    RetryBudgetExhausted,
    RetryWaitTooLong,
    SpendCapReached,
)
from pacekeeper.core.governor import Admission, Call, Decision, Governor
from pacekeeper.core.ordered import amap
from pacekeeper.core.priority import Priority, priority
from pacekeeper.core.records import AttemptRecord, RecordHook, RequestRecord
from pacekeeper.core.stats import QueueWaitStats, StatsSnapshot
from pacekeeper.core.testing import is_testing, set_testing
from pacekeeper.core.tokens import TokenEstimate, estimate_request_tokens, warm_up
from pacekeeper.transports import RECORD_EXTENSION, TAG_EXTENSION, SyncTransport, Transport, wrap

if TYPE_CHECKING:
    from pacekeeper.backends import RedisBackend
    from pacekeeper.transports import HttpxSyncTransport, HttpxTransport


__all__ = [
    "Admission",
    "AdmissionClosed",
    "RECORD_EXTENSION",
    "TAG_EXTENSION",
    "AdaptiveConcurrency",
    "AttemptRecord",
    "BilledUsage",
    "Call",
    "ConfigurationError",
    "DeadlineExceeded",
    "Decision",
    "Governor",
    "HttpxSyncTransport",
    "HttpxTransport",
    "Limits",
    "NonRetryableError",
    "OutcomeKind",
    "Priority",
    "PacekeeperError",
    "Price",
    "PriceTier",
    "QueueWaitStats",
    "RecordHook",
    "RedisBackend",
    "RequestFailed",
    "RequestRecord",
    "RequestTooLarge",
    "RetriesExhausted",
    "RetryBudgetExhausted",
    "RetryPolicy",
    "RetryWaitTooLong",
    "Signal",
    "SpendCap",
    "SpendCapReached",
    "StatsSnapshot",
    "SyncTransport",
    "TokenEstimate",
    "Transport",
    "Verdict",
    "amap",
    "estimate_request_tokens",
    "is_testing",
    "priority",
    "set_testing",
    "warm_up",
    "wrap",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: httpx and redis-py are optional extras.
    if name == "RedisBackend":
        from pacekeeper.backends import RedisBackend

        return RedisBackend
    if name in ("HttpxTransport", "HttpxSyncTransport"):
        from pacekeeper import transports

        return getattr(transports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
