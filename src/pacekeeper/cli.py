"""The ``pacekeeper`` command: run, demo, sim, proxy, report (and their --help)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pacekeeper import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacekeeper",
        description="Send thousands of requests to an OpenAI-compatible API as fast as its "
        "limits allow: pacing, adaptive concurrency, honest retries, exactly-once batches.",
    )
    parser.add_argument("--version", action="version", version=f"pacekeeper {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log outcomes (-v) or attempts (-vv)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from pacekeeper.batch import _cli as run_cli

    run_cli.configure_parser(
        commands.add_parser("run", help="run a JSONL batch through any compatible endpoint")
    )

    from pacekeeper import demo

    demo.configure_parser(
        commands.add_parser("demo", help="a batch against the built-in simulator (no key)")
    )

    from pacekeeper.sim import _cli as sim_cli

    sim_cli.configure_parser(
        commands.add_parser("sim", help="serve a rate-limited OpenAI-compatible simulator")
    )

    from pacekeeper.proxy import _cli as proxy_cli

    proxy_cli.configure_parser(
        commands.add_parser("proxy", help="a local OpenAI-compatible gateway for every program")
    )

    from pacekeeper.report import _cli as report_cli

    report_cli.configure_parser(
        commands.add_parser("report", help="an HTML report of a run's records (the --log file)")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=sys.stderr,
        )
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
