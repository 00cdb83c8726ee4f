"""Certificates a test makes for itself with the ``openssl`` command: a CA, a server
certificate for 127.0.0.1/localhost and a client certificate, all signed by that CA."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TestCerts:
    __test__ = False  # not a test class

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of them


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _new_ca(d: Path, name: str) -> tuple[Path, Path]:
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN=pos-bridge {name}",
    )  # fmt: skip
    return crt, key


def _signed(d: Path, name: str, ca: tuple[Path, Path], san: str | None) -> tuple[Path, Path]:
    crt, key, csr, ext = (d / f"{name}{s}" for s in (".crt", ".key", ".csr", ".ext"))
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return crt, key


def make_certs(directory: Path) -> TestCerts:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: cannot make test certificates")
    ca = _new_ca(directory, "ca")
    other, _ = _new_ca(directory, "other-ca")
    server = _signed(directory, "server", ca, "IP:127.0.0.1,DNS:localhost")
    client = _signed(directory, "till", ca, None)
    return TestCerts(ca[0], server[0], server[1], client[0], client[1], other)
