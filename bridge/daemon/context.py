"""What every payment session of a daemon shares: clients, stores and the upstream settings."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING

from bridge.core.backoff import Backoff
from bridge.multisafepay.api import MultiSafepayApi
from bridge.redis.leases import Leases
from bridge.redis.outage import RedisWaiters
from bridge.redis.publisher import EventStore
from bridge.redis.registry import SessionRegistry

if TYPE_CHECKING:
    from bridge.config import MultiSafepayConfig


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What every session shares: clients, stores and the upstream settings."""

    api: MultiSafepayApi
    store: EventStore
    registry: SessionRegistry
    upstream: MultiSafepayConfig
    leases: Leases
    redis_waiters: RedisWaiters
    #: The TLS context of the streams, as of the REST calls (``[multisafepay] ca_file``).
    tls: ssl.SSLContext

    @property
    def tz(self) -> tzinfo:
        return self.upstream.tzinfo

    def backoff(self) -> Backoff:
        u = self.upstream
        return Backoff(u.reconnect_initial, u.reconnect_factor, u.reconnect_cap, u.reconnect_jitter)
