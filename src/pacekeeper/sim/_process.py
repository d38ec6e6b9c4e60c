"""The simulator in a subprocess (`python -m pacekeeper.sim`): its own interpreter and CPU core."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ._lifecycle import StartStop
from ._scenario import Scenario

__all__ = ["LISTENING_PREFIX", "SimulatorProcess"]

#: The one line the CLI prints on stdout once it accepts connections, followed by the base URL.
LISTENING_PREFIX = "pacekeeper sim listening on "

# Not resolved: if pacekeeper is reached through a symlink, the child must take the same path.
_SRC_DIR = str(Path(os.path.abspath(__file__)).parents[2])


class SimulatorProcess(StartStop):
    """Runs `python -m pacekeeper.sim` in a subprocess; the same interface as Simulator.

    `scenario_or_args` is a Scenario (passed through a temporary TOML file) or a list of CLI
    arguments (e.g. ["--rpm", "600", "--fault-500", "0.01"]). Stats are read over HTTP.
    """

    def __init__(
        self,
        scenario_or_args: Scenario | Sequence[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        python: str = sys.executable,
        startup_timeout_s: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        if isinstance(scenario_or_args, str):
            raise TypeError("pass CLI arguments as a list of strings, not one string")
        self._spec = scenario_or_args
        self.host = host
        self._requested_port = port
        self._python = python
        self._startup_timeout_s = startup_timeout_s
        self._env = env
        self._proc: subprocess.Popen[str] | None = None
        self._toml_path: str | None = None
        self._base_url: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._readers: list[threading.Thread] = []

    # --- lifecycle --------------------------------------------------------------------------

    def _command(self) -> list[str]:
        command = [self._python, "-m", "pacekeeper.sim"]
        command += ["--host", self.host, "--port", str(self._requested_port)]
        spec = self._spec
        if isinstance(spec, Scenario):
            fd, self._toml_path = tempfile.mkstemp(prefix="pacekeeper-sim-", suffix=".toml")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(spec.to_toml())
            command += ["--scenario", self._toml_path]
        elif spec is not None:
            command += list(spec)  # later flags win, so the caller may override host/port
        return command

    def start(self) -> SimulatorProcess:
        """Start the process and return once it is listening."""
        if self._proc is not None:
            raise RuntimeError("SimulatorProcess already started")
        env = dict(os.environ if self._env is None else self._env)
        # The child imports the same pacekeeper as this process, installed or not.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC_DIR, env.get("PYTHONPATH")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        listening = threading.Event()
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._read_stdout, args=(self._proc.stdout, listening), daemon=True
            ),
            threading.Thread(target=self._read_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not listening.wait(0.05):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = (
                    f"exited with code {self._proc.returncode}"
                    if self._proc.returncode is not None
                    else f"not listening after {self._startup_timeout_s:g}s"
                )
                self.stop()
                tail = "".join(self._stderr_tail).strip()
                raise RuntimeError(f"simulator process {why}" + (f":\n{tail}" if tail else ""))
        return self

    def _read_stdout(self, stream: IO[str], listening: threading.Event) -> None:
        # Keep draining after the first line so the child never blocks on a full pipe.
        for line in stream:
            if self._base_url is None and line.startswith(LISTENING_PREFIX):
                self._base_url = line[len(LISTENING_PREFIX) :].strip()
                listening.set()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr_tail.append(line)

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 10 s) and clean up."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                if sys.platform == "win32":  # pragma: no cover
                    proc.terminate()
                else:
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for reader in self._readers:
                reader.join(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            self._proc = None
        if self._toml_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._toml_path)
            self._toml_path = None

    @property
    def returncode(self) -> int | None:
        """The exit code once the process ended (None while it runs)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int:
        """The process id."""
        if self._proc is None:
            raise RuntimeError("SimulatorProcess not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    # --- access -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. http://127.0.0.1:8000/v1."""
        if self._base_url is None:
            raise RuntimeError("SimulatorProcess not started")
        return self._base_url

    @property
    def url(self) -> str:
        """The server root (stats live at {url}/_stats)."""
        return self.base_url[: -len("/v1")]

    @property
    def port(self) -> int:
        """The TCP port served."""
        return int(self.url.rsplit(":", 1)[1])

    def _request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url + path, method=method)  # noqa: S310 - http only
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """The /_stats document, over HTTP."""
        stats: dict[str, Any] = self._request("GET", "/_stats")
        return stats

    def reset_stats(self) -> None:
        """POST /_reset."""
        self._request("POST", "/_reset")

    def restart(self) -> float:
        """POST /_restart: start over as if just started (see ``SimApp.restart``); returns the
        new start, wall clock. Raises ``urllib.error.HTTPError`` (409) while busy."""
        return float(self._request("POST", "/_restart")["started_at"])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SimulatorProcess({self._base_url or 'not listening'}, {state})"
