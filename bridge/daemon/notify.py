"""systemd's notify protocol (``sd_notify(3)``), in a few lines: no library, no blocking.

systemd starts a ``Type=notify`` service with ``$NOTIFY_SOCKET``, the path of a datagram socket
(``@name`` for Linux's abstract namespace). The service sends newline-separated ``KEY=VALUE``
assignments to it: ``READY=1`` when it runs, ``STATUS=...`` (shown by ``systemctl status``),
``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` microseconds when ``WatchdogSec=`` is set, and
``STOPPING=1`` when it shuts down. Without ``$NOTIFY_SOCKET`` every call is a no-op.

A send is one non-blocking ``sendto`` on a datagram socket: it never waits on the event loop.
If systemd's queue is full the datagram is dropped (the next ``STATUS``/``WATCHDOG`` follows).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import anyio
import structlog

from bridge.daemon import loops

log = structlog.get_logger("bridge.notify")

__all__ = ["Notifier", "watchdog_interval"]


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):  # abstract namespace: a leading NUL byte
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. systemd's vsock: addresses, which a service on the host never gets


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when the
    watchdog is off or meant for another process (``$WATCHDOG_PID``)."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6 / 2


class Notifier:
    """Sends notifications to systemd; a no-op when it was not started by systemd."""

    def __init__(self, address: str | None = None, *, watchdog: float | None = None) -> None:
        self.address = _address(address) if address else None
        if address and self.address is None:
            log.warning("notify.unsupported_socket", notify_socket=address)
        self.watchdog_interval = watchdog if self.address is not None else None
        self._sock: socket.socket | None = None
        self._failing = False
        self._last_status: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram; True if it was handed to the kernel."""
        if self.address is None:
            return False
        data = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:  # systemd gone, queue full: logged once, never fatal
            if not self._failing:
                self._failing = True
                log.warning("notify.failed", error=str(exc), note="systemd not notified; retried")
            return False
        if self._failing:
            self._failing = False
            log.info("notify.recovered")
        return True

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))
        if status:
            self._last_status = status

    def status(self, text: str, *, force: bool = False) -> None:
        """``STATUS=text``, sent only when it changed (or with ``force``)."""
        text = " ".join(text.split())  # one line: a newline would start another assignment
        if force or text != self._last_status:
            if self.send(f"STATUS={text}"):
                self._last_status = text

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    async def run_watchdog(self) -> None:
        """Ping the watchdog from the event loop for as long as it runs: a loop that hangs
        stops pinging, and systemd kills and restarts the service."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await anyio.sleep(interval)
            loops.fault_point("watchdog")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
