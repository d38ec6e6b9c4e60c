"""``python -m pacekeeper.proxy``: flags, the config file, secrets, SIGTERM, a shared quota."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from pacekeeper import Limits
from pacekeeper.proxy import Proxy
from pacekeeper.proxy._cli import (
    LISTENING_PREFIX,
    _warn_exposure,
    build_config,
    build_governor,
    configure_parser,
    main,
)
from pacekeeper.proxy._config import ProxyConfig
from pacekeeper.settings import load_settings
from pacekeeper.sim import Latency, ModelLimits, Scenario

from .conftest import StartProxy, StartSim

SRC = str(Path(__file__).resolve().parents[2] / "src")
MODEL = "gpt-4o-mini"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(argv)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no ./pacekeeper.toml unless the test writes one
    return tmp_path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_usage_errors_are_one_line_and_exit_2(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, err = run_main(capsys)
    assert code == 2
    assert "no upstream: pass --upstream URL" in err
    code, err = run_main(capsys, "--upstream", "ftp://x")
    assert (code, "must be an http(s) URL" in err) == (2, True)
    monkeypatch.delenv("PK_TEST_MISSING", raising=False)
    code, err = run_main(capsys, "--upstream", "http://x/v1", "--api-key-env", "PK_TEST_MISSING")
    assert (code, "PK_TEST_MISSING is not set" in err) == (2, True)
    code, err = run_main(capsys, "--upstream", "http://x/v1", "--concurrency", "lots")
    assert (code, "concurrency must be 'auto' or a positive integer" in err) == (2, True)
    code, err = run_main(capsys, "--upstream", "http://x/v1", "--queue-timeout", "-1")
    assert (code, "--queue-timeout: must be > 0" in err) == (2, True)
    (in_tmp / "bad.toml").write_text("rpm = 'fast'\n")
    code, err = run_main(capsys, "--upstream", "http://x/v1", "--config", "bad.toml")
    assert (code, "bad.toml.rpm: expected a number" in err) == (2, True)
    assert len(err.strip().splitlines()) == 1


def test_a_port_in_use_exits_1(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = run_main(capsys, "--upstream", "http://x/v1", "--port", port)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_the_config_file_then_the_flags(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (in_tmp / "pacekeeper.toml").write_text(
        'base_url = "https://api.example.com/v1"\napi_key_env = "PK_TEST_KEY"\n'
        "rpm = 500\ntpm = 90000\nmax_attempts = 4\ntimeout = 30\n"
        '[models."gpt-4o"]\nrpm = 50\n'
    )
    monkeypatch.setenv("PK_TEST_KEY", "sk-from-env")
    monkeypatch.setenv("PK_TEST_TOKEN", "tok-from-env")
    settings = load_settings(None)
    args = parse("--rpm", "700", "--client-token-env", "PK_TEST_TOKEN", "--max-queue", "5")
    config = build_config(settings, args)
    assert config.upstream == "https://api.example.com/v1"
    assert config.api_key == "sk-from-env"
    assert config.client_token == "tok-from-env"
    assert config.max_queue == 5
    assert config.read_timeout_s == 30
    assert "sk-from-env" not in repr(config)
    assert "tok-from-env" not in repr(config)
    gov = build_governor(settings, args)
    assert gov.limits.rpm == 700  # the flag wins
    assert gov.limits.tpm == 90000
    assert gov.models["gpt-4o"].rpm == 700
    assert gov.retry.max_attempts == 4
    assert gov.backend is None
    override = build_config(settings, parse("--upstream", "http://other:1/v1"))
    assert override.upstream == "http://other:1/v1"


def test_exposed_without_a_token_is_said_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    _warn_exposure(ProxyConfig(upstream="http://x/v1", host="0.0.0.0", api_key="sk-s3cret"))
    err = capsys.readouterr().err
    assert "WARNING" in err
    assert "WITHOUT a client token" in err
    assert "YOUR upstream key" in err
    assert "s3cret" not in err  # the key itself never
    _warn_exposure(ProxyConfig(upstream="http://x/v1", host="0.0.0.0", client_token="t"))
    _warn_exposure(ProxyConfig(upstream="http://x/v1", host="127.0.0.1"))
    _warn_exposure(ProxyConfig(upstream="http://x/v1", host="::1"))
    assert capsys.readouterr().err == ""


def test_config_values_are_checked() -> None:
    from pacekeeper import ConfigurationError

    with pytest.raises(ConfigurationError, match="http"):
        ProxyConfig(upstream="api.example.com/v1")
    with pytest.raises(ConfigurationError, match="base_path"):
        ProxyConfig(upstream="http://x", base_path="v1")
    with pytest.raises(ConfigurationError, match="max_queue"):
        ProxyConfig(upstream="http://x", max_queue=0)
    with pytest.raises(ConfigurationError, match="queue_timeout_s"):
        ProxyConfig(upstream="http://x", queue_timeout_s=float("nan"))
    with pytest.raises(ConfigurationError, match="single line"):
        ProxyConfig(upstream="http://x", api_key="sk\r\nx-evil: 1")
    assert ProxyConfig(upstream="http://x/v1/", base_path="/").base_path == ""


def _accepts(base_url: str) -> bool:
    try:
        httpx2.get(base_url + "/models", timeout=1)
    except httpx2.ConnectError:
        return False
    return True


def test_sigterm_drains_requests_in_flight_and_exits_0(start_sim: StartSim) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=2.0)))
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pacekeeper.proxy", "--upstream", sim.base_url]
    command += ["--port", "0", "--drain-timeout", "10"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(LISTENING_PREFIX), line
        base_url = line[len(LISTENING_PREFIX) :].strip()
        statuses: list[int] = []

        def ask(i: int) -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
            response = httpx2.post(base_url + "/chat/completions", json=body, timeout=10)
            statuses.append(response.status_code)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        # All three in flight upstream (waited for, not slept on: a loaded machine is slow).
        until = time.monotonic() + 10
        while sim.stats()["in_flight"] < 3 and time.monotonic() < until:
            time.sleep(0.02)
        assert sim.stats()["in_flight"] == 3
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while _accepts(base_url) and time.monotonic() < sent_at + 1.5:
            time.sleep(0.05)
        assert not _accepts(base_url)  # no longer accepting
        for thread in threads:
            thread.join(10)
        code = proc.wait(10)
        took = time.monotonic() - sent_at
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert statuses == [200, 200, 200]
    assert code == 0
    assert took < 4  # the 2-s answers, not the 10-s drain timeout
    err = proc.stderr.read() if proc.stderr else ""
    assert "shutting down: 3 requests in progress" in err
    assert "stopped" in err
    assert sim.stats()["by_status"] == {"200": 3}


# -- a shared quota through a real redis-server -------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("PACEKEEPER_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_proxies_share_one_quota_through_redis(
    redis_url: str, start_sim: StartSim, start_proxy: StartProxy
) -> None:
    # The upstream takes 2 at once: two proxies of 2 each would meet its 429s.
    sim = start_sim(Scenario(default=ModelLimits(max_in_flight=2), latency=Latency(ttft_s=0.1)))
    namespace = f"proxy-test-{uuid.uuid4().hex[:8]}"
    args = parse("--redis", redis_url, "--redis-namespace", namespace, "--concurrency", "2")
    settings = load_settings(None)
    governors = [build_governor(settings, args) for _ in range(2)]
    try:
        proxies: list[Proxy] = [start_proxy(sim, gov) for gov in governors]
        assert governors[0].limits == Limits(concurrency=2)
        statuses: list[int] = []

        def ask(i: int) -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
            url = proxies[i % 2].base_url + "/chat/completions"
            statuses.append(httpx2.post(url, json=body, timeout=20).status_code)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    finally:
        for gov in governors:
            assert gov.backend is not None
            gov.backend.close()  # type: ignore[attr-defined]
    assert statuses == [200] * 12
    seen = sim.stats()
    assert seen["peak_in_flight"] <= 2
    assert seen["by_status"] == {"200": 12}  # never more than 2 at once from both


_WITHOUT_HTTPTOOLS = (
    "import runpy, sys; sys.modules['httptools'] = None; "
    "sys.argv = ['pacekeeper.proxy', *sys.argv[1:]]; "
    "runpy.run_module('pacekeeper.proxy', run_name='__main__', alter_sys=True)"
)


def test_the_proxy_forwards_without_the_fast_extra(start_sim: StartSim) -> None:
    """httptools is the optional ``fast`` extra: without it the proxy serves on h11 and
    forwards through httpx2 (a plain install once failed to start)."""
    sim = start_sim(Scenario())
    env = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", _WITHOUT_HTTPTOOLS, "--upstream", sim.base_url]
    command += ["--port", "0"]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(LISTENING_PREFIX), (line, proc.stderr and proc.stderr.read())
        base_url = line[len(LISTENING_PREFIX) :].strip()
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
        for _ in range(3):
            response = httpx2.post(base_url + "/chat/completions", json=body, timeout=10)
            assert response.status_code == 200, response.text
            assert response.json()["object"] == "chat.completion"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert sim.stats()["by_status"] == {"200": 3}


_FIRST_REQUEST = """
import argparse, json, sys
import httpx2
from pacekeeper.proxy import Proxy
from pacekeeper.proxy._cli import build_config, build_governor, configure_parser
from pacekeeper.settings import load_settings

upstream = sys.argv[1]
parser = argparse.ArgumentParser()
configure_parser(parser)
args = parser.parse_args(["--upstream", upstream, "--port", "0"])
settings = load_settings(None)
proxy = Proxy(build_config(settings, args), build_governor(settings, args)).start()
body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
httpx2.post(upstream + "/chat/completions", json=body, timeout=10)  # the client's own first use
before = set(sys.modules)
status = httpx2.post(proxy.base_url + "/chat/completions", json=body, timeout=10).status_code
loaded = sorted(set(sys.modules) - before)
proxy.stop()
print(json.dumps({"status": status, "loaded": loaded}))
"""


def test_the_first_request_does_not_load_the_price_data(start_sim: StartSim, in_tmp: Path) -> None:
    """Issue 10: genai-prices' data (0.15-0.3 s of CPU to import) is loaded as the proxy is
    built, not by its first request: that import ran on the serving loop at the first
    request, while every request of a starting burst waited behind it (and the lane's first
    answer, which teaches it the limits, came that much later)."""
    sim = start_sim(Scenario())
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_REQUEST, sim.base_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=in_tmp,
        check=False,  # its stderr is in the assertion's message
    )
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == 200
    priced = [name for name in seen["loaded"] if name.split(".")[0] in ("genai_prices", "pydantic")]
    assert priced == [], priced
