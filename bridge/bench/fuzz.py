"""``pos-bridge bench --fuzz``: hostile input by the ten thousand against real daemon processes.

Three kinds of input, each against a ``pos-bridge run`` child process and a private Redis:

- **commands**: entries on ``{p}:commands`` with any bytes as field name and value, any JSON
  shape in any field, deep nesting, oversized values, invalid UTF-8, hostile ``watch`` URLs and
  tokens (a daemon against the simulator). Each must be acknowledged and either answered on
  the terminal it names or dead-lettered with its entry id;
- **notifications**: requests to the webhook receiver: forged, cross-group and replayed
  signatures, garbage and deep bodies, oversized bodies, hostile ``GET`` transaction ids, raw
  garbage HTTP. Each must get an HTTP answer;
- **upstream**: payments against a MultiSafepay that answers garbage (``bench/hostile.py``,
  a second daemon). Each must end with exactly one final event.

It reports inputs, crashes (the daemon exited, or logged a crash), unanswered inputs, payments
that never ended, and the daemons' memory before and after. Exit 0 only if every count of
trouble is 0. Seeded: ``--seed`` replays a run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from bridge.bench.hostile import MODES, HostileUpstream
from bridge.bench.procs import rss_bytes
from bridge.bench.rig import QUICK_UPSTREAM, DaemonProcess
from bridge.core.commands import CancelCommand, InvalidCommand, parse_command
from bridge.redis.client import connect
from bridge.redis.keys import COMMANDS_GROUP, Keys
from bridge.redis.server import RedisServer, free_port
from bridge.simulator.server import SimulatorServer
from bridge.simulator.signing import auth_header

API_KEY = "fuzz-group-key-0123456789"
OTHER_KEY = "fuzz-other-key-0123456789"
FUZZ_TERMINAL = "FUZZ-T"  # in no group: even a valid command is answered without upstream calls
_BATCH = 1000
_CRASH_MARKERS = ("Traceback", "command.crashed", "session.crashed", "Unhandled")


@dataclass
class FuzzReport:
    seed: int
    commands: int = 0
    commands_unanswered: int = 0
    commands_skipped: int = 0  # well-formed cancels of orders that never come (issue 12)
    notifications: int = 0
    notifications_unanswered: int = 0
    notifications_5xx: int = 0
    upstream_payments: int = 0
    payments_never_ended: int = 0
    payments_not_one_final: int = 0
    daemon_exits: int = 0
    crash_lines: int = 0
    valid_pay_after: str = ""
    rss_before_mb: dict[str, float] = field(default_factory=dict)
    rss_after_mb: dict[str, float] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (
            self.commands_unanswered
            + self.notifications_unanswered
            + self.payments_never_ended
            + self.payments_not_one_final
            + self.daemon_exits
            + self.crash_lines
            == 0
            and self.valid_pay_after == "completed"
        )


# -- generators (pure, seeded) -------------------------------------------------------------------


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), 10**30, 1250])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("inf"), float("nan")])
    if kind in (4, 5):
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF)]))
            for _ in range(rng.randrange(0, 12))
        )
    if kind in (6, 7):
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {str(_json_value(rng, 3))[:8]: _json_value(rng, depth + 1) for _ in range(3)}


def _random_bytes(rng: random.Random, size: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(size))


def hostile_command(rng: random.Random, command_id: str) -> dict[bytes, bytes]:
    """One hostile stream entry. JSON ones carry ``command_id`` and name ``FUZZ-T``."""
    kind = rng.randrange(10)
    if kind == 0:
        return {_random_bytes(rng, rng.randrange(1, 10)): _random_bytes(rng, rng.randrange(40))}
    if kind == 1:
        return {b"command": _random_bytes(rng, rng.randrange(1, 80))}
    if kind == 2:
        return {b"command": rng.choice([b"[", b"{"]) * rng.choice([50, 1000, 100_000])}
    base: dict[str, Any] = {"command_id": command_id, "terminal_id": FUZZ_TERMINAL}
    if kind == 3:  # every field any shape
        for name in ("type", "amount", "order_id", "currency", "description", "events_token"):
            if rng.random() < 0.7:
                base[name] = _json_value(rng)
    elif kind == 4:  # a plausible type, hostile fields
        base["type"] = rng.choice(["pay", "cancel", "refund", "watch"])
        for name in ("amount", "order_id", "description"):
            base[name] = _json_value(rng) if rng.random() < 0.5 else rng.choice([5, "o-1"])
    elif kind == 5:  # oversized
        size = 1_000_000 if rng.random() < 0.01 else 70_000
        base |= {"type": "p" * size}
    elif kind == 6:  # deep in a field
        raw = json.dumps(base | {"type": "pay", "amount": 5})[:-1]
        return {b"command": (raw + ', "x": ' + "[" * 2000 + "]" * 2000 + "}").encode()}
    elif kind == 7:  # invalid UTF-8 inside
        raw = json.dumps(base | {"type": "pay", "amount": 5, "description": "X"})
        return {b"command": raw.encode().replace(b'"X"', b'"\xff\xfe\xc3"')}
    elif kind == 8:  # hostile watch
        base |= {
            "type": "watch",
            "order_id": "w-" + command_id[-10:].replace("-", "x"),
            "events_token": rng.choice(
                ["t\u00f6ken", "ok-token", "a b", "x" * 5000, "eyJ.eyJleHAiOjF9.x"]
            ),
            rng.choice(["events_stream_url", "events_url"]): rng.choice(
                [
                    None,
                    "http://127.0.0.1:6379/",
                    "http://evil@127.0.0.1/",
                    "ws://127.0.0.1:1/",
                    "http://[::1",
                    "https://api.multisafepay.com:99999/",
                    "\u00e9://x",
                ]
            ),
        }
    else:  # type of the wrong JSON type
        base["type"] = rng.choice([{"a": 1}, ["pay"], 1, None, True])
    return {b"command": json.dumps(base).encode()}


# -- the rig -------------------------------------------------------------------------------------


def daemon_config(
    api: str,
    redis_url: str,
    terminals: list[str],
    webhook_port: int | None,
    http_port: int = 0,
    max_payment_age: float = 8.0,
) -> str:
    """A daemon of groups ``shop`` (``terminals``) and ``other``, terse upstream timings, its
    webhook receiver on ``webhook_port`` (None: none), ``/metrics`` on ``http_port``."""
    quoted = ", ".join(f'"{t}"' for t in terminals)
    webhook = (
        f'[webhook]\nenabled = true\nlisten = "127.0.0.1:{webhook_port}"\n'
        f'public_url = "http://127.0.0.1:{webhook_port}"\n'
        if webhook_port
        else ""
    )
    return f"""
[multisafepay]
api_base_url = "{api}"
{QUICK_UPSTREAM}
max_payment_age = {max_payment_age}
create_retries = 1

[[multisafepay.terminal_groups]]
name = "shop"
api_key = "{API_KEY}"
terminals = [{quoted}]

[[multisafepay.terminal_groups]]
name = "other"
api_key = "{OTHER_KEY}"
terminals = ["OTHER-01"]

[redis]
url = "{redis_url}"
order_ttl = 3600
command_claim_idle = 5.0
stream_maxlen = 1000000

[http]
listen = "127.0.0.1:{http_port}"

{webhook}
[log]
level = "warning"
format = "json"
"""


async def _entries(client: Redis, key: str) -> list[tuple[str, dict[str, str]]]:
    rows: Any = await client.xrange(key)
    return list(rows)


async def _events(client: Redis, keys: Keys, terminal: str) -> list[dict[str, Any]]:
    return [
        json.loads(f["event"]) for _i, f in await _entries(client, keys.terminal_stream(terminal))
    ]


async def _wait_acknowledged(client: Redis, keys: Keys) -> None:
    """Every entry read and acknowledged (or 120 s: what is left is counted unanswered)."""
    with anyio.move_on_after(120):
        while True:
            groups = await client.xinfo_groups(keys.commands)
            group = next((g for g in groups if g["name"] == COMMANDS_GROUP), None)
            if group is not None and group["pending"] == 0 and group.get("lag") == 0:
                return
            await anyio.sleep(0.2)


async def _fuzz_commands(
    client: Redis, keys: Keys, count: int, rng: random.Random, report: FuzzReport
) -> None:
    sent = 0
    while sent < count:
        batch: list[tuple[str, str, dict[bytes, bytes]]] = []
        for _ in range(min(_BATCH, count - sent)):
            command_id = f"fz-{sent}"
            sent += 1
            fields = hostile_command(rng, command_id)
            try:
                if isinstance(parse_command(fields.get(b"command", b"")), CancelCommand):
                    report.commands_skipped += 1
                    continue
            except InvalidCommand:
                pass
            batch.append((command_id, "", fields))
        async with client.pipeline(transaction=False) as pipe:
            for _command_id, _entry, fields in batch:
                pipe.xadd(keys.commands, fields)  # type: ignore[arg-type]
            ids = await pipe.execute()
        report.commands += len(batch)
        await _wait_acknowledged(client, keys)
        dead = {f["entry_id"] for _i, f in await _entries(client, keys.commands_dead)}
        answered = {e["command_id"] for e in await _events(client, keys, FUZZ_TERMINAL)}
        for (command_id, _e, fields), entry_id in zip(batch, ids, strict=True):
            if entry_id not in dead and command_id not in answered and entry_id not in answered:
                report.commands_unanswered += 1
                if len(report.examples) < 10:
                    report.examples.append(f"unanswered command {fields!r:.150}")
        await client.delete(keys.commands_dead, keys.terminal_stream(FUZZ_TERMINAL))


def hostile_requests(rng: random.Random, port: int, n: int) -> list[bytes]:
    """Raw HTTP requests for the webhook receiver (bytes, so anything can be sent)."""
    path = "/webhooks/multisafepay"
    order = {
        "order_id": f"fz-hook-{n % 50}",
        "status": rng.choice(["initialized", "completed", "declined", "pending_weird"]),
        "amount": rng.choice([1250, -5, "x"]),
        "modified": "2026-11-29T10:00:00",
        "payment_details": {"terminal_id": rng.choice(["TILL-A", "OTHER-01", "NOPE"])},
    }
    body = json.dumps(order).encode()
    now = str(int(time.time()))
    kind = rng.randrange(9)
    group, key = rng.choice([("shop", API_KEY), ("other", OTHER_KEY), ("shop", OTHER_KEY)])
    headers = f"Host: 127.0.0.1:{port}\r\n"
    if kind == 0:  # signed, maybe cross-group
        auth = auth_header(key, now, body)
    elif kind == 1:  # forged
        auth = auth_header("not-the-key-000000", now, body)
    elif kind == 2:  # deep body, signed
        body = b'{"order_id": "x", "y": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
        auth = auth_header(key, now, body)
    elif kind == 3:  # garbage body, garbage auth
        body = _random_bytes(rng, rng.randrange(200))
        auth = _random_bytes(rng, 30).hex()
    elif kind == 4:  # oversized
        body = b"x" * 200_000
        auth = "x"
    elif kind == 5:  # GET with a hostile transaction id
        tid = rng.choice(["../../terminals", "x%3Fapi_key%3D1", "%ff", "fz-hook-1", "a" * 5000])
        return [f"GET {path}/{group}?transactionid={tid} HTTP/1.1\r\n{headers}\r\n".encode()]
    elif kind == 6:  # raw garbage
        return [_random_bytes(rng, rng.randrange(1, 300)) + b"\r\n\r\n"]
    elif kind == 7:  # wrong length
        return [f"POST {path}/{group} HTTP/1.1\r\n{headers}Content-Length: abc\r\n\r\n".encode()]
    else:  # trailing slash, signed
        auth = auth_header(key, now, body)
        group += "/"
    request = (
        f"POST {path}/{group} HTTP/1.1\r\n{headers}Auth: {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    return [request, request] if kind == 0 and rng.random() < 0.3 else [request]  # a replay


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may answer (413) and close before reading it all
        try:
            return sock.recv(64)
        except OSError:
            return b""


async def _fuzz_notifications(
    port: int, count: int, rng: random.Random, report: FuzzReport
) -> None:
    requests = [r for n in range(count) for r in hostile_requests(rng, port, n)][:count]
    limiter = anyio.CapacityLimiter(16)

    async def one(request: bytes) -> None:
        async with limiter:
            answer = await anyio.to_thread.run_sync(exchange, port, request)
        report.notifications += 1
        if not answer.startswith(b"HTTP/1.1 "):
            report.notifications_unanswered += 1
            if len(report.examples) < 10:
                report.examples.append(f"unanswered request {request[:120]!r}")
        elif answer[9:10] == b"5" and not answer.startswith(b"HTTP/1.1 503"):
            report.notifications_5xx += 1

    async with anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(one, request)


async def _fuzz_upstream(client: Redis, keys: Keys, count: int, report: FuzzReport) -> None:
    terminals = [
        f"HOSTILE-{mode}-{i:02d}" for mode in MODES for i in range(count // len(MODES) or 1)
    ]
    for terminal in terminals:
        command = {
            "type": "pay",
            "terminal_id": terminal,
            "amount": 1250,
            "command_id": "up-" + terminal,
        }
        await client.xadd(keys.commands, {"command": json.dumps(command)})
    report.upstream_payments = len(terminals)
    finals: dict[str, int] = {}
    with anyio.move_on_after(90):
        while len(finals) < len(terminals):
            for terminal in terminals:
                events = await _events(client, keys, terminal)
                if any(e["final"] for e in events):
                    finals[terminal] = sum(e["final"] for e in events)
            await anyio.sleep(0.5)
    report.payments_never_ended = len(terminals) - len(finals)
    report.payments_not_one_final = sum(1 for n in finals.values() if n != 1)


async def _valid_pay(client: Redis, keys: Keys) -> str:
    command = {
        "type": "pay",
        "terminal_id": "SIM-APPROVE-01",
        "amount": 1250,
        "command_id": "fz-valid",
    }
    await client.xadd(keys.commands, {"command": json.dumps(command)})
    with anyio.move_on_after(60):
        while True:
            for event in await _events(client, keys, "SIM-APPROVE-01"):
                if event["final"] and event["command_id"] == "fz-valid":
                    return str(event["status"] or event["type"])
            await anyio.sleep(0.2)
    return "no final"


def run_fuzz(commands: int, notifications: int, payments: int, seed: int) -> FuzzReport:
    report = FuzzReport(seed=seed)
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="pos-bridge-fuzz-"))
    terminals = ["TILL-A", "SIM-APPROVE-01"]
    hostile_terminals = [
        f"HOSTILE-{m}-{i:02d}" for m in MODES for i in range(max(1, payments // len(MODES)))
    ]
    try:
        with (
            RedisServer() as main_redis,
            RedisServer() as hostile_redis,
            SimulatorServer(speed=10) as sim,
            HostileUpstream() as upstream,
        ):
            hook_port = free_port()
            daemons = {
                "simulator": DaemonProcess("simulator", workdir / "a.toml", workdir / "a.log"),
                "hostile-upstream": DaemonProcess("hostile", workdir / "b.toml", workdir / "b.log"),
            }
            (workdir / "a.toml").write_text(
                daemon_config(sim.base_url, main_redis.url, terminals, hook_port)
            )
            (workdir / "b.toml").write_text(
                daemon_config(upstream.base_url, hostile_redis.url, hostile_terminals, None)
            )
            for daemon in daemons.values():
                daemon.start()

            async def main() -> None:
                a, b = connect(main_redis.url), connect(hostile_redis.url)
                keys = Keys("pos")
                try:
                    await _until_ready(a, hook_port)
                    report.rss_before_mb = _rss(daemons)
                    await _fuzz_commands(a, keys, commands, rng, report)
                    await _fuzz_notifications(hook_port, notifications, rng, report)
                    await _fuzz_upstream(b, keys, payments, report)
                    report.valid_pay_after = await _valid_pay(a, keys)
                    report.rss_after_mb = _rss(daemons)
                finally:
                    await a.aclose()
                    await b.aclose()

            anyio.run(main)
            report.daemon_exits = sum(
                1 for d in daemons.values() if d.proc is None or d.proc.poll() is not None
            )
            for daemon in daemons.values():
                daemon.stop()
            logs = "\n".join(p.read_text(errors="replace") for p in workdir.glob("*.log"))
            report.crash_lines = sum(logs.count(marker) for marker in _CRASH_MARKERS)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


async def _until_ready(client: Redis, hook_port: int) -> None:
    """The daemon has created its consumer group and its webhook receiver accepts."""
    with anyio.fail_after(60):
        while True:
            if await client.exists(Keys("pos").commands):
                try:
                    socket.create_connection(("127.0.0.1", hook_port), timeout=1).close()
                    return
                except OSError:
                    pass  # not listening yet
            await anyio.sleep(0.3)


def _rss(daemons: dict[str, DaemonProcess]) -> dict[str, float]:
    return {
        name: round(rss_bytes(d.proc.pid) / 2**20, 1)
        for name, d in daemons.items()
        if d.proc is not None and d.proc.poll() is None
    }


def table(report: FuzzReport) -> str:
    lines = [
        f"fuzz run (seed {report.seed})",
        f"  commands sent            {report.commands}"
        f"  (skipped {report.commands_skipped} well-formed cancels: issue 12)",
        f"  commands unanswered      {report.commands_unanswered}",
        f"  notifications sent       {report.notifications}",
        f"  notifications unanswered {report.notifications_unanswered}"
        f"  (5xx other than 503: {report.notifications_5xx})",
        f"  hostile-upstream pays    {report.upstream_payments}",
        f"  payments never ended     {report.payments_never_ended}"
        f"  (not exactly one final: {report.payments_not_one_final})",
        f"  daemon exits             {report.daemon_exits}",
        f"  crash lines in the logs  {report.crash_lines}",
        f"  a valid pay afterwards   {report.valid_pay_after}",
        f"  daemon RSS before (MB)   {report.rss_before_mb}",
        f"  daemon RSS after (MB)    {report.rss_after_mb}",
    ]
    lines += [f"  e.g. {example}" for example in report.examples]
    lines.append("  OK" if report.clean else "  PROBLEMS")
    return "\n".join(lines)


def fuzz_command(args: argparse.Namespace) -> int:
    report = run_fuzz(args.fuzz_commands, args.fuzz_notifications, args.fuzz_payments, args.seed)
    if getattr(args, "json", False):
        print(json.dumps(asdict(report) | {"clean": report.clean}, indent=2))
    else:
        print(table(report))
    return 0 if report.clean else 1
