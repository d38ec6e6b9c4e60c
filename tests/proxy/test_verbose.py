"""``pacekeeper proxy ... -v``: accepted after the subcommand; one line per request, no
uvicorn lines (those come with -vv)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2

from pacekeeper.proxy._cli import LISTENING_PREFIX

from .conftest import StartSim

SRC = str(Path(__file__).resolve().parents[2] / "src")
MODEL = "gpt-4o-mini"
JSON = {"content-type": "application/json"}


def serve_and_log(sim_url: str, *flags: str, requests: int = 3) -> str:
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pacekeeper", "proxy", "--upstream", sim_url]
    command += ["--port", "0", *flags]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(LISTENING_PREFIX), line + (proc.stderr.read() if proc.stderr else "")
        base_url = line[len(LISTENING_PREFIX) :].strip()
        with httpx2.Client(base_url=base_url, timeout=10) as client:
            for i in range(requests):
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
                assert client.post("/chat/completions", json=body).status_code == 200
            refused = client.post("/chat/completions", content=b"{", headers=JSON)
            assert refused.status_code == 400
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.stderr.read() if proc.stderr else ""


def test_v_after_the_subcommand_logs_one_line_per_request(start_sim: StartSim) -> None:
    sim = start_sim()
    err = serve_and_log(sim.base_url, "-v", "--api-key-env", "PK_TEST_KEY_VERBOSE")
    lines = err.splitlines()
    per_request = [x for x in lines if "/chat/completions" in x]
    assert len(per_request) == 4, err  # three forwarded, one refused by the proxy
    assert all("-> 200" in x for x in per_request[:-1]), err
    assert "-> 400 invalid_json" in per_request[-1], err
    assert not [x for x in lines if "uvicorn" in x or "Uvicorn" in x], err
    assert "sk-verbose-secret" not in err


def test_vv_adds_the_servers_own_lines(start_sim: StartSim) -> None:
    sim = start_sim()
    err = serve_and_log(sim.base_url, "-vv", "--api-key-env", "PK_TEST_KEY_VERBOSE", requests=1)
    assert "uvicorn" in err, err
    assert "sk-verbose-secret" not in err


os.environ.setdefault("PK_TEST_KEY_VERBOSE", "sk-verbose-secret")
