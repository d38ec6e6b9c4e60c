"""`python -m pacekeeper.sim`: the simulator from the command line.

`configure_parser` and `run` are reusable, so `pacekeeper sim` can mount the same options.
Flags override a --scenario file; limits apply to --model if given, else to every model.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ._process import LISTENING_PREFIX
from ._profiles import PROFILES, draw_profile
from ._scenario import (
    HEADER_MODES,
    OTPM_COUNTINGS,
    CapacityChange,
    Faults,
    Latency,
    ModelLimits,
    Queueing,
    Scenario,
    ScenarioError,
)
from ._server import Simulator

__all__ = ["build_scenario", "configure_parser", "main", "run"]

PROG = "pacekeeper sim"

# flag suffix -> Faults field
_FAULT_FLAGS = {
    "500": "http_500",
    "502": "http_502",
    "503": "http_503",
    "529": "http_529",
    "drop": "drop",
    "hang": "hang",
    "malformed": "malformed",
    "busy-429": "busy_429",
    "insufficient-quota": "insufficient_quota",
    "invalid-request": "invalid_request",
}


def _number(*, positive: bool = False, maximum: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be in [0, {maximum:g}], got {text!r}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _capacity_change(text: str) -> tuple[float, float]:
    problem = argparse.ArgumentTypeError(
        f"expected AT_S:FACTOR with AT_S >= 0 and FACTOR > 0 (e.g. 30:0.5), got {text!r}"
    )
    at_text, sep, factor_text = text.partition(":")
    if not sep:
        raise problem
    try:
        change = CapacityChange(at_s=float(at_text), factor=float(factor_text))
    except ValueError:
        raise problem from None
    return change.at_s, change.factor


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to `parser` (for `python -m pacekeeper.sim` and the main CLI)."""
    parser.description = (
        "A rate-limited OpenAI-compatible HTTP server with fault injection, "
        "for testing clients without a key or network."
    )
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 = any)")
    serve.add_argument(
        "--scenario", metavar="FILE.toml", help="load a scenario file; flags below override it"
    )
    serve.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        help="start from a provider profile drawn with --seed (flags below override it): "
        + "; ".join(f"{name}: {p.summary}" for name, p in PROFILES.items()).replace("%", "%%"),
    )
    serve.add_argument(
        "--seed", type=_seed, help="seed of every fault and latency draw (and of --profile)"
    )
    serve.add_argument(
        "--require-api-key",
        action="store_true",
        default=None,
        help="answer 401 to requests without their dialect's key header (Authorization; "
        "x-api-key on /v1/messages; api-key or Authorization on Azure routes)",
    )

    limits = parser.add_argument_group("limits (per model)")
    limits.add_argument(
        "--model", metavar="NAME", help="apply the limit flags to this model only (default: all)"
    )
    limits.add_argument("--rpm", type=_number(positive=True), help="requests per minute")
    limits.add_argument("--tpm", type=_number(positive=True), help="tokens per minute")
    limits.add_argument(
        "--max-in-flight", type=_positive_int, metavar="N", help="concurrent requests cap"
    )
    limits.add_argument(
        "--input-tpm", type=_number(positive=True), help="input tokens per minute (Anthropic)"
    )
    limits.add_argument(
        "--output-tpm",
        type=_number(positive=True),
        help="output tokens per minute (Anthropic); see --otpm-counting",
    )
    limits.add_argument(
        "--otpm-counting",
        choices=OTPM_COUNTINGS,
        default=None,
        help="how --output-tpm counts: max_tokens reserved at admission and settled to the "
        "tokens generated (default, as Anthropic documents), or generated tokens only",
    )
    limits.add_argument("--rpd", type=_number(positive=True), help="requests per day")
    limits.add_argument("--tpd", type=_number(positive=True), help="tokens per day")
    limits.add_argument(
        "--day-s",
        type=_number(positive=True),
        metavar="S",
        help="length of a day for --rpd/--tpd, seconds (default 86400; days align to Unix time)",
    )
    limits.add_argument(
        "--day-refill",
        action="store_const",
        const=True,
        default=None,
        help="--rpd/--tpd refill continuously over the day (Groq) instead of resetting at its end",
    )
    limits.add_argument(
        "--cached-tokens-free",
        dest="charge_cached_tokens",
        action="store_false",
        default=None,
        help="cached prompt tokens do not count against tpm (as at Groq; OpenAI counts them)",
    )
    limits.add_argument(
        "--window-s",
        type=_number(positive=True),
        metavar="S",
        help="enforce rpm/tpm in fixed windows of S seconds instead of buckets",
    )
    limits.add_argument(
        "--burst-s",
        type=_number(positive=True),
        metavar="S",
        help="bucket capacity in seconds of budget (default 1.0)",
    )
    limits.add_argument(
        "--capacity-change",
        type=_capacity_change,
        action="append",
        metavar="AT_S:FACTOR",
        help="at AT_S seconds after start multiply rpm/tpm/max-in-flight by FACTOR (repeatable)",
    )
    limits.add_argument(
        "--headers",
        choices=HEADER_MODES,
        help="rate-limit header style (default openai; none = bare 429s)",
    )

    limits.add_argument(
        "--queue-capacity",
        type=_positive_int,
        metavar="N",
        help="a queueing server (no 429s): process N requests at once, queue the rest",
    )
    limits.add_argument(
        "--queue-slowdown",
        type=_number(),
        metavar="X",
        help="with --queue-capacity: up to (1 + X) times slower while requests queue",
    )
    limits.add_argument(
        "--queue-keep-alive-s",
        type=_number(positive=True),
        metavar="S",
        help=(
            "with --queue-capacity: answer a request that must wait at once (200) and hold it "
            "open with a blank line or ': keep-alive' every S seconds, as DeepSeek does"
        ),
    )

    latency = parser.add_argument_group("latency")
    latency.add_argument(
        "--ttft-s", type=_number(), metavar="S", help="time to first token, seconds (default 0)"
    )
    latency.add_argument(
        "--per-token-s",
        type=_number(),
        metavar="S",
        help="time per completion token, seconds (default 0)",
    )
    latency.add_argument(
        "--spread",
        type=_number(maximum=5.0),
        metavar="X",
        help="lognormal spread of latency (0 = none; 0.3 = typical)",
    )

    faults = parser.add_argument_group("faults (rates in [0, 1])")
    for suffix, field in _FAULT_FLAGS.items():
        faults.add_argument(
            f"--fault-{suffix}",
            dest=f"fault_{field}",
            type=_number(maximum=1.0),
            metavar="RATE",
            help=f"rate of {field} faults",
        )
    faults.add_argument(
        "--hang-s",
        type=_number(positive=True),
        metavar="S",
        help="seconds a hang lasts before a 504 (default 3600)",
    )
    faults.add_argument(
        "--busy-429-retry-after-s",
        type=_number(),
        metavar="S",
        help="retry-after of the busy_429 fault's 429s, in whole seconds (default: none)",
    )
    faults.add_argument(
        "--busy-429-headers",
        action="store_true",
        default=None,
        help="send the rate-limit headers (the room left) on the busy_429 fault's 429s",
    )


def _replace(obj: Any, **changes: Any) -> Any:
    given = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(obj, **given) if given else obj


def build_scenario(args: argparse.Namespace) -> Scenario:
    """The Scenario described by parsed arguments (raises ScenarioError if it is invalid)."""
    if args.profile and args.scenario:
        raise ScenarioError("--profile and --scenario are exclusive: choose one starting point")
    if args.profile:
        scenario = draw_profile(args.profile, args.seed or 0).scenario
    else:
        scenario = Scenario.from_toml(args.scenario) if args.scenario else Scenario()
    try:
        limit_flags = {
            "rpm": args.rpm,
            "tpm": args.tpm,
            "max_in_flight": args.max_in_flight,
            "burst_s": args.burst_s,
            "window_s": args.window_s,
            "input_tpm": args.input_tpm,
            "output_tpm": args.output_tpm,
            "rpd": args.rpd,
            "tpd": args.tpd,
            "day_s": args.day_s,
            "day_refill": args.day_refill,
        }
        models = dict(scenario.models)
        default = scenario.default
        if args.model:
            models[args.model] = _replace(models.get(args.model, ModelLimits()), **limit_flags)
        else:
            default = _replace(default, **limit_flags)
        latency: Latency = _replace(
            scenario.latency,
            ttft_s=args.ttft_s,
            per_token_s=args.per_token_s,
            spread=args.spread,
        )
        fault_changes = {f: getattr(args, f"fault_{f}") for f in _FAULT_FLAGS.values()}
        faults: Faults = _replace(
            scenario.faults,
            hang_s=args.hang_s,
            busy_429_retry_after_s=args.busy_429_retry_after_s,
            busy_429_headers=args.busy_429_headers,
            **fault_changes,
        )
        changes = scenario.capacity_changes + tuple(
            CapacityChange(at_s=at_s, factor=factor, model=args.model or None)
            for at_s, factor in args.capacity_change or ()
        )
        queueing = scenario.queueing
        if args.queue_capacity is not None:
            queueing = (
                Queueing(capacity=args.queue_capacity)
                if queueing is None
                else dataclasses.replace(queueing, capacity=args.queue_capacity)
            )
        queue_flags = {"slowdown": args.queue_slowdown, "keep_alive_s": args.queue_keep_alive_s}
        if queueing is not None:
            queueing = _replace(queueing, **queue_flags)
        elif args.queue_slowdown is not None:
            raise ValueError("--queue-slowdown needs --queue-capacity")
        elif args.queue_keep_alive_s is not None:
            raise ValueError("--queue-keep-alive-s needs --queue-capacity")
        result: Scenario = _replace(
            scenario,
            queueing=queueing,
            models=models,
            default=default,
            latency=latency,
            faults=faults,
            capacity_changes=changes,
            rate_limit_headers=args.headers,
            seed=args.seed,
            require_api_key=args.require_api_key,
            charge_cached_tokens=args.charge_cached_tokens,
            otpm_counting=args.otpm_counting,
        )
    except (ValueError, TypeError) as exc:
        raise ScenarioError(str(exc)) from None
    return result


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit code (0 after a clean stop)."""
    try:
        scenario = build_scenario(args)
    except ScenarioError as exc:
        return _error(str(exc))
    if args.profile:
        draw = draw_profile(args.profile, args.seed or 0)
        print(
            f"{PROG}: profile {args.profile} (seed {args.seed or 0}): {draw.summary}",
            file=sys.stderr,
        )
    simulator = Simulator(scenario, host=args.host, port=args.port)
    try:
        simulator.start()
    except OSError as exc:
        print(f"{PROG}: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda _signum, _frame: stop.set())
    try:
        print(f"{LISTENING_PREFIX}{simulator.base_url}", flush=True)
        # Wake up now and then: a signal handler only runs when this thread runs bytecode.
        while not stop.wait(0.2):
            if not simulator.running:
                print(f"{PROG}: error: the server stopped unexpectedly", file=sys.stderr)
                return 1
    except KeyboardInterrupt:  # signals not ours to handle (not the main thread)
        pass
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
        simulator.stop()
    return 0


class _Parser(argparse.ArgumentParser):
    """Bad flags give one line on stderr (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pacekeeper.sim`."""
    parser = _Parser(prog=PROG)
    configure_parser(parser)
    return run(parser.parse_args(argv))
