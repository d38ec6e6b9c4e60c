"""The ``pacekeeper`` command: run, demo, sim, proxy, report (and their --help)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pacekeeper import __version__

__all__ = ["main"]


_VERBOSE_HELP = "log one line per request (-v), or per attempt and the server's own (-vv)"


def add_global_flags(parser: argparse.ArgumentParser, *, dest: str) -> None:
    """The flags every command takes, before or after its name (``-v``, ``--verbose``).

    The top-level parser and each subcommand count into different ``dest``s, since a
    subcommand's defaults would overwrite the top-level's value; :func:`verbosity` adds them.
    """
    parser.add_argument("-v", "--verbose", dest=dest, action="count", default=0, help=_VERBOSE_HELP)


def verbosity(args: argparse.Namespace) -> int:
    """How many -v were given, before and after the subcommand."""
    return int(getattr(args, "verbose", 0) or 0) + int(getattr(args, "sub_verbose", 0) or 0)


def configure_logging(level: int) -> None:
    """-v: pacekeeper's INFO lines (one per request); -vv: DEBUG (per attempt), and the HTTP
    server's own lines (uvicorn's start-up and access lines), off below -vv."""
    if level <= 0:
        return
    logging.basicConfig(
        level=logging.DEBUG if level > 1 else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    server_level = logging.INFO if level > 1 else logging.WARNING
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(server_level)


def _sub(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(name, **kwargs)
    add_global_flags(sub, dest="sub_verbose")
    return sub


# The subcommands and their one-line help. Each one's options are configured only when it is
# the command given (or when no command is known yet): `pacekeeper --help` and one command's
# run import none of the other commands' stacks (the simulator, the proxy, the report).
COMMANDS = {
    "run": "run a JSONL batch through any compatible endpoint",
    "demo": "a batch against the built-in simulator (no key)",
    "sim": "serve a rate-limited OpenAI-compatible simulator",
    "proxy": "a local OpenAI-compatible gateway for every program",
    "report": "an HTML report of a run's records (the --log file)",
}


def _configure(name: str, sub: argparse.ArgumentParser) -> None:
    if name == "run":
        from pacekeeper.batch import _cli as run_cli

        run_cli.configure_parser(sub)
    elif name == "demo":
        from pacekeeper import demo

        demo.configure_parser(sub)
    elif name == "sim":
        from pacekeeper.sim import _cli as sim_cli

        sim_cli.configure_parser(sub)
    elif name == "proxy":
        from pacekeeper.proxy import _cli as proxy_cli

        proxy_cli.configure_parser(sub)
    else:
        from pacekeeper.report import _cli as report_cli

        report_cli.configure_parser(sub)


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first argument that is not a flag), if known.

    >>> command_in(["-v", "proxy", "--upstream", "x"]), command_in(["--help"])
    ('proxy', None)
    """
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command``, only that subcommand's options are
    configured (the others are listed with their help, which is all ``--help`` shows)."""
    parser = argparse.ArgumentParser(
        prog="pacekeeper",
        description="Send thousands of requests to an OpenAI-compatible API as fast as its "
        "limits allow: pacing, adaptive concurrency, honest retries, exactly-once batches.",
    )
    parser.add_argument("--version", action="version", version=f"pacekeeper {__version__}")
    add_global_flags(parser, dest="verbose")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        sub = _sub(commands, name, help=help_text)
        if command is None or command == name:
            _configure(name, sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    command = command_in(argv)
    # Only the command given is configured; with none known (--help, --version, a typo)
    # none is, and argparse lists the commands or names the bad one.
    parser = build_parser(command or "")
    args = parser.parse_args(argv)
    args.verbose = verbosity(args)
    configure_logging(args.verbose)
    if args.command == "run":
        from pacekeeper.batch import _cli as run_cli

        return run_cli.run(args)
    if args.command == "demo":
        from pacekeeper import demo

        return demo.run(args)
    if args.command == "proxy":
        from pacekeeper.proxy import _cli as proxy_cli

        return proxy_cli.run(args)
    if args.command == "report":
        from pacekeeper.report import _cli as report_cli

        return report_cli.run(args)
    from pacekeeper.sim import _cli as sim_cli

    return sim_cli.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
