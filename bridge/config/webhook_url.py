"""MultiSafepay's rules for a webhook endpoint, checked on ``webhook.public_url``.

MultiSafepay/docs: content/payment-management/webhook.md ("Prerequisites"): the endpoint
"doesn't include port numbers", "uses HTTPS - We don't accept HTTP", and "only contains a
specific set of ASCII characters (alphanumeric, -, _, ., :, /)"; and
openapi/components/schemas/CloudModePaymentOptions.yaml: ``notification_url`` has ``maxLength:
150``. A ``public_url`` that breaks them is refused: MultiSafepay would never call it, and every
notification would be lost without an error anywhere.

A ``public_url`` on a loopback host (``127.0.0.1``, ``::1``, ``localhost``) can only be reached
by a simulator on the same machine (MultiSafepay cannot call it), so the rules are not applied
to it: that is how the simulator and the tests take webhooks over plain HTTP.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import urlsplit

#: MultiSafepay/docs: openapi/components/schemas/CloudModePaymentOptions.yaml
MAX_NOTIFICATION_URL = 150

_ALLOWED = re.compile(r"^[A-Za-z0-9\-_.:/]*$")
_FIELD = "webhook.public_url"


class _Webhook(Protocol):
    enabled: bool
    public_url: str

    def notification_url(self, group_name: str) -> str | None: ...


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webhook_url_problems(webhook: _Webhook, group_names: Iterable[str]) -> list[tuple[str, str]]:
    """``(field, reason)`` for each MultiSafepay rule the webhook's URLs break (none if the
    webhook is off or has no ``public_url``)."""
    if not (webhook.enabled and webhook.public_url):
        return []
    parts = urlsplit(webhook.public_url)
    if _is_loopback((parts.hostname or "").lower()):
        return []
    problems: list[str] = []
    if parts.scheme != "https":
        problems.append("MultiSafepay only calls HTTPS webhook URLs, not http://")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None or parts.netloc.endswith(":"):
        problems.append(
            "MultiSafepay only calls webhook URLs without a port number: put a reverse proxy on 443"
        )
    for name in group_names:
        url = webhook.notification_url(name) or ""
        if not _ALLOWED.match(url):
            problems.append(
                f"the notification_url of group {name!r} has characters MultiSafepay does not "
                "accept (only ASCII letters, digits and - _ . : /)"
            )
        if len(url) > MAX_NOTIFICATION_URL:
            problems.append(
                f"the notification_url of group {name!r} is {len(url)} characters; MultiSafepay "
                f"takes at most {MAX_NOTIFICATION_URL} (shorten public_url, webhook.path or the "
                "group name)"
            )
    return [(_FIELD, p) for p in problems]
