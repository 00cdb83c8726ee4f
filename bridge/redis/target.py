"""Where and how to reach Redis, as one small value every part of the bridge connects with.

``RedisTarget`` is built from ``[redis]`` (``RedisConfig.target``) or from a bare URL (a till
tool's ``--redis-url``); :func:`bridge.redis.client.connect` opens it. One kind of target per
deployment: a single node (``url``, the default), a Sentinel deployment (``sentinels`` +
``master_name``; ``url`` then gives only the scheme, the credentials and the database), or a
Redis Cluster (``cluster``; ``url`` is any node, :mod:`bridge.redis.cluster`). TLS
(``rediss://``) applies to each, with the same CA file and client certificate for the
sentinels as for the data nodes. A cluster has no sentinels (refused:
:meth:`RedisTarget.check`); its commits wait for replicas as a Sentinel deployment's do,
``WAIT`` sent on the node connection that took the commit (:mod:`bridge.redis.cluster`).

No I/O here: the files named are read by the TLS layer when connecting (and checked to exist
when the config is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

#: ``WAIT`` timeout when the target asks for replicas but names no timeout.
DEFAULT_WAIT_TIMEOUT = 10.0


def parse_host_port(value: str, default_port: int = 26379) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:26379"`` for IPv6; the port defaults to ``default_port``)."""
    text = value.strip()
    if not text or any(c.isspace() or c in "/@?#" for c in text):
        raise ValueError(f"{value!r} is not host:port")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not [ipv6]:port")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"{value!r}: write an IPv6 address as [addr]:port")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{value!r} names no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: port must be 1..65535")
    return host, int(port_text)


@dataclass(frozen=True, slots=True, repr=False)
class RedisTarget:
    """A Redis deployment to connect to, and what a commit waits for there."""

    url: str
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: Sentinel addresses; empty: ``url`` is the node itself.
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    #: After a commit (a Lua script, a stream append): ``WAIT`` for this many replicas.
    wait_replicas: int = 0
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    #: A Redis Cluster: ``url`` is any node of it.
    cluster: bool = False

    def __post_init__(self) -> None:
        problem = self.check()
        if problem:
            raise ValueError(problem)

    def check(self) -> str | None:
        """What makes this target impossible (one line), or None."""
        if self.cluster and self.sentinels:
            return "a Redis Cluster has no sentinels: use layout = cluster or sentinels, not both"
        return None

    @classmethod
    def of(cls, target: RedisTarget | str) -> RedisTarget:
        """``target`` itself, or a single-node target for a bare URL."""
        return target if isinstance(target, RedisTarget) else cls(url=target)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    def __str__(self) -> str:
        """What to print or log: the URL with its password masked, and the sentinels."""
        from bridge.config.types import mask_url_password  # lazily: a till tool stays light

        url = mask_url_password(self.url)
        if self.cluster:
            return f"cluster via {url}"
        if not self.sentinels:
            return url
        where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"sentinel master {self.master_name!r} via {where} ({url})"

    def __repr__(self) -> str:
        return f"RedisTarget({self})"

    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py connection arguments for TLS (none without ``rediss://``)."""
        if not self.tls:
            return {}
        out: dict[str, Any] = {"ssl_cert_reqs": "required"}
        if self.tls_ca_file:
            out["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file:
            out["ssl_certfile"] = self.tls_cert_file
        if self.tls_key_file:
            out["ssl_keyfile"] = self.tls_key_file
        return out

    def node_kwargs(self) -> dict[str, Any]:
        """Credentials and database of ``url`` (what a Sentinel-found master is opened with)."""
        parts = urlsplit(self.url)
        db_text = parts.path.lstrip("/") or "0"
        return {
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password is not None else None,
            "db": int(db_text) if db_text.isdigit() else 0,
        }
