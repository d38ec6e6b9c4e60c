"""A real redis-server for the tests, started from PATH on a free loopback port.

Outside CI a missing redis-server skips the tests that need it, with a message saying how to
get it; inside CI (PACEKEEPER_CI=1, set by .ci/run, which installs it) it fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

__all__ = ["RedisServer", "redis_binary"]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        message = (
            "redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install "
            "redis-server; macOS: brew install redis) to run the shared-limit tests"
        )
        if os.environ.get("PACEKEEPER_CI") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; ``stop()`` and ``start()`` again on the same port."""

    def __init__(self) -> None:
        self.binary = redis_binary()
        self.port = _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="pacekeeper-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    @property
    def data_dir(self) -> Path:
        return Path(self._dir.name)
