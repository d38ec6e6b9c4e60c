"""Fixtures for the provider tests: the dialect-speaking upstream on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .upstream import Upstream

StartUpstream = Callable[..., Upstream]


@pytest.fixture
def start_upstream() -> Iterator[StartUpstream]:
    started: list[Upstream] = []

    def start(**kwargs: Any) -> Upstream:
        server = Upstream(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
