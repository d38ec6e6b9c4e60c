"""pacekeeper.toml: limits and retry settings shared by ``pacekeeper run`` and ``pacekeeper proxy``.

::

    # defaults for every model
    rpm = 500                 # requests per minute (omit to learn from the provider's headers)
    tpm = 200000              # tokens per minute
    concurrency = "auto"      # or a fixed number of requests in flight
    max_attempts = 6
    timeout = 120             # seconds per attempt
    deadline = 900            # seconds per request, queueing and retries included

    [models."gpt-4o-mini"]    # per-model limits (providers limit per model)
    rpm = 5000
    tpm = 2000000

Command-line flags override the file's defaults. Errors name the file, the key and the problem.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEFAULT_CONFIG_NAME", "Settings", "load_settings", "parse_concurrency"]

DEFAULT_CONFIG_NAME = "pacekeeper.toml"

_LIMIT_KEYS = {"rpm", "tpm", "concurrency", "burst_s", "utilisation", "default_completion_tokens"}
_RETRY_KEYS = {"max_attempts", "timeout", "deadline", "max_hint_s", "retry_budget_ratio"}
_OTHER_KEYS = {"base_url", "api_key_env", "redis"}


@dataclass(frozen=True, slots=True)
class Settings:
    limits: Limits = field(default_factory=Limits)
    models: dict[str, Limits] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    base_url: str | None = None
    api_key_env: str | None = None
    redis: str | None = None
    source: Path | None = None


def parse_concurrency(value: object, *, where: str) -> int | str:
    """``"auto"`` or a positive integer, from a flag or a file."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigurationError(f"{where}: concurrency must be 'auto' or a positive integer")


def _limits(table: dict[str, Any], *, where: str, base: Limits | None = None) -> Limits:
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key == "concurrency":
            kwargs[key] = parse_concurrency(value, where=f"{where}.{key}")
        elif key in _LIMIT_KEYS:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigurationError(f"{where}.{key}: expected a number, got {value!r}")
            kwargs[key] = value
    try:
        return replace(base, **kwargs) if base is not None else Limits(**kwargs)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def load_settings(path: Path | None) -> Settings:
    """Read ``path`` (or ./pacekeeper.toml when it exists and ``path`` is None)."""
    if path is None:
        default = Path(DEFAULT_CONFIG_NAME)
        if not default.exists():
            return Settings()
        path = default
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML ({exc})") from None
    where = str(path)
    models_table = data.pop("models", {})
    unknown = set(data) - _LIMIT_KEYS - _RETRY_KEYS - _OTHER_KEYS
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(_LIMIT_KEYS | _RETRY_KEYS | _OTHER_KEYS))}, [models.NAME]"
        )
    limits = _limits(data, where=where)
    if not isinstance(models_table, dict):
        raise ConfigurationError(f"{where}: [models] must be a table of model names")
    models = {}
    for name, table in models_table.items():
        if not isinstance(table, dict):
            raise ConfigurationError(f"{where}: models.{name} must be a table")
        bad = set(table) - _LIMIT_KEYS
        if bad:
            raise ConfigurationError(
                f"{where}: models.{name}: unknown key(s) {', '.join(sorted(bad))}; "
                f"known: {', '.join(sorted(_LIMIT_KEYS))}"
            )
        models[name] = _limits(table, where=f"{where}: models.{name}", base=limits)
    retry_kwargs: dict[str, Any] = {}
    renames = {"timeout": "attempt_timeout_s", "deadline": "deadline_s"}
    for key in _RETRY_KEYS & set(data):
        retry_kwargs[renames.get(key, key)] = data[key]
    try:
        retry = RetryPolicy(**retry_kwargs)
    except (ConfigurationError, TypeError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    for key in ("base_url", "api_key_env", "redis"):
        if key in data and not isinstance(data[key], str):
            raise ConfigurationError(f"{where}.{key}: expected a string")
    return Settings(
        limits=limits,
        models=models,
        retry=retry,
        base_url=data.get("base_url"),
        api_key_env=data.get("api_key_env"),
        redis=data.get("redis"),
        source=path,
    )
