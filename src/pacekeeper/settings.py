"""pacekeeper.toml: limits and retry settings shared by ``pacekeeper run`` and ``pacekeeper proxy``.

::

    provider = "openai"       # openai, azure, anthropic, gemini, openrouter, mistral, groq,
                              # together, vllm or compatible: base URL, auth, key variable
    # defaults for every model
    rpm = 500                 # requests per minute (omit to learn from the provider's headers)
    tpm = 200000              # tokens per minute
    concurrency = "auto"      # or a fixed number of requests in flight
    max_attempts = 6
    timeout = 120             # seconds per attempt
    deadline = 900            # seconds per request, queueing and retries included
    backoff_base = 0.5        # seconds: the first retry waits up to this (doubling, with jitter)
    backoff_cap = 30          # seconds: no backoff longer than this

    [models."gpt-4o-mini"]    # per-model limits (providers limit per model); keys not set here
    rpm = 5000                # come from the defaults above
    tpm = 2000000

    [models."my-finetune".price]  # USD per million tokens: overrides or adds to genai-prices
    input = 3.0
    output = 12.0
    cached_input = 1.5            # optional (default: the input price)

    [tenants.chat]            # a tenant's weight within its priority class (default 1): while
    weight = 2                # chat and another tenant of its class wait, chat gets 2 of 3

Command-line flags override the file (its defaults and its per-model sections). Errors name
the file, the key and the problem: ``pacekeeper.toml.models."gpt-4o".rpm: must be a positive
number, got -5``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.cost import Price
from pacekeeper.core.errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEFAULT_CONFIG_NAME", "Settings", "load_settings", "parse_concurrency"]

DEFAULT_CONFIG_NAME = "pacekeeper.toml"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _positive(value: object) -> tuple[Any, str | None]:
    number = _number(value)
    if number is None:
        return None, f"expected a number, got {_show(value)}"
    if not math.isfinite(number) or number <= 0:
        return None, f"must be a positive number, got {_show(value)}"
    return value, None


def _fraction(*, zero_ok: bool) -> Callable[[object], tuple[Any, str | None]]:
    def check(value: object) -> tuple[Any, str | None]:
        number = _number(value)
        if number is None:
            return None, f"expected a number, got {_show(value)}"
        low_ok = number >= 0 if zero_ok else number > 0
        if not low_ok or number > 1:
            interval = "[0, 1]" if zero_ok else "(0, 1]"
            return None, f"must be a number in {interval}, got {_show(value)}"
        return value, None

    return check


def _whole(minimum: int) -> Callable[[object], tuple[Any, str | None]]:
    def check(value: object) -> tuple[Any, str | None]:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"expected a whole number, got {_show(value)}"
        if value < minimum:
            what = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
            return None, f"must be {what}, got {_show(value)}"
        return value, None

    return check


def _concurrency(value: object) -> tuple[Any, str | None]:
    try:
        return parse_concurrency(value, where=""), None
    except ConfigurationError:
        return None, f'must be "auto" or a positive whole number, got {_show(value)}'


def _provider(value: object) -> tuple[Any, str | None]:
    from pacekeeper.providers import PROVIDERS

    if not isinstance(value, str):
        return None, f"expected a string, got {_show(value)}"
    if value.strip().lower() not in PROVIDERS:
        return None, f"unknown provider {_show(value)}; known: {', '.join(PROVIDERS)}"
    return value.strip().lower(), None


def _string(value: object) -> tuple[Any, str | None]:
    if not isinstance(value, str):
        return None, f"expected a string, got {_show(value)}"
    if not value:
        return None, "must not be empty"
    return value, None


# TOML key -> (field name, check)
_LIMIT_KEYS: dict[str, tuple[str, Callable[[object], tuple[Any, str | None]]]] = {
    "rpm": ("rpm", _positive),
    "tpm": ("tpm", _positive),
    "output_tpm": ("output_tpm", _positive),
    "concurrency": ("concurrency", _concurrency),
    "burst_s": ("burst_s", _positive),
    "utilisation": ("utilisation", _fraction(zero_ok=False)),
    "default_completion_tokens": ("default_completion_tokens", _whole(0)),
}
_RETRY_KEYS: dict[str, tuple[str, Callable[[object], tuple[Any, str | None]]]] = {
    "max_attempts": ("max_attempts", _whole(1)),
    "timeout": ("attempt_timeout_s", _positive),
    "deadline": ("deadline_s", _positive),
    "max_hint_s": ("max_hint_s", _positive),
    "retry_budget_ratio": ("retry_budget_ratio", _fraction(zero_ok=True)),
    "backoff_base": ("backoff_base_s", _positive),
    "backoff_cap": ("backoff_cap_s", _positive),
}
_OTHER_KEYS: dict[str, tuple[str, Callable[[object], tuple[Any, str | None]]]] = {
    "base_url": ("base_url", _string),
    "api_key_env": ("api_key_env", _string),
    "redis": ("redis", _string),
    "provider": ("provider", _provider),
    "api_version": ("api_version", _string),
}


@dataclass(frozen=True, slots=True)
class Settings:
    limits: Limits = field(default_factory=Limits)
    models: dict[str, Limits] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    base_url: str | None = None
    api_key_env: str | None = None
    redis: str | None = None
    provider: str | None = None
    """A name from :data:`pacekeeper.providers.PROVIDERS` (its base URL, auth and key variable
    are the defaults; ``base_url`` and ``api_key_env`` override them)."""
    api_version: str | None = None
    """Azure OpenAI's ``api-version`` on deployment routes."""
    prices: dict[str, Price] = field(default_factory=dict)
    """``[models."NAME".price]``: prices that override or add to genai-prices'."""
    tenant_weights: dict[str, float] = field(default_factory=dict)
    """``[tenants.NAME] weight = W``: the tenants' weights within their class."""
    source: Path | None = None


def parse_concurrency(value: object, *, where: str) -> int | str:
    """``"auto"`` or a positive integer, from a flag or a file."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigurationError(
        f"{where}: concurrency must be 'auto' or a positive integer, got {_show(value)}"
    )


def _key_path(*parts: str) -> str:
    return ".".join(p if _BARE_KEY.fullmatch(p) else _show(p) for p in parts)


def _read(
    table: dict[str, Any],
    keys: dict[str, tuple[str, Callable[[object], tuple[Any, str | None]]]],
    *,
    file: str,
    prefix: tuple[str, ...] = (),
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in keys:
            continue
        name, check = keys[key]
        checked, problem = check(value)
        if problem is not None:
            raise ConfigurationError(f"{file}.{_key_path(*prefix, key)}: {problem}")
        kwargs[name] = checked
    return kwargs


def load_settings(path: Path | None) -> Settings:
    """Read ``path`` (or ./pacekeeper.toml when it exists and ``path`` is None)."""
    if path is None:
        default = Path(DEFAULT_CONFIG_NAME)
        if not default.exists():
            return Settings()
        path = default
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{file}: no such config file") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{file}: not valid TOML (the file is not UTF-8)") from None
    except OSError as exc:
        raise ConfigurationError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{file}: not valid TOML ({exc})") from None
    models_table = data.pop("models", {})
    tenant_weights = _tenant_weights(data.pop("tenants", {}), file=file)
    known = {**_LIMIT_KEYS, **_RETRY_KEYS, **_OTHER_KEYS}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigurationError(
            f"{file}: unknown key(s) {', '.join(_key_path(k) for k in unknown)}; known: "
            f"{', '.join(sorted(known))}, [models.NAME], [tenants.NAME]"
        )
    limit_fields = _read(data, _LIMIT_KEYS, file=file)
    try:
        limits = Limits(**limit_fields)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{file}: {exc}") from None
    if not isinstance(models_table, dict):
        raise ConfigurationError(
            f'{file}.models: expected a table of model names ([models."NAME"]), '
            f"got {_show(models_table)}"
        )
    models = {}
    prices = {}
    for name, table in models_table.items():
        where = _key_path("models", name)
        if not isinstance(table, dict):
            raise ConfigurationError(f"{file}.{where}: expected a table, got {_show(table)}")
        if "price" in table:
            prices[name] = _price(table.pop("price"), file=file, where=f"{where}.price")
        bad = sorted(set(table) - set(_LIMIT_KEYS))
        if bad:
            raise ConfigurationError(
                f"{file}.{where}: unknown key(s) {', '.join(_key_path(k) for k in bad)}; "
                f"known: {', '.join(sorted(_LIMIT_KEYS))}, price"
            )
        model_fields = _read(table, _LIMIT_KEYS, file=file, prefix=("models", name))
        try:
            models[name] = replace(limits, **model_fields)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{file}.{where}: {exc}") from None
    retry_fields = _read(data, _RETRY_KEYS, file=file)
    try:
        retry = RetryPolicy(**retry_fields)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{file}: {exc}") from None
    other = _read(data, _OTHER_KEYS, file=file)
    return Settings(
        limits=limits,
        models=models,
        retry=retry,
        base_url=other.get("base_url"),
        api_key_env=other.get("api_key_env"),
        redis=other.get("redis"),
        provider=other.get("provider"),
        api_version=other.get("api_version"),
        prices=prices,
        tenant_weights=tenant_weights,
        source=path,
    )


def _tenant_weights(tables: object, *, file: str) -> dict[str, float]:
    """``[tenants.NAME]`` tables: ``weight`` (a positive number) is their one key."""
    if not isinstance(tables, dict):
        raise ConfigurationError(
            f"{file}.tenants: expected a table of tenant names ([tenants.NAME] weight = 2), "
            f"got {_show(tables)}"
        )
    weights = {}
    for name, table in tables.items():
        where = _key_path("tenants", name)
        if not isinstance(table, dict):
            raise ConfigurationError(f"{file}.{where}: expected a table, got {_show(table)}")
        bad = sorted(set(table) - {"weight"})
        if bad:
            raise ConfigurationError(
                f"{file}.{where}: unknown key(s) {', '.join(_key_path(k) for k in bad)}; "
                "known: weight"
            )
        if "weight" in table:
            weight, problem = _positive(table["weight"])
            if problem is not None:
                raise ConfigurationError(f"{file}.{where}.weight: {problem}")
            weights[name] = float(weight)
    return weights


_PRICE_KEYS = {
    "input": "input_usd_per_mtok",
    "output": "output_usd_per_mtok",
    "cached_input": "cached_input_usd_per_mtok",
}


def _price(table: object, *, file: str, where: str) -> Price:
    """``[models."NAME".price]``: input, output (required) and cached_input, USD per million."""
    if not isinstance(table, dict):
        raise ConfigurationError(
            f"{file}.{where}: expected a table (input = USD per million input tokens, output = "
            f"USD per million output tokens), got {_show(table)}"
        )
    bad = sorted(set(table) - set(_PRICE_KEYS))
    if bad:
        raise ConfigurationError(
            f"{file}.{where}: unknown key(s) {', '.join(_key_path(k) for k in bad)}; known: "
            "input, output, cached_input (USD per million tokens)"
        )
    for key in ("input", "output"):
        if key not in table:
            raise ConfigurationError(
                f"{file}.{where}: {key} is missing (USD per million {key} tokens)"
            )
    fields: dict[str, float] = {}
    for key, value in table.items():
        number = _number(value)
        if number is None or not math.isfinite(number) or number < 0:
            raise ConfigurationError(
                f"{file}.{where}.{key}: must be a price in USD per million tokens >= 0, "
                f"got {_show(value)}"
            )
        fields[_PRICE_KEYS[key]] = number
    return Price(
        input_usd_per_mtok=fields["input_usd_per_mtok"],
        output_usd_per_mtok=fields["output_usd_per_mtok"],
        cached_input_usd_per_mtok=fields.get("cached_input_usd_per_mtok"),
        source=file,
    )


def _show(value: object) -> str:
    if isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
