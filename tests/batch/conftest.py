"""Fixtures for the batch tests: real simulators on loopback (threads of the test process, which
serve the CLI subprocesses too) and a scratch directory for the CLI to run in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pacekeeper.sim import Scenario, Simulator

StartSim = Callable[..., Simulator]


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
def module_sim() -> Iterator[Simulator]:
    """One unlimited, fault-free, zero-latency simulator shared by a module's tests (reset
    its stats before reading them)."""
    with Simulator(Scenario()) as sim:
        yield sim


@pytest.fixture
def plain_sim(module_sim: Simulator) -> Simulator:
    module_sim.reset_stats()
    return module_sim
