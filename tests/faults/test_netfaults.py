"""Network faults, not only kills: the daemon in a network namespace, packets to Redis or the
simulator dropped without a trace (nftables in the namespace: ``bridge.bench.netns``), and
every payment still ends with exactly one final event, the one upstream says. The daemon must
notice a black-holed Redis (``redis.unreachable``) and a half-open stream, SSE or message bus
(``stream.lost``), by
itself, and carry on when the path returns. How fast it notices is a figure of
``pos-bridge bench --faults`` (README, "Network faults"), not asserted here.

Needs root, ``ip`` and ``nft``; skipped, saying which is missing, without them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bridge.bench import netns
from bridge.bench.faults import KINDS, NET_KINDS, run_scenario
from bridge.cli import build_parser


@pytest.fixture(scope="module")
def network_faults() -> Iterator[None]:
    why = netns.unavailable()
    if why is not None:
        pytest.skip(why)
    yield


def _connects(ns: netns.NetNamespace, port: int, tries: int, timeout: float) -> int:
    """How many of ``tries`` TCP connections from inside ``ns`` to the host's end succeed."""
    code = (
        "import socket, sys\n"
        "ok = 0\n"
        f"for _ in range({tries}):\n"
        "    try:\n"
        f"        socket.create_connection(({ns.host_ip!r}, {port}), timeout={timeout}).close()\n"
        "        ok += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "print(ok)\n"
    )
    out = subprocess.run(
        ns.argv([sys.executable, "-c", code]), capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def _exists(name: str) -> bool:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[:1] == [name] for line in listed.splitlines())


def test_the_scenarios_are_offered_on_the_command_line() -> None:
    bench = build_parser()._subparsers._group_actions[0].choices["bench"]  # type: ignore[union-attr]
    scenario = next(a for a in bench._actions if a.dest == "scenario")
    assert tuple(scenario.choices or ()) == KINDS


def test_rules_drop_silently_and_the_namespace_goes_away(network_faults: None) -> None:
    with netns.NetNamespace() as ns:
        listener = socket.create_server((ns.host_ip, 0))
        port = listener.getsockname()[1]
        try:
            assert _connects(ns, port, 3, 1.0) == 3
            ns.drop("test", out=[f"ip daddr {ns.host_ip} tcp dport {port} drop"])
            assert _connects(ns, port, 2, 0.5) == 0  # no RST: each attempt times out
            ns.drop(
                "test",
                out=[f"ip daddr {ns.host_ip} tcp dport {port} numgen random mod 100 < 30 drop"],
                into=[f"ip saddr {ns.host_ip} tcp sport {port} numgen random mod 100 < 30 drop"],
            )
            got = _connects(ns, port, 30, 0.5)  # a SYN or its SYN-ACK lost: about half fail
            assert 0 < got < 30
            ns.clear()
            assert _connects(ns, port, 3, 1.0) == 3
        finally:
            listener.close()
        name, host_if = ns.name, ns.host_if
        assert _exists(name)
    assert not _exists(name)
    assert not os.path.exists(f"/sys/class/net/{host_if}")


def test_a_failed_run_leaves_nothing_and_a_killed_runs_leftovers_are_removed(
    network_faults: None,
) -> None:
    with pytest.raises(RuntimeError), netns.NetNamespace() as ns:
        name = ns.name
        raise RuntimeError("a scenario failed")
    assert not _exists(name)
    # a namespace named after a process that is gone, as a run killed with -9 leaves it
    dead = next(pid for pid in range(4_000_000, 1, -1) if not os.path.exists(f"/proc/{pid}"))
    stale = f"pbf-{dead}-abcdef"
    mine = f"pbf-{os.getpid()}-fedcba"  # a live run's: left alone
    subprocess.run(["ip", "netns", "add", stale], check=True)
    subprocess.run(["ip", "netns", "add", mine], check=True)
    try:
        assert stale in netns.remove_leftovers()
        assert not _exists(stale) and _exists(mine)
    finally:
        for name in (stale, mine):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", NET_KINDS)
async def test_every_payment_ends_once_whatever_the_network_does(
    network_faults: None, kind: str
) -> None:
    report = await run_scenario(kind, rounds=1, terminals=8)
    audit = report.audit
    assert audit.payments == 8
    assert report.faults_injected >= 1
    assert audit.clean, "\n".join(audit.problems)
    if kind == "blackhole-redis":
        # it noticed the black hole by itself, and said so again once the path was back
        assert report.undetected == 0 and len(report.detections) == 1, audit.problems
        assert len(report.recoveries) == 1, audit.problems
    if kind in ("halfopen-upstream", "halfopen-bus"):
        # streams cut silently were declared lost (idle timeout) and replaced or polled
        assert report.detections and report.noticed["stream.lost"] >= len(report.detections)
