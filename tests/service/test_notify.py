"""``bridge.daemon.notify``: sd_notify over ``$NOTIFY_SOCKET``, in a few tested lines."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from bridge.daemon.notify import Notifier, watchdog_interval


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket at a file path (short: AF_UNIX paths are limited to 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="pb-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def test_sends_to_a_path_socket(listener) -> None:
    path, sock = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("Redis reachable, 0 sessions active")
    assert sock.recv(4096) == b"READY=1\nSTATUS=Redis reachable, 0 sessions active"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping("stopping: 2 sessions active")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping: 2 sessions active"
    notifier.close()


def test_abstract_namespace() -> None:
    name = f"pos-bridge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        notifier.send("READY=1")
        assert sock.recv(4096) == b"READY=1"
        notifier.close()


def test_status_is_sent_when_it_changes_and_kept_on_one_line(listener) -> None:
    path, sock = listener
    notifier = Notifier(path)
    notifier.status("Redis reachable,\n1 session active")
    assert sock.recv(4096) == b"STATUS=Redis reachable, 1 session active"
    notifier.status("Redis reachable, 1 session active")  # unchanged: not sent again
    notifier.status("Redis reachable, 1 session active", force=True)
    notifier.status("Redis unreachable since 10:15:02, 1 session active")
    assert sock.recv(4096) == b"STATUS=Redis reachable, 1 session active"
    assert sock.recv(4096) == b"STATUS=Redis unreachable since 10:15:02, 1 session active"
    notifier.close()


def test_noop_without_notify_socket() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    notifier.ready("x")
    notifier.stopping()
    assert notifier.watchdog_interval is None


def test_a_missing_socket_is_not_fatal(tmp_path: Path, caplog) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.send("READY=1") is False
    assert notifier.send("WATCHDOG=1") is False  # logged once, not per send


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}) == 0.2
    # meant for another process (e.g. a wrapper that exec'd us without updating it)
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}) is None
    # no socket: nothing to ping
    assert Notifier.from_environ({"WATCHDOG_USEC": "400000"}).watchdog_interval is None


@pytest.mark.anyio
async def test_watchdog_pings_from_the_event_loop(listener) -> None:
    path, sock = listener
    sock.setblocking(False)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    assert notifier.watchdog_interval == 0.05
    with anyio.move_on_after(0.33):
        await notifier.run_watchdog()
    pings = []
    while True:
        try:
            pings.append(sock.recv(64))
        except BlockingIOError:
            break
    assert set(pings) == {b"WATCHDOG=1"}
    assert 5 <= len(pings) <= 8, pings
    notifier.close()
