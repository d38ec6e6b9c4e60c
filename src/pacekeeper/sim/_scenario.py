"""What the simulator simulates: per-model limits, latency, faults, and the TOML form of it all.

Every dataclass validates itself on construction, so a bad value is caught the same way whether
it comes from Python, from the CLI or from a TOML file; `Scenario.from_toml` only adds the file
name and the table to the message.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast, get_args

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

HeaderMode = Literal[
    "openai",
    "window",
    "azure",
    "anthropic",
    "groq",
    "gemini",
    "gateway",
    "openrouter",
    "ietf",
    "none",
]
HEADER_MODES: tuple[HeaderMode, ...] = get_args(HeaderMode)
OtpmCounting = Literal["max_tokens", "generated"]
OTPM_COUNTINGS: tuple[OtpmCounting, ...] = ("max_tokens", "generated")

#: Fault kinds that depend on the attempt number: a retry may fare differently.
TRANSIENT_FAULTS: tuple[str, ...] = (
    "http_500",
    "http_502",
    "http_503",
    "http_529",
    "drop",
    "hang",
    "malformed",
    "busy_429",
)
#: Fault kinds that depend on the request identity only: a retry fares the same.
PERMANENT_FAULTS: tuple[str, ...] = ("insufficient_quota", "invalid_request")


class ScenarioError(ValueError):
    """A scenario value or file is invalid. The message names the file, the key and the problem."""


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `rpm = true` is a mistake, not 1 request per minute.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(
    name: str,
    value: object,
    *,
    positive: bool = False,
    maximum: float | None = None,
    optional: bool = False,
) -> None:
    if value is None and optional:
        return
    bound = "a positive number" if positive else "a number >= 0"
    if maximum is not None:
        bound = f"a number in [0, {maximum:g}]"
    if optional:
        bound += " (or omitted)"
    ok = _is_number(value) and math.isfinite(cast("float", value))
    if ok:
        number = cast("float", value)
        ok = number > 0 if positive else number >= 0
        if maximum is not None and number > maximum:
            ok = False
    if not ok:
        raise ValueError(f"{name}: must be {bound}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelLimits:
    """Rate limits of one model; every limit is optional (None = unlimited).

    rpm/tpm are per-minute budgets enforced by continuously refilling buckets whose capacity is
    `burst_s` seconds worth of the budget (rpm 1200, burst_s 1.0 -> 20 requests, refilling 20/s).
    With `window_s` set they are enforced in fixed windows instead: each window of `window_s`
    seconds (counted from server start) admits `window_s` seconds worth of the budget, and the
    count starts over when the next window begins (Azure's 1 s / 10 s windows).

    `input_tpm` and `output_tpm` are Anthropic's separate limits: input tokens (the prompt
    estimate) are charged at admission; output tokens are charged when they are generated, and
    a request is admitted only while the output bucket is not in debt.

    `rpd` and `tpd` are daily budgets (requests and tokens per day), counted in fixed days of
    `day_s` seconds (86400 by default; shorter in tests) aligned to Unix time, so a real day
    ends at midnight UTC. A daily 429's retry-after is the time to the day's end.
    With `day_refill` they are instead buckets holding a day's budget that refill
    continuously at budget / `day_s` (Groq): what was used comes back a little at a time, and
    a reset header states the time to regain it ("2m59.56s" after 30 of 14400), not midnight.
    """

    rpm: float | None = None
    tpm: float | None = None
    max_in_flight: int | None = None
    burst_s: float = 1.0
    window_s: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None
    rpd: float | None = None
    tpd: float | None = None
    day_s: float = 86400.0
    day_refill: bool = False

    def __post_init__(self) -> None:
        _check_number("rpm", self.rpm, positive=True, optional=True)
        _check_number("rpd", self.rpd, positive=True, optional=True)
        _check_number("tpd", self.tpd, positive=True, optional=True)
        _check_number("day_s", self.day_s, positive=True)
        if not isinstance(self.day_refill, bool):
            raise TypeError(f"day_refill: must be true or false, got {self.day_refill!r}")
        _check_number("tpm", self.tpm, positive=True, optional=True)
        _check_number("window_s", self.window_s, positive=True, optional=True)
        _check_number("input_tpm", self.input_tpm, positive=True, optional=True)
        _check_number("output_tpm", self.output_tpm, positive=True, optional=True)
        if self.max_in_flight is not None and (
            not isinstance(self.max_in_flight, int)
            or isinstance(self.max_in_flight, bool)
            or self.max_in_flight < 1
        ):
            raise ValueError(
                f"max_in_flight: must be an integer >= 1 (or omitted), got {self.max_in_flight!r}"
            )
        _check_number("burst_s", self.burst_s, positive=True)

    @property
    def unlimited(self) -> bool:
        """True when no limit at all applies (the request path then skips the limiter)."""
        return (
            self.rpm is None
            and self.tpm is None
            and self.max_in_flight is None
            and self.input_tpm is None
            and self.output_tpm is None
            and self.rpd is None
            and self.tpd is None
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Latency:
    """Reply timing: `ttft_s` before the first token, then `per_token_s` per completion token.

    Both are multiplied by a per-request factor exp(spread * z), z a standard normal drawn from
    the seed and the request identity, so the median is the nominal time and the same request
    takes the same time on every run. spread 0 disables the variation.
    """

    ttft_s: float = 0.0
    per_token_s: float = 0.0
    spread: float = 0.0

    def __post_init__(self) -> None:
        _check_number("ttft_s", self.ttft_s)
        _check_number("per_token_s", self.per_token_s)
        _check_number("spread", self.spread, maximum=5.0)

    @property
    def zero(self) -> bool:
        """True when replies are instantaneous."""
        return self.ttft_s == 0 and self.per_token_s == 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Faults:
    """Probabilities in [0, 1] of each injected fault, plus how long a hang lasts.

    Transient faults (5xx, 529, drop, hang, malformed, busy_429) are drawn per attempt; their
    rates must sum to <= 1. Permanent faults (insufficient_quota, invalid_request) are drawn per
    request identity, so a retried bad request stays bad; their rates must also sum to <= 1.

    `busy_429` is a 429 that the client's own rate does not cause: the provider's shared
    capacity is busy (Gemini's dynamic shared quota, an Azure deployment at capacity, a gateway
    passing on an upstream's 429). It is the header mode's rate-limit 429 (its body and code),
    with `busy_429_retry_after_s` as `retry-after` in whole seconds (None: no hint), and the
    rate-limit headers (showing the room the client's budget still has) only when
    `busy_429_headers` is true. The request was admitted first: it counts against the limits.
    """

    http_500: float = 0.0
    http_502: float = 0.0
    http_503: float = 0.0
    http_529: float = 0.0
    drop: float = 0.0
    hang: float = 0.0
    malformed: float = 0.0
    insufficient_quota: float = 0.0
    invalid_request: float = 0.0
    busy_429: float = 0.0
    hang_s: float = 3600.0
    busy_429_retry_after_s: float | None = None
    busy_429_headers: bool = False

    def __post_init__(self) -> None:
        for name in TRANSIENT_FAULTS + PERMANENT_FAULTS:
            _check_number(name, getattr(self, name), maximum=1.0)
        _check_number("hang_s", self.hang_s, positive=True)
        _check_number("busy_429_retry_after_s", self.busy_429_retry_after_s, optional=True)
        if not isinstance(self.busy_429_headers, bool):
            raise TypeError(
                f"busy_429_headers: must be true or false, got {self.busy_429_headers!r}"
            )
        for group, label in ((TRANSIENT_FAULTS, "transient"), (PERMANENT_FAULTS, "permanent")):
            total = sum(float(getattr(self, name)) for name in group)
            if total > 1.0 + 1e-9:
                raise ValueError(
                    f"{'+'.join(group)}: {label} fault rates must sum to <= 1, got {total:g}"
                )

    @property
    def any(self) -> bool:
        """True when at least one fault can fire."""
        return any(getattr(self, name) > 0 for name in TRANSIENT_FAULTS + PERMANENT_FAULTS)


@dataclass(frozen=True, kw_only=True, slots=True)
class CapacityChange:
    """At `at_s` seconds after server start, multiply rpm, tpm and max_in_flight by `factor`.

    `model` None applies the change to every model. Changes compound: two changes of 0.5
    leave a quarter of the capacity.
    """

    at_s: float
    factor: float
    model: str | None = None

    def __post_init__(self) -> None:
        _check_number("at_s", self.at_s)
        _check_number("factor", self.factor, positive=True)
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError(f"model: must be a non-empty string (or omitted), got {self.model!r}")


DEFAULT_IN_FLIGHT_MESSAGE = (
    "Too many concurrent requests for {model}: limit {limit} in flight. "
    "Please retry after a request in flight completes."
)


@dataclass(frozen=True, kw_only=True, slots=True)
class InFlightReply:
    """How a request beyond `max_in_flight` is answered: providers and gateways differ.

    `message` may use `{model}` and `{limit}`. `code` is the error code in the body (OpenAI
    shape; in anthropic mode the body is Anthropic's and `code` is its error type).
    `retry_after_s` None sends no retry-after; `rate_limit_headers` False leaves out the
    informational rate-limit headers on these 429s. `stated` True states the cap on every
    answer, as LiteLLM's proxy states a key's `max_parallel_requests`
    (`x-ratelimit-api_key-limit-max_parallel_requests`, and what is left of it).
    """

    message: str = DEFAULT_IN_FLIGHT_MESSAGE
    code: str = "rate_limit_exceeded"
    retry_after_s: float | None = None
    rate_limit_headers: bool = True
    stated: bool = False

    def __post_init__(self) -> None:
        for name in ("message", "code"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name}: must be a non-empty string, got {value!r}")
        _check_number("retry_after_s", self.retry_after_s, optional=True)
        for name in ("rate_limit_headers", "stated"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Queueing:
    """A self-hosted server (vLLM-like): never a 429, but at most `capacity` requests are
    processed at once; the others wait in a FIFO queue (their latency grows with it).

    `slowdown` > 0 also makes the server less efficient while requests queue, as batching
    servers are under memory pressure: a request that starts processing while `q` others wait
    takes (1 + slowdown * min(1, q / capacity)) times its nominal latency, so throughput falls
    by up to 1 / (1 + slowdown) past capacity.

    `keep_alive_s` set: a request that has to wait is answered at once and held open, as
    DeepSeek documents for its servers under load: status 200 and its headers straight away,
    then a blank line (JSON answers) or an SSE comment ``: keep-alive`` (streams) every
    `keep_alive_s` until the answer's first bytes. The time to the headers then says nothing
    of the load; an error found once the 200 is out can only cut the connection.
    """

    capacity: int
    slowdown: float = 0.0
    keep_alive_s: float | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.capacity, int)
            or isinstance(self.capacity, bool)
            or self.capacity < 1
        ):
            raise ValueError(f"capacity: must be an integer >= 1, got {self.capacity!r}")
        _check_number("slowdown", self.slowdown)
        _check_number("keep_alive_s", self.keep_alive_s, positive=True, optional=True)


def _default_models() -> dict[str, ModelLimits]:
    return {}


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """Everything the simulator does, as one immutable value.

    `models` maps a model name to its limits; `default` applies (with separate buckets per
    model) to every model not listed. Treat `models` as read-only.
    """

    models: dict[str, ModelLimits] = field(default_factory=_default_models)
    default: ModelLimits = field(default_factory=ModelLimits)
    latency: Latency = field(default_factory=Latency)
    faults: Faults = field(default_factory=Faults)
    rate_limit_headers: HeaderMode = "openai"
    capacity_changes: tuple[CapacityChange, ...] = ()
    seed: int = 0
    require_api_key: bool = False
    in_flight_reply: InFlightReply = field(default_factory=InFlightReply)
    queueing: Queueing | None = None
    #: Whether cached prompt tokens (`prompt_tokens_details.cached_tokens`) count against tpm:
    #: True at OpenAI, False at providers such as Groq.
    charge_cached_tokens: bool = True
    #: How an output-tokens-per-minute limit (`output_tpm`) counts: "max_tokens" reserves a
    #: request's max_tokens at admission and settles it to the tokens generated at the end
    #: (what Anthropic documents); "generated" takes nothing at admission, admits while the
    #: meter is not in debt, and charges output once generated.
    otpm_counting: OtpmCounting = "max_tokens"

    def __post_init__(self) -> None:
        if not isinstance(self.models, Mapping):
            raise TypeError(
                f"models: must be a mapping of name to ModelLimits, got {self.models!r}"
            )
        for name, limits in self.models.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"models: model names must be non-empty strings, got {name!r}")
            if not isinstance(limits, ModelLimits):
                raise TypeError(f"models.{name}: must be a ModelLimits, got {limits!r}")
        for name, value, kind in (
            ("default", self.default, ModelLimits),
            ("latency", self.latency, Latency),
            ("faults", self.faults, Faults),
            ("in_flight_reply", self.in_flight_reply, InFlightReply),
        ):
            if not isinstance(value, kind):
                raise TypeError(f"{name}: must be a {kind.__name__}, got {value!r}")
        if self.queueing is not None and not isinstance(self.queueing, Queueing):
            raise TypeError(f"queueing: must be a Queueing (or None), got {self.queueing!r}")
        if self.rate_limit_headers not in HEADER_MODES:
            raise ValueError(
                f"rate_limit_headers: must be one of {', '.join(HEADER_MODES)}, "
                f"got {self.rate_limit_headers!r}"
            )
        if not isinstance(self.capacity_changes, tuple) or not all(
            isinstance(c, CapacityChange) for c in self.capacity_changes
        ):
            raise TypeError(
                "capacity_changes: must be a tuple of CapacityChange, "
                f"got {self.capacity_changes!r}"
            )
        if (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not -(2**63) <= self.seed < 2**63
        ):
            # 64-bit so that every scenario can be written to TOML and read back.
            raise ValueError(f"seed: must be a 64-bit integer, got {self.seed!r}")
        if not isinstance(self.require_api_key, bool):
            raise TypeError(f"require_api_key: must be true or false, got {self.require_api_key!r}")
        if self.otpm_counting not in OTPM_COUNTINGS:
            raise ValueError(
                f"otpm_counting: must be one of {', '.join(OTPM_COUNTINGS)}, "
                f"got {self.otpm_counting!r}"
            )
        if not isinstance(self.charge_cached_tokens, bool):
            raise TypeError(
                f"charge_cached_tokens: must be true or false, got {self.charge_cached_tokens!r}"
            )

    def limits_for(self, model: str) -> ModelLimits:
        """The limits that apply to `model` (its own entry, else `default`)."""
        return self.models.get(model, self.default)

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Load a scenario from a TOML file (format: docs/SIMULATOR.md).

        Raises ScenarioError naming the file, the key and the problem.
        """
        source = str(path)
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"{source}: cannot read: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"{source}: invalid TOML: {exc}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<scenario>") -> Scenario:
        """Build a scenario from the parsed TOML structure (nested dicts and lists)."""
        return _scenario_from_mapping(data, source)

    def to_toml(self) -> str:
        """This scenario as TOML text that `from_toml` reads back to an equal Scenario."""
        return _scenario_to_toml(self)


# --- TOML mapping -------------------------------------------------------------------------

_TOP_LEVEL_SCALARS = (
    "profile",
    "seed",
    "rate_limit_headers",
    "require_api_key",
    "charge_cached_tokens",
    "otpm_counting",
)
_TOP_LEVEL_TABLES = (
    "default",
    "models",
    "latency",
    "faults",
    "capacity_changes",
    "in_flight_reply",
    "queueing",
)


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _build(
    cls: type[Any], table: object, where: str, source: str, base: object | None = None
) -> Any:
    """`cls` from a TOML table; with `base` (a profile's value) the table's keys override it."""
    if not isinstance(table, Mapping):
        raise ScenarioError(f"{source}: [{where}]: must be a table, got {table!r}")
    known = _field_names(cls)
    for key in table:
        if key not in known:
            raise ScenarioError(
                f"{source}: [{where}]: unknown key {key!r} (known keys: {', '.join(known)})"
            )
    if base is not None:
        table = {**{name: getattr(base, name) for name in known}, **table}
    try:
        return cls(**table)
    except ValueError as exc:
        raise ScenarioError(f"{source}: [{where}] {exc}") from None
    except TypeError as exc:  # a required key is missing
        missing = str(exc).partition("argument")[2].strip(": ") or str(exc)
        raise ScenarioError(f"{source}: [{where}]: missing required key {missing}") from None


def _scenario_from_mapping(data: Mapping[str, Any], source: str) -> Scenario:
    for key in data:
        if key not in _TOP_LEVEL_SCALARS + _TOP_LEVEL_TABLES:
            known = ", ".join(_TOP_LEVEL_SCALARS + _TOP_LEVEL_TABLES)
            raise ScenarioError(f"{source}: unknown top-level key {key!r} (known keys: {known})")
    kwargs: dict[str, Any] = {
        key: data[key] for key in _TOP_LEVEL_SCALARS if key in data and key != "profile"
    }
    base: Scenario | None = None
    if "profile" in data:
        # A profile drawn with the file's seed is the starting point; the file's keys
        # override it, table by table and key by key.
        from ._profiles import draw_profile  # the profiles build on this module

        seed = data.get("seed", 0)
        try:
            base = draw_profile(data["profile"], seed if isinstance(seed, int) else 0).scenario
        except (KeyError, TypeError) as exc:
            raise ScenarioError(f"{source}: profile: {exc.args[0] if exc.args else exc}") from None
        kwargs = {
            **{f.name: getattr(base, f.name) for f in fields(Scenario)},
            **kwargs,
        }
    for key, cls in (
        ("default", ModelLimits),
        ("latency", Latency),
        ("faults", Faults),
        ("in_flight_reply", InFlightReply),
        ("queueing", Queueing),
    ):
        if key in data:
            kwargs[key] = _build(
                cls, data[key], key, source, None if base is None else getattr(base, key)
            )
    if "models" in data:
        models = data["models"]
        if not isinstance(models, Mapping):
            raise ScenarioError(f"{source}: [models]: must be a table of tables, got {models!r}")
        kwargs["models"] = {
            **(base.models if base is not None else {}),
            **{
                name: _build(
                    ModelLimits,
                    table,
                    f"models.{json.dumps(name)}",
                    source,
                    None if base is None else base.models.get(name),
                )
                for name, table in models.items()
            },
        }
    if "capacity_changes" in data:
        changes = data["capacity_changes"]
        if not isinstance(changes, list):
            raise ScenarioError(
                f"{source}: capacity_changes: must be an array of tables "
                f"([[capacity_changes]]), got {changes!r}"
            )
        kwargs["capacity_changes"] = tuple(
            _build(CapacityChange, table, f"capacity_changes[{i}]", source)
            for i, table in enumerate(changes)
        )
    try:
        return Scenario(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{source}: {exc}") from None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr of a finite float is valid TOML ("1e-05", "0.25")
    # A JSON string literal is a valid TOML basic string.
    return json.dumps(value)


def _toml_table(header: str, obj: object, defaults: object) -> list[str]:
    lines = [
        f"{f.name} = {_toml_value(getattr(obj, f.name))}"
        for f in fields(cast("Any", obj))
        if getattr(obj, f.name) is not None and getattr(obj, f.name) != getattr(defaults, f.name)
    ]
    return [f"[{header}]", *lines, ""] if lines else []


def _scenario_to_toml(sc: Scenario) -> str:
    lines = [
        f"seed = {sc.seed}",
        f"rate_limit_headers = {_toml_value(sc.rate_limit_headers)}",
        f"require_api_key = {_toml_value(sc.require_api_key)}",
        f"charge_cached_tokens = {_toml_value(sc.charge_cached_tokens)}",
        f"otpm_counting = {_toml_value(sc.otpm_counting)}",
        "",
    ]
    lines += _toml_table("default", sc.default, ModelLimits())
    lines += _toml_table("latency", sc.latency, Latency())
    lines += _toml_table("faults", sc.faults, Faults())
    lines += _toml_table("in_flight_reply", sc.in_flight_reply, InFlightReply())
    if sc.queueing is not None:
        # capacity has no default, so it is always written.
        lines += ["[queueing]", f"capacity = {sc.queueing.capacity}"]
        lines.append(f"slowdown = {_toml_value(sc.queueing.slowdown)}")
        if sc.queueing.keep_alive_s is not None:
            lines.append(f"keep_alive_s = {_toml_value(sc.queueing.keep_alive_s)}")
        lines.append("")
    for name, limits in sc.models.items():
        header = f"models.{json.dumps(name)}"
        # An all-default model still needs its (empty) table so it round-trips.
        lines += _toml_table(header, limits, ModelLimits()) or [f"[{header}]", ""]
    for change in sc.capacity_changes:
        lines.append("[[capacity_changes]]")
        lines.append(f"at_s = {_toml_value(change.at_s)}")
        lines.append(f"factor = {_toml_value(change.factor)}")
        if change.model is not None:
            lines.append(f"model = {_toml_value(change.model)}")
        lines.append("")
    return "\n".join(lines)
