"""Start-up stays cheap: what `import pacekeeper`, `import pacekeeper.sim` and
`pacekeeper --help` load is pinned, so a later feature cannot quietly give the gains back.

Each check runs in a fresh interpreter and counts modules, not milliseconds (the times are in
the benchmark's cost section). The budgets are today's counts plus a small margin: raise one
only as a decision, with the reason in the commit.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# New modules (beyond a bare interpreter's) each entry point may load.
IMPORT_BUDGET = 35  # measured 28 (typing, re, collections: what `typing` needs)
HELP_BUDGET = 65  # measured 54 (argparse, logging and their stdlib)

HEAVY = ("httpx2", "httpx", "bpe_openai", "tiktoken", "rich", "uvicorn", "redis", "anyio")

_PROBE = """
import json, sys
before = set(sys.modules)
{code}
after = set(sys.modules)
print(json.dumps(sorted(after - before)))
"""


def _loaded(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    modules: list[str] = json.loads(out.strip().splitlines()[-1])
    return modules


def _roots(modules: list[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_import_pacekeeper_loads_no_client_tokenizer_or_cli() -> None:
    modules = _loaded("import pacekeeper")
    assert not _roots(modules) & set(HEAVY), sorted(_roots(modules) & set(HEAVY))
    assert "argparse" not in modules
    ours = [name for name in modules if name.startswith("pacekeeper.")]
    assert ours == ["pacekeeper._version"], ours
    assert len(modules) <= IMPORT_BUDGET, (len(modules), modules)


def test_a_public_name_loads_its_module_on_first_use() -> None:
    modules = _loaded("import pacekeeper; pacekeeper.Limits; pacekeeper.RetryPolicy")
    assert "pacekeeper.core.config" in modules
    assert "pacekeeper.core.governor" not in modules
    assert not _roots(modules) & set(HEAVY)


def test_import_sim_loads_no_governor() -> None:
    modules = _loaded("import pacekeeper.sim")
    ours = {name for name in modules if name.startswith("pacekeeper.")}
    assert not {name for name in ours if not name.startswith("pacekeeper.sim")} - {
        "pacekeeper._version"
    }, sorted(ours)


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_loads_no_command_stack(argv: list[str]) -> None:
    code = (
        f"from pacekeeper.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    )
    modules = _loaded(code)
    assert not _roots(modules) & set(HEAVY), sorted(_roots(modules) & set(HEAVY))
    ours = sorted(name for name in modules if name.startswith("pacekeeper."))
    assert ours == ["pacekeeper._version", "pacekeeper.cli"], ours
    assert len(modules) <= HELP_BUDGET, (len(modules), modules)


def test_one_command_configures_only_itself() -> None:
    code = (
        "from pacekeeper.cli import main\n"
        "try:\n"
        "    main(['report', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    modules = _loaded(code)
    assert not any(name.startswith(("pacekeeper.sim", "pacekeeper.proxy")) for name in modules)
