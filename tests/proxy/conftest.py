"""Fixtures for the proxy tests: real simulators and proxies on loopback, real clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import pytest

from pacekeeper import Governor
from pacekeeper.proxy import Proxy, ProxyConfig
from pacekeeper.sim import Scenario, Simulator


class StartSim(Protocol):
    def __call__(self, scenario: Scenario | None = None) -> Simulator: ...


class StartProxy(Protocol):
    def __call__(
        self, upstream: Simulator | str, governor: Governor | None = None, **options: Any
    ) -> Proxy: ...


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Start simulators for one test; all are stopped at its end."""
    started: list[Simulator] = []

    def start(scenario: Scenario | None = None) -> Simulator:
        sim = Simulator(scenario).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def start_proxy() -> Iterator[StartProxy]:
    """Start proxies (port 0) for one test; all are stopped (drained) at its end."""
    started: list[Proxy] = []

    def start(upstream: Simulator | str, governor: Governor | None = None, **options: Any) -> Proxy:
        url = upstream.base_url if isinstance(upstream, Simulator) else upstream
        transport = options.pop("transport", None)
        options.setdefault("port", 0)
        options.setdefault("drain_timeout_s", 2.0)
        proxy = Proxy(ProxyConfig(upstream=url, **options), governor, transport=transport)
        started.append(proxy.start())
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def plain_sim() -> Iterator[Simulator]:
    """One unlimited, fault-free, zero-latency simulator shared by a module's tests."""
    with Simulator(Scenario()) as sim:
        yield sim
