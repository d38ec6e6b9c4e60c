"""``pacekeeper proxy`` (and ``python -m pacekeeper.proxy``): the proxy from the command line.

``configure_parser`` and ``run`` are reusable so the main CLI mounts the same options. Flags
override pacekeeper.toml (the same file as ``pacekeeper run``: limits, [models.NAME], retries,
``base_url`` as the upstream, ``api_key_env``, ``redis``).

Exit codes: 0 after a clean shutdown (SIGTERM or Ctrl-C, in-flight requests drained); 1 the
server could not listen or stopped unexpectedly; 2 bad usage (a flag, the config file, a
missing environment variable).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from pacekeeper.core.config import Limits, RetryPolicy
from pacekeeper.core.errors import ConfigurationError
from pacekeeper.core.governor import Governor
from pacekeeper.core.priority import Priority
from pacekeeper.providers import PROVIDERS, Provider, get_provider
from pacekeeper.proxy._config import DEFAULT_PORT, ProxyConfig, TenantToken
from pacekeeper.proxy._server import Proxy
from pacekeeper.settings import Settings, load_settings, parse_concurrency
from pacekeeper.transports._engine import PRIORITY_HEADER

__all__ = ["LISTENING_PREFIX", "build_governor", "configure_parser", "main", "run"]

PROG = "pacekeeper proxy"
LISTENING_PREFIX = "pacekeeper proxy listening on "
"""The line printed on stdout once connections are accepted, followed by the base URL."""
EXIT_FAILED = 1
EXIT_USAGE = 2
_MB = 1024 * 1024


def _number(*, integer: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def _queue_timeout_arg(text: str) -> str:
    """``--queue-timeout``'s value, checked now so a mistake is a usage error."""
    try:
        parse_queue_timeouts([text])
    except ConfigurationError as exc:
        message = str(exc)
        raise argparse.ArgumentTypeError(message[message.find(": ") + 2 :]) from None
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {text!r}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the proxy's options to ``parser``."""
    parser.description = (
        "A local OpenAI-compatible gateway: every program on the machine sends through one "
        "governor (queueing, pacing, retries, metrics). Clients change only their base_url."
    )
    serve = parser.add_argument_group("serving")
    serve.add_argument(
        "--provider",
        choices=list(PROVIDERS),
        help="the upstream's provider: its default URL, how a held key is sent (Bearer, "
        "Azure's api-key, Anthropic's x-api-key), how it counts cached tokens (default openai)",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="the upstream's base URL, e.g. https://api.openai.com/v1 (default: base_url "
        "from the config file, else the provider's)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine)"
    )
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)"
    )
    serve.add_argument(
        "--base-path",
        default=None,
        metavar="PATH",
        help="path the upstream's base URL is served under (default /v1; / for azure, whose "
        "clients send /openai/... paths)",
    )
    serve.add_argument(
        "--no-stream-usage",
        dest="stream_usage",
        action="store_false",
        help="do not add stream_options.include_usage to streamed requests (by default it is "
        "added so every stream is reconciled with real usage, and the extra chunk removed)",
    )
    serve.add_argument(
        "--config", type=Path, help="a pacekeeper.toml (default: ./pacekeeper.toml if present)"
    )

    keys = parser.add_argument_group("keys (default: each client's own Authorization is forwarded)")
    keys.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="hold the upstream key from this environment variable and send it on every request",
    )
    keys.add_argument(
        "--client-token-env",
        metavar="NAME",
        help="clients must present the token in this environment variable (x-pacekeeper-token, "
        "or as their API key when the proxy holds the upstream key)",
    )
    keys.add_argument(
        "--tenant",
        action="append",
        default=[],
        metavar="NAME:CLASS:ENV[:WEIGHT]",
        help="a client token (in environment variable ENV) bound to tenant NAME and priority "
        "class CLASS (interactive, batch, background): its requests share fairly with other "
        "tenants of the class, in proportion to WEIGHT (default 1, or [tenants.NAME] weight "
        "in pacekeeper.toml), never above the class (repeat for each tenant)",
    )

    limits = parser.add_argument_group("limits (flags override the config file)")
    limits.add_argument("--rpm", type=_number(), help="requests per minute (default: learned)")
    limits.add_argument("--tpm", type=_number(), help="tokens per minute (default: learned)")
    limits.add_argument(
        "--concurrency", metavar="N|auto", help="requests in flight per model: N or auto (default)"
    )
    limits.add_argument(
        "--max-attempts",
        type=_number(integer=True),
        metavar="N",
        help="attempts per request (default 6)",
    )
    limits.add_argument(
        "--timeout",
        type=_number(),
        metavar="S",
        help="seconds per attempt to wait for the upstream (streams: between chunks; default 600)",
    )

    bounds = parser.add_argument_group("back-pressure and shutdown")
    bounds.add_argument(
        "--max-queue",
        type=_number(integer=True),
        metavar="N",
        default=1000,
        help="requests waiting per route and model; beyond, a 429 at once (default 1000)",
    )
    bounds.add_argument(
        "--queue-timeout",
        action="append",
        type=_queue_timeout_arg,
        default=[],
        metavar="[CLASS=]S[,...]",
        help="longest wait for admission, then a 429 with retry-after: S for interactive "
        "requests, CLASS=S for a class (e.g. --queue-timeout 60 --queue-timeout "
        "batch=10,background=2; default interactive=60, batch=30, background=10, a lower "
        "class never above the class over it unless given)",
    )
    bounds.add_argument(
        "--max-body-mb",
        type=_number(),
        metavar="MB",
        default=32.0,
        help="largest request body; above, a 413 (default 32)",
    )
    bounds.add_argument(
        "--max-buffered-mb",
        type=_number(),
        metavar="MB",
        default=512.0,
        help="request bodies held at once in all; beyond, a 429 (default 512)",
    )
    bounds.add_argument(
        "--header-timeout",
        type=_number(),
        metavar="S",
        default=10.0,
        help="a request's headers must arrive within S seconds; else a 408 (default 10)",
    )
    bounds.add_argument(
        "--body-timeout",
        type=_number(),
        metavar="S",
        default=60.0,
        help="a request's whole body must arrive within S seconds after its headers; else a "
        "408 (default 60)",
    )
    bounds.add_argument(
        "--max-unfinished",
        type=_number(integer=True),
        metavar="N",
        default=256,
        help="connections whose request has not fully arrived, at once; one more closes the "
        "oldest stalled one (default 256)",
    )
    bounds.add_argument(
        "--drain-timeout",
        type=_number(),
        metavar="S",
        default=30.0,
        help="on SIGTERM, time given to requests in flight to finish (default 30)",
    )
    shared = parser.add_argument_group("shared quota (several proxies, one key)")
    shared.add_argument(
        "--redis",
        metavar="URL",
        help="share the limits with every process using the same Redis and namespace, "
        "e.g. redis://localhost:6379/0 (needs pacekeeper[redis])",
    )
    shared.add_argument(
        "--redis-namespace",
        metavar="NAME",
        default="pacekeeper",
        help="one quota per namespace: give each upstream key its own (default pacekeeper)",
    )


def _fail(message: str) -> int:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return EXIT_USAGE


def _secret_from_env(name: str, flag: str) -> str:
    value = os.environ.get(name)
    if value is None or not value.strip():
        raise ConfigurationError(f"{flag} {name}: the environment variable {name} is not set")
    return value.strip()


def _limit_fields(limits: Limits) -> dict[str, Any]:
    return {f.name: getattr(limits, f.name) for f in fields(limits)}


def build_governor(settings: Settings, args: argparse.Namespace) -> Governor:
    """The governor every request goes through: the config file's limits, then the flags.

    With ``--redis URL`` (or ``redis`` in the config file) its lanes live in Redis, so every
    proxy (or batch run) using the same namespace shares one quota; close the backend
    (``governor.backend.close()``) when done.
    """
    redis_url = args.redis or settings.redis
    overrides: dict[str, Any] = {}
    if args.rpm is not None:
        overrides["rpm"] = args.rpm
    if args.tpm is not None:
        overrides["tpm"] = args.tpm
    if args.concurrency is not None:
        overrides["concurrency"] = parse_concurrency(args.concurrency, where="--concurrency")
    retry_fields = {f.name: getattr(settings.retry, f.name) for f in fields(settings.retry)}
    if args.max_attempts is not None:
        retry_fields["max_attempts"] = int(args.max_attempts)
    if args.timeout is not None:
        retry_fields["attempt_timeout_s"] = args.timeout
    try:
        limits = Limits(**{**_limit_fields(settings.limits), **overrides})
        models = {
            name: Limits(**{**_limit_fields(m), **overrides}) for name, m in settings.models.items()
        }
        retry = RetryPolicy(**retry_fields)
    except ConfigurationError as exc:
        raise ConfigurationError(f"bad limit: {exc}") from None
    backend = None
    if redis_url:
        from pacekeeper.backends import RedisBackend

        backend = RedisBackend(redis_url, namespace=args.redis_namespace)
    from pacekeeper.prices import price_lookup

    provider = getattr(args, "provider", None) or settings.provider
    prices = price_lookup(provider=provider, overrides=settings.prices)
    return Governor(
        limits=limits,
        models=models,
        retry=retry,
        backend=backend,
        prices=prices,
        tenant_weights=settings.tenant_weights,
    )


def build_config(settings: Settings, args: argparse.Namespace) -> ProxyConfig:
    """The proxy's settings from the flags and the config file (reads the secrets' variables)."""
    named = getattr(args, "provider", None) or settings.provider
    provider = get_provider(named)
    # Without a provider named, the proxy must be told its upstream (no silent default).
    upstream = (
        args.upstream or settings.base_url or (_provider_upstream(provider) if named else None)
    )
    if not upstream:
        raise ConfigurationError(
            f"no upstream: pass --upstream URL (e.g. {_example_upstream(provider)}) or set "
            "base_url in pacekeeper.toml"
            + (f" (or ${provider.base_url_env})" if provider.base_url_env else "")
        )
    base_path = args.base_path or ("/" if provider.name == "azure" else "/v1")
    key_env = args.api_key_env or settings.api_key_env
    flag = "--api-key-env" if args.api_key_env else "api_key_env"
    api_key = _secret_from_env(key_env, flag) if key_env else None
    token = (
        _secret_from_env(args.client_token_env, "--client-token-env")
        if args.client_token_env
        else None
    )
    timeout = args.timeout or settings.retry.attempt_timeout_s or 600.0
    max_body = int(args.max_body_mb * _MB)
    tenants = tuple(_tenant(spec) for spec in getattr(args, "tenant", []) or [])
    timeouts = parse_queue_timeouts(getattr(args, "queue_timeout", []) or [])
    return ProxyConfig(
        upstream=upstream,
        host=args.host,
        port=args.port,
        base_path=base_path,
        api_key=api_key,
        client_token=token,
        tenants=tenants,
        max_body_bytes=max_body,
        max_buffered_bytes=max(max_body, int(args.max_buffered_mb * _MB)),
        max_queue=int(args.max_queue),
        queue_timeout_s=timeouts.pop(Priority.INTERACTIVE, 60.0),
        queue_timeouts_s=timeouts,
        drain_timeout_s=args.drain_timeout,
        read_timeout_s=timeout,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_unfinished=int(args.max_unfinished),
        provider=provider.name,
        include_usage=getattr(args, "stream_usage", True),
    )


def _provider_upstream(provider: Provider) -> str | None:
    """The provider's URL served under /v1: Anthropic's base has no /v1 of its own."""
    env = os.environ.get(provider.base_url_env) if provider.base_url_env else None
    base = env or provider.base_url
    if base is None:
        return None
    if provider.name == "anthropic" and not base.rstrip("/").endswith("/v1"):
        return base.rstrip("/") + "/v1"
    return base


def _example_upstream(provider: Provider) -> str:
    if provider.name == "azure":
        return "https://RESOURCE.openai.azure.com"
    return provider.base_url or "http://HOST:PORT/v1"


def parse_queue_timeouts(specs: Sequence[str]) -> dict[Priority, float]:
    """``--queue-timeout`` values: ``S`` (interactive) or ``CLASS=S``, comma-separated,
    repeatable; a class given twice keeps the last.

    >>> parse_queue_timeouts(["45", "batch=10,background=2.5"])
    {<Priority.INTERACTIVE: 'interactive'>: 45.0, <Priority.BATCH: 'batch'>: 10.0, \
<Priority.BACKGROUND: 'background'>: 2.5}
    >>> parse_queue_timeouts(["urgent=3"])
    Traceback (most recent call last):
    ...
    pacekeeper.core.errors.ConfigurationError: --queue-timeout urgent=3: priority must be one \
of interactive, batch, background, got 'urgent'
    """
    out: dict[Priority, float] = {}
    for spec in specs:
        for part in spec.split(","):
            name, _, number = part.rpartition("=")
            where = f"--queue-timeout {part.strip()}"
            try:
                cls = Priority.parse(name) if name else Priority.INTERACTIVE
            except ConfigurationError as exc:
                raise ConfigurationError(f"{where}: {exc}") from None
            try:
                seconds = float(number)
            except ValueError:
                seconds = math.nan
            if not math.isfinite(seconds) or seconds <= 0:
                raise ConfigurationError(
                    f"{where}: must be > 0, got {number.strip()!r} (seconds, as S or CLASS=S: "
                    "e.g. --queue-timeout 60 --queue-timeout batch=10,background=2)"
                )
            out[cls] = seconds
    return out


def _tenant(spec: str) -> TenantToken:
    """``NAME:CLASS:ENV[:WEIGHT]`` from --tenant: the token is read from the environment."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or not all(parts):
        raise ConfigurationError(
            "--tenant takes NAME:CLASS:ENV or NAME:CLASS:ENV:WEIGHT (e.g. "
            f"chat:interactive:CHAT_TOKEN:2), got {spec!r}"
        )
    name, cls, env = parts[:3]
    weight: float | None = None
    if len(parts) == 4:
        try:
            weight = float(parts[3])
        except ValueError:
            raise ConfigurationError(
                f"--tenant {name}: WEIGHT must be a positive number, got {parts[3]!r}"
            ) from None
    return TenantToken(
        tenant=name,
        priority=Priority.parse(cls),
        token=_secret_from_env(env, f"--tenant {name}"),
        weight=weight,
    )


def _weight_text(t: TenantToken, weights: Mapping[str, float]) -> str:
    weight = t.weight if t.weight is not None else weights.get(t.tenant, 1.0)
    return f"{weight:g}"


def describe_classes(
    config: ProxyConfig, min_share: float, weights: Mapping[str, float] | None = None
) -> str:
    """The classes and tenants the proxy serves, for its start-up lines (``weights``: the
    governor's tenant weights)."""
    weights = weights or {}
    timeouts = ", ".join(f"{p} {config.queue_timeout_for(p):g}s" for p in Priority)
    lines = [
        f"priority classes: interactive (default), batch and background each keep "
        f"{min_share:.0%} of admissions while they wait; ask with {PRIORITY_HEADER}: CLASS",
        f"queue timeouts (then a 429 with retry-after): {timeouts}",
    ]
    if config.tenants:
        lines.extend(
            f"tenant {t.tenant}: class {t.priority} or lower (fair share, weight "
            f"{_weight_text(t, weights)})"
            for t in config.tenants
        )
    else:
        lines.append("tenants: none bound to tokens (--tenant NAME:CLASS:ENV)")
    return "\n".join(f"{PROG}: {line}" for line in lines)


def _describe_keys(config: ProxyConfig) -> str:
    if config.api_key:
        how = f"the proxy holds the upstream key (sent as {config.provider} expects)"
    else:
        how = "each client's own Authorization is forwarded"
    token = (
        "clients must present the client token or a tenant's"
        if config.tokens_required
        else "no client token"
    )
    return f"{how}; {token}"


def _warn_exposure(config: ProxyConfig, port: int | None = None) -> None:
    if config.loopback_only or config.tokens_required:
        return
    where = f"{config.host}:{port if port is not None else config.port}"
    bar = "!" * 78
    what = (
        "anyone who can reach it spends YOUR upstream key"
        if config.api_key
        else "anyone who can reach it can use it (and its quota) as a relay"
    )
    sys.stderr.write(
        f"{bar}\n{PROG}: WARNING: listening on {where}, reachable from other "
        f"machines, WITHOUT a client token:\n  {what}.\n  Bind to 127.0.0.1 or pass "
        f"--client-token-env NAME.\n{bar}\n"
    )
    logging.getLogger("pacekeeper.proxy").warning("listening on %s without a client token", where)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or Ctrl-C, then drain; returns the exit code."""
    try:
        settings = load_settings(args.config)
        config = build_config(settings, args)
        governor = build_governor(settings, args)
    except ConfigurationError as exc:
        return _fail(str(exc))
    try:
        return _serve(config, governor)
    finally:
        backend = governor.backend
        close = getattr(backend, "close", None)
        if callable(close):
            close()


def _serve(config: ProxyConfig, governor: Governor) -> int:
    proxy = Proxy(config, governor)
    try:
        proxy.start()
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: cannot listen on {config.host}:{config.port}: {exc}\n")
        return EXIT_FAILED
    _warn_exposure(config, proxy.port)
    # This process is the proxy's alone: move what start-up made out of the collector's way,
    # so full collections (about 20 ms over every module's objects) stop stalling requests.
    gc.collect()
    gc.freeze()
    stop = threading.Event()
    interrupts = 0

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal interrupts
        interrupts += 1
        stop.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        print(f"{LISTENING_PREFIX}{proxy.base_url}", flush=True)
        shared = f"; limits shared through {governor.backend!r}" if governor.backend else ""
        sys.stderr.write(
            f"{PROG}: forwarding to {config.upstream}; {_describe_keys(config)}{shared}\n"
        )
        sys.stderr.write(
            describe_classes(config, governor.limits.min_share, governor.tenant_weights) + "\n"
        )
        # Wake up now and then: a signal handler only runs when this thread runs bytecode.
        while not stop.wait(0.2):
            if not proxy.running:
                sys.stderr.write(f"{PROG}: error: the server stopped unexpectedly\n")
                return EXIT_FAILED
        app = proxy.app
        sys.stderr.write(
            f"{PROG}: shutting down: {app.counters.in_progress} requests in progress get up to "
            f"{config.drain_timeout_s:g}s to finish (signal again to stop now)\n"
        )
        proxy.begin_stop()
        seen = interrupts
        while not proxy.wait(0.2):
            if interrupts > seen:
                sys.stderr.write(f"{PROG}: stopping now: cutting requests in flight\n")
                proxy.force_stop()
                seen = interrupts
        proxy.stop()
    except KeyboardInterrupt:  # signals not ours to handle (not the main thread)
        proxy.stop()
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
    sys.stderr.write(f"{PROG}: stopped\n")
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad flags give one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m pacekeeper.proxy``."""
    from pacekeeper.cli import add_global_flags, configure_logging

    parser = _Parser(prog=PROG)
    add_global_flags(parser, dest="verbose")
    configure_parser(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return run(args)
