"""Model prices: genai-prices' bundled data, with pacekeeper.toml's overrides and additions.

::

    [models."my-finetune".price]      # USD per million tokens
    input = 3.0
    output = 12.0
    cached_input = 1.5                # optional: cache reads (default: the input price)

A model with no price anywhere has an unknown cost (None), never a cost of zero. The data is
offline (the installed genai-prices release); no network is used.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from pacekeeper.core.cost import Price, PriceLookup, PriceTier

__all__ = ["GENAI_PRICES_PROVIDER", "genai_price", "price_lookup"]

GENAI_PRICES_PROVIDER: dict[str, str | None] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "openrouter": "openrouter",
    "mistral": "mistral",
    "groq": "groq",
    "together": "together",
    "compatible": None,  # any server: the provider is inferred from the model's name
    "vllm": "",  # self-hosted: no price unless pacekeeper.toml gives one
}
"""pacekeeper's provider names (``pacekeeper.providers``) -> genai-prices provider ids."""


def _at(value: Any, input_tokens: int) -> float:
    """A genai-prices unit price (a Decimal or tiered prices) for a request this big."""
    if isinstance(value, Decimal):
        return float(value)
    price = value.base
    for tier in value.tiers:
        if input_tokens >= tier.start:
            price = tier.price
    return float(price)


@functools.lru_cache(maxsize=512)
def _provider_id(provider: str | None) -> str | None:
    """genai-prices' id for a pacekeeper provider name: None to infer it from the model's
    name, "" for none (self-hosted)."""
    return GENAI_PRICES_PROVIDER.get(provider or "compatible", provider)


def genai_price(model: str, provider: str | None = None) -> Price | None:
    """The price genai-prices knows for ``model`` at ``provider`` (a pacekeeper provider
    name; None or ``compatible``: inferred from the model's name), or None.

    >>> genai_price("gpt-4o-mini", "openai").input_usd_per_mtok
    0.15
    >>> genai_price("no-such-model", "openai") is None
    True
    """
    from genai_prices import data_snapshot

    provider_id = _provider_id(provider)
    if provider_id == "":
        return None
    try:
        found, info = data_snapshot.get_snapshot().find_provider_model(
            model, None, provider_id, None
        )
    except LookupError:
        return None
    prices = info.get_prices(datetime.now(tz=timezone.utc))
    inp = getattr(prices, "input_mtok", None)
    out = getattr(prices, "output_mtok", None)
    cached = getattr(prices, "cache_read_mtok", None)
    if inp is None or out is None:
        return None  # priced per image, per second...: not a token price
    starts = sorted(
        {
            t.start
            for v in (inp, out, cached)
            if v is not None and hasattr(v, "tiers")
            for t in v.tiers
        }
    )
    tiers = [
        PriceTier(
            from_input_tokens=start,
            input_usd_per_mtok=_at(inp, start),
            output_usd_per_mtok=_at(out, start),
            cached_input_usd_per_mtok=None if cached is None else _at(cached, start),
        )
        for start in starts
    ]
    return Price(
        input_usd_per_mtok=_at(inp, 0),
        output_usd_per_mtok=_at(out, 0),
        cached_input_usd_per_mtok=None if cached is None else _at(cached, 0),
        tiers=tuple(tiers),
        source=f"genai-prices {found.id}/{info.id}",
    )


def price_lookup(
    *, provider: str | None = None, overrides: Mapping[str, Price] | None = None
) -> PriceLookup:
    """A lookup for ``Governor(prices=...)``: pacekeeper.toml's prices first, then
    genai-prices' for ``provider``.

    >>> lookup = price_lookup(overrides={"mine": Price(input_usd_per_mtok=1,
    ...                                                output_usd_per_mtok=2)})
    >>> lookup("mine").output_usd_per_mtok, lookup("gpt-4o").source, lookup(None)
    (2, 'genai-prices openai/gpt-4o', None)
    """
    table = dict(overrides or {})
    if _provider_id(provider) != "":
        # Loaded now, where the governor is built, not by the first request that is priced:
        # genai-prices' import and data take 0.15-0.3 s of CPU, which at the first request
        # stalled a proxy's event loop while a burst waited behind it (issue 10: the proxy's
        # first upstream send came 0.16 s after its first request arrived, later ones 0.3 ms).
        from genai_prices import data_snapshot

        data_snapshot.get_snapshot()

    def lookup(model: str | None) -> Price | None:
        if model is None:
            return None
        if model in table:
            return table[model]
        return genai_price(model, provider)

    return lookup
