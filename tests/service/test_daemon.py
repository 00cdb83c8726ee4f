"""``pos-bridge run`` as systemd runs it: notifications, health, readiness, metrics, SIGTERM."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bridge.redis.keys import Keys
from bridge.redis.server import RedisServer
from bridge.simulator.server import SimulatorServer

KEYS = Keys("pos")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def pay(client: redis.Redis, terminal: str, amount: int = 1250) -> str:
    command_id = "svc-" + uuid.uuid4().hex[:12]
    command = {"type": "pay", "command_id": command_id, "terminal_id": terminal, "amount": amount}
    client.xadd(KEYS.commands, {"command": json.dumps(command)})
    return command_id


def wait_final(
    client: redis.Redis, terminal: str, command_id: str, timeout: float = 20.0
) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = [
            json.loads(f["event"]) for _id, f in client.xrange(KEYS.terminal_stream(terminal))
        ]
        mine = [e for e in events if e["command_id"] == command_id]
        if any(e["final"] for e in mine):
            return mine
        time.sleep(0.05)
    raise AssertionError(f"no final event for {command_id} within {timeout} s")


def test_notifies_systemd_and_stops_cleanly_on_sigterm(
    redis_server, simulator, start_daemon
) -> None:
    daemon = start_daemon(redis_server.url, simulator.base_url, watchdog_usec=400_000)
    notify = daemon.notify

    ready = notify.wait_for(lambda m: m.get("READY") == "1")
    # listeners are bound before READY
    assert daemon.get("/healthz").status_code == 200
    notify.wait_for(
        lambda m: "Redis reachable" in m.get("STATUS", "") and "0 sessions active" in m["STATUS"]
    )
    # WATCHDOG=1 every WATCHDOG_USEC/2 = 0.2 s, from the event loop: it keeps coming (its
    # rate is the daemon's timer, not asserted against a clock on a shared machine)
    first = notify.count("WATCHDOG")
    deadline = time.monotonic() + 20
    while notify.count("WATCHDOG") - first < 3:
        assert time.monotonic() < deadline, "fewer than 3 watchdog pings in 20 s"
        time.sleep(0.05)
    assert "READY" in ready

    ready_body = daemon.wait_http("/readyz", 200).json()
    assert ready_body["ready"] is True and ready_body["redis"] is True

    # ExecReload= sends SIGHUP: the config is re-read, the daemon keeps running
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "daemon.reloaded" not in [line["event"] for line in daemon.log_lines()]:
        assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.log()
        time.sleep(0.05)
    assert daemon.get("/healthz").status_code == 200

    code = daemon.terminate()
    notify.wait_for(lambda m: m.get("STOPPING") == "1", timeout=1)
    assert code == 0, daemon.log()

    # every line the process wrote is one of our JSON log lines (uvicorn's included): no raw prints
    lines = daemon.log_lines()
    events = [line["event"] for line in lines]
    assert "daemon.started" in events and "daemon.stopped" in events
    assert "http.listening" in events
    assert not [
        line
        for line in lines
        if line.get("level") in ("warning", "error", "critical")
        and line["event"] != "config.warning"
    ], lines  # (the test config's inline key)


def test_metrics_move_after_a_payment(request, redis_server, start_daemon) -> None:
    # slow enough (about 1 s) that a STATUS= line sees the payment in flight
    simulator = SimulatorServer(speed=3).start()
    request.addfinalizer(simulator.stop)
    if not redis_server.running:  # a test that stopped it must not break this one
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    daemon = start_daemon(redis_server.url, simulator.base_url)
    daemon.notify.wait_for(lambda m: m.get("READY") == "1")
    daemon.wait_http("/readyz", 200)
    before = daemon.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")

    command_id = pay(client, "SIM-APPROVE-01")
    events = wait_final(client, "SIM-APPROVE-01", command_id)
    assert [e["status"] for e in events if e["type"] == "order.status"] == [
        "initialized",
        "completed",
    ]
    # a STATUS= line counted the payment while it was in flight
    daemon.notify.wait_for(lambda m: "1 session active" in m.get("STATUS", ""), timeout=5)

    upstream = ("stream", "websocket", "webhook", "poll")  # whichever channel saw it first

    def counted(text: str) -> bool:  # the command, the final and the session's end
        finals = sum(
            sample(text, "pos_bridge_events_published_total", source=s, status="completed")
            for s in upstream
        )
        return (
            finals >= 1
            and sample(text, "pos_bridge_commands_total", type="pay", result="handled") >= 1
            and sample(text, "pos_bridge_sessions_active") == 0
        )

    deadline = time.monotonic() + 10
    while True:
        after = daemon.get("/metrics").text
        if counted(after):
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.1)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before.text, name, **labels)

    assert (
        moved("pos_bridge_events_published_total", source="bridge", type="order.created", status="")
        == 1
    )
    # Each status is published once, labelled with whichever channel saw it first: on a loaded
    # machine that may be a poll (or the GET when the stream opens) rather than the stream.
    for status in ("initialized", "completed"):
        published = [
            moved("pos_bridge_events_published_total", source=s, type="order.status", status=status)
            for s in upstream
        ]
        assert sum(published) == 1, (status, dict(zip(upstream, published, strict=True)))
    assert moved("pos_bridge_commands_total", type="pay", result="handled") == 1
    # the delay since upstream receipt is observed for each of those two events, and for the
    # final's card details (order.details) when the final came from the stream without them
    details = sum(
        moved(
            "pos_bridge_events_published_total", source=s, type="order.details", status="completed"
        )
        for s in upstream
    )
    assert details <= 1
    assert (
        sum(moved("pos_bridge_publish_delay_seconds_count", source=s) for s in upstream)
        == 2 + details
    )
    assert sample(after, "pos_bridge_redis_outage") == 0
    assert sample(after, "pos_bridge_sessions_active") == 0
    assert "pos_bridge_command_queue_depth" in after
    assert "pos_bridge_upstream_reconnects_total" in after
    assert daemon.terminate() == 0

    # each lifecycle step of the payment is one log line naming terminal, order and command
    steps = [line for line in daemon.log_lines() if line.get("command_id") == command_id]
    names = [line["event"] for line in steps]
    assert names[:2] == ["command.received", "order.created"] and names[-1] == "session.ended", (
        names
    )
    # transitions are counted by the metrics above; their log line is debug, off the hot path
    assert "order.transition" not in names, names
    for line in steps:
        assert (
            line["terminal_id"] == "SIM-APPROVE-01" and line["order_id"] == events[0]["order_id"]
        ), line


def test_readyz_follows_redis(tmp_path, simulator, start_daemon) -> None:
    with RedisServer() as own_redis:  # not the session's: this test takes it away
        daemon = start_daemon(own_redis.url, simulator.base_url)
        daemon.notify.wait_for(lambda m: m.get("READY") == "1")
        assert daemon.wait_http("/readyz", 200).json()["ready"] is True

        own_redis.stop()
        daemon.wait_http("/readyz", 503, timeout=10)
        # the command intake may notice first ("not reading commands"); the probe within 1-2 s
        deadline = time.monotonic() + 5
        while not (down := daemon.get("/readyz").json())["reason"].startswith("redis unreachable"):
            assert time.monotonic() < deadline, down
            time.sleep(0.1)
        assert down["ready"] is False and down["redis"] is False, down
        assert daemon.get("/healthz").status_code == 200  # alive all the same
        daemon.notify.wait_for(lambda m: "Redis unreachable" in m.get("STATUS", ""), timeout=5)
        assert sample(daemon.get("/metrics").text, "pos_bridge_redis_outage") == 1

        own_redis.start()
        up = daemon.wait_http("/readyz", 200, timeout=20).json()
        assert up["ready"] is True
        daemon.notify.wait_for(
            lambda m: "Redis reachable, reading commands" in m.get("STATUS", ""), timeout=5
        )
        assert sample(daemon.get("/metrics").text, "pos_bridge_redis_outage") == 0
        assert daemon.terminate() == 0

    # the outage is logged once when it starts and once when it ends, not once per retry
    events = [line["event"] for line in daemon.log_lines()]
    assert events.count("redis.unreachable") == 1, events
    assert events.count("redis.reachable") == 1, events


def test_ready_without_redis(tmp_path, simulator, start_daemon) -> None:
    """READY=1 does not wait for Redis: the daemon survives its outage and says so."""
    with RedisServer() as gone:
        url = gone.url
    daemon = start_daemon(url, simulator.base_url)
    daemon.notify.wait_for(lambda m: m.get("READY") == "1")
    daemon.notify.wait_for(lambda m: "Redis unreachable" in m.get("STATUS", ""))
    body = daemon.wait_http("/readyz", 503).json()
    assert body["reason"].startswith("redis unreachable")
    assert daemon.terminate() == 0


@pytest.mark.parametrize("path", ["/nope"])
def test_unknown_path_is_404(redis_server, simulator, start_daemon, path) -> None:
    daemon = start_daemon(redis_server.url, simulator.base_url)
    daemon.notify.wait_for(lambda m: m.get("READY") == "1")
    assert daemon.get(path).status_code == 404
    assert daemon.terminate() == 0
