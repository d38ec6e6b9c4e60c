"""The exported names are exactly the public API (adding or removing one is a decision)."""

from __future__ import annotations

import importlib

import pacekeeper

PUBLIC = {
    "RECORD_EXTENSION",
    "TAG_EXTENSION",
    "AdaptiveConcurrency",
    "Admission",
    "AdmissionClosed",
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
    "PacekeeperError",
    "Priority",
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
}


def test_exported_names_are_exactly_the_public_api() -> None:
    assert set(pacekeeper.__all__) == PUBLIC


def test_every_exported_name_resolves() -> None:
    for name in pacekeeper.__all__:
        assert getattr(pacekeeper, name) is not None


def test_every_error_is_a_pacekeeper_error() -> None:
    for name in pacekeeper.__all__:
        value = getattr(pacekeeper, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, pacekeeper.PacekeeperError), name


def test_the_core_imports_no_surface_and_no_network_library() -> None:
    """core/ knows nothing of HTTP libraries, the CLI, Redis or the surfaces."""
    import ast
    from pathlib import Path

    core = Path(pacekeeper.__file__).parent / "core"
    forbidden = (
        "httpx",
        "httpx2",
        "redis",
        "uvicorn",
        "rich",
        "pacekeeper.transports",
        "pacekeeper.batch",
        "pacekeeper.proxy",
        "pacekeeper.backends",
        "pacekeeper.cli",
        "pacekeeper.sim",
        "pacekeeper.report",
    )
    for path in core.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_the_simulator_shares_no_code_with_the_governor() -> None:
    import ast
    from pathlib import Path

    sim = Path(pacekeeper.__file__).parent / "sim"
    for path in sim.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("pacekeeper") or node.module.startswith(
                    "pacekeeper.sim"
                ), f"sim/{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("pacekeeper") or alias.name.startswith(
                        "pacekeeper.sim"
                    )
    importlib.import_module("pacekeeper.sim")
