"""The versions of the records daemons share in Redis, and the rule for reading them.

Two releases of the daemon, N and N-1, run side by side on one Redis during a rolling upgrade
(docs/redis-formats.md lists every shared record and its format). The rule:

- A record's version is ``major`` or ``major.minor``. A minor change only adds what an older
  reader may ignore; a major change is one an older reader cannot act on safely.
- Readers accept unknown fields and older versions (a record without a version is version 1:
  every record written before versions were written, and those still written without one so
  that release N-1, whose readers refuse unknown fields, can read them).
- A reader refuses to act on a record of a newer major version than it knows: it logs it and
  leaves it as it is (:class:`NewerFormat`), never rewriting or deleting what it cannot read.
- A release that needs a new major version reads it one release before any release writes it.

Pure: no I/O; the Redis side raises and handles :class:`NewerFormat`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

#: The field a JSON record carries its version in (absent: version 1).
FORMAT_FIELD = "format"

#: Each shared record's current major version (docs/redis-formats.md).
LEASE = 1
PRESENCE = 1
SESSION = 1
ORDER_STATE = 1

_VERSION = re.compile(r"^([0-9]{1,6})(?:\.[0-9]{1,6})?$")


class NewerFormat(ValueError):
    """A record written by a newer release in a major version this one cannot read."""

    def __init__(self, record: str, version: object, supported: int) -> None:
        super().__init__(f"{record} record of format {version!r}: this release reads {supported}")
        self.record = record
        self.version = version
        self.supported = supported


def major(version: object) -> int | None:
    """The major version of a record's ``format`` value (1 when absent); None when the value
    is no version at all (a reader cannot tell what wrote it)."""
    if version is None:
        return 1
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version if version >= 1 else None
    if isinstance(version, str):
        found = _VERSION.match(version)
        return int(found.group(1)) if found and int(found.group(1)) >= 1 else None
    return None


def check(record: str, data: Mapping[str, Any], supported: int) -> None:
    """Raise :class:`NewerFormat` unless this release may act on ``data``: its version is
    ``supported`` or older (a missing version is 1)."""
    version = data.get(FORMAT_FIELD)
    found = major(version)
    if found is None or found > supported:
        raise NewerFormat(record, version, supported)


def known(data: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``data`` without the fields this release does not know (a newer release's additions
    and the version itself): what a reader builds its record from."""
    return {name: data[name] for name in names if name in data}


def read_json(
    raw: str | bytes, record: str, supported: int, names: tuple[str, ...]
) -> dict[str, Any]:
    """A JSON object record's fields this release knows, once :func:`check` allows it."""
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"a {record} record is a JSON object")
    check(record, data, supported)
    return known(data, names)


class FirstSight:
    """Which records were already reported: a newer release's record is logged the first
    time it is met, not on every scan. Bounded: past ``limit`` names, nothing more is logged."""

    def __init__(self, limit: int = 1000) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def first(self, name: str) -> bool:
        if name in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(name)
        return True


def parse_lease_token(token: str) -> tuple[int, str, str] | None:
    """A version-1 lease token ``{fence}:{incarnation}@{consumer}`` as (fence, incarnation,
    consumer); None for any other shape (a newer release's token: its owner cannot be judged,
    so the lease is left to its holder, or to lapse)."""
    fence, sep, owner = token.partition(":")
    incarnation, at, consumer = owner.partition("@")
    if not (sep and at and fence.isdigit() and incarnation and consumer):
        return None
    return int(fence), incarnation, consumer
