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

if TYPE_CHECKING:
    from pacekeeper.backends import RedisBackend
    from pacekeeper.core.attempts import Attempts, Decision
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
    from pacekeeper.core.governor import Admission, Call, Governor
    from pacekeeper.core.ordered import amap
    from pacekeeper.core.priority import Priority, priority
    from pacekeeper.core.records import (
        AttemptRecord,
        RecordCollector,
        RecordHook,
        RequestRecord,
    )
    from pacekeeper.core.stats import QueueWaitStats, StatsSnapshot
    from pacekeeper.core.testing import is_testing, set_testing
    from pacekeeper.core.tokens import TokenEstimate, estimate_request_tokens, warm_up
    from pacekeeper.transports import (
        RECORD_EXTENSION,
        TAG_EXTENSION,
        HttpxSyncTransport,
        HttpxTransport,
        SyncTransport,
        Transport,
        wrap,
    )


__all__ = [
    "Admission",
    "AdmissionClosed",
    "RECORD_EXTENSION",
    "TAG_EXTENSION",
    "AdaptiveConcurrency",
    "AttemptRecord",
    "Attempts",
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
    "RecordCollector",
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


# Where each public name lives. Nothing is imported with the package itself: `import
# pacekeeper` stays cheap (the simulator, the CLI's --help and tools that only read the version
# load no HTTP client, tokenizer or governor); a name's module is imported on first access.
_HOMES = {
    "OutcomeKind": "pacekeeper.core.classify",
    "Verdict": "pacekeeper.core.classify",
    "Signal": "pacekeeper.core.concurrency",
    "AdaptiveConcurrency": "pacekeeper.core.config",
    "Limits": "pacekeeper.core.config",
    "RetryPolicy": "pacekeeper.core.config",
    "AdmissionClosed": "pacekeeper.core.errors",
    "ConfigurationError": "pacekeeper.core.errors",
    "DeadlineExceeded": "pacekeeper.core.errors",
    "NonRetryableError": "pacekeeper.core.errors",
    "PacekeeperError": "pacekeeper.core.errors",
    "RequestFailed": "pacekeeper.core.errors",
    "RequestTooLarge": "pacekeeper.core.errors",
    "RetriesExhausted": "pacekeeper.core.errors",
    "RetryBudgetExhausted": "pacekeeper.core.errors",
    "RetryWaitTooLong": "pacekeeper.core.errors",
    "SpendCapReached": "pacekeeper.core.errors",
    "BilledUsage": "pacekeeper.core.cost",
    "Price": "pacekeeper.core.cost",
    "PriceTier": "pacekeeper.core.cost",
    "SpendCap": "pacekeeper.core.cost",
    "Priority": "pacekeeper.core.priority",
    "priority": "pacekeeper.core.priority",
    "Admission": "pacekeeper.core.governor",
    "Call": "pacekeeper.core.governor",
    "Attempts": "pacekeeper.core.attempts",
    "Decision": "pacekeeper.core.attempts",
    "Governor": "pacekeeper.core.governor",
    "amap": "pacekeeper.core.ordered",
    "AttemptRecord": "pacekeeper.core.records",
    "RecordCollector": "pacekeeper.core.records",
    "RecordHook": "pacekeeper.core.records",
    "RequestRecord": "pacekeeper.core.records",
    "QueueWaitStats": "pacekeeper.core.stats",
    "StatsSnapshot": "pacekeeper.core.stats",
    "is_testing": "pacekeeper.core.testing",
    "set_testing": "pacekeeper.core.testing",
    "TokenEstimate": "pacekeeper.core.tokens",
    "estimate_request_tokens": "pacekeeper.core.tokens",
    "warm_up": "pacekeeper.core.tokens",
    "RECORD_EXTENSION": "pacekeeper.transports",
    "TAG_EXTENSION": "pacekeeper.transports",
    "SyncTransport": "pacekeeper.transports",
    "Transport": "pacekeeper.transports",
    "wrap": "pacekeeper.transports",
    # httpx and redis-py are optional extras.
    "HttpxTransport": "pacekeeper.transports",
    "HttpxSyncTransport": "pacekeeper.transports",
    "RedisBackend": "pacekeeper.backends",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
