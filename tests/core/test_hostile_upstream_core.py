"""What the core makes of a hostile upstream: deep payloads, absurd tokens, undocumented
status words, and a deadline that passes with nothing learned. Pure."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.events import ErrorCode, EventType, Source
from bridge.core.normalize import MalformedPayload, Observation, from_order, from_stream_message
from bridge.core.state import OrderState, Verdict, observe, outcome_unknown
from bridge.multisafepay.bus import Acked, BusEvent, BusProtocol, Malformed, Refused, Unmatched
from bridge.multisafepay.sse_decoder import SSEDecoder, SSEProtocolError
from bridge.multisafepay.tokens import token_claims, token_expiry

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def jwt(claims: str) -> str:
    return "eyJhbGciOiJIUzI1NiJ9." + base64.urlsafe_b64encode(claims.encode()).decode() + ".sig"


def test_deep_payloads_are_malformed_not_a_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    for parse in (
        lambda: from_order('{"order_id": "o", "x": ' + deep + "}", Source.POLL),
        lambda: from_stream_message(deep, Source.STREAM),
        lambda: from_order(b"\xff\xfe", Source.WEBHOOK),
    ):
        with pytest.raises(MalformedPayload):
            parse()


def test_absurd_or_deep_tokens_have_no_expiry() -> None:
    assert token_expiry(jwt('{"exp": 1' + "0" * 400 + "}")) is None
    assert token_expiry(jwt('{"exp": ' + "[" * 5000 + "]" * 5000 + "}")) is None
    assert token_claims(jwt('{"exp": ' + "[" * 5000 + "]" * 5000 + "}")) == {}
    assert token_expiry(jwt('{"exp": 1e999}')) is None  # parses as inf
    assert token_expiry("x." + "A" * 100_000 + ".y") is None
    assert token_expiry(jwt('{"exp": 1800000000}')) == 1_800_000_000.0


def state(status: str | None = "initialized", final: bool = False) -> OrderState:
    return OrderState(order_id="o-1", terminal_id="T1", seq=2, status=status, final=final, amount=5)


def test_an_undocumented_status_is_not_published() -> None:
    weird = Observation(source=Source.POLL, order_id="o-1", status="pending_weird")
    decision = observe(state(), weird, NOW)
    assert decision.verdict is Verdict.UNKNOWN_STATUS and decision.events == ()
    assert observe(None, weird, NOW, terminal_id="T1").events == ()


def test_the_deadline_with_nothing_learned_ends_the_payment_once() -> None:
    decision = outcome_unknown(state(), order_id="o-1", terminal_id="T1", command_id="c", now=NOW)
    (event,) = decision.events
    assert event.type is EventType.ORDER_FAILED and event.final
    assert event.error is not None and event.error.code is ErrorCode.UPSTREAM_UNAVAILABLE
    assert decision.state is not None and decision.state.final
    again = outcome_unknown(
        decision.state, order_id="o-1", terminal_id="T1", command_id="c", now=NOW
    )
    assert again.events == ()  # a payment has one final
    over = outcome_unknown(
        state("completed", final=True), order_id="o-1", terminal_id="T1", command_id="c", now=NOW
    )
    assert over.events == ()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=15,
)
frames = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(
        lambda v: json.dumps({"type": "event", "channel": "session.order", "data": v}).encode(),
        json_values,
    ),
    st.sampled_from([b"[" * 100_000, b'{"type": "event", "data": ' + b"[" * 5000 + b"}"]),
)


def judged(parse: Callable[[], Observation]) -> bool:
    """True for an observation, False for a malformed payload; anything else escapes."""
    try:
        result = parse()
    except MalformedPayload:
        return False
    assert isinstance(result, Observation)
    return True


@settings(max_examples=300)
@given(st.lists(frames, max_size=5))
def test_any_sse_bytes_end_as_observations_or_malformed(chunks: list[bytes]) -> None:
    """The decoder and the normalizer, as the session chains them, raise nothing else."""
    decoder = SSEDecoder()
    seen = 0
    for chunk in chunks:
        try:
            messages = decoder.feed(b"data: " + chunk.replace(b"\n", b" ") + b"\n\n")
        except SSEProtocolError:
            return  # the reader drops the stream and reconnects
        for message in messages:
            judged(lambda m=message: from_stream_message(m.data, Source.STREAM))
            seen += 1
    assert seen <= len(chunks)


@settings(max_examples=300)
@given(st.lists(frames, max_size=5))
def test_any_bus_frame_is_parsed_or_malformed(chunks: list[bytes]) -> None:
    bus = BusProtocol()
    for chunk in chunks:
        for data in (chunk, chunk.decode("utf-8", "replace")):
            result = bus.receive(data, now=0.0)
            assert isinstance(result, (BusEvent, Malformed, Acked, Refused, Unmatched))
            if isinstance(result, BusEvent):
                judged(lambda r=result: from_stream_message(r.payload, Source.WEBSOCKET))


@settings(max_examples=300)
@given(json_values)
def test_any_order_shape_is_an_observation_or_malformed(value: object) -> None:
    assert not judged(lambda: from_order(json.dumps(value), Source.POLL))
    body = json.dumps({"order_id": "o", "status": "initialized", "amount": value})
    judged(lambda: from_order(body, Source.POLL))
