from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.simulator.server import SimulatorServer


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    # speed 10: a stream that connects late (two cores, the simulator in the same process)
    # would miss the first statuses, which the simulator does not replay without Last-Event-ID
    with SimulatorServer(speed=10) as sim:
        yield sim
