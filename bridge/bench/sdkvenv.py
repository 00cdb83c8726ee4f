"""MultiSafepay's official Python SDK in its own virtualenv, built on demand.

The SDK (``multisafepay`` on PyPI) needs pydantic 1 and the bridge uses 2, so it never shares
the bridge's environment: :func:`sdk_python` builds a virtualenv from the pinned
``sdk-requirements.txt`` beside this module on first use and returns its interpreter. It lives
in ``$POS_BRIDGE_SDK_VENV`` when set, else ``~/.cache/pos-bridge/sdk-venv-<hash of the
requirements>`` (a changed pin builds a new one). A marker file holding the requirements says
it is complete; a lock file keeps two processes (tests, benches) from building it at once.
PyPI must be reachable for the first build: otherwise :class:`SdkVenvError` says so.

Used by ``pos-bridge bench --peer`` and ``tests/simulator/test_sdk.py``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import venv
from collections.abc import Callable
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("sdk-requirements.txt")
ENV_VENV = "POS_BRIDGE_SDK_VENV"
#: pip's network timeout and retries: an unreachable PyPI is said within a minute, not ten.
PIP_TIMEOUT = 20
PIP_RETRIES = 2


class SdkVenvError(Exception):
    """The SDK's virtualenv could not be built (PyPI unreachable, a pin gone, no disk)."""


def venv_dir() -> Path:
    configured = os.environ.get(ENV_VENV)
    if configured:
        return Path(configured)
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return Path.home() / ".cache" / "pos-bridge" / f"sdk-venv-{digest}"


def _installed(root: Path, wanted: bytes) -> bool:
    ready = root / ".installed"
    return ready.exists() and ready.read_bytes() == wanted


def sdk_python(progress: Callable[[str], None] | None = None) -> Path:
    """The SDK virtualenv's python, built first if needed (``progress`` is told when)."""
    root = venv_dir()
    python = root / "bin" / "python"
    wanted = REQUIREMENTS.read_bytes()
    if _installed(root, wanted):
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait for it
        if _installed(root, wanted):
            return python
        if progress is not None:
            progress(f"installing MultiSafepay's Python SDK from PyPI into {root} (once)")
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        argv = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        argv += ["--timeout", str(PIP_TIMEOUT), "--retries", str(PIP_RETRIES)]
        argv += ["-r", str(REQUIREMENTS)]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise SdkVenvError("installing the SDK from PyPI took over 15 minutes") from None
        if r.returncode != 0:
            said = " ".join(r.stderr.split())[-500:]
            raise SdkVenvError(
                "cannot install the multisafepay SDK from PyPI (is https://pypi.org reachable "
                f"from here? a proxy is read from $HTTPS_PROXY); pip said: {said}"
            )
        (root / ".installed").write_bytes(wanted)
    return python
