"""Process plumbing for the bench: file-descriptor limits and what ``/proc`` says of a process.

CPU, memory and connections are those of the process *and its live descendants*: with
``--workers N`` the daemon is a supervisor and N worker processes, and the bench reports their
sum. (Resident sizes are summed too: the workers are separate interpreters, not forks, so they
share little beyond the C libraries.)"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` after the command name (field 3 onwards)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(_stat_fields(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def _each(pid: int, of: Callable[[int], float]) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            total += of(p)
        except (OSError, IndexError, ValueError):
            if p == pid:
                raise
    return total


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _cpu(pid: int) -> float:
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size now, of ``pid`` and its descendants."""
    return int(_each(pid, _rss))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far (``/proc/PID/stat`` fields 14 and 15), of ``pid``
    and its live descendants."""
    return _each(pid, _cpu)


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of ``pid`` and its descendants to remote port ``port``."""
    return int(_each(pid, lambda p: _connections_to(p, port)))


def _connections_to(pid: int, port: int) -> int:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    want = f"{port:04X}"
    n = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "01" and parts[2].endswith(":" + want) and parts[9] in inodes:
                        n += 1
        except FileNotFoundError:
            continue
    return n
