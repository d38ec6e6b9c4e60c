"""Global flags (-v) work on either side of the subcommand, for every subcommand."""

from __future__ import annotations

import pytest

from pacekeeper.cli import build_parser, verbosity

SUBCOMMANDS = {
    "run": ["run", "in.jsonl"],
    "demo": ["demo"],
    "sim": ["sim"],
    "proxy": ["proxy", "--upstream", "http://127.0.0.1:9/v1"],
    "report": ["report", "records.jsonl"],
}


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
@pytest.mark.parametrize(
    ("where", "expected"),
    [("none", 0), ("before", 1), ("after", 1), ("both", 2), ("after-vv", 2)],
)
def test_verbose_on_either_side(name: str, where: str, expected: int) -> None:
    argv = list(SUBCOMMANDS[name])
    if where == "before":
        argv = ["-v", *argv]
    elif where == "after":
        argv = [*argv, "-v"]
    elif where == "both":
        argv = ["-v", *argv, "--verbose"]
    elif where == "after-vv":
        argv = [*argv, "-vv"]
    args = build_parser().parse_args(argv)
    assert args.command == name
    assert verbosity(args) == expected
