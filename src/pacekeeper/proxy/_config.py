"""What the proxy is told: where the upstream is, how it is reached, its bounds."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.priority import Priority
from pacekeeper.core.queue import check_weight

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_QUEUE_TIMEOUTS_S",
    "ProxyConfig",
    "TenantToken",
    "is_loopback",
]

DEFAULT_PORT = 8787
DEFAULT_QUEUE_TIMEOUTS_S: Mapping[Priority, float] = {
    Priority.INTERACTIVE: 60.0,
    Priority.BATCH: 30.0,
    Priority.BACKGROUND: 10.0,
}
"""How long a request of each class may wait for admission at the proxy by default: a batch
caller is told to come back (429 + retry-after) long before an interactive one waits that
long. A lower class never defaults above the class over it."""


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("192.168.1.5"), is_loopback("example.com")
    (False, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantToken:
    """A client token bound to a tenant and a priority class: requests that present it count
    in ``tenant``'s fair share, in ``priority`` (the highest class its header may ask for).
    ``weight`` (when given) is the tenant's weight within its class: the proxy sets it on its
    governor (:meth:`~pacekeeper.Governor.weigh_tenant`); unset, the governor's (default 1).

    >>> TenantToken(tenant="chat", token="t-1", priority=Priority.INTERACTIVE)
    TenantToken(tenant='chat', priority=<Priority.INTERACTIVE: 'interactive'>, weight=None)
    """

    tenant: str
    token: str = field(repr=False)
    priority: Priority = Priority.INTERACTIVE
    weight: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "priority", Priority.parse(self.priority))
        if self.weight is not None:
            check_weight(self.tenant, self.weight)
        if not self.tenant or any(c.isspace() for c in self.tenant):
            raise ConfigurationError(f"a tenant's name must be one word, got {self.tenant!r}")
        if not self.token.strip() or "\n" in self.token or "\r" in self.token:
            raise ConfigurationError(f"tenant {self.tenant}: its token must be a non-empty line")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """The proxy's settings (the limits and retries are the :class:`~pacekeeper.Governor`'s).

    Secrets are held as values here (the CLI reads them from the environment); they are left
    out of ``repr`` and never logged.

    >>> ProxyConfig(upstream="https://api.example.com/v1/", api_key="sk-secret")
    ... # doctest: +ELLIPSIS
    ProxyConfig(upstream='https://api.example.com/v1', host='127.0.0.1', port=8787, ...)
    """

    upstream: str
    """The upstream's base URL, e.g. ``https://api.openai.com/v1``: ``{base_path}/X`` is
    forwarded to ``{upstream}/X``."""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    base_path: str = "/v1"
    """The path the proxy serves the upstream's base URL under (clients set their base_url to
    ``http://HOST:PORT{base_path}``); ``"/"`` forwards every path."""
    api_key: str | None = field(default=None, repr=False)
    """When set, the proxy holds the upstream's key: it replaces the client's Authorization."""
    client_token: str | None = field(default=None, repr=False)
    """When set, clients must present it (``Authorization: Bearer`` when the proxy holds the
    key, or ``x-pacekeeper-token``), compared in constant time."""
    tenants: tuple[TenantToken, ...] = ()
    """Client tokens bound to a tenant and a class; any of them is accepted as well as
    ``client_token``."""
    max_body_bytes: int = 32 * 1024 * 1024
    """Larger request bodies get a 413 (OpenAI accepts about 20-30 MB with base64 images)."""
    max_buffered_bytes: int = 512 * 1024 * 1024
    """Bodies held at once over all requests (waiting or in flight); beyond, a 429."""
    max_queue: int = 1000
    """Requests waiting for admission per (route, model) lane; beyond, a 429 at once."""
    queue_timeout_s: float = 60.0
    """The longest an interactive request waits for admission; then a 429 from the proxy."""
    queue_timeouts_s: Mapping[Priority, float] | Mapping[str, float] = field(default_factory=dict)
    """The same per class (``{"batch": 10, "background": 2}``); a class not given gets its
    default (:data:`DEFAULT_QUEUE_TIMEOUTS_S`), never above the class over it. Read it back
    complete through :meth:`queue_timeout_for`."""
    header_timeout_s: float = 10.0
    """A request's headers must arrive within this many seconds (else a 408, and the
    connection is closed)."""
    body_timeout_s: float = 60.0
    """A request's whole body must arrive within this many seconds after its headers (else a
    408, and the connection is closed)."""
    max_unfinished: int = 256
    """Connections whose request has not fully arrived, at once over all clients; one more
    closes the one unfinished the longest (a 408)."""
    drain_timeout_s: float = 30.0
    """On shutdown, how long requests in flight get to finish before they are cut."""
    connect_timeout_s: float = 10.0
    read_timeout_s: float | None = 600.0
    """Upstream read timeout per attempt (for streams: between chunks); None: no limit."""
    provider: str = "openai"
    """The upstream's provider (:mod:`pacekeeper.providers`): how the held key is sent
    (``Authorization: Bearer``, Azure's ``api-key``, Anthropic's ``x-api-key`` with
    ``anthropic-version``) and how it counts cached tokens."""
    include_usage: bool = True
    """Ask every streamed chat/completions request for its usage (``stream_options``), so that
    streams are reconciled with real usage; the added usage chunk is removed before it reaches
    a client that did not ask for it."""

    def __post_init__(self) -> None:
        from pacekeeper.providers import get_provider

        object.__setattr__(self, "provider", get_provider(self.provider).name)
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"upstream must be an http(s) URL such as https://api.openai.com/v1, "
                f"got {self.upstream!r}"
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(
                f"upstream must not have a query or fragment: {self.upstream!r}"
            )
        object.__setattr__(self, "upstream", self.upstream.rstrip("/"))
        base = self.base_path
        if not base.startswith("/"):
            raise ConfigurationError(f"base_path must start with '/', got {base!r}")
        object.__setattr__(self, "base_path", base.rstrip("/"))
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_body_bytes", "max_buffered_bytes", "max_queue", "max_unfinished"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ConfigurationError("max_buffered_bytes must be at least max_body_bytes")
        for name in (
            "queue_timeout_s",
            "drain_timeout_s",
            "connect_timeout_s",
            "read_timeout_s",
            "header_timeout_s",
            "body_timeout_s",
        ):
            value = getattr(self, name)
            if value is None and name == "read_timeout_s":
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        for name in ("api_key", "client_token"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or "\n" in value or "\r" in value):
                raise ConfigurationError(f"{name} must be a non-empty single line")

        self._resolve_queue_timeouts()
        names = [t.tenant for t in self.tenants]
        tokens = [t.token for t in self.tenants] + (
            [self.client_token] if self.client_token else []
        )
        if len(set(names)) != len(names) or len(set(tokens)) != len(tokens):
            raise ConfigurationError("every tenant needs its own name and its own token")

    def _resolve_queue_timeouts(self) -> None:
        given: dict[Priority, float] = {}
        for cls, value in dict(self.queue_timeouts_s).items():
            parsed = Priority.parse(cls)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(
                    f"queue timeout of class {parsed}: must be a positive number of seconds, "
                    f"got {value!r}"
                )
            given[parsed] = float(value)
        timeouts = {Priority.INTERACTIVE: given.pop(Priority.INTERACTIVE, self.queue_timeout_s)}
        above = timeouts[Priority.INTERACTIVE]
        for cls in list(Priority)[1:]:
            above = timeouts[cls] = given.get(cls, min(DEFAULT_QUEUE_TIMEOUTS_S[cls], above))
        object.__setattr__(self, "queue_timeout_s", timeouts[Priority.INTERACTIVE])
        object.__setattr__(self, "queue_timeouts_s", timeouts)

    def queue_timeout_for(self, cls: Priority) -> float:
        """The longest a request of class ``cls`` waits for admission (then a 429).

        >>> config = ProxyConfig(upstream="http://x", queue_timeouts_s={"batch": 5})
        >>> [config.queue_timeout_for(p) for p in Priority]
        [60.0, 5.0, 5.0]
        """
        return self.queue_timeouts_s[cls]

    @property
    def tokens_required(self) -> bool:
        """Whether clients must present a token (the client token or a tenant's)."""
        return self.client_token is not None or bool(self.tenants)

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)
