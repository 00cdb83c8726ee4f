"""A local stand-in for MultiSafepay's cloud POS API (orders, SSE stream, WebSocket bus, webhooks).

Pure pieces (scenarios, orders, tokens, signing, SSE/bus framing, variants) are importable and
testable without a server; ``app`` wires them into Starlette and ``server.SimulatorServer`` runs
the app on a free port for tests and tools. See ``errors`` for the error codes it answers with.
"""

from bridge.simulator.server import SimulatorServer

__all__ = ["SimulatorServer"]
