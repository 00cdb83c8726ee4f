"""A change counter the web page waits on: the simulator touches it whenever something a person
could see changes (an order's status, a new order, a webhook's answer, a stream drop)."""

from __future__ import annotations

import anyio


class Changes:
    """``touch()`` from the simulator's event loop; ``wait_after(version)`` in the same loop."""

    def __init__(self) -> None:
        self.version = 0
        self._event: anyio.Event | None = None

    def touch(self) -> None:
        self.version += 1
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_after(self, version: int) -> None:
        """Return as soon as the version differs from ``version`` (at once if it already does)."""
        while self.version == version:
            if self._event is None:
                self._event = anyio.Event()  # made lazily: it belongs to the running loop
            await self._event.wait()
