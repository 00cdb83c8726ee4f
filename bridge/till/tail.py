"""``pos-bridge tail``: print terminals' events as they arrive, catching up first.

Everything is read from the terminals' durable streams (``{p}:terminal:{T}:events``) with
blocking ``XREAD`` from the last entry id printed, never from pub/sub. One read path for the
catch-up and the live part means no gap and no duplicate between them, a dropped connection
resumes exactly where it stopped (the stream remembers; pub/sub would not), and the output is
in stream order. The price is a round trip per batch instead of a push, invisible at a till's
event rate.

Without ``--terminal`` the streams are found with ``SCAN MATCH {p}:terminal:*:events TYPE
stream`` and read together in one ``XREAD``; a rescan every few seconds adds terminals that
appear later, read from their first entry, so none of their events is lost (a new terminal's
first events may show up to one rescan interval late). ``PSUBSCRIBE {p}:terminal:*`` would show
them sooner but would need its own catch-up after every reconnect, and could interleave pushed
and read events out of order: exactness is worth more to an operator than a second.

The stream helpers here (ids, entry decoding) are also used by ``pay --wait``'s catch-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from bridge.errors import UserError
from bridge.redis.client import follow_master, text
from bridge.redis.keys import Keys
from bridge.till.options import till_keys
from bridge.till.output import Printer, describe_error, redis_failure, warn
from bridge.till.retry import (
    CONNECTION_ERRORS,
    MASTER_CHECK_EVERY,
    GaveUp,
    gave_up,
    open_client,
    retrier,
)

STREAM_ID_RE = re.compile(r"^\d+(-\d+)?$")

RESCAN_INTERVAL = 2.0  # seconds between scans for new terminals' streams (all-terminals mode)
BLOCK_MS = 1000  # XREAD BLOCK: well under the client's socket timeout
BATCH = 500


# -- stream helpers (shared with pay --wait) ---------------------------------------------------


def id_key(stream_id: str) -> tuple[int, int]:
    """``1700000000000-3`` -> (1700000000000, 3), for comparing stream ids."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def later_id(a: str, b: str) -> str:
    return a if id_key(a) >= id_key(b) else b


def decode_entry(stream_id: str, fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """A stream entry (field ``event``) -> the event as tills receive it, with ``stream_id``.

    None for an entry that is not an event object (never written by the bridge)."""
    raw = fields.get("event")
    if raw is None:
        return None
    try:
        event = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(event, dict):
        return None
    event["stream_id"] = stream_id
    return event


def xread_entries(response: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """An ``XREAD`` answer (RESP2 list or RESP3 map) -> [(stream key, entry id, fields)]."""
    if not response:
        return []
    pairs = response.items() if isinstance(response, Mapping) else response
    out: list[tuple[str, str, dict[str, Any]]] = []
    for stream, entries in pairs:
        if (
            entries
            and isinstance(entries[0], list)
            and entries[0]
            and isinstance(entries[0][0], list)
        ):
            entries = entries[0]  # RESP3 wraps the entries once more
        for entry_id, fields in entries:
            out.append((stream, entry_id, dict(fields or {})))
    return out


async def last_entry_id(client: Redis, stream: str) -> str:
    """The id of the newest entry, ``0-0`` when the stream is empty or absent."""
    entries = await client.xrevrange(stream, "+", "-", count=1)
    return (text(entries[0][0]) if entries else None) or "0-0"


async def first_entry_id(client: Redis, stream: str) -> str | None:
    entries = await client.xrange(stream, "-", "+", count=1)
    return text(entries[0][0]) if entries else None


def check_stream_id(value: str) -> str:
    value = value.strip()
    if not STREAM_ID_RE.match(value):
        raise UserError(
            f"--since {value!r} is not a stream id (like 1700000000000-0, as printed by tail)"
        )
    return value


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


# -- tail ---------------------------------------------------------------------------------------


class Tail:
    """Follows one terminal's stream, or all of them, printing each event once, in order.

    ``since``: a stream id to print the events after; ``from_start``: print every event kept;
    neither: only events that arrive after :meth:`start`.
    """

    def __init__(
        self,
        client: Redis,
        keys: Keys,
        printer: Printer,
        *,
        terminal: str | None = None,
        since: str | None = None,
        from_start: bool = False,
        block_ms: int = BLOCK_MS,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        self.client = client
        self.keys = keys
        self.printer = printer
        self.terminal = terminal
        self.since = since
        self.from_start = from_start
        self.block_ms = block_ms
        self.rescan_interval = rescan_interval
        #: stream key -> id of the last entry printed (or the position to read after)
        self.positions: dict[str, str] = {}
        self._next_scan = 0.0

    def _terminal_of(self, stream: str) -> str:
        return self.keys.terminal_of_stream(stream) or stream

    async def _initial_position(self, stream: str) -> str:
        if self.from_start:
            return "0-0"
        if self.since is not None:
            return self.since
        return await last_entry_id(self.client, stream)

    async def _scan(self) -> list[str]:
        pattern = _glob_escape(self.keys.terminal_stream_prefix) + "*:events"
        found = [
            key async for key in self.client.scan_iter(match=pattern, count=1000, _type="stream")
        ]
        return sorted(found)

    async def start(self) -> None:
        """Decide where each stream is read from. Raises redis errors (the caller reports)."""
        if self.terminal is not None:
            stream = self.keys.terminal_stream(self.terminal)
            self.positions[stream] = await self._initial_position(stream)
            if self.since is not None and self.since != "0-0":
                first = await first_entry_id(self.client, stream)
                if first is not None and id_key(first) > id_key(self.since):
                    warn(
                        f"the oldest event kept for terminal {self._terminal_of(stream)} is "
                        f"{first}, after --since {self.since}: any events in between were "
                        "trimmed (read the order keys of the orders you care about)"
                    )
            return
        for stream in await self._scan():
            self.positions[stream] = await self._initial_position(stream)
        self._next_scan = anyio.current_time() + self.rescan_interval

    async def _rescan(self) -> None:
        # A stream found now was created after start() (SCAN returns every key that exists for
        # its whole duration), so all of it is new: read it from its first entry.
        for stream in await self._scan():
            self.positions.setdefault(stream, "0-0")
        self._next_scan = anyio.current_time() + self.rescan_interval

    async def step(self) -> int:
        """One blocking read; prints what it got. Returns how many events were printed."""
        if self.terminal is None and anyio.current_time() >= self._next_scan:
            await self._rescan()
        if not self.positions:
            await anyio.sleep(min(self.rescan_interval, self.block_ms / 1000))
            return 0
        streams: dict[KeyT, StreamIdT] = {key: at for key, at in self.positions.items()}
        response = await self.client.xread(streams, count=BATCH, block=self.block_ms)
        entries = xread_entries(response)
        # several streams: merge by the ids' millisecond time (a stable sort keeps each
        # stream's own order; events of different terminals in the same millisecond have no
        # order to keep)
        entries.sort(key=lambda e: id_key(e[1])[0])
        printed = 0
        for stream, entry_id, fields in entries:
            self.positions[stream] = later_id(entry_id, self.positions[stream])
            event = decode_entry(entry_id, fields)
            if event is None:
                warn(f"skipped stream entry {entry_id} of {stream}: not an event")
                continue
            self.printer.event(event)
            printed += 1
        return printed

    async def run(self, url: str) -> None:
        """Read until cancelled; a lost Redis is reported once, retried, and resumed exactly
        (from :attr:`positions`, on whichever node is the master then). With sentinels they
        are asked between reads, at most every ``MASTER_CHECK_EVERY`` s, where the master is:
        reads move to a new one at once, not when the old one is demoted."""
        delay = 0.2
        lost = False
        sentinels = getattr(self.client, "sentinels", None) is not None
        check_master_at = anyio.current_time() + MASTER_CHECK_EVERY
        while True:
            try:
                if sentinels and anyio.current_time() >= check_master_at:
                    check_master_at = anyio.current_time() + MASTER_CHECK_EVERY
                    await follow_master(self.client)  # type: ignore[arg-type] # a BridgeRedis
                await self.step()
            except CONNECTION_ERRORS as exc:
                if not lost:
                    warn(f"lost Redis: {describe_error(exc, url)}; retrying")
                    lost = True
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if lost:
                warn("Redis is back; resuming after the last event printed")
                lost, delay = False, 0.2


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


async def _tail(args: argparse.Namespace, printer: Printer, since: str | None) -> None:
    client = open_client(args)
    retry = retrier(args, client)
    try:
        tail = Tail(
            client,
            till_keys(args),
            printer,
            terminal=args.terminal,
            since=since,
            from_start=bool(args.from_start),
        )
        try:  # started again after a lost connection: nothing is printed before it is done
            await retry.call(tail.start, "starting to follow the streams")
        except GaveUp as exc:
            raise gave_up(retry, exc) from None
        except RedisError as exc:
            raise redis_failure(args.redis_url, exc) from None
        refused: list[RedisError] = []
        async with anyio.create_task_group() as tg:
            if threading.current_thread() is threading.main_thread():
                tg.start_soon(_stop_on_signals, tg.cancel_scope)
            try:
                await tail.run(args.redis_url)
            except RedisError as exc:  # not a lost connection: e.g. WRONGTYPE, NOPERM
                refused.append(exc)
            tg.cancel_scope.cancel()
        if refused:  # raised here, not in the task group (which would wrap it in a group)
            raise redis_failure(args.redis_url, refused[0])
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def _silence_stdout() -> None:
    """After a closed pipe (``tail | head``): no second error when Python flushes at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def tail_command(args: argparse.Namespace) -> int:
    """Runs until Ctrl-C or SIGTERM (exit 0); a Redis unreachable at the start for the whole
    ``--retry-for`` (a failover: retried; a single node: not) exits 2."""
    since = check_stream_id(args.since) if args.since else None
    if args.terminal is not None:
        from bridge.core.commands import TERMINAL_ID_PATTERN

        if not re.match(TERMINAL_ID_PATTERN, args.terminal.strip()):
            raise UserError(f"terminal ID {args.terminal!r} is not valid (1-32 of A-Z a-z 0-9 -)")
        args.terminal = args.terminal.strip()
    printer = Printer()
    try:
        anyio.run(_tail, args, printer, since)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        _silence_stdout()
    return 0
