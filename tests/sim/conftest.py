"""A real sim server per test, on an ephemeral port, with an OpenAI SDK client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sim_harness import RunningSim, StartSim

from sluice.core.config import Sim
from sluice.sim import serve

# Tests opt in to latency; by default the sim answers at once.
ZERO_LATENCY = {"base_latency_ms": 0.0, "prefill_ms_per_token": 0.0, "decode_ms_per_token": 0.0}


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start sims with settings overrides; all are stopped when the test ends."""
    started: list[RunningSim] = []

    async def start(**overrides: Any) -> RunningSim:
        runner, port = await serve(Sim(**{**ZERO_LATENCY, **overrides}))
        sim = RunningSim(runner, port)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.close()


@pytest.fixture
async def running(start_sim: StartSim) -> RunningSim:
    """One zero-latency sim with default settings."""
    return await start_sim()
