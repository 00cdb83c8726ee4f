"""The TLS context of every connection to MultiSafepay: the REST calls (the project's client and
httpx behind a proxy), the SSE streams and the message bus.

One context per process and trust setting: building one loads the CA store (~ms and ~KB each),
so a context per client or per stream would cost seconds of start-up and KBs per stream. By
default it trusts what httpx trusts (``$SSL_CERT_FILE`` or ``$SSL_CERT_DIR`` when set, else
certifi's bundle); with ``[multisafepay] ca_file`` it trusts the CAs in that PEM file instead
(a private CA, a TLS-inspecting proxy's, the bench's throwaway one).
"""

from __future__ import annotations

import ssl
from functools import cache

import httpx


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The shared client context trusting ``ca_file`` (a PEM file of CA certificates), or by
    default what httpx trusts. Raises ``OSError``/``ssl.SSLError`` for a file that cannot be
    loaded (the config layer checks it first: :func:`bridge.config.files.unloadable_ca`)."""
    return _context(ca_file)  # one cache key for the default, however it is asked for


@cache
def _context(ca_file: str | None) -> ssl.SSLContext:
    if ca_file is None:
        return httpx.create_ssl_context()
    return ssl.create_default_context(cafile=ca_file)
