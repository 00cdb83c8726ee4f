"""Network faults on a real path: a network namespace joined to the host by a veth pair, and
nftables rules inside it that drop packets (all of them, a random share, or those of chosen
connections).

What runs in the namespace (``ip netns exec NAME ...``: the fault runner's daemon) reaches the
host's end of the pair, where the servers it uses listen (Redis, the simulator); the rules are
in the namespace only, so the audit, which talks to the same servers from the host, is never
affected. A dropped packet is dropped silently: no RST, no ICMP, as on a lost link or a
firewall that forgot a connection.

**Why nftables and not netem.** ``tc qdisc ... netem`` (delay, loss) needs the kernel's
``sch_netem``, which the kernel of the machine this was written on lacks ("Specified qdisc kind
is unknown"); nftables' ``numgen random mod 100 < N drop`` gives the same random loss, per
direction, on any kernel with nftables. Nothing here needs netem.

Every namespace gets a unique name (``pbf-PID-HEX``: several runs may share a machine), its own
interfaces (``pbfHEXh`` on the host, ``pbfHEXn`` inside) and a /30 from 10.200.0.0/13 that no
interface on the host uses. Leaving the context removes the namespace (and with it the veth
pair and the rules), also on an error; namespaces left by a run that was killed (its PID gone)
are removed by the next run.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterable

__all__ = ["NetNamespace", "unavailable"]

#: Where the /30s of the pairs come from (private, rarely used by real networks).
POOL = ipaddress.IPv4Network("10.200.0.0/13")
_NAME_RE = re.compile(r"^pbf-(\d+)-[0-9a-f]{6}$")
#: The nftables table a fault's rules live in (one fault at a time per namespace).
FAULT_TABLE = "pos_bridge_fault"


class NetError(RuntimeError):
    """A command of the plumbing failed (the message has its stderr)."""


def _run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def unavailable() -> str | None:
    """Why network faults cannot be made here (not root, no ``ip`` or ``nft``, namespaces or
    nftables refused), or None when they can: it makes a namespace and a rule to find out."""
    if os.geteuid() != 0:
        return "network faults need root (ip netns, nft)"
    for tool in ("ip", "nft", "ss"):
        if shutil.which(tool) is None:
            return f"network faults need the {tool!r} command (apt-get install iproute2 nftables)"
    try:
        with NetNamespace() as ns:
            ns.drop("probe", out=["tcp dport 9 drop"])
            ns.clear()
    except (NetError, OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces or nftables do not work here: {exc}"
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = _run(["ip", "-4", "-o", "addr", "show"])
    nets = []
    for line in out.splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            nets.append(ipaddress.IPv4Interface(match.group(1)).network)
    return nets


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    subnets = POOL.num_addresses // 4
    for _ in range(100):
        offset = random.randrange(subnets) * 4
        net = ipaddress.IPv4Network(f"{POOL.network_address + offset}/30")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetError(f"no free /30 in {POOL}")


def remove_leftovers() -> list[str]:
    """Remove the namespaces of earlier runs whose process is gone (a run killed with -9
    cannot clean up); those of live processes (concurrent runs) are left alone."""
    removed = []
    for line in _run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NAME_RE.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _run(["ip", "netns", "delete", name], check=False)
            removed.append(name)
    return removed


class NetNamespace:
    """A namespace with a veth pair to the host; :meth:`drop` and :meth:`clear` set and lift a
    fault's rules inside it. ``host_ip`` is the host's end (servers listen there), ``ns_ip``
    the namespace's; :meth:`argv` runs a command inside."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"pbf-{os.getpid()}-{tag}"
        self.host_if = f"pbf{tag}h"
        self.ns_if = f"pbf{tag}n"
        self.host_ip = ""
        self.ns_ip = ""
        self._created = False

    def __enter__(self) -> NetNamespace:
        remove_leftovers()
        net = _free_subnet()
        host, inside = list(net.hosts())
        self.host_ip, self.ns_ip = str(host), str(inside)
        try:
            _run(["ip", "netns", "add", self.name])
            self._created = True
            _run(["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if])
            _run(["ip", "link", "set", self.ns_if, "netns", self.name])
            _run(["ip", "addr", "add", f"{host}/30", "dev", self.host_if])
            _run(["ip", "link", "set", self.host_if, "up"])
            inside_ip = ["ip", "-n", self.name]
            _run([*inside_ip, "addr", "add", f"{inside}/30", "dev", self.ns_if])
            _run([*inside_ip, "link", "set", self.ns_if, "up"])
            _run([*inside_ip, "link", "set", "lo", "up"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the namespace (its end of the pair, so the pair, and its rules go with it)."""
        if self._created:
            _run(["ip", "netns", "delete", self.name], check=False)
            self._created = False
        # the host's end outlives the namespace while a process inside still runs; or the
        # namespace was never made and the pair was
        if os.path.exists(f"/sys/class/net/{self.host_if}"):
            _run(["ip", "link", "delete", self.host_if], check=False)

    def argv(self, command: list[str]) -> list[str]:
        """``command`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def drop(self, what: str, *, out: Iterable[str] = (), into: Iterable[str] = ()) -> None:
        """Replace the fault's rules (one table, swapped in one step): ``out`` on packets the
        namespace sends, ``into`` on those it receives; each an nftables rule (``tcp dport
        6379 drop``). ``what`` names the fault in the table's comment."""
        chains = "\n".join(
            f"  chain {chain} {{\n    type filter hook {hook} priority 0; policy accept;\n"
            + "".join(f"    {rule}\n" for rule in rules)
            + "  }"
            for chain, hook, rules in (("out", "output", list(out)), ("in", "input", list(into)))
        )
        script = (
            f"add table inet {FAULT_TABLE}\n"
            f"delete table inet {FAULT_TABLE}\n"
            f'table inet {FAULT_TABLE} {{\n  comment "{what}"\n{chains}\n}}\n'
        )
        _run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], stdin=script)

    def clear(self) -> None:
        """Lift the fault: every packet passes again."""
        script = f"add table inet {FAULT_TABLE}\ndelete table inet {FAULT_TABLE}\n"
        _run(["ip", "netns", "exec", self.name, "nft", "-f", "-"], stdin=script)

    def connections_to(self, ip: str, port: int) -> list[int]:
        """The local ports of the namespace's established TCP connections to ``ip:port``."""
        out = _run(self.argv(["ss", "-Htn", "state", "established", "dst", f"{ip}:{port}"]))
        ports = []
        for line in out.splitlines():
            fields = line.split()
            # Recv-Q Send-Q Local:Port Peer:Port (no State column with a state filter)
            local = next((f for f in fields if f.count(":") == 1 and f.startswith(self.ns_ip)), "")
            if local:
                ports.append(int(local.rsplit(":", 1)[1]))
        return ports
