"""SimulatorProcess and the `python -m pacekeeper.sim` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from pacekeeper.sim import (
    Faults,
    ModelLimits,
    Scenario,
    ScenarioError,
    Simulator,
    SimulatorProcess,
)
from pacekeeper.sim._cli import build_scenario, configure_parser, main
from pacekeeper.sim._process import _SRC_DIR, LISTENING_PREFIX

from .helpers import chat
from .loadgen import run_load


def test_process_from_a_scenario() -> None:
    scenario = Scenario(default=ModelLimits(rpm=60), faults=Faults(http_503=0.0), seed=4)
    sim = SimulatorProcess(scenario)
    with sim:
        assert sim.base_url == f"http://127.0.0.1:{sim.port}/v1"
        with httpx2.Client(base_url=sim.base_url) as http:
            first = http.post("/chat/completions", json=chat())
            second = http.post("/chat/completions", json=chat())
        assert (first.status_code, second.status_code) == (200, 429)
        stats = sim.stats()
        assert stats["by_status"] == {"200": 1, "429": 1}
        sim.reset_stats()
        assert sim.stats()["requests_received"] == 0
        toml_path = sim._toml_path
        assert toml_path is not None
        assert os.path.exists(toml_path)
    assert sim.returncode is None or not sim.running
    assert not os.path.exists(toml_path)  # the temporary scenario file is cleaned up


def test_process_from_cli_args_stops_cleanly_on_sigterm() -> None:
    sim = SimulatorProcess(["--tpm", "6000", "--headers", "none"]).start()
    try:
        with httpx2.Client(base_url=sim.base_url) as http:
            response = http.post("/chat/completions", json=chat())
        assert response.status_code == 200
        assert "x-ratelimit-limit-tokens" not in response.headers
        proc = sim._proc
        assert proc is not None
    finally:
        sim.stop()
    assert proc.returncode == 0


def test_process_start_failure_reports_the_error() -> None:
    with pytest.raises(RuntimeError, match=r"exited with code 2(.|\n)*--rpm"):
        SimulatorProcess(["--rpm", "-1"]).start()


def test_cli_sigint_exits_zero() -> None:
    env = dict(os.environ, PYTHONPATH=_SRC_DIR)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pacekeeper.sim", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(LISTENING_PREFIX + "http://127.0.0.1:")
        assert line.rstrip().endswith("/v1")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--rpm", "-5"], "argument --rpm: must be > 0"),
        (["--rpm", "abc"], "argument --rpm: expected a number"),
        (["--max-in-flight", "0"], "argument --max-in-flight: must be >= 1"),
        (["--fault-500", "1.5"], "argument --fault-500: must be in [0, 1]"),
        (["--capacity-change", "30"], "argument --capacity-change: expected AT_S:FACTOR"),
        (["--capacity-change", "30:0"], "argument --capacity-change: expected AT_S:FACTOR"),
        (["--headers", "bedrock"], "argument --headers: invalid choice"),
        (["--port", "70000"], "argument --port: must be in [0, 65535]"),
        (["--spread", "nan"], "argument --spread: expected a finite number"),
        (["--fault-500", "0.6", "--fault-drop", "0.6"], "fault rates must sum to <= 1"),
        (["--scenario", "/nonexistent/s.toml"], "/nonexistent/s.toml: cannot read"),
    ],
)
def test_cli_bad_flags_give_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        sys.exit(main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("pacekeeper sim: error: ")
    assert fragment in err


def test_cli_flags_build_the_scenario(tmp_path: Path) -> None:
    scenario_file = tmp_path / "s.toml"
    scenario_file.write_text('seed = 5\n[models."keep"]\nrpm = 10\n')
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    configure_parser(sub.add_parser("sim"))  # as the main `pacekeeper sim` command mounts it
    args = parser.parse_args(
        [
            "sim",
            "--scenario",
            str(scenario_file),
            "--model",
            "gpt-4o",
            "--rpm",
            "500",
            "--tpm",
            "30000",
            "--max-in-flight",
            "8",
            "--ttft-s",
            "0.5",
            "--fault-drop",
            "0.01",
            "--fault-insufficient-quota",
            "0.02",
            "--hang-s",
            "9",
            "--capacity-change",
            "30:0.5",
            "--capacity-change",
            "60:2",
            "--headers",
            "anthropic",
            "--require-api-key",
        ]
    )
    scenario = build_scenario(args)
    assert scenario.seed == 5
    assert scenario.models["keep"] == ModelLimits(rpm=10)
    assert scenario.models["gpt-4o"] == ModelLimits(rpm=500, tpm=30000, max_in_flight=8)
    assert scenario.default == ModelLimits()
    assert scenario.latency.ttft_s == 0.5
    assert scenario.faults == Faults(drop=0.01, insufficient_quota=0.02, hang_s=9)
    assert [(c.at_s, c.factor, c.model) for c in scenario.capacity_changes] == [
        (30, 0.5, "gpt-4o"),
        (60, 2, "gpt-4o"),
    ]
    assert scenario.rate_limit_headers == "anthropic"
    assert scenario.require_api_key
    everything = build_scenario(parser.parse_args(["sim", "--rpm", "60"]))
    assert everything.default == ModelLimits(rpm=60)  # no --model: limits apply to all


def test_cli_scenario_errors_are_scenario_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[default]\nrpm = 0\n")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    with pytest.raises(ScenarioError, match=r"bad\.toml: \[default\] rpm"):
        build_scenario(parser.parse_args(["--scenario", str(path)]))


def test_loadgen_smoke() -> None:
    """The throughput tool runs (its numbers are reported, never asserted)."""
    with Simulator() as sim:
        result = asyncio.run(run_load("127.0.0.1", sim.port, seconds=0.3, connections=4))
    assert result.requests > 0
    assert set(result.statuses) == {200}


def test_cli_port_in_use_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err
