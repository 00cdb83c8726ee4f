"""Which ``watch`` URLs and tokens the bridge may use: origin compared exactly, pure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.watch import refuse_events_token, refuse_events_url, refuse_watch

API = "https://api.multisafepay.com/v1/json/"
LOCAL_API = "http://127.0.0.1:8765/v1/json/"
HOSTS = ["events.multisafepay.com", "*.example.org"]
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    "url",
    [
        "https://api.multisafepay.com/events/stream/",
        "wss://api.multisafepay.com/events/",
        "https://API.multisafepay.com.:443/x",
        "https://events.multisafepay.com/stream",
        "wss://a.example.org/bus",
    ],
)
def test_allowed(url: str) -> None:
    assert refuse_events_url(url, API, HOSTS) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://api.multisafepay.com:6379/", "port 6379"),
        ("http://api.multisafepay.com/", "scheme http"),
        ("ws://events.multisafepay.com/", "scheme ws"),
        ("https://events.multisafepay.com:8443/", "port 8443"),
        ("https://example.org/", "host example.org"),
        ("https://evil.example.net@api.multisafepay.com/", "user information"),
        ("https://api.multisafepay.com@evil.example.net/", "user information"),
        ("https://api.multisafepay.com:99999/", "not a valid URL"),
        ("https://api.multisafepay.com:x/", "not a valid URL"),
        ("ftp://api.multisafepay.com/", "not an http"),
        ("https:///path", "no host"),
        ("https://apí.multisafepay.com/", "printable ASCII"),
        ("https://api.multisafepay.com/\n", "printable ASCII"),
        ("https://api.multisafepay.com/" + "a" * 3000, "printable ASCII"),
    ],
)
def test_refused(url: str, why: str) -> None:
    reason = refuse_events_url(url, API, HOSTS)
    assert reason is not None and why in reason
    assert len(reason) < 300


def test_a_local_api_allows_its_own_origin_only() -> None:
    assert refuse_events_url("http://127.0.0.1:8765/events/stream/", LOCAL_API, []) is None
    assert refuse_events_url("ws://127.0.0.1:8765/events/", LOCAL_API, []) is None
    assert refuse_events_url("http://127.0.0.1:6379/", LOCAL_API, []) is not None
    assert refuse_events_url("ws://127.0.0.1:1/", LOCAL_API, []) is not None
    assert refuse_events_url("http://localhost:8765/", LOCAL_API, []) is not None
    assert refuse_events_url("http://evil@127.0.0.1:8765/", LOCAL_API, []) is not None


@given(st.text(max_size=80))
def test_any_text_is_judged_without_raising(url: str) -> None:
    reason = refuse_events_url(url, API, HOSTS)
    assert reason is None or reason.replace("…", "").isascii()


def test_tokens() -> None:
    assert refuse_events_token("opaque-token", {}, NOW) is None
    assert refuse_events_token("t", {"exp": NOW + 600}, NOW) is None
    assert refuse_events_token("tökén", {}, NOW) is not None
    assert refuse_events_token("with space", {}, NOW) is not None
    assert refuse_events_token("", {}, NOW) is not None
    assert refuse_events_token("x" * 5000, {}, NOW) is not None
    for exp in (10**400, NOW + 365 * 86400, float("nan"), float("inf"), -1, "soon", True, None):
        assert refuse_events_token("t", {"exp": exp}, NOW) is not None, exp


def test_a_watch_needs_a_url() -> None:
    assert refuse_watch("t", {}, (None, None), API, HOSTS, NOW) is not None
    assert refuse_watch("t", {}, (None, "wss://api.multisafepay.com/e"), API, HOSTS, NOW) is None
    assert "scheme" in (
        refuse_watch("t", {}, ("https://api.multisafepay.com/", "ws://x/"), API, HOSTS, NOW) or ""
    )
