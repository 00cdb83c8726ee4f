"""An earlier release of pos-bridge, built from this checkout's git history into a virtualenv of
its own: ``git archive`` of the commit, ``pip wheel`` of that tree, the wheel installed with its
dependencies (from PyPI, through pip's cache). Kept under ``~/.cache/pos-bridge/release-<commit>``
(``$POS_BRIDGE_RELEASE_CACHE`` for another folder), so only the first run builds it; a marker
file says it is complete and a lock keeps two test runs from building it at once.

Without the history (not a git checkout, a shallow clone, the commit missing) the caller is
told why (:class:`NoHistory`) and skips; a failed build is an error, said with pip's words."""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV_CACHE = "POS_BRIDGE_RELEASE_CACHE"
PIP = ["-m", "pip", "--disable-pip-version-check", "--timeout", "20", "--retries", "2"]


class NoHistory(Exception):
    """This checkout cannot give the commit: why, for a skip."""


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=False)


def check_history(commit: str) -> None:
    """Raise :class:`NoHistory` unless ``commit`` can be read from this checkout."""
    if shutil.which("git") is None:
        raise NoHistory("git is not installed")
    shallow = _git("rev-parse", "--is-shallow-repository")
    if shallow.returncode != 0:
        raise NoHistory(f"{ROOT} is not a git checkout")
    if shallow.stdout.strip() == b"true":
        raise NoHistory(
            f"{ROOT} is a shallow clone: the previous release {commit[:12]} is not in its "
            "history (git fetch --unshallow gives it)"
        )
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        raise NoHistory(f"commit {commit[:12]} is not in this checkout's history")


def cache_dir(commit: str) -> Path:
    configured = os.environ.get(ENV_CACHE)
    base = Path(configured) if configured else Path.home() / ".cache" / "pos-bridge"
    return base / f"release-{commit[:12]}"


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split())[-800:]
        raise RuntimeError(f"{what} failed ({done.returncode}): {said}")


def release_program(commit: str) -> Path:
    """The ``pos-bridge`` program of release ``commit``, built first if needed."""
    check_history(commit)
    root = cache_dir(commit)
    program = root / "venv" / "bin" / "pos-bridge"
    marker = root / ".installed"
    wanted = commit.encode()
    if marker.exists() and marker.read_bytes() == wanted and program.exists():
        return program
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it: wait for it
        if marker.exists() and marker.read_bytes() == wanted and program.exists():
            return program
        shutil.rmtree(root, ignore_errors=True)
        source, wheels = root / "source", root / "wheels"
        archive = _git("archive", "--format=tar", commit)
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {commit[:12]}: {archive.stderr.decode()[-500:]}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(source, filter="data")
        _run(
            [sys.executable, *PIP, "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
            f"building the wheel of {commit[:12]}",
        )
        venv.EnvBuilder(with_pip=True, clear=True).create(root / "venv")
        (wheel,) = wheels.glob("pos_bridge-*.whl")
        _run(
            [str(root / "venv" / "bin" / "python"), *PIP, "install", "-q", str(wheel)],
            f"installing the wheel of {commit[:12]} and its dependencies",
        )
        shutil.rmtree(source)  # the wheel and the virtualenv are what is kept
        marker.write_bytes(wanted)
    return program
