"""Fixtures for the simulator tests: real servers on loopback, real HTTP clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pacekeeper.sim import Scenario, Simulator

from .helpers import StartSim


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Start simulators for one test; all are stopped at its end."""
    started: list[Simulator] = []

    def start(scenario: Scenario | None = None, **kwargs: Any) -> Simulator:
        sim = Simulator(scenario, **kwargs).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture(scope="module")
def plain_sim() -> Iterator[Simulator]:
    """One unlimited, fault-free, zero-latency simulator shared by a module's tests."""
    with Simulator(Scenario()) as sim:
        yield sim
