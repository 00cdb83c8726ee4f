"""The daemon as systemd runs it: a real ``pos-bridge run`` process with ``$NOTIFY_SOCKET``
pointing at a datagram socket the test reads, its ops endpoints on a free port, the simulator
and a private Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bridge.redis.keys import Keys
from bridge.redis.server import free_port
from bridge.simulator.server import SimulatorServer

API_KEY = "service-test-key-0123456789"
TERMINALS = ["SIM-APPROVE-01", "0000004D"]
POS_BRIDGE = str(Path(sys.executable).with_name("pos-bridge"))
KEYS = Keys("pos")


def pay(client: redis.Redis, terminal: str, prefix: str = "w-") -> str:
    """Write a ``pay`` on ``terminal`` as a till does; its order id."""
    order_id = prefix + uuid.uuid4().hex[:12]
    command = {
        "type": "pay",
        "command_id": "c-" + order_id,
        "terminal_id": terminal,
        "amount": 1250,
        "order_id": order_id,
    }
    client.xadd(KEYS.commands, {"command": json.dumps(command)})
    return order_id


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def write_config(
    path: Path,
    *,
    redis_url: str,
    api_base_url: str,
    http_port: int,
    terminals: list[str] = TERMINALS,
    consumer_name: str | None = None,
    max_payment_age: float = 30.0,
) -> Path:
    consumer = f'consumer_name = "{consumer_name}"' if consumer_name else ""
    path.write_text(f"""
[multisafepay]
api_base_url = "{api_base_url}"
connect_timeout = 2.0
request_timeout = 2.0
stream_idle_timeout = 3.0
reconnect_initial = 0.05
reconnect_cap = 0.5
poll_interval = 0.5
max_payment_age = {max_payment_age}

[[multisafepay.terminal_groups]]
name = "shop"
api_key = "{API_KEY}"
terminals = {json.dumps(terminals)}

[redis]
url = "{redis_url}"
order_ttl = 3600
{consumer}

[http]
enabled = true
listen = "127.0.0.1:{http_port}"

[log]
level = "info"
format = "json"
""")
    return path


class NotifySocket:
    """What systemd would be: a datagram socket collecting ``sd_notify`` messages (read by a
    thread all along, as systemd does, so the daemon's sends never find the queue full)."""

    def __init__(self) -> None:
        self.name = f"@pos-bridge-test-{uuid.uuid4().hex}"  # abstract namespace: no file
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.messages.append(fields)  # list.append is atomic

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 20.0
    ) -> dict[str, str]:
        """The first message (already received or arriving within ``timeout``) that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for message in list(self.messages):
                if predicate(message):
                    return message
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching notification within {timeout} s; got {self.messages}"
                )
            time.sleep(0.02)

    def count(self, key: str) -> int:
        return sum(1 for m in list(self.messages) if key in m)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(1)
        self.sock.close()


def start_as_systemd(
    args: list[str],
    notify: NotifySocket,
    log_path: Path,
    watchdog_usec: int,
    program: str = POS_BRIDGE,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``pos-bridge ARGS`` as systemd starts it: ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` set,
    no ``POS_BRIDGE__`` overrides inherited from the test's environment (only ``extra_env``),
    output to a file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POS_BRIDGE", "WATCHDOG_", "NOTIFY_"))
    }
    env.update(NOTIFY_SOCKET=notify.name, WATCHDOG_USEC=str(watchdog_usec), **(extra_env or {}))
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [program, *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


class Daemon:
    """``pos-bridge run`` as a child process, its log captured to a file. ``program``: another
    release's ``pos-bridge``; ``config``: more of :func:`write_config`'s settings."""

    def __init__(
        self,
        tmp: Path,
        redis_url: str,
        api_base_url: str,
        *,
        watchdog_usec: int = 400_000,
        program: str = POS_BRIDGE,
        extra_config: str = "",
        env: dict[str, str] | None = None,
        **config: Any,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = write_config(
            tmp / "config.toml",
            redis_url=redis_url,
            api_base_url=api_base_url,
            http_port=self.port,
            **config,
        )
        if extra_config:
            self.config.write_text(self.config.read_text() + extra_config)
        self.notify = NotifySocket()
        self.log_path = tmp / "daemon.log"
        self.proc = start_as_systemd(
            ["run", "--config", str(self.config)],
            self.notify,
            self.log_path,
            watchdog_usec,
            program,
            extra_env=env,
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def wait_http(self, path: str, status: int, timeout: float = 20.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.get(path)
                if last.status_code == status:
                    return last
            except httpx.HTTPError as exc:
                last = exc
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log()}"
            time.sleep(0.1)
        raise AssertionError(
            f"GET {path} never answered {status}; last: {last!r} "
            f"{getattr(last, 'text', '')}\n{self.log()}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"daemon did not stop within {timeout} s after SIGTERM:\n{self.log()}"
            ) from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    with SimulatorServer(speed=40) as sim:
        yield sim


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(redis_url: str, api_base_url: str, **kw: Any) -> Daemon:
        folder = tmp_path / f"daemon-{len(started)}" if started else tmp_path  # its own files
        folder.mkdir(exist_ok=True)
        daemon = Daemon(folder, redis_url, api_base_url, **kw)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()
