"""The daemon's Prometheus metrics, served on ``[http].listen`` at ``/metrics``.

They live in a registry of their own (``REGISTRY``), not prometheus-client's global default,
so importing a library that registers metrics cannot change what is scraped, and nothing here
depends on process-wide state beyond this module. Every name starts with ``pos_bridge_``; the
README lists them. Under ``run --workers N`` the workers' values are kept in Prometheus'
multiprocess files (``$PROMETHEUS_MULTIPROC_DIR``, set by the supervisor, which serves the
sum): each gauge says how its workers' values combine (``multiprocess_mode``: a sum for what
each worker has of its own, the maximum for what every worker sees of the one Redis).
Label values come from small fixed sets (event types, statuses, sources,
command types, results, error kinds): never order ids, terminal ids or other unbounded values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from bridge.core.events import Event

__all__ = [
    "BACKGROUND_RESTARTS",
    "COMMANDS",
    "COMMAND_QUEUE_DEPTH",
    "COMMANDS_PENDING",
    "CONTENT_TYPE",
    "EVENTS_PUBLISHED",
    "PUBLISH_DELAY",
    "REDIS_FAILOVERS",
    "REDIS_OUTAGE",
    "REDIS_REPLICAS",
    "REDIS_WAIT_SHORT",
    "REDIS_WAITING",
    "REGISTRY",
    "SESSIONS_ACTIVE",
    "UPSTREAM_ERRORS",
    "UPSTREAM_RECONNECTS",
    "WEBHOOKS",
    "command_label",
    "command_type",
    "count_published",
    "render",
    "series",
]

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

EVENTS_PUBLISHED = Counter(
    "pos_bridge_events_published_total",
    "Events published to tills (durable stream + channel), by source, type and status "
    "(for order.failed and command.failed: the error code)",
    ["source", "type", "status"],
    registry=REGISTRY,
)

#: From the moment an upstream observation was received (an event's ``received_at``) to the
#: moment its transition was committed and published in Redis. Sub-millisecond to seconds.
PUBLISH_DELAY = Histogram(
    "pos_bridge_publish_delay_seconds",
    "Delay from receiving an upstream observation (stream, webhook, poll) to publishing its event",
    ["source"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)

SESSIONS_ACTIVE = Gauge(
    "pos_bridge_sessions_active",
    "Payments this daemon is following now",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

COMMANDS = Counter(
    "pos_bridge_commands_total",
    "Till commands taken from the commands stream, by type (pay, cancel, refund, watch; "
    "invalid when unreadable) and result (handled: acknowledged; unfinished: left for a "
    "retry; crashed: a bug, left unacknowledged)",
    ["type", "result"],
    registry=REGISTRY,
)

COMMAND_QUEUE_DEPTH = Gauge(
    "pos_bridge_command_queue_depth",
    "Commands in the commands stream not yet read by any daemon of the consumer group",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

COMMANDS_PENDING = Gauge(
    "pos_bridge_commands_pending",
    "Commands read by a daemon of the consumer group but not yet acknowledged",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

UPSTREAM_RECONNECTS = Counter(
    "pos_bridge_upstream_reconnects_total",
    "Order event streams reopened after they were lost, by transport (sse, websocket)",
    ["transport"],
    registry=REGISTRY,
)

UPSTREAM_ERRORS = Counter(
    "pos_bridge_upstream_errors_total",
    "Failures talking to MultiSafepay, by kind (stream_rejected, poll_failed, malformed, "
    "create_retry, lookup_failed)",
    ["kind"],
    registry=REGISTRY,
)

WEBHOOKS = Counter(
    "pos_bridge_webhooks_total",
    "Webhook notifications received, by result (accepted, rejected, malformed, ...)",
    ["result"],
    registry=REGISTRY,
)

REDIS_OUTAGE = Gauge(
    "pos_bridge_redis_outage",
    "1 while Redis is unreachable (the readiness probe's last round trip failed), else 0",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

REDIS_WAITING = Gauge(
    "pos_bridge_redis_waiting",
    "Tasks waiting for Redis to come back: each session holding upstream news, and the "
    "command intake",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

REDIS_FAILOVERS = Counter(
    "pos_bridge_redis_failovers_total",
    "Times the Redis master changed (the sentinels named another node) while the daemon ran",
    registry=REGISTRY,
)

REDIS_WAIT_SHORT = Counter(
    "pos_bridge_redis_wait_short_total",
    "Commits whose WAIT for [redis] wait_replicas replicas timed out (the write was on the "
    "master only)",
    registry=REGISTRY,
)

REDIS_REPLICAS = Gauge(
    "pos_bridge_redis_replicas",
    "Replicas connected to the Redis master (its INFO replication), at the last probe",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

BACKGROUND_RESTARTS = Counter(
    "pos_bridge_background_restarts_total",
    "Background loops of the daemon restarted after an unexpected error (a bug), by loop "
    "(redis_probe, lease_renewal, orphan_watch, payment_timers, intake, ...)",
    ["loop"],
    registry=REGISTRY,
)

_UPSTREAM_SOURCES = frozenset({"stream", "websocket", "webhook", "poll"})


def count_published(events: Iterable[Event], now: float | None = None) -> None:
    """Count events that were just published, and their delay since upstream receipt."""
    for event in events:
        source = str(event.source)
        status = event.status or (str(event.error.code) if event.error is not None else "")
        EVENTS_PUBLISHED.labels(source, str(event.type), status).inc()
        if source in _UPSTREAM_SOURCES:
            delay = (time.time() if now is None else now) - event.received_at.timestamp()
            PUBLISH_DELAY.labels(source).observe(max(0.0, delay))


_COMMAND_TYPES = frozenset({"pay", "cancel", "refund", "watch", "receipt"})


def command_type(fields: Mapping[str, str]) -> str:
    """The ``type`` of a commands-stream entry, for a label (``invalid`` when unreadable).
    Bounded like the parser: no entry can make this raise."""
    from bridge.core.untrusted import MAX_JSON_DEPTH, json_depth

    text = fields.get("command") or ""
    if len(text) > 65536 or json_depth(text) > MAX_JSON_DEPTH:
        return "invalid"
    try:
        data = json.loads(text)
    except ValueError:
        return "invalid"
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) and kind in _COMMAND_TYPES else "invalid"


def command_label(parsed: str | None, fields: Mapping[str, str]) -> str:
    """The label of a command its handler parsed as ``parsed`` (a known type: taken as it is,
    the entry is not parsed a second time); otherwise read from the entry itself."""
    return parsed if parsed in _COMMAND_TYPES else command_type(fields)


def series() -> int:
    """How many samples the registry holds: flat unless a label took an unbounded value."""
    return sum(len(family.samples) for family in REGISTRY.collect())


def render() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)
