"""``pos-bridge run --workers N``: real worker processes under the supervisor, a private Redis,
the simulator. Payments complete across workers, READY waits for every worker, SIGTERM drains
all of them (exit 0), and a worker killed mid-payment is restarted while its payments are
taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bridge.daemon.supervisor import parse_notification, worker_environ
from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer, free_port
from bridge.simulator.server import SimulatorServer
from tests.service.conftest import API_KEY, NotifySocket, pay, start_as_systemd, wait_until
from tests.service.test_daemon import sample

KEYS = Keys("pos")
CONSUMER = "svc"
MANUAL = [f"SIM-MANUAL-{i:02d}" for i in range(1, 7)]  # wait for a tap on the simulator
APPROVE = [f"SIM-APPROVE-{i:02d}" for i in range(1, 5)]


def write_config(
    path: Path, redis_url: str, api_base_url: str, http_port: int, webhook_port: int | None = None
) -> Path:
    webhook = (
        f'[webhook]\nenabled = true\nlisten = "127.0.0.1:{webhook_port}"' if webhook_port else ""
    )
    path.write_text(f"""
[multisafepay]
api_base_url = "{api_base_url}"
connect_timeout = 2.0
request_timeout = 2.0
stream_idle_timeout = 3.0
reconnect_initial = 0.05
reconnect_cap = 0.5
poll_interval = 0.5
max_payment_age = 120.0

[[multisafepay.terminal_groups]]
name = "shop"
api_key = "{API_KEY}"
terminals = {json.dumps(MANUAL + APPROVE)}

[redis]
url = "{redis_url}"
order_ttl = 3600
consumer_name = "{CONSUMER}"

[daemon]
lease_ttl = 3.0

[http]
enabled = true
listen = "127.0.0.1:{http_port}"

{webhook}

[log]
level = "info"
format = "json"
""")
    return path


class Supervised:
    """``pos-bridge run --workers N`` as systemd would start it."""

    def __init__(
        self,
        tmp: Path,
        redis_url: str,
        api_base_url: str,
        workers: int,
        port: int | None,
        watchdog_usec: int = 30_000_000,
        webhook_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        config = write_config(tmp / "config.toml", redis_url, api_base_url, self.port, webhook_port)
        self.notify = NotifySocket()
        self.log_path = tmp / "supervisor.log"
        self.proc = start_as_systemd(
            ["run", "--workers", str(workers), "--config", str(config)],
            self.notify,
            self.log_path,
            watchdog_usec,
        )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        # Complete lines only: the last may be half written as it is read (a CI run failed
        # on '{"timestamp":"...","le').
        for line in self.log_path.read_text(errors="replace").split("\n")[:-1]:
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def wait_log(self, pred: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.proc.poll() is None, f"supervisor exited: {self.log()}"
            assert time.monotonic() < deadline, f"never saw {what}:\n{self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n{self.log()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # the workers follow (PR_SET_PDEATHSIG)
            self.proc.wait()
        self.notify.close()


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., Supervised]]:
    started: list[Supervised] = []

    def start(
        redis_url: str, api_base_url: str, workers: int = 2, port: int | None = None, **kw: Any
    ) -> Supervised:
        s = Supervised(tmp_path, redis_url, api_base_url, workers, port, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def terminal_events(client: redis.Redis, terminal: str, order_id: str) -> list[dict[str, Any]]:
    entries = client.xrange(KEYS.terminal_stream(terminal))
    events = [json.loads(fields["event"]) for _id, fields in entries]
    return [e for e in events if e["order_id"] == order_id]


def final_of(client: redis.Redis, terminal: str, order_id: str) -> str | None:
    finals = [e for e in terminal_events(client, terminal, order_id) if e["final"]]
    assert len(finals) <= 1, finals
    return finals[0]["status"] if finals else None


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def test_two_workers_complete_payments_and_stop_cleanly(fresh_redis, supervised) -> None:
    client = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    with SimulatorServer(speed=20) as sim:
        sup = supervised(fresh_redis.url, sim.base_url, workers=2)
        ready = sup.notify.wait_for(lambda m: m.get("READY") == "1", timeout=90)
        # READY only once both workers are: both announced their presence already
        assert ready["STATUS"].startswith("2/2 workers ready"), ready
        assert client.exists(KEYS.daemon(f"{CONSUMER}-w0"), KEYS.daemon(f"{CONSUMER}-w1")) == 2
        # the supervisor serves [http] for every worker: one port, no collision
        assert httpx.get(f"http://127.0.0.1:{sup.port}/healthz", timeout=5).status_code == 200

        orders = [(t, pay(client, t)) for t in APPROVE]
        for terminal, order_id in orders:
            wait_until(lambda t=terminal, o=order_id: final_of(client, t, o) is not None, order_id)
            assert final_of(client, terminal, order_id) == "completed"

        # SIGHUP reaches every worker: each reloads its config
        sup.proc.send_signal(signal.SIGHUP)
        sup.wait_log(
            lambda: {line.get("worker") for line in sup.events("daemon.reloaded")} == {0, 1},
            "both workers reloading",
        )
        assert sup.terminate() == 0, sup.log()
    sup.notify.wait_for(lambda m: m.get("STOPPING") == "1", timeout=1)
    stopped = sup.events("supervisor.stopped")
    assert stopped and stopped[0]["clean"] is True, sup.log()
    assert {line.get("worker") for line in sup.events("daemon.stopped")} == {0, 1}
    assert not sup.events("supervisor.worker_exited")  # nothing crashed


def test_a_killed_worker_is_replaced_and_its_payments_taken_over(fresh_redis, supervised) -> None:
    client = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    with SimulatorServer(speed=1) as sim:
        sup = supervised(fresh_redis.url, sim.base_url, workers=2)
        sup.notify.wait_for(lambda m: m.get("READY") == "1", timeout=90)
        orders = [(t, pay(client, t)) for t in MANUAL]  # each waits for a tap
        for terminal, order_id in orders:
            wait_until(
                lambda t=terminal, o=order_id: any(
                    e["type"] == "order.created" for e in terminal_events(client, t, o)
                ),
                f"{order_id} created",
            )
            wait_until(lambda o=order_id: client.get(KEYS.lease(o)) is not None, "a lease")
        holders = {o: client.get(KEYS.lease(o)) or "" for _t, o in orders}
        victim_name = holders[orders[0][1]].rsplit("@", 1)[1]  # fence:incarnation@consumer
        victim = json.loads(client.get(KEYS.daemon(victim_name)) or "{}")
        victims_orders = [o for o, token in holders.items() if token.endswith("@" + victim_name)]
        os.kill(victim["pid"], signal.SIGKILL)

        # every order it followed gets a new owner (another incarnation), at once
        for order_id in victims_orders:
            wait_until(
                lambda o=order_id: (
                    (client.get(KEYS.lease(o)) or "").split(":", 1)[-1]
                    not in ("", holders[o].split(":", 1)[1])
                ),
                f"{order_id} taken over",
            )
        # and the worker is back, under its name, as a new process
        index = victim_name.rsplit("-w", 1)[1]
        sup.wait_log(
            lambda: any(
                line["worker"] == int(index) and line["pid"] != victim["pid"]
                for line in sup.events("supervisor.worker_ready")
            ),
            "the worker restarted",
        )
        exited = sup.events("supervisor.worker_exited")
        assert exited[0]["worker"] == int(index) and exited[0]["exit_code"] == -signal.SIGKILL
        assert exited[0]["level"] == "error" and exited[0]["restart_in_s"] > 0

        for terminal, _order_id in orders:
            answer = httpx.post(
                sim.url + "_sim/press", json={"terminal_id": terminal, "action": "tap"}
            )
            assert answer.status_code == 200, answer.text
        for terminal, order_id in orders:
            wait_until(lambda t=terminal, o=order_id: final_of(client, t, o) is not None, order_id)
            assert final_of(client, terminal, order_id) == "completed"
        assert sup.terminate() == 0, sup.log()


def test_a_worker_that_cannot_start_stops_the_service_with_exit_2(fresh_redis, supervised) -> None:
    with SimulatorServer(speed=20) as sim, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # worker 0's [webhook] port, taken: restarting cannot help
        taken.listen()
        sup = supervised(
            fresh_redis.url, sim.base_url, workers=2, webhook_port=taken.getsockname()[1]
        )
        assert sup.proc.wait(60) == 2, sup.log()
    assert not sup.notify.count("READY")
    failed = sup.events("supervisor.worker_failed")
    assert failed and failed[0]["worker"] == 0, sup.log()
    assert not sup.events("supervisor.worker_exited")  # not retried


def test_a_taken_http_port_stops_the_supervisor_before_any_worker(fresh_redis, supervised) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # the supervisor serves [http] itself
        taken.listen()
        sup = supervised(fresh_redis.url, "http://127.0.0.1:9/", port=taken.getsockname()[1])
        assert sup.proc.wait(60) == 2, sup.log()
    assert "http: cannot listen on" in sup.log()
    assert not sup.events("supervisor.worker_started")


def test_a_hung_worker_is_killed_and_restarted(fresh_redis, supervised) -> None:
    """A worker whose event loop stops pinging for WatchdogSec (here: stopped with SIGSTOP)."""
    with SimulatorServer(speed=20) as sim:
        sup = supervised(fresh_redis.url, sim.base_url, workers=2, watchdog_usec=2_000_000)
        sup.notify.wait_for(lambda m: m.get("READY") == "1", timeout=90)
        hung = next(line for line in sup.events("supervisor.worker_ready") if line["worker"] == 1)
        os.kill(hung["pid"], signal.SIGSTOP)
        sup.wait_log(
            lambda: any(
                line["worker"] == 1 and line["pid"] != hung["pid"]
                for line in sup.events("supervisor.worker_ready")
            ),
            "the hung worker replaced",
        )
        assert [line["pid"] for line in sup.events("supervisor.worker_hung")] == [hung["pid"]]
        exited = sup.events("supervisor.worker_exited")
        assert exited[0]["pid"] == hung["pid"] and exited[0]["exit_code"] == -signal.SIGKILL
        # the supervisor itself kept pinging systemd's watchdog all along
        assert sup.notify.count("WATCHDOG") > 0
        assert sup.terminate() == 0, sup.log()


def test_workers_drain_when_the_supervisor_is_killed(fresh_redis, supervised) -> None:
    client = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    with SimulatorServer(speed=20) as sim:
        sup = supervised(fresh_redis.url, sim.base_url, workers=2)
        sup.notify.wait_for(lambda m: m.get("READY") == "1", timeout=90)
        names = [KEYS.daemon(f"{CONSUMER}-w{i}") for i in (0, 1)]
        assert client.exists(*names) == 2
        sup.proc.kill()  # SIGKILL: nothing forwarded; PR_SET_PDEATHSIG tells the workers
        sup.proc.wait()
        # each worker stops as on SIGTERM: it withdraws its presence (a lapse would take 3 s
        # and leave the key to expire; withdrawing deletes it at once) and logs its stop
        wait_until(lambda: len(sup.events("daemon.stopped")) == 2, "workers stopped")
        assert client.exists(*names) == 0


def test_worker_environment_names_and_listeners() -> None:
    base = {"PATH": "/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_PID": "1"}
    first = worker_environ(base, 0, "shop", "@sup-w0", "/run/m")
    second = worker_environ(base, 1, "shop", "@sup-w1", "/run/m")
    assert first["NOTIFY_SOCKET"] == "@sup-w0" and "WATCHDOG_PID" not in first
    assert first["POS_BRIDGE_SUPERVISOR_PID"] == str(os.getpid())  # PID 1 in a container
    assert first["POS_BRIDGE__REDIS__CONSUMER_NAME"] == "shop-w0"
    assert second["POS_BRIDGE__REDIS__CONSUMER_NAME"] == "shop-w1"
    # the supervisor serves [http]; worker 0 takes the webhooks; every worker's metrics go to
    # the run's multiprocess directory
    assert first["POS_BRIDGE__HTTP__ENABLED"] == second["POS_BRIDGE__HTTP__ENABLED"] == "false"
    assert "POS_BRIDGE__WEBHOOK__ENABLED" not in first
    assert second["POS_BRIDGE__WEBHOOK__ENABLED"] == "false"
    assert first["PROMETHEUS_MULTIPROC_DIR"] == second["PROMETHEUS_MULTIPROC_DIR"] == "/run/m"
    assert base["NOTIFY_SOCKET"] == "/run/systemd/notify"  # the supervisor's own is untouched


def test_metrics_and_readiness_describe_every_worker(fresh_redis, supervised) -> None:
    client = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
    with SimulatorServer(speed=20) as sim:
        sup = supervised(fresh_redis.url, sim.base_url, workers=2)
        sup.notify.wait_for(lambda m: m.get("READY") == "1", timeout=90)
        url = f"http://127.0.0.1:{sup.port}"
        wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, "ready")
        body = httpx.get(url + "/readyz", timeout=5).json()
        assert [w["worker"] for w in body["workers"] if w["ready"]] == [0, 1], body
        worker1 = next(
            line for line in sup.events("supervisor.worker_ready") if line["worker"] == 1
        )
        environ = Path(f"/proc/{worker1['pid']}/environ").read_bytes().split(b"\0")
        metrics_dir = Path(
            next(e for e in environ if e.startswith(b"PROMETHEUS_MULTIPROC_DIR="))
            .split(b"=", 1)[1]
            .decode()
        )
        assert metrics_dir.is_dir()

        # payments until both workers have handled some (the consumer group spreads them)
        handled: dict[int, int] = {}
        paid = 0
        while len(handled) < 2:
            assert paid < 40, f"one worker took all {paid}: {handled}"
            batch = [(t, pay(client, t)) for t in APPROVE]
            paid += len(batch)
            for terminal, order_id in batch:
                wait_until(
                    lambda t=terminal, o=order_id: final_of(client, t, o) is not None, order_id
                )
            handled = per_worker_pays(sup)

        def counted() -> float:
            text = httpx.get(url + "/metrics", timeout=5).text
            return sample(text, "pos_bridge_commands_total", type="pay", result="handled")

        wait_until(lambda: counted() == paid, f"{paid} pays counted on /metrics")
        assert all(n < paid for n in handled.values())  # neither worker alone has them all

        # one worker stopped: not ready, and the body says which
        os.kill(worker1["pid"], signal.SIGSTOP)
        try:
            wait_until(
                lambda: httpx.get(url + "/readyz", timeout=5).status_code == 503, "not ready", 30
            )
            body = httpx.get(url + "/readyz", timeout=5).json()
            assert body["ready"] is False and "worker 1" in body["reason"], body
            assert [w["worker"] for w in body["workers"] if not w["ready"]] == [1], body
        finally:
            os.kill(worker1["pid"], signal.SIGCONT)
        wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, "ready again")
        assert counted() == paid  # counters unchanged by the pause
        assert sup.terminate() == 0, sup.log()
    assert not metrics_dir.exists()  # the run's metrics directory is removed


def per_worker_pays(sup: Supervised) -> dict[int, int]:
    """How many pay commands each worker handled, from its log lines."""
    counts: dict[int, int] = {}
    for line in sup.lines():
        if line.get("event") == "order.created" and "worker" in line:
            counts[line["worker"]] = counts.get(line["worker"], 0) + 1
    return counts


def test_notifications_parse() -> None:
    assert parse_notification(b"READY=1\nSTATUS=a=b, c\njunk") == {"READY": "1", "STATUS": "a=b, c"}
    assert parse_notification(b"\xff\xfe") == {}
