"""Webhook signature verification (pure)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from helpers.vectors import vector_json
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.multisafepay.webhook import (
    VerifiedWebhook,
    WebhookRejected,
    sign_webhook,
    signature_hex,
    verify_webhook,
)

KEY = "group-key-0123456789"
BODY = b'{"order_id":"till7-000123","status":"completed","transaction_id":"890001"}'
TS = "1700000000"
NOW = 1700000010.0


@pytest.fixture(scope="module")
def docs() -> dict[str, Any]:
    return dict(vector_json("webhook-docs-example.json"))


def reject(reason: str, *args: Any, **kwargs: Any) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        verify_webhook(*args, **kwargs)
    assert info.value.reason == reason, info.value
    return info.value


def no_secrets(exc: WebhookRejected, *secrets: str) -> None:
    text = f"{exc} {exc!r} {exc.detail} {exc.args}"
    for secret in secrets:
        assert secret not in text


# -- the documentation's example ------------------------------------------------------------------


def test_docs_vector_verifies(docs: dict[str, Any]) -> None:
    raw = docs["raw_body"].encode("utf-8")
    got = verify_webhook(
        raw,
        docs["auth_header"],
        docs["api_key"],
        now=float(docs["timestamp"]) + 30,
        max_age=600,
    )
    assert isinstance(got, VerifiedWebhook)
    assert got.timestamp == docs["timestamp"] and got.age == 30 and got.raw_body == raw
    assert got.json()["order_id"] == "my-order-id"
    assert signature_hex(raw, docs["api_key"], docs["timestamp"]) == docs["signature_hex"]
    assert sign_webhook(raw, docs["api_key"], docs["timestamp"]) == docs["auth_header"]
    assert docs["api_key"] not in repr(got) and docs["signature_hex"] not in repr(got)


def test_docs_vector_reserialized_is_rejected(docs: dict[str, Any]) -> None:
    compact = json.dumps(json.loads(docs["raw_body"]), separators=(",", ":")).encode()
    assert compact != docs["raw_body"].encode()
    exc = reject(
        "bad_signature",
        compact,
        docs["auth_header"],
        docs["api_key"],
        now=float(docs["timestamp"]),
        max_age=600,
    )
    assert exc.status == 401
    no_secrets(exc, docs["api_key"], docs["signature_hex"], docs["auth_header"])


def test_docs_vector_is_stale_today(docs: dict[str, Any]) -> None:
    exc = reject(
        "stale",
        docs["raw_body"].encode(),
        docs["auth_header"],
        docs["api_key"],
        now=1_800_000_000.0,
        max_age=600,
    )
    no_secrets(exc, docs["api_key"], docs["signature_hex"], docs["auth_header"])


# -- accepted ------------------------------------------------------------------------------------


def test_sign_then_verify() -> None:
    header = sign_webhook(BODY, KEY, TS)
    assert base64.b64decode(header).decode().startswith(TS + ":")
    got = verify_webhook(BODY, header, KEY, now=NOW, max_age=600)
    assert got.signed_at == 1700000000.0 and got.age == 10.0


def test_accepts_int_timestamp_bytearray_and_whitespace() -> None:
    header = sign_webhook(BODY, KEY, 1700000000)
    assert verify_webhook(bytearray(BODY), f"  {header}\n", KEY, now=NOW, max_age=600)


def test_accepts_unpadded_base64_and_upper_hex() -> None:
    sig = signature_hex(BODY, KEY, TS).upper()
    header = base64.b64encode(f"{TS}:{sig}".encode()).decode()
    assert verify_webhook(BODY, header, KEY, now=NOW, max_age=600)
    unpadded = sign_webhook(BODY, KEY, "17000000001").rstrip("=")  # 11 digits -> padding needed
    assert unpadded != sign_webhook(BODY, KEY, "17000000001")
    # (17000000001 s is year 2508: accepted only with a large max_future; here it is stale-future)
    reject("stale", BODY, unpadded, KEY, now=NOW, max_age=600)


def test_millisecond_timestamp_is_read_as_milliseconds() -> None:
    header = sign_webhook(BODY, KEY, "1700000000000")
    got = verify_webhook(BODY, header, KEY, now=NOW, max_age=600)
    assert got.signed_at == 1700000000.0


def test_boundaries_of_age() -> None:
    header = sign_webhook(BODY, KEY, TS)
    assert verify_webhook(BODY, header, KEY, now=1700000600.0, max_age=600)
    reject("stale", BODY, header, KEY, now=1700000600.5, max_age=600)
    assert verify_webhook(BODY, header, KEY, now=1700000000.0 - 60, max_age=600)
    reject("stale", BODY, header, KEY, now=1700000000.0 - 61, max_age=600)
    assert verify_webhook(BODY, header, KEY, now=1700000000.0 - 100, max_age=600, max_future=120)


# -- rejected ------------------------------------------------------------------------------------


def test_stale_timestamp() -> None:
    header = sign_webhook(BODY, KEY, TS)
    exc = reject("stale", BODY, header, KEY, now=NOW + 3600, max_age=300)
    assert exc.status == 401 and "ago" in str(exc)
    no_secrets(exc, KEY, header, signature_hex(BODY, KEY, TS))


def test_future_timestamp() -> None:
    header = sign_webhook(BODY, KEY, str(int(NOW) + 3600))
    exc = reject("stale", BODY, header, KEY, now=NOW, max_age=300)
    assert "future" in str(exc)


def test_wrong_key() -> None:
    header = sign_webhook(BODY, "another-group-key", TS)
    exc = reject("bad_signature", BODY, header, KEY, now=NOW, max_age=600)
    no_secrets(exc, KEY, "another-group-key", header)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(header: str | None) -> None:
    exc = reject("missing_auth", BODY, header, KEY, now=NOW, max_age=600)
    assert exc.status == 401


@pytest.mark.parametrize(
    "header",
    [
        "!!!not base64!!!",
        "bm90IGJhc2U2NA=x=",
        base64.b64encode(b"\xff\xfe\x00binary").decode(),
        "QQ",  # "A"
        "a" * 5000,
    ],
)
def test_garbage_base64(header: str) -> None:
    exc = reject("malformed_auth", BODY, header, KEY, now=NOW, max_age=600)
    no_secrets(exc, header[:64])


def test_header_without_colon() -> None:
    sig = signature_hex(BODY, KEY, TS)
    header = base64.b64encode(f"{TS}{sig}".encode()).decode()
    exc = reject("malformed_auth", BODY, header, KEY, now=NOW, max_age=600)
    no_secrets(exc, sig, header)


@pytest.mark.parametrize(
    "decoded",
    [
        "notanumber:" + "0" * 128,
        ":" + "0" * 128,
        TS + ":",
        TS + ":xyz",
        TS + ":" + "0" * 127,
        TS + ":" + "0" * 129,
        TS + ":" + "g" * 128,
        "-1:" + "0" * 128,
    ],
)
def test_malformed_parts(decoded: str) -> None:
    header = base64.b64encode(decoded.encode()).decode()
    reject("malformed_auth", BODY, header, KEY, now=NOW, max_age=600)


def test_the_url_timestamp_decides_nothing() -> None:
    """The signed timestamp counts; the URL's unsigned ``timestamp`` parameter is not an input:
    a notification whose URL says another time verifies, and freshness is the signed time's."""
    import inspect

    assert "query_timestamp" not in inspect.signature(verify_webhook).parameters
    header = sign_webhook(BODY, KEY, TS)
    assert verify_webhook(BODY, header, KEY, now=NOW, max_age=600).timestamp == TS
    stale = sign_webhook(BODY, KEY, str(int(NOW) - 601))
    reject("stale", BODY, stale, KEY, now=NOW, max_age=600)


def test_bad_signature_is_checked_before_freshness() -> None:
    header = sign_webhook(BODY, "other", TS)
    reject("bad_signature", BODY, header, KEY, now=NOW + 10**6, max_age=600)


def test_body_must_be_raw_bytes() -> None:
    header = sign_webhook(BODY, KEY, TS)
    with pytest.raises(TypeError):
        verify_webhook(BODY.decode(), header, KEY, now=NOW, max_age=600)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        verify_webhook(BODY, header, "", now=NOW, max_age=600)


def test_sign_rejects_non_numeric_timestamp() -> None:
    with pytest.raises(ValueError):
        sign_webhook(BODY, KEY, "soon")


# -- properties ----------------------------------------------------------------------------------

keys = st.text(min_size=1, max_size=64)
bodies = st.binary(min_size=1, max_size=512)


@settings(max_examples=150, deadline=None)
@given(body=bodies, key=keys, ts=st.integers(min_value=1_000_000_000, max_value=4_000_000_000))
def test_property_sign_then_verify(body: bytes, key: str, ts: int) -> None:
    header = sign_webhook(body, key, ts)
    got = verify_webhook(body, header, key, now=ts + 1.0, max_age=600)
    assert got.raw_body == body


@settings(max_examples=150, deadline=None)
@given(body=bodies, key=keys, data=st.data())
def test_property_any_single_byte_change_rejects(
    body: bytes, key: str, data: st.DataObject
) -> None:
    header = sign_webhook(body, key, TS)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]), label="byte")
    tampered = body[:index] + bytes([new]) + body[index + 1 :]
    exc = reject("bad_signature", tampered, header, key, now=NOW, max_age=600)
    no_secrets(exc, header, signature_hex(body, key, TS))


@settings(max_examples=100, deadline=None)
@given(header=st.one_of(st.none(), st.text(max_size=300)), body=st.binary(max_size=64))
def test_property_any_header_is_rejected_cleanly(header: str | None, body: bytes) -> None:
    with pytest.raises(WebhookRejected) as info:
        verify_webhook(body, header, KEY, now=NOW, max_age=600)
    assert info.value.reason in {"missing_auth", "malformed_auth", "bad_signature"}
    assert info.value.status in (400, 401)
