"""No background loop ends the daemon: a real ``pos-bridge run`` process whose every loop is
made to fail once (``POS_BRIDGE_TEST_FAULTS``, the test-only fault hook of
``bridge.daemon.loops``) keeps running, logs and counts each restart, still completes payments
and still drains and exits 0 on SIGTERM."""

from __future__ import annotations

import signal
import time

import httpx
import redis

from bridge.daemon.loops import FAULTS_ENV, parse_faults
from bridge.redis.server import free_port
from tests.service.test_daemon import pay, sample, wait_final

#: Every supervised loop of a single daemon with [http] and [webhook] on and discovery on.
LOOPS = [
    "redis_probe",
    "lease_renewal",
    "orphan_watch",
    "payment_timers",
    "intake",
    "cancel_sweep",
    "rediscover",
    "status_report",
    "watchdog",
    "http_server",
    "webhook_server",
    "signals",
]


def test_parse_faults() -> None:
    assert parse_faults("") == {}
    assert parse_faults("a, b:3,c:x") == {"a": 1, "b": 3, "c": 1}


def test_every_loop_fails_once_and_the_daemon_carries_on(
    redis_server, simulator, start_daemon
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    webhook_port = free_port()
    daemon = start_daemon(
        redis_server.url,
        simulator.base_url,
        watchdog_usec=400_000,
        # the webhook receiver on, and a group with discovery (the rediscovery loop runs)
        extra_config=f"""
[webhook]
enabled = true
listen = "127.0.0.1:{webhook_port}"

[[multisafepay.terminal_groups]]
name = "found"
api_key = "discovered-group-key-0123456789"
discover = true
""",
        env={FAULTS_ENV: ",".join(LOOPS)},
    )
    daemon.notify.wait_for(lambda m: m.get("READY") == "1")
    daemon.wait_http("/readyz", 200)

    def crashed() -> set[str]:
        return {line["loop"] for line in daemon.log_lines() if line["event"] == "loop.crashed"}

    daemon.proc.send_signal(signal.SIGHUP)  # the signal loop's fault fires on a signal
    # a payment makes the payment timers' loop (and the intake) go round
    first = pay(client, "SIM-APPROVE-01")
    deadline = time.monotonic() + 60
    while crashed() != set(LOOPS):
        assert daemon.proc.poll() is None, daemon.log()
        assert time.monotonic() < deadline, f"crashed only {crashed()}:\n{daemon.log()[-5000:]}"
        time.sleep(0.1)
    lines = [line for line in daemon.log_lines() if line["event"] == "loop.crashed"]
    assert all(line["level"] == "error" for line in lines)
    assert {line["error_type"] for line in lines} == {"InjectedFault"}
    assert all(line["restart_in_s"] > 0 for line in lines)
    assert not [line for line in daemon.log_lines() if "test-key-0123" in str(line)]

    # restarted: every loop logs it, the servers answer again on their ports
    deadline = time.monotonic() + 60
    while {line["loop"] for line in daemon.log_lines() if line["event"] == "loop.restarted"} != set(
        LOOPS
    ):
        assert time.monotonic() < deadline, daemon.log()[-5000:]
        time.sleep(0.1)
    metrics = daemon.wait_http("/metrics", 200).text
    for loop in LOOPS:
        assert sample(metrics, "pos_bridge_background_restarts_total", loop=loop) == 1, loop
    hook = httpx.post(f"http://127.0.0.1:{webhook_port}/webhooks/multisafepay/nope", timeout=5)
    assert hook.status_code == 404  # the webhook server answers again
    body = daemon.wait_http("/readyz", 200).json()
    assert body["ready"] is True

    # payments flow: the one sent while the loops failed, and one after
    assert any(e["final"] for e in wait_final(client, "SIM-APPROVE-01", first, timeout=60))
    after = pay(client, "SIM-APPROVE-01")
    events = wait_final(client, "SIM-APPROVE-01", after, timeout=60)
    assert [e["status"] for e in events if e["type"] == "order.status"][-1] == "completed"

    # the restarted signal loop still drains on SIGTERM, exit 0
    assert daemon.terminate() == 0, daemon.log()[-5000:]
    assert "daemon.stopped" in [line["event"] for line in daemon.log_lines()]
