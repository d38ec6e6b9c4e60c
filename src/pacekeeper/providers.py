"""The providers pacekeeper speaks natively: one frozen record per provider.

A provider says where its API lives by default, how the key is sent, which environment
variable holds the key by default, which rate-limit headers it sends, and how it counts tokens
toward its limits. ``pacekeeper run --provider NAME``, ``pacekeeper proxy --provider NAME``,
``provider = "NAME"`` in pacekeeper.toml and :func:`get_provider` all read this table; every
field stays overridable (``--base-url``, ``--api-key-env``, limits).

What the table does *not* do is learn limits: the governor reads every provider's headers
(core/headers.py) and, for servers that send none, discovers a rate from their answers.

>>> p = get_provider("anthropic")
>>> p.base_url, p.key_env, sorted(p.auth_headers("k"))
('https://api.anthropic.com', 'ANTHROPIC_API_KEY', ['anthropic-version', 'x-api-key'])
>>> get_provider("azure").auth_headers("k")
{'api-key': 'k'}
>>> get_provider("groq").route_url("https://api.groq.com/openai/v1", "/v1/chat/completions")
'https://api.groq.com/openai/v1/chat/completions'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from pacekeeper.core.errors import ConfigurationError

__all__ = [
    "AZURE_API_VERSION",
    "PROVIDERS",
    "AuthStyle",
    "HeaderFamily",
    "Provider",
    "get_provider",
    "provider_names",
]

AuthStyle = Literal["bearer", "api-key", "x-api-key"]
HeaderFamily = Literal["openai", "anthropic", "azure", "none"]

AZURE_API_VERSION = "2024-10-21"
"""The Azure OpenAI data-plane API version sent on deployment routes when none is given (the
GA version current when this was written; ``--api-version`` or ``api_version`` override it)."""

ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """How one provider is reached and how it counts. Frozen: the table is shared."""

    name: str
    base_url: str | None
    """The default base URL; None when every account has its own (Azure, compatible)."""
    base_url_env: str | None
    """The environment variable read for the base URL when no flag or config sets it."""
    key_env: str
    """The environment variable read for the key by default."""
    auth: AuthStyle
    """``bearer``: ``Authorization: Bearer KEY``; ``api-key`` (Azure); ``x-api-key``
    (Anthropic, with ``anthropic-version``)."""
    headers: HeaderFamily
    """The rate-limit headers it sends: ``openai`` (``x-ratelimit-*``), ``anthropic``
    (``anthropic-ratelimit-*``), ``azure`` (``x-ratelimit-*`` over short windows, plain-second
    ``retry-after``), ``none`` (no rate-limit headers: limits are discovered)."""
    chat_route: str = "/v1/chat/completions"
    """The route prompts are sent to."""
    key_required: bool = True
    """False for self-hosted servers, which often take no key."""
    cache_reads_count: bool = True
    """Whether prompt-cache reads count toward the input-token limit (usage parsing already
    leaves Anthropic's ``cache_read_input_tokens`` out: they are reported apart)."""
    sends_429: bool = True
    """False for self-hosted servers that queue instead of refusing."""
    docs: str = ""
    """The provider's page on its rate limits."""

    def auth_headers(self, key: str | None) -> dict[str, str]:
        """The headers that carry ``key`` (and the API version Anthropic requires)."""
        out: dict[str, str] = {}
        if self.auth == "x-api-key":
            out["anthropic-version"] = ANTHROPIC_VERSION
        if not key:
            return out
        if self.auth == "bearer":
            out["authorization"] = f"Bearer {key}"
        elif self.auth == "api-key":
            out["api-key"] = key
        else:
            out["x-api-key"] = key
        return out

    @property
    def key_header(self) -> str:
        """The header name the key travels in (lower case)."""
        return {"bearer": "authorization", "api-key": "api-key", "x-api-key": "x-api-key"}[
            self.auth
        ]

    def route_url(
        self,
        base_url: str,
        route: str,
        *,
        model: str | None = None,
        api_version: str | None = None,
    ) -> str:
        """The URL of ``route`` (``/v1/chat/completions``) under ``base_url``.

        A ``/v1`` at the end of the base URL is not doubled. On Azure, unless the base URL is
        a v1 endpoint (``.../openai/v1``), an OpenAI route becomes the deployment route of
        ``model``: ``/openai/deployments/{model}/chat/completions?api-version=...``.
        """
        base = base_url.rstrip("/")
        if self.name == "azure" and not base.endswith("/v1") and model:
            return azure_deployment_url(base, route, model, api_version or AZURE_API_VERSION)
        if base.endswith("/v1") and (route.startswith("/v1/") or route == "/v1"):
            return base[: -len("/v1")] + route
        if _VERSIONED_BASE.search(base) and route.startswith("/v1/"):
            # Gemini's .../v1beta/openai, Groq's .../openai/v1 style bases carry the version.
            return base + route[len("/v1") :]
        return base + route


_VERSIONED_BASE = re.compile(r"/v\d+(beta\d*|alpha\d*)?(/openai)?$")


def azure_deployment_url(base: str, route: str, deployment: str, api_version: str) -> str:
    """``{base}/openai/deployments/{deployment}{route without /v1}?api-version=...``.

    >>> azure_deployment_url("https://r.openai.azure.com", "/v1/chat/completions", "gpt4o",
    ...                      "2024-10-21")
    'https://r.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21'
    """
    path = route[len("/v1") :] if route.startswith("/v1/") else route
    if "/openai/deployments/" in route:  # already a deployment route
        path, name = route, None
    else:
        name = quote(deployment, safe="")
    base = base.removesuffix("/openai")
    sep = "&" if "?" in path else "?"
    query = "" if "api-version=" in path else f"{sep}api-version={quote(api_version)}"
    if name is None:
        return f"{base}{path}{query}"
    return f"{base}/openai/deployments/{name}{path}{query}"


_OPENAI_DOCS = "https://platform.openai.com/docs/guides/rate-limits"

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            name="openai",
            base_url="https://api.openai.com/v1",
            base_url_env="OPENAI_BASE_URL",
            key_env="OPENAI_API_KEY",
            auth="bearer",
            headers="openai",
            docs=_OPENAI_DOCS,
        ),
        Provider(
            name="azure",
            base_url=None,
            base_url_env="AZURE_OPENAI_ENDPOINT",
            key_env="AZURE_OPENAI_API_KEY",
            auth="api-key",
            headers="azure",
            docs="https://learn.microsoft.com/azure/ai-services/openai/how-to/quota",
        ),
        Provider(
            name="anthropic",
            base_url="https://api.anthropic.com",
            base_url_env="ANTHROPIC_BASE_URL",
            key_env="ANTHROPIC_API_KEY",
            auth="x-api-key",
            headers="anthropic",
            chat_route="/v1/messages",
            cache_reads_count=False,
            docs="https://docs.anthropic.com/en/api/rate-limits",
        ),
        Provider(
            name="gemini",
            base_url="https://generativelanguage.googleapis.com/v1beta/openai",
            base_url_env=None,
            key_env="GEMINI_API_KEY",
            auth="bearer",
            headers="none",
            docs="https://ai.google.dev/gemini-api/docs/rate-limits",
        ),
        Provider(
            name="openrouter",
            base_url="https://openrouter.ai/api/v1",
            base_url_env=None,
            key_env="OPENROUTER_API_KEY",
            auth="bearer",
            headers="none",
            docs="https://openrouter.ai/docs/api-reference/limits",
        ),
        Provider(
            name="mistral",
            base_url="https://api.mistral.ai/v1",
            base_url_env=None,
            key_env="MISTRAL_API_KEY",
            auth="bearer",
            headers="none",
            docs="https://docs.mistral.ai/deployment/ai-studio/tier",
        ),
        Provider(
            name="groq",
            base_url="https://api.groq.com/openai/v1",
            base_url_env=None,
            key_env="GROQ_API_KEY",
            auth="bearer",
            headers="openai",
            cache_reads_count=False,
            docs="https://console.groq.com/docs/rate-limits",
        ),
        Provider(
            name="together",
            base_url="https://api.together.xyz/v1",
            base_url_env=None,
            key_env="TOGETHER_API_KEY",
            auth="bearer",
            headers="openai",
            docs="https://docs.together.ai/docs/rate-limits",
        ),
        Provider(
            name="vllm",
            base_url="http://127.0.0.1:8000/v1",
            base_url_env=None,
            key_env="VLLM_API_KEY",
            auth="bearer",
            headers="none",
            key_required=False,
            sends_429=False,
            docs="https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html",
        ),
        Provider(
            name="compatible",
            base_url=None,
            base_url_env="OPENAI_BASE_URL",
            key_env="OPENAI_API_KEY",
            auth="bearer",
            headers="openai",
            key_required=False,
        ),
    )
}


def provider_names() -> list[str]:
    return list(PROVIDERS)


def get_provider(name: str | Provider | None) -> Provider:
    """The provider called ``name`` (None: openai); an unknown name is a ConfigurationError
    that lists the known ones."""
    if isinstance(name, Provider):
        return name
    if name is None:
        return PROVIDERS["openai"]
    provider = PROVIDERS.get(name.strip().lower())
    if provider is None:
        raise ConfigurationError(
            f"unknown provider {name!r}; known: {', '.join(PROVIDERS)} "
            "(use compatible with --base-url for any other OpenAI-compatible server)"
        )
    return provider
