"""Every event serializes to UTF-8 JSON, whatever text upstream put in it.

JSON from upstream may escape a lone surrogate (``"\\ud800"``) and invalid UTF-8 decodes to one
(``surrogateescape``): Python text can hold it, UTF-8 cannot. ``Event.to_json`` replaces it with
``?`` so that any event can be published; valid text is left exactly as it was.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.events import (
    ErrorCode,
    Event,
    EventError,
    EventType,
    Source,
    make_event_id,
)
from bridge.core.untrusted import is_valid_text, replace_surrogates

#: Any text, lone surrogates included (``st.characters()`` leaves them out by default).
#: (joined by hand: ``st.text`` of that union drops them again).
TEXT = st.lists(st.characters() | st.characters(categories=["Cs"]), max_size=20).map("".join)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=10,
)


@st.composite
def events(draw: st.DrawFn) -> Event:
    error = draw(st.none() | st.builds(EventError, code=st.sampled_from(ErrorCode), message=TEXT))
    return Event(
        event_id=draw(TEXT),
        type=draw(st.sampled_from(EventType)),
        terminal_id=draw(TEXT),
        order_id=draw(st.none() | TEXT),
        command_id=draw(st.none() | TEXT),
        session_id=draw(st.none() | TEXT),
        transaction_id=draw(st.none() | TEXT),
        status=draw(st.none() | TEXT),
        financial_status=draw(st.none() | TEXT),
        final=draw(st.booleans()),
        amount=draw(st.none() | st.integers()),
        currency=draw(st.none() | TEXT),
        source=draw(st.sampled_from(Source)),
        received_at=datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
        details=draw(st.dictionaries(TEXT, JSON_VALUE, max_size=4)),
        error=error,
        stream_id=draw(st.none() | TEXT),
    )


@given(events())
def test_any_event_serializes_to_utf8_json(event: Event) -> None:
    wire = event.to_json()
    decoded = json.loads(wire.encode("utf-8").decode("utf-8"))  # strict: raises on a surrogate
    expected = replace_surrogates(event.model_dump(mode="python", by_alias=True))
    expected.pop("stream_id")
    expected["received_at"] = "2026-11-29T12:00:00.000000Z"
    assert decoded == json.loads(json.dumps(expected))  # valid text kept, surrogates are "?"


@given(st.lists(st.none() | TEXT | st.integers(), max_size=5))
def test_any_event_id_is_made(parts: list[Any]) -> None:
    event_id = make_event_id(*parts)
    assert uuid.UUID(event_id).version == 5
    name = "\x1f".join("" if p is None else str(p) for p in parts)
    if is_valid_text(name):  # the same id uuid5 itself gives: ids made before are unchanged
        assert event_id == str(uuid.uuid5(uuid.UUID("6f1c2d0e-8a4b-4d7e-9b3a-5c0f1e2d3a4b"), name))


def test_a_lone_surrogate_in_a_status_and_a_card_type_is_replaced() -> None:
    event = Event(
        event_id=make_event_id("o-1", "\ud800"),
        type=EventType.ORDER_STATUS,
        terminal_id="TILL-A",
        order_id="o-1",
        status="compl\ud800eted",
        source=Source.POLL,
        received_at=datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
        details={"card": "VI\udcffSA", "k\ud800": ["\udfff"]},
    )
    wire = json.loads(event.to_json())
    assert wire["status"] == "compl?eted"
    assert wire["details"] == {"card": "VI?SA", "k?": ["?"]}
