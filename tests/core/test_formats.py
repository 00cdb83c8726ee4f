"""The versioning rule for what daemons share in Redis (docs/redis-formats.md), pure: readers
accept unknown fields and older versions, and refuse a newer major."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core import formats
from bridge.core.state import OrderState
from bridge.redis.registry import SessionRecord

# a version-1 order state and session record exactly as release N-1 wrote them (no "format")
STATE_V1 = (
    '{"order_id":"o1","terminal_id":"T1","seq":2,"status":"initialized","final":false,'
    '"command_id":"c1","session_id":"s1","transaction_id":null,"amount":1250,"currency":"EUR",'
    '"amount_refunded":0,"last_transition_at":1.5,"last_modified":null,'
    '"refund_command_id":null,"cancel_command_id":null,"details_published":false}'
)
SESSION_V1 = {
    "order_id": "o1",
    "terminal_id": "t1",
    "group": "shop",
    "command_id": "c1",
    "created_at": 1.0,
    "deadline": 2.0,
    "created": True,
    "session_id": "s1",
    "events_token": "tok",
    "events_stream_url": None,
    "events_url": None,
    "last_event_id": None,
    "cancel_when_late": True,
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 1),
        (1, 1),
        (2, 2),
        ("1", 1),
        ("1.7", 1),
        ("3.0", 3),
        (0, None),
        ("0.9", None),
        (-1, None),
        (True, None),
        ("2.x", None),
        ("v2", None),
        (1.5, None),
        ([], None),
    ],
)
def test_major_versions(value: object, expected: int | None) -> None:
    assert formats.major(value) == expected


def test_older_and_minor_versions_are_read_newer_majors_refused() -> None:
    for data in ({}, {"format": 1}, {"format": "1.3"}):
        formats.check("session", data, 1)  # no error
    formats.check("session", {"format": 1}, 2)  # an older major, read by a newer release
    for data in ({"format": 2}, {"format": "2.0"}, {"format": "garbage"}):
        with pytest.raises(formats.NewerFormat) as refused:
            formats.check("session", data, 1)
        assert refused.value.record == "session" and refused.value.supported == 1


def test_a_version_1_state_and_session_are_read_as_release_n_1_wrote_them() -> None:
    state = OrderState.from_json(STATE_V1)
    assert (state.order_id, state.seq, state.status, state.amount) == ("o1", 2, "initialized", 1250)
    assert state.to_json() == STATE_V1  # written back unchanged, without "format"
    record = SessionRecord.from_json(json.dumps(SESSION_V1))
    assert asdict(record) == SESSION_V1


def test_unknown_fields_are_ignored_and_missing_optional_ones_take_defaults() -> None:
    newer = json.loads(STATE_V1) | {"format": "1.2", "tip_policy": "ask", "seq": 5}
    state = OrderState.from_json(json.dumps(newer))
    assert state.seq == 5 and "format" not in state.to_json() and "tip" not in state.to_json()
    fewer = {k: v for k, v in SESSION_V1.items() if k not in ("cancel_when_late", "events_url")}
    record = SessionRecord.from_json(json.dumps(fewer | {"format": 1, "shard": 7}))
    assert record.cancel_when_late is True and record.events_url is None


def test_a_newer_major_state_or_session_is_refused() -> None:
    with pytest.raises(formats.NewerFormat):
        OrderState.from_json(json.dumps(json.loads(STATE_V1) | {"format": 2}))
    with pytest.raises(formats.NewerFormat):
        SessionRecord.from_json(json.dumps(SESSION_V1 | {"format": "2.1"}))
    with pytest.raises(ValueError):
        OrderState.from_json("[1, 2]")


@given(
    fence=st.integers(min_value=0, max_value=2**63),
    incarnation=st.text("0123456789abcdef", min_size=1, max_size=12),
    consumer=st.text(min_size=1, max_size=40).filter(lambda s: "\0" not in s),
)
def test_version_1_lease_tokens_parse(fence: int, incarnation: str, consumer: str) -> None:
    token = f"{fence}:{incarnation}@{consumer}"
    assert formats.parse_lease_token(token) == (fence, incarnation, consumer)


@pytest.mark.parametrize(
    "token", ["", "12", "12:abc", "x:abc@c", ":abc@c", "12:@c", "12:abc@", "v2|12|abc|c"]
)
def test_other_lease_token_shapes_are_not_version_1(token: str) -> None:
    assert formats.parse_lease_token(token) is None


def test_each_record_is_reported_once_and_the_memory_is_bounded() -> None:
    sight = formats.FirstSight(limit=2)
    assert [sight.first(n) for n in ("a", "a", "b", "c", "a")] == [True, False, True, False, False]
