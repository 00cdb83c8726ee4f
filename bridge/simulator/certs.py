"""A throwaway local CA and a server certificate it signed for ``127.0.0.1``/``localhost``: what
the simulator serves HTTPS and WSS with (``pos-bridge bench --tls``, the tests), made anew for
each run with ``trustme`` (the ``test`` extra) and written as PEM files into a folder of the run.

Whoever talks to that simulator trusts ``ca_file``: the daemon with ``[multisafepay] ca_file``,
the SDK peer with ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``. Nothing else on the machine does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerCert:
    """What the simulator serves TLS with."""

    cert_file: Path  # the server's certificate (with the chain)
    key_file: Path  # its private key


@dataclass(frozen=True)
class LocalCa:
    ca_file: Path  # the CA certificate: what a client trusts
    server: ServerCert


def make_local_ca(directory: Path, name: str = "ca") -> LocalCa:
    """A new CA and a server certificate for :data:`HOSTS`, as ``{name}.pem``,
    ``{name}-server.pem`` and ``{name}-server.key`` in ``directory``. Raises ``RuntimeError``
    (saying what to install) without trustme."""
    try:
        import trustme
    except ImportError:
        raise RuntimeError(
            "the simulator's TLS certificates need trustme (pip install 'pos-bridge[test]')"
        ) from None
    ca = trustme.CA(organization_name="pos-bridge throwaway CA")
    server = ca.issue_cert(*HOSTS)
    out = ServerCert(directory / f"{name}-server.pem", directory / f"{name}-server.key")
    for i, pem in enumerate(server.cert_chain_pems):
        pem.write_to_path(out.cert_file, append=i > 0)
    server.private_key_pem.write_to_path(out.key_file)
    out.key_file.chmod(0o600)
    ca.cert_pem.write_to_path(directory / f"{name}.pem")
    return LocalCa(directory / f"{name}.pem", out)
