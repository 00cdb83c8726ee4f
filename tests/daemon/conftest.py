from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.simulator.server import SimulatorServer


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=40) as sim:
        yield sim
