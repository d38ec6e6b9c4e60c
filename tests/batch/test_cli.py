"""`pacekeeper run` as a user runs it: a real subprocess against the simulator on loopback.

Exit codes 0, 1 and 2, --dry-run, --metrics, --log, --shard, the text and prompt formats,
pacekeeper.toml, the progress display, and that the API key never appears anywhere."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pacekeeper.batch import shard_of
from pacekeeper.batch._cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from pacekeeper.cli import main
from pacekeeper.sim import Faults, Latency, Scenario, Simulator

from .conftest import StartSim
from .helpers import (
    FAKE_KEY,
    PACEKEEPER,
    Running,
    assert_exactly_once,
    base_env,
    batch_line,
    chat_body,
    line_count,
    read_results,
    run_cli,
    succeeded,
    wait_until,
    write_batch,
    write_lines,
)


def test_exit_0_when_every_line_succeeds(plain_sim: Simulator, tmp_path: Path) -> None:
    ids = write_batch(tmp_path / "in.jsonl", 25)
    done = run_cli(["run", "in.jsonl", "--base-url", plain_sim.base_url], cwd=tmp_path)
    assert done.code == EXIT_OK, done.stderr
    records = read_results(tmp_path / "in.results.jsonl")  # the default output name
    assert_exactly_once(records, ids)
    assert len(succeeded(records)) == 25
    # Not a terminal: the summary is key=value lines, never cut to 80 columns.
    assert "model=gpt-4o-mini route=/v1/chat/completions reqs=25 ok=25 " in done.stdout
    assert "25 succeeded, 0 failed" in done.stderr
    assert plain_sim.stats()["requests_received"] == 25


def test_exit_1_when_some_lines_fail_also_on_resume(plain_sim: Simulator, tmp_path: Path) -> None:
    write_lines(
        tmp_path / "in.jsonl",
        [batch_line("a"), "{oops", batch_line("b"), batch_line("a"), {"prompt": "p"}],
    )
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", plain_sim.base_url]
    done = run_cli(args, cwd=tmp_path)
    assert done.code == EXIT_FAILED, done.stderr
    assert "2 succeeded, 0 failed, 3 bad input lines" in done.stderr
    assert "invalid_json: 1" in done.stderr
    assert "duplicate_custom_id: 1" in done.stderr
    assert "missing_model: 1" in done.stderr
    assert_exactly_once(
        read_results(tmp_path / "out.jsonl"), ["a", "b", ("line-2", 2), ("a", 4), ("line-5", 5)]
    )
    plain_sim.reset_stats()
    again = run_cli(args, cwd=tmp_path)
    assert again.code == EXIT_FAILED  # the error records are still there
    assert "5 already done (3 of them errors)" in again.stderr
    assert plain_sim.stats()["requests_received"] == 0


USAGE_ERRORS: list[tuple[str, list[str], dict[str, str], str]] = [
    ("missing input", ["nope.jsonl"], {}, "input file nope.jsonl does not exist"),
    ("rpm zero", ["--rpm", "0"], {}, "--rpm: rpm must be a positive number"),
    ("tpm negative", ["--tpm", "-5"], {}, "--tpm: tpm must be a positive number"),
    ("concurrency", ["--concurrency", "lots"], {}, "--concurrency: concurrency must be"),
    ("concurrency zero", ["--concurrency", "0"], {}, "--concurrency"),
    ("max attempts", ["--max-attempts", "0"], {}, "--max-attempts: max_attempts must be >= 1"),
    ("timeout", ["--timeout", "-1"], {}, "--timeout"),
    ("shard order", ["--shard", "3/2"], {}, "--shard K/N needs 1 <= K <= N"),
    ("shard shape", ["--shard", "half"], {}, "--shard must look like K/N"),
    ("text needs model", ["--format", "text"], {}, "--format text needs --model"),
    ("empty model", ["--model", ""], {}, "--model must not be empty"),
    ("url", ["--url", "v1/chat"], {}, "--url: url must be a path"),
    ("base url", ["--base-url", "ftp://host/v1"], {}, "base URL must start with http"),
    ("output is input", ["-o", "in.jsonl"], {}, "must not be the input file"),
    ("output is a dir", ["-o", "."], {}, "is a directory"),
    ("missing config", ["--config", "none.toml"], {}, "none.toml: no such config file"),
    ("key with a space", [], {"OPENAI_API_KEY": "sk-abc def-9f8e7d6c5b"}, "$OPENAI_API_KEY"),
    ("key env", ["--api-key-env", "MY_KEY"], {"MY_KEY": "sk-é-unicode-key"}, "$MY_KEY"),
    ("key env unset", ["--api-key-env", "UNSET_KEY"], {}, "names $UNSET_KEY, which is not set"),
    ("output dir missing", ["-o", "no/such/dir/out.jsonl"], {}, "No such file or directory"),
    ("output not a file", ["-o", "/dev/null"], {}, "is not a regular file"),
]


@pytest.mark.parametrize(
    ("args", "env", "fragment"), [c[1:] for c in USAGE_ERRORS], ids=[c[0] for c in USAGE_ERRORS]
)
def test_bad_usage_is_exit_2_and_sends_nothing(
    plain_sim: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    env: dict[str, str],
    fragment: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_batch(tmp_path / "in.jsonl", 3)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    base = [] if "--base-url" in args else ["--base-url", plain_sim.base_url]
    source = [] if args[:1] == ["nope.jsonl"] else ["in.jsonl"]
    code = main(["run", *source, *base, *args])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("pacekeeper run: error: ")
    assert err.count("\n") == 1  # one line
    assert fragment in err
    for value in env.values():
        assert value not in err  # a key is never echoed, even a broken one
    assert not (tmp_path / "in.results.jsonl").exists()
    assert plain_sim.stats()["requests_received"] == 0


def test_bad_usage_in_a_subprocess(plain_sim: Simulator, tmp_path: Path) -> None:
    write_batch(tmp_path / "in.jsonl", 3)
    done = run_cli(["run", "in.jsonl", "--no-such-flag"], cwd=tmp_path)
    assert done.code == EXIT_USAGE
    assert "unrecognized arguments: --no-such-flag" in done.stderr
    env = base_env()
    del env["OPENAI_API_KEY"]
    done = run_cli(["run", "in.jsonl"], cwd=tmp_path, env=env)  # OpenAI's URL, no key
    assert done.code == EXIT_USAGE
    assert "no API key: set OPENAI_API_KEY" in done.stderr
    assert not (tmp_path / "in.results.jsonl").exists()


def test_exit_codes_are_documented() -> None:
    proc = subprocess.run(
        [*PACEKEEPER, "run", "--help"], capture_output=True, text=True, check=True
    )
    for code in ("0  every line succeeded", "1  some lines failed", "2  bad usage"):
        assert code in proc.stdout
    assert "3  interrupted" in proc.stdout
    assert "4  the output file is damaged" in proc.stdout
    assert "5  the spend cap (--max-cost) stopped the run" in proc.stdout
    from pacekeeper.batch import _cli

    assert _cli.__doc__ is not None
    for n in range(6):
        assert f"- {n}: " in _cli.__doc__


def test_dry_run_validates_estimates_and_sends_nothing(
    plain_sim: Simulator, tmp_path: Path
) -> None:
    rows: list[Any] = [batch_line(f"m-{i}", model="gpt-4o-mini") for i in range(30)]
    rows += [batch_line(f"o-{i}", model="gpt-4o") for i in range(10)]
    rows += ["{bad", batch_line("m-1"), {"custom_id": "x", "method": "GET"}]
    write_lines(tmp_path / "in.jsonl", rows)
    args = ["run", "in.jsonl", "--dry-run", "--rpm", "600", "--base-url", plain_sim.base_url]
    done = run_cli(args, cwd=tmp_path)
    assert done.code == EXIT_FAILED  # some lines are bad
    table = done.stdout
    assert re.search(r"gpt-4o-mini\s+│?\s*30\b", table), table
    assert re.search(r"gpt-4o\s+│?\s*10\b", table), table
    assert "600" in table
    assert "line 41: not valid JSON" in done.stderr
    assert 'line 42: custom_id "m-1" was already used' in done.stderr
    assert "line 43" in done.stderr
    assert "40 requests valid, 3 bad lines" in done.stderr
    assert "about 3 s at these limits" in done.stderr  # 30 requests at 600/min, the longest
    assert "nothing sent" in done.stderr
    assert plain_sim.stats()["requests_received"] == 0
    assert not (tmp_path / "in.results.jsonl").exists()

    write_batch(tmp_path / "good.jsonl", 5)
    done = run_cli(["run", "good.jsonl", "--dry-run"], cwd=tmp_path)
    assert done.code == EXIT_OK, done.stderr
    assert "duration unknown until the limits are learned" in done.stderr


def test_dry_run_leaves_out_what_is_done_and_changes_nothing(
    plain_sim: Simulator, tmp_path: Path
) -> None:
    ids = write_batch(tmp_path / "in.jsonl", 10)
    (tmp_path / "small.jsonl").write_text(
        "".join(json.dumps(batch_line(cid)) + "\n" for cid in ids[:4])
    )
    first = run_cli(
        ["run", "small.jsonl", "-o", "out.jsonl", "--base-url", plain_sim.base_url], cwd=tmp_path
    )
    assert first.code == EXIT_OK
    out = tmp_path / "out.jsonl"
    with out.open("ab") as f:
        f.write(b'{"id": "torn')
    before = out.read_bytes()
    plain_sim.reset_stats()
    done = run_cli(
        ["run", "in.jsonl", "-o", "out.jsonl", "--dry-run", "--shard", "1/1"], cwd=tmp_path
    )
    assert done.code == EXIT_OK, done.stderr
    assert "6 requests valid, 0 bad lines, 4 already done in out.jsonl" in done.stderr
    assert out.read_bytes() == before  # the torn line is cut only by a real run
    assert plain_sim.stats()["requests_received"] == 0


def test_metrics_and_log_files(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(Scenario(faults=Faults(http_500=0.15, invalid_request=0.1), seed=4))
    ids = write_batch(tmp_path / "in.jsonl", 40)
    with (tmp_path / "in.jsonl").open("a") as f:
        f.write("not json\n")
    (tmp_path / "pacekeeper.toml").write_text("backoff_base = 0.01\nbackoff_cap = 0.05\n")
    args = ["run", "in.jsonl", "-o", "out.jsonl", "--base-url", sim.base_url]
    args += ["--metrics", "metrics.json", "--log", "log.jsonl", "--max-attempts", "8"]
    done = run_cli(args, cwd=tmp_path)
    assert done.code == EXIT_FAILED, done.stderr
    records = read_results(tmp_path / "out.jsonl")
    assert_exactly_once(records, [*ids, ("line-41", 41)])
    ok = len(succeeded(records))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["total_lines"] == 41
    assert (metrics["succeeded"], metrics["failed"], metrics["bad_lines"]) == (ok, 40 - ok, 1)
    assert metrics["errors_by_code"]["invalid_json"] == 1
    assert metrics["errors_by_code"]["invalid_value"] == 40 - ok
    assert metrics["interrupted"] is False
    assert metrics["output"] == "out.jsonl"
    [model] = metrics["models"]
    assert model["model"] == "gpt-4o-mini"
    assert (model["requests"], model["ok"]) == (40, ok)
    assert model["retries"] == sim.stats()["requests_received"] - 40 > 0

    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    attempts = [r for r in log if r["type"] == "attempt"]
    requests = [r for r in log if r["type"] == "request"]
    assert len(attempts) == sim.stats()["requests_received"]
    assert sorted(r["tag"] for r in requests) == sorted(ids)
    assert {a["tag"] for a in attempts} == set(ids)
    assert {a["status"] for a in attempts} == {200, 400, 500}
    assert all(
        a["retry_in_s"] is not None for a in attempts if a["status"] == 500 and a["attempt"] < 8
    )
    assert all(a["retry_in_s"] is None for a in attempts if a["status"] == 400)
    assert sim.stats()["non_retryable_repeats"] == {}


class _EchoingServer(BaseHTTPRequestHandler):
    """A careless provider that echoes the Authorization header in its error messages."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        auth = self.headers.get("authorization", "")
        body = json.dumps(
            {"error": {"message": f"Incorrect API key provided: {auth}", "code": "invalid_api_key"}}
        ).encode()
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def echoing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_key_never_appears_anywhere(
    start_sim: StartSim, tmp_path: Path, echoing_server: str
) -> None:
    sim = start_sim(
        Scenario(
            latency=Latency(ttft_s=0.05),
            faults=Faults(http_500=0.1, invalid_request=0.1),
            require_api_key=True,
            seed=9,
        )
    )
    ids = write_batch(tmp_path / "in.jsonl", 40)
    (tmp_path / "pacekeeper.toml").write_text("backoff_base = 0.01\n")
    env = base_env(MY_SECRET=FAKE_KEY)
    args = [
        "run",
        "in.jsonl",
        "-o",
        "out.jsonl",
        "--api-key-env",
        "MY_SECRET",
        "--log",
        "log.jsonl",
    ]
    args += ["--metrics", "metrics.json", "--base-url", sim.base_url, "--progress", "plain"]
    running = Running(args, cwd=tmp_path, env=env)
    try:
        wait_until(lambda: line_count(tmp_path / "out.jsonl") > 0)
        # nor in the process title or command line
        cmdline = Path(f"/proc/{running.pid}/cmdline").read_bytes()
        comm = Path(f"/proc/{running.pid}/comm").read_bytes()
        done = running.wait()
    finally:
        running.close()
    assert FAKE_KEY.encode() not in cmdline + comm
    assert done.code == EXIT_FAILED, done.stderr
    records = read_results(tmp_path / "out.jsonl")
    assert_exactly_once(records, ids)
    assert all(r["response"]["status_code"] != 401 for r in records)  # the key was sent

    # A provider that echoes the key: the echo is redacted before anything is written.
    echoed = run_cli(
        [
            "run",
            "in.jsonl",
            "-o",
            "echo.jsonl",
            "--base-url",
            echoing_server,
            "--log",
            "log2.jsonl",
        ],
        cwd=tmp_path,
    )
    assert echoed.code == EXIT_FAILED
    echo_records = read_results(tmp_path / "echo.jsonl")
    assert {r["response"]["status_code"] for r in echo_records} == {401}
    assert "Bearer [redacted]" in echo_records[0]["response"]["body"]["error"]["message"]
    assert "Bearer [redacted]" in echo_records[0]["error"]["message"]

    everything = done.stdout + done.stderr + echoed.stdout + echoed.stderr
    for name in ("out.jsonl", "log.jsonl", "metrics.json", "echo.jsonl", "log2.jsonl"):
        everything += (tmp_path / name).read_text()
    assert FAKE_KEY not in everything
    assert FAKE_KEY[3:20] not in everything  # not even a piece of it


def test_shards_partition_the_lines_exactly(plain_sim: Simulator, tmp_path: Path) -> None:
    rows: list[Any] = [batch_line(f"s-{i:03d}") for i in range(90)]
    rows += ["{bad", {"prompt": "no model"}, batch_line("s-001")]
    write_lines(tmp_path / "in.jsonl", rows)
    expected = [f"s-{i:03d}" for i in range(90)] + [("line-91", 91), ("line-92", 92), ("s-001", 93)]
    union: list[dict[str, Any]] = []
    for k in (1, 2, 3):
        out = f"shard{k}.jsonl"
        args = ["run", "in.jsonl", "-o", out, "--shard", f"{k}/3", "--base-url", plain_sim.base_url]
        done = run_cli(args, cwd=tmp_path)
        assert done.code in (EXIT_OK, EXIT_FAILED), done.stderr
        records = read_results(tmp_path / out)
        assert records, f"shard {k} is empty"
        assert all(shard_of(r["custom_id"], 3) == k for r in records)
        assert "in other shards" in done.stderr
        union += records
    assert_exactly_once(union, expected)
    assert plain_sim.stats()["requests_received"] == 90


def test_text_file_and_prompt_objects(plain_sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("What is a bloom filter?\n\nWhy is the sky blue?\n")
    done = run_cli(
        [
            "run",
            "prompts.txt",
            "--format",
            "text",
            "--model",
            "gpt-4o-mini",
            "--base-url",
            plain_sim.base_url,
        ],
        cwd=tmp_path,
    )
    assert done.code == EXIT_OK, done.stderr
    records = read_results(tmp_path / "prompts.results.jsonl")
    assert_exactly_once(records, ["line-1", "line-3"])
    assert all(r["response"]["body"]["model"] == "gpt-4o-mini" for r in records)

    write_lines(
        tmp_path / "mixed.jsonl",
        [{"prompt": "one"}, {"custom_id": "two", "prompt": "two"}, chat_body("three", model="x")],
    )
    done = run_cli(
        ["run", "mixed.jsonl", "--model", "gpt-4o", "--base-url", plain_sim.base_url], cwd=tmp_path
    )
    assert done.code == EXIT_OK, done.stderr
    records = read_results(tmp_path / "mixed.results.jsonl")
    assert_exactly_once(records, ["line-1", "two", "line-3"])
    assert {r["response"]["body"]["model"] for r in records} == {"gpt-4o"}

    embeddings = write_lines(tmp_path / "emb.jsonl", [{"input": "a"}, {"input": ["b", "c"]}])
    done = run_cli(
        [
            *("run", embeddings.name, "--model", "text-embedding-3-small"),
            *("--url", "/v1/embeddings", "--base-url", plain_sim.base_url),
        ],
        cwd=tmp_path,
    )
    assert done.code == EXIT_OK, done.stderr
    records = read_results(tmp_path / "emb.results.jsonl")
    assert [len(r["response"]["body"]["data"]) for r in records] in ([1, 2], [2, 1])


def test_config_file_per_model_limits(plain_sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "pacekeeper.toml").write_text(
        'rpm = 6000\nconcurrency = 8\n\n[models."gpt-4o"]\nrpm = 1200\ntpm = 90000\n'
    )
    rows = [batch_line(f"a-{i}", model="gpt-4o-mini") for i in range(10)]
    rows += [batch_line(f"b-{i}", model="gpt-4o") for i in range(10)]
    write_lines(tmp_path / "in.jsonl", rows)
    args = ["run", "in.jsonl", "--log", "log.jsonl", "--metrics", "m.json"]
    done = run_cli([*args, "--base-url", plain_sim.base_url], cwd=tmp_path)
    assert done.code == EXIT_OK, done.stderr
    attempts = [
        json.loads(line)
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
        if '"type":"attempt"' in line
    ]
    limits = {
        (a["model"], a["rpm_limit"], a["tpm_limit"], a["concurrency_limit"]) for a in attempts
    }
    assert limits == {("gpt-4o-mini", 6000, None, 8), ("gpt-4o", 1200, 90000, 8)}
    # flags override the file, per-model sections included
    (tmp_path / "log.jsonl").unlink()
    done = run_cli(
        [*args, "-o", "again.jsonl", "--rpm", "3000", "--base-url", plain_sim.base_url],
        cwd=tmp_path,
    )
    assert done.code == EXIT_OK, done.stderr
    attempts = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {a["rpm_limit"] for a in attempts if a["type"] == "attempt"} == {3000}
    # and the dry run estimates with them: 10 gpt-4o at 1200/min is the longest
    dry = run_cli(["run", "in.jsonl", "-o", "fresh.jsonl", "--dry-run"], cwd=tmp_path)
    assert dry.code == EXIT_OK
    assert "1200" in dry.stdout
    assert "90000" in dry.stdout
    assert "6000" in dry.stdout


CONFIG_ERRORS = [
    ("rpm = 'fast'\n", "pacekeeper.toml.rpm: expected a number"),
    ("rpm = -5\n", "pacekeeper.toml.rpm: must be a positive number, got -5"),
    ("max_attempts = 2.5\n", "pacekeeper.toml.max_attempts: expected a whole number"),
    ("max_attempts = '3'\n", "pacekeeper.toml.max_attempts: expected a whole number"),
    ("timeout = true\n", "pacekeeper.toml.timeout: expected a number, got true"),
    ("concurrency = 0\n", 'pacekeeper.toml.concurrency: must be "auto" or a positive'),
    ("utilisation = 1.5\n", "pacekeeper.toml.utilisation: must be a number in (0, 1]"),
    ("speed = 3\n", "pacekeeper.toml: unknown key(s) speed"),
    ("base_url = 5\n", "pacekeeper.toml.base_url: expected a string"),
    ("models = 3\n", "pacekeeper.toml.models: expected a table"),
    ('[models."gpt-4o"]\nrpm = 0\n', "pacekeeper.toml.models.gpt-4o.rpm: must be a positive"),
    ('[models."gpt-3.5-turbo"]\ntpm = "x"\n', 'toml.models."gpt-3.5-turbo".tpm: expected a number'),
    ('[models."gpt-4o"]\nburst = 1\n', "pacekeeper.toml.models.gpt-4o: unknown key(s) burst"),
    ("[models]\nmini = 3\n", "pacekeeper.toml.models.mini: expected a table"),
    ("rpm = \n", "pacekeeper.toml: not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ERRORS)
def test_config_errors_name_the_file_and_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pacekeeper.toml").write_text(text)
    write_batch(tmp_path / "in.jsonl", 1)
    code = main(["run", "in.jsonl", "--base-url", "http://127.0.0.1:9/v1"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert message in err, err


def test_config_file_given_by_flag_and_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_batch(tmp_path / "in.jsonl", 1)
    (tmp_path / "conf").mkdir()
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\nrpm = 1\n")
    for config, message in (("conf", "conf: cannot read it"), ("latin1.toml", "not UTF-8")):
        code = main(["run", "in.jsonl", "--config", config, "--base-url", "http://127.0.0.1:9/v1"])
        assert code == EXIT_USAGE
        assert message in capsys.readouterr().err


def test_progress_plain_lines_show_every_figure(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.05)))
    write_batch(tmp_path / "in.jsonl", 30)
    done = run_cli(
        ["run", "in.jsonl", "--base-url", sim.base_url, "--rpm", "6000", "--concurrency", "5"],
        cwd=tmp_path,  # stderr is a pipe: plain lines (auto)
    )
    assert done.code == EXIT_OK, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("pacekeeper: t=")]
    assert len(lines) >= 2
    last = lines[-1]
    for field in ("done=30/30", "rate=", "limit=6000/min", "in_flight=0", "concurrency=5"):
        assert field in last, last
    for field in ("queued=", "retries=0", "429s=0", "failed=0", "eta=0s"):
        assert field in last, last


def test_progress_live_on_a_terminal(start_sim: StartSim, tmp_path: Path) -> None:
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.1)))
    write_batch(tmp_path / "in.jsonl", 20)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [*PACEKEEPER, "run", "in.jsonl", "--base-url", sim.base_url, "--concurrency", "4"],
        cwd=tmp_path,
        env=base_env(TERM="xterm-256color"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    screen = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    assert proc.wait(timeout=10) == EXIT_OK
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # drawn in place, not plain lines
    assert "pacekeeper: t=" not in text
    for field in ("20/20", "rate", "limit", "in flight", "concurrency 4", "retries", "429s", "ETA"):
        assert field in text, field
    assert "#" * 30 in text  # the bar, full at the end


def test_a_second_run_on_the_same_output_is_refused(start_sim: StartSim, tmp_path: Path) -> None:
    # The first run takes about 5 s, so that the second meets it running: at 0.9 s, a CI run
    # on a loaded machine started the second only after the first had finished.
    sim = start_sim(Scenario(latency=Latency(ttft_s=0.6)))
    ids = write_batch(tmp_path / "in.jsonl", 30)
    args = ["run", "in.jsonl", "--base-url", sim.base_url, "--concurrency", "4"]
    first = Running(args, cwd=tmp_path)
    try:
        wait_until((tmp_path / "in.results.jsonl").exists)
        second = run_cli(args, cwd=tmp_path)
        assert second.code == EXIT_USAGE
        assert "being written by another pacekeeper run" in second.stderr
        assert first.wait().code == EXIT_OK
    finally:
        first.close()
    assert_exactly_once(read_results(tmp_path / "in.results.jsonl"), ids)
    assert sim.stats()["requests_received"] == 30


def test_the_models_to_warm_up_are_those_of_the_first_lines(tmp_path: Path) -> None:
    from pacekeeper.batch import read_lines
    from pacekeeper.batch._cli import first_models

    src = tmp_path / "in.jsonl"
    lines = [{"model": m, "prompt": "hi"} for m in ("gpt-4", "gpt-4o", "gpt-4", "claude-x")]
    lines += [{"model": "gpt-3.5-turbo", "prompt": "hi"}] * 5
    src.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    assert first_models(read_lines(src), lines=4) == {"gpt-4", "gpt-4o", "claude-x"}
    assert first_models(read_lines(src)) == {"gpt-4", "gpt-4o", "claude-x", "gpt-3.5-turbo"}
    assert first_models(read_lines(src, model="o3")) == {"o3"}
