"""The simulator's pure pieces, without a server."""

from __future__ import annotations

import base64
import json

import pytest
from helpers.vectors import vector_json, vector_text

from bridge.simulator import bus, scenarios, signing, sse, tokens
from bridge.simulator.errors import MspError
from bridge.simulator.orders import OrderStore, validate_create
from bridge.simulator.scenarios import Scenario
from bridge.simulator.variants import VariantError, Variants


def test_webhook_signature_matches_docs_vector() -> None:
    v = vector_json("webhook-docs-example.json")
    raw = v["raw_body"].encode("utf-8")
    assert signing.signature_hex(v["api_key"], v["timestamp"], raw) == v["signature_hex"]
    assert signing.auth_header(v["api_key"], v["timestamp"], raw) == v["auth_header"]
    # Only the raw bytes verify: a compact re-serialisation does not.
    recompact = json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert signing.auth_header(v["api_key"], v["timestamp"], recompact) != v["auth_header"]


def test_events_token_roundtrip_and_shape() -> None:
    secret = b"s" * 32
    tok = tokens.make_events_token("sess1", secret, now=1000, ttl=600)
    header, payload, _ = tok.split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256"}
    claims = tokens.decode(tok, secret, now=1500)
    assert claims == {
        "exp": 1600,
        "grt": ["mbus:session.order", "mbus:session.qr"],
        "pid": "sess1",
        "sub": "pr",
    }
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.decode(tok, secret, now=1600)
    with pytest.raises(tokens.TokenError):
        tokens.decode(tok, b"other", now=1500)
    with pytest.raises(tokens.TokenError):
        tokens.decode("nonsense", secret, now=1500)


def test_vector_token_has_the_same_claim_names() -> None:
    v = vector_json("create-cloud-order-response.json")
    payload = v["data"]["events_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    ours = tokens.decode(tokens.make_events_token("p", b"k", 0, 10), b"k", 0)
    assert sorted(claims) == sorted(ours)


@pytest.mark.parametrize(
    "value,token",
    [("tok", "tok"), ("Bearer tok", "tok"), ("bearer  tok ", "tok"), ("", None), (None, None)],
)
def test_token_from_authorization(value: str | None, token: str | None) -> None:
    assert tokens.token_from_authorization(value) == token


def test_sse_format_matches_docs_example() -> None:
    example = vector_text("sse-stream-example.txt")
    first = example.split("\n\n")[0] + "\n\n"
    data = json.loads(first.split("data: ", 1)[1])
    assert sse.format_event(data, None).decode() == first
    assert sse.format_event(data, 7).decode().splitlines()[1] == "id: 7"
    assert sse.format_keepalive("comment") == b": ping\n\n"
    assert sse.format_keepalive("data") == b"data: ping\n\n"
    half = sse.half_written(data, 3)
    assert not half.endswith(b"\n") and b"data: {" in half


def test_bus_protocol() -> None:
    s = bus.BusSession()
    assert s.handle('{"id":"a1","type":"subscribe","channel":"session.order","filter":{}}') == {
        "type": "ack",
        "replyId": "a1",
    }
    assert s.channels == {"session.order"}
    assert s.handle('{"id":"a2","type":"heartbeat"}') == {"type": "ack", "replyId": "a2"}
    err = s.handle('{"id":"a3","type":"subscribe","channel":"nope"}')
    assert err["type"] == "error" and err["replyId"] == "a3" and err["payload"]["message"]
    assert s.handle("not json")["type"] == "error"
    assert s.handle('{"id":"a4","type":"unsubscribe","channel":"session.order"}')["type"] == "ack"
    assert s.channels == set()


@pytest.mark.parametrize(
    "terminal,amount,expected",
    [
        ("SIM-APPROVE-01", 1201, Scenario.APPROVE),
        ("sim-decline-07", 1200, Scenario.DECLINE),
        ("SIM-SOFTDECLINE-APPROVE-01", 100, Scenario.SOFTDECLINE_APPROVE),
        ("SIM-SOFTDECLINE-CANCEL-01", 100, Scenario.SOFTDECLINE_CANCEL),
        ("SIM-CREATE-TIMEOUT-01", 100, Scenario.CREATE_TIMEOUT),
        ("SIM-UNKNOWN-XYZ", 100, Scenario.UNKNOWN_TERMINAL),
        ("0000004D", 1250, Scenario.APPROVE),
        ("0000004D", 1201, Scenario.DECLINE),
        ("0000004D", 1202, Scenario.SOFTDECLINE_APPROVE),
        ("0000004D", 1203, Scenario.SOFTDECLINE_CANCEL),
        ("0000004D", 1204, Scenario.CUSTOMER_CANCEL),
        ("0000004D", 1205, Scenario.TIMEOUT),
        ("0000004D", 1206, Scenario.DROP),
        ("0000004D", 1207, Scenario.RETRY),
        ("0000004D", 1208, Scenario.SLOW),
        ("0000004D", 1209, Scenario.FAIL),
        ("0000004D", 1210, Scenario.CREATE_TIMEOUT),
        ("0000004D", 1211, Scenario.APPROVE),
        ("SIM-APPROVEX", 1201, Scenario.DECLINE),  # not a scenario name: the amount decides
    ],
)
def test_scenario_choice(terminal: str, amount: int, expected: Scenario) -> None:
    assert scenarios.choose(terminal, amount) is expected


def test_scripts_never_repeat_a_status_and_end_final() -> None:
    for s in Scenario:
        steps = [st.status for st in scenarios.script(s) if not st.is_drop]
        assert all(a != b for a, b in zip(steps, steps[1:], strict=False)), s
        if s is not Scenario.MANUAL:  # a manual terminal waits for a person (test_terminal_face)
            assert steps[-1] in scenarios.FINAL_STATUSES, s
    assert [st.status for st in scenarios.script(Scenario.RETRY)] == [
        "initialized",
        "declined",
        "initialized",
        "completed",
    ]


def test_variants_parse_and_reject() -> None:
    v = Variants.parse(["sse_ids=off", "keepalive=data", "token_ttl=5"])
    assert (v.sse_ids, v.keepalive, v.token_ttl) == ("off", "data", 5)
    for bad in (["nope=1"], ["sse_ids=maybe"], ["token_ttl=-1"], ["sse_ids"]):
        with pytest.raises(VariantError):
            Variants.parse(bad)
    v2 = Variants()
    with pytest.raises(VariantError):
        v2.update({"sse_ids": "on", "keepalive": "bad"})
    assert v2.sse_ids == "off"  # nothing changed by a bad update


def _fields(**kw: object) -> dict:
    body = {
        "order_id": "a-1",
        "amount": 100,
        "currency": "EUR",
        "description": "d",
        "gateway_info": {"terminal_id": "T1"},
    }
    body.update(kw)
    return body


@pytest.mark.parametrize(
    "kw,code",
    [
        ({"order_id": "x" * 51}, 1006),
        ({"order_id": "bad id"}, 1006),
        ({"order_id": None}, 1006),
        ({"amount": 0}, 1001),
        ({"amount": 1.5}, 1001),
        ({"amount": True}, 1001),
        ({"currency": None}, 1002),
        ({"description": "d" * 201}, 1008),
        ({"gateway_info": {}}, 1016),
    ],
)
def test_validate_create(kw: dict, code: int) -> None:
    with pytest.raises(MspError) as exc:
        validate_create(_fields(**kw))
    assert exc.value.code == code and exc.value.http_status == 400


def test_order_store_rules() -> None:
    store = OrderStore(lambda: "2024-06-04T15:50:18")
    f = validate_create(_fields(order_id="o/1_A-b"))
    o = store.create(f, "k", Scenario.APPROVE)
    with pytest.raises(MspError) as exc:
        store.create(
            validate_create(_fields(order_id="o2", gateway_info={"terminal_id": "t1"})),
            "k",
            Scenario.APPROVE,
        )
    assert exc.value.code == 1022  # the same terminal, whatever the case
    with pytest.raises(MspError):
        store.create(f, "k", Scenario.APPROVE)  # duplicate order id
    with pytest.raises(MspError) as exc:
        store.get("o/1_A-b", "other-key")
    assert exc.value.http_status == 404
    assert store.transition(o, "initialized") is not None
    assert store.transition(o, "initialized") is None  # never repeated
    store.transition(o, "completed")
    view = o.view()
    assert view["payment_details"]["terminal_id"] == "t1"
    assert view["completed"] == "2024-06-04T15:50:18"
    vector = vector_json("get-order-pos-completed.json")["data"]
    assert set(vector) <= set(view)
    with pytest.raises(MspError):
        store.cancel(o)
    store.refund(o, {"amount": 40, "currency": "EUR"})
    assert (o.status, o.amount_refunded) == ("partial_refunded", 40)
    with pytest.raises(MspError):
        store.refund(o, {"amount": 61, "currency": "EUR"})
    store.refund(o, {"amount": 60, "currency": "EUR"})
    assert o.status == "refunded"


def test_segment_path_keeps_a_slash_inside_a_segment() -> None:
    from bridge.simulator.routing import segment_path

    assert segment_path(b"/v1/json/orders/till7%2F123/refunds") == (
        "/v1/json/orders/till7%2F123/refunds"
    )
    assert segment_path(b"/v1/json/orders/x%2Fcancel") == "/v1/json/orders/x%2Fcancel"
    assert segment_path(b"/v1/json/orders/a-b_c/cancel") == "/v1/json/orders/a-b_c/cancel"
    # "%" stays encoded too, so decoding the parameter once gives the id back exactly
    assert segment_path(b"/orders/100%25") == "/orders/100%25"
