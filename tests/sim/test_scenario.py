"""Scenario values, their validation, and the TOML format."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from pacekeeper.sim import (
    CapacityChange,
    Faults,
    Latency,
    ModelLimits,
    Scenario,
    ScenarioError,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "SIMULATOR.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_defaults_are_unlimited_instant_and_faultless() -> None:
    scenario = Scenario()
    assert scenario.limits_for("any").unlimited
    assert scenario.latency.zero
    assert not scenario.faults.any
    assert scenario.rate_limit_headers == "openai"
    assert scenario.faults.hang_s == 3600


def test_dataclasses_are_frozen_and_keyword_only() -> None:
    limits = ModelLimits(rpm=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.rpm = 20  # type: ignore[misc]
    with pytest.raises(TypeError):
        ModelLimits(10)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ModelLimits(rpm=0), "rpm: must be a positive number"),
        (lambda: ModelLimits(tpm=-5), "tpm: must be a positive number"),
        (lambda: ModelLimits(rpm=True), "rpm"),
        (lambda: ModelLimits(max_in_flight=0), "max_in_flight"),
        (lambda: ModelLimits(burst_s=0), "burst_s"),
        (lambda: Latency(ttft_s=-1), "ttft_s"),
        (lambda: Latency(spread=float("nan")), "spread"),
        (lambda: Faults(http_500=1.5), "http_500: must be a number in [0, 1]"),
        (lambda: Faults(http_500=0.6, drop=0.6), "transient fault rates must sum to <= 1"),
        (lambda: Faults(hang_s=0), "hang_s"),
        (lambda: CapacityChange(at_s=-1, factor=0.5), "at_s"),
        (lambda: CapacityChange(at_s=1, factor=0), "factor"),
        (lambda: Scenario(rate_limit_headers="bedrock"), "rate_limit_headers"),  # type: ignore[arg-type]
        (lambda: Scenario(seed=2**64), "seed"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_wrong_types_are_type_errors() -> None:
    with pytest.raises(TypeError, match="capacity_changes"):
        Scenario(capacity_changes=[CapacityChange(at_s=1, factor=2)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="require_api_key"):
        Scenario(require_api_key=1)  # type: ignore[arg-type]


FULL = """
seed = 42
rate_limit_headers = "anthropic"
require_api_key = true

[default]
rpm = 600
tpm = 100000
max_in_flight = 50

[models."gpt-4o-mini"]
rpm = 1200
burst_s = 2.0

[models.tiny]

[latency]
ttft_s = 0.2
per_token_s = 0.01
spread = 0.3

[faults]
http_500 = 0.01
drop = 0.005
insufficient_quota = 0.001
hang_s = 30

[[capacity_changes]]
at_s = 30
factor = 0.5

[[capacity_changes]]
at_s = 60
factor = 2
model = "gpt-4o-mini"
"""


def test_full_toml(tmp_path: Path) -> None:
    scenario = Scenario.from_toml(write(tmp_path, FULL))
    assert scenario.seed == 42
    assert scenario.rate_limit_headers == "anthropic"
    assert scenario.require_api_key
    assert scenario.default == ModelLimits(rpm=600, tpm=100000, max_in_flight=50)
    assert scenario.models == {
        "gpt-4o-mini": ModelLimits(rpm=1200, burst_s=2.0),
        "tiny": ModelLimits(),
    }
    assert scenario.latency == Latency(ttft_s=0.2, per_token_s=0.01, spread=0.3)
    assert scenario.faults == Faults(http_500=0.01, drop=0.005, insufficient_quota=0.001, hang_s=30)
    assert scenario.capacity_changes == (
        CapacityChange(at_s=30, factor=0.5),
        CapacityChange(at_s=60, factor=2, model="gpt-4o-mini"),
    )


def test_to_toml_round_trips(tmp_path: Path) -> None:
    scenario = Scenario.from_toml(write(tmp_path, FULL))
    assert Scenario.from_toml(write(tmp_path, scenario.to_toml())) == scenario
    odd = Scenario(models={'we"ird\nname': ModelLimits(tpm=1e-05)}, seed=-3)
    assert Scenario.from_toml(write(tmp_path, odd.to_toml())) == odd
    assert Scenario.from_toml(write(tmp_path, Scenario().to_toml())) == Scenario()


def test_the_documented_example_loads(tmp_path: Path) -> None:
    text = DOCS.read_text()
    examples = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert examples, "docs/SIMULATOR.md has no TOML example"
    for example in examples:
        Scenario.from_toml(write(tmp_path, example))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("rmp = 5", "unknown top-level key 'rmp'"),
        ("[default]\nrmp = 5", "[default]: unknown key 'rmp' (known keys: rpm, tpm"),
        ('[models."gpt-4o"]\nrpm = -1', '[models."gpt-4o"] rpm: must be a positive number'),
        ("[models]\nx = 1", '[models."x"]: must be a table'),
        ('[latency]\nttft_s = "fast"', "[latency] ttft_s: must be a number >= 0, got 'fast'"),
        ("[faults]\nhttp_500 = 2", "[faults] http_500: must be a number in [0, 1], got 2"),
        ("[faults]\nfoo = 0.1", "[faults]: unknown key 'foo'"),
        ("[[capacity_changes]]\nfactor = 0.5", "[capacity_changes[0]]: missing required key"),
        ("capacity_changes = 3", "capacity_changes: must be an array of tables"),
        (
            'rate_limit_headers = "x"',
            "rate_limit_headers: must be one of openai, window, azure, anthropic, groq, gemini, "
            "gateway, openrouter, ietf, none",
        ),
        ("seed = 1.5", "seed: must be a 64-bit integer"),
        ("this is = not toml", "invalid TOML"),
    ],
)
def test_toml_errors_name_file_key_and_problem(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        Scenario.from_toml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        Scenario.from_toml(tmp_path / "nope.toml")
