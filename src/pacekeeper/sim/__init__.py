"""pacekeeper.sim: a rate-limited OpenAI-compatible HTTP server with fault injection.

It enforces per-model rpm/tpm buckets and in-flight caps the way providers do, answers 429s
with the providers' headers and bodies, injects reproducible faults (5xx, 529, dropped
connections, hangs, malformed bodies, quota and invalid-request errors), simulates latency and
counts what it saw (GET /_stats). It shares no code with the rest of pacekeeper on purpose: a
bug shared by the tested and the tester would hide itself.

    from pacekeeper.sim import ModelLimits, Scenario, Simulator

    with Simulator(Scenario(default=ModelLimits(rpm=600))) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="x")
        ...
        print(sim.stats()["by_status"])

See docs/SIMULATOR.md.
"""

from ._process import SimulatorProcess
from ._profiles import PROFILES, ProfileDraw, TrueLimits, draw_profile
from ._requests import DEFAULT_MAX_TOKENS, count_text_tokens
from ._scenario import (
    CapacityChange,
    Faults,
    HeaderMode,
    InFlightReply,
    Latency,
    ModelLimits,
    Queueing,
    Scenario,
    ScenarioError,
)
from ._server import Simulator

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "PROFILES",
    "CapacityChange",
    "Faults",
    "HeaderMode",
    "InFlightReply",
    "Latency",
    "ModelLimits",
    "ProfileDraw",
    "Queueing",
    "Scenario",
    "ScenarioError",
    "Simulator",
    "SimulatorProcess",
    "TrueLimits",
    "count_text_tokens",
    "draw_profile",
]
