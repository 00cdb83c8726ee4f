"""The message-bus protocol (pure): frames out, frames in, bookkeeping."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bridge.multisafepay.bus import (
    HEARTBEAT_INTERVAL,
    Acked,
    BusEvent,
    BusProtocol,
    Expired,
    Malformed,
    Refused,
    Request,
    Unmatched,
    heartbeat_interval_for,
    new_request_id,
)
from bridge.simulator import bus as simbus

HEX16 = re.compile(r"^[0-9a-f]{16}$")
PAYLOAD = {
    "financial_status": "initialized",
    "order_id": "o-1",
    "session_id": "s-1",
    "status": "initialized",
    "transaction_id": "890001",
}


def ack(reply_id: Any) -> str:
    return json.dumps({"type": "ack", "replyId": reply_id})


def err(reply_id: Any, message: Any = "nope") -> str:
    return json.dumps({"type": "error", "replyId": reply_id, "payload": {"message": message}})


def event(channel: Any = "session.order", payload: Any = PAYLOAD) -> str:
    return json.dumps({"type": "event", "channel": channel, "payload": payload})


# -- client frames -------------------------------------------------------------------------------


def test_subscribe_frame() -> None:
    p = BusProtocol()
    frame = json.loads(p.subscribe("session.order", now=1.0))
    assert frame == {
        "id": frame["id"],
        "type": "subscribe",
        "channel": "session.order",
        "filter": {},
    }
    assert HEX16.match(frame["id"])
    assert p.pending[frame["id"]] == Request(frame["id"], "subscribe", "session.order", {}, 1.0)
    assert p.subscriptions == {"session.order": {}}
    assert p.confirmed == set()


def test_subscribe_with_filter_is_copied() -> None:
    p = BusProtocol()
    flt = {"order_id": "o-1"}
    frame = json.loads(p.subscribe("session.order", flt, now=0))
    flt["order_id"] = "changed"
    assert frame["filter"] == {"order_id": "o-1"}
    assert p.subscriptions["session.order"] == {"order_id": "o-1"}


def test_unsubscribe_and_heartbeat_frames() -> None:
    p = BusProtocol()
    p.subscribe("session.order", now=0)
    un = json.loads(p.unsubscribe("session.order", now=1))
    assert un == {"id": un["id"], "type": "unsubscribe", "channel": "session.order"}
    assert p.subscriptions == {}
    hb = json.loads(p.heartbeat(now=2))
    assert hb == {"id": hb["id"], "type": "heartbeat"}
    assert {r.type for r in p.pending.values()} == {"subscribe", "unsubscribe", "heartbeat"}


def test_ids_are_fresh_even_if_the_factory_repeats() -> None:
    ids = iter(
        [
            "aaaaaaaaaaaaaaaa",
            "aaaaaaaaaaaaaaaa",
            "bbbbbbbbbbbbbbbb",
            "aaaaaaaaaaaaaaaa",
            "cccccccccccccccc",
        ]
    )
    p = BusProtocol(new_id=lambda: next(ids))
    a = json.loads(p.heartbeat(now=0))["id"]
    b = json.loads(p.heartbeat(now=0))["id"]
    assert (a, b) == ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb")
    p.receive(ack(a), now=0)  # answered ids are not reused either
    assert json.loads(p.heartbeat(now=0))["id"] == "cccccccccccccccc"
    assert len({new_request_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("channel", ["", None, 3])
def test_bad_channel_is_a_programming_error(channel: Any) -> None:
    with pytest.raises(ValueError):
        BusProtocol().subscribe(channel, now=0)


def test_filter_must_be_json() -> None:
    with pytest.raises(TypeError):
        BusProtocol().subscribe("session.order", {"x": object()}, now=0)


def test_frames_are_what_the_simulator_understands() -> None:
    p, server = BusProtocol(), simbus.BusSession()
    for frame in (
        p.subscribe("session.order", now=0),
        p.heartbeat(now=0),
        p.unsubscribe("session.order", now=0),
    ):
        result = p.receive(json.dumps(server.handle(frame)), now=0)
        assert isinstance(result, Acked)
    result = p.receive(json.dumps(server.handle(p.subscribe("bogus", now=0))), now=0)
    assert isinstance(result, Refused) and "unknown channel" in result.message
    assert p.pending == {}


# -- replies -------------------------------------------------------------------------------------


def test_ack_matches_and_confirms() -> None:
    p = BusProtocol()
    sid = json.loads(p.subscribe("session.order", now=0))["id"]
    result = p.receive(ack(sid), now=1)
    assert isinstance(result, Acked) and result.request.id == sid
    assert result.request.type == "subscribe" and result.request.channel == "session.order"
    assert p.pending == {} and p.confirmed == {"session.order"}


def test_error_reply_to_subscribe() -> None:
    p = BusProtocol()
    sid = json.loads(p.subscribe("session.qr", now=0))["id"]
    result = p.receive(err(sid, "not granted"), now=1)
    assert result == Refused(p_request := result.request, "not granted")
    assert p_request.id == sid
    assert p.pending == {}
    assert "session.qr" not in p.subscriptions  # a refused channel is not re-subscribed
    assert p.resubscribe_frames(now=2) == []


def test_error_reply_message_missing_or_odd() -> None:
    p = BusProtocol()
    for frame in (
        {"type": "error", "replyId": None},
        {"type": "error", "replyId": None, "payload": "text"},
        {"type": "error", "replyId": None, "payload": {"message": 42}},
        {"type": "error", "replyId": None, "payload": {"message": "  "}},
    ):
        r = p.receive(json.dumps(frame), now=0)
        assert r == Unmatched("error", None, "no message given")
    hid = json.loads(p.heartbeat(now=0))["id"]
    long = "x" * 1000 + "\n\x1b[31m"
    r = p.receive(err(hid, long), now=0)
    assert isinstance(r, Refused) and len(r.message) <= 130 and "\x1b" not in r.message


def test_unknown_and_repeated_replies_are_reported() -> None:
    p = BusProtocol()
    hid = json.loads(p.heartbeat(now=0))["id"]
    assert p.receive(ack("ffffffffffffffff"), now=0) == Unmatched("ack", "ffffffffffffffff")
    assert hid in p.pending  # an unknown reply takes nothing away
    assert isinstance(p.receive(ack(hid), now=0), Acked)
    assert p.receive(ack(hid), now=0) == Unmatched("ack", hid, duplicate=True)
    assert p.receive(err(hid, "late"), now=0) == Unmatched("error", hid, "late", duplicate=True)
    assert p.receive(ack(None), now=0) == Unmatched("ack", None)
    assert p.receive(json.dumps({"type": "ack"}), now=0) == Unmatched("ack", None)


def test_answered_memory_is_bounded() -> None:
    p = BusProtocol()
    first = json.loads(p.heartbeat(now=0))["id"]
    p.receive(ack(first), now=0)
    for _ in range(300):
        p.receive(ack(json.loads(p.heartbeat(now=0))["id"]), now=0)
    assert len(p._answered) <= 256
    assert p.receive(ack(first), now=0) == Unmatched("ack", first, duplicate=False)


def test_unsubscribe_while_subscribe_pending_is_not_confirmed() -> None:
    p = BusProtocol()
    sid = json.loads(p.subscribe("session.order", now=0))["id"]
    p.unsubscribe("session.order", now=0)
    assert isinstance(p.receive(ack(sid), now=0), Acked)
    assert p.confirmed == set() and p.subscriptions == {}


def test_refusal_of_an_old_subscribe_keeps_a_newer_one() -> None:
    p = BusProtocol()
    first = json.loads(p.subscribe("session.order", now=0))["id"]
    p.subscribe("session.order", now=0)
    assert isinstance(p.receive(err(first), now=0), Refused)
    assert "session.order" in p.subscriptions


# -- events --------------------------------------------------------------------------------------


def test_event() -> None:
    p = BusProtocol()
    p.subscribe("session.order", now=0)
    assert p.receive(event(), now=0) == BusEvent("session.order", PAYLOAD, subscribed=True)
    assert p.receive(event("session.qr", {}), now=0) == BusEvent("session.qr", {}, subscribed=False)


def test_bytes_frames() -> None:
    p = BusProtocol()
    assert isinstance(p.receive(event().encode(), now=0), BusEvent)
    assert isinstance(p.receive(bytearray(event().encode()), now=0), BusEvent)
    r = p.receive(b"\xff\xfe", now=0)
    assert isinstance(r, Malformed) and r.reason == "not UTF-8"


# -- malformed -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame,reason",
    [
        ("", "not JSON"),
        ("not json", "not JSON"),
        ("{", "not JSON"),
        ("[" * 100000 + "]" * 100000, "not JSON"),
        ("1" * 5000, "not JSON"),  # over Python's int digit limit
        ("[]", "not a JSON object but list"),
        ('"event"', "not a JSON object but str"),
        ("null", "not a JSON object but NoneType"),
        ("{}", "no type"),
        ('{"type": null}', "no type"),
        ('{"type": "party"}', "unknown type"),
        ('{"type": 3}', "unknown type"),
        ('{"type": ["ack"]}', "unknown type"),
        ('{"type": "event"}', "event without a channel"),
        ('{"type": "event", "channel": "", "payload": {}}', "event without a channel"),
        ('{"type": "event", "channel": 5, "payload": {}}', "event without a channel"),
        ('{"type": "event", "channel": "session.order"}', "event payload is not an object"),
        (
            '{"type": "event", "channel": "session.order", "payload": "ping"}',
            "event payload is not an object",
        ),
        ('{"type": "ack", "replyId": 12}', "ack with a non-text replyId"),
        ('{"type": "error", "replyId": {"a": 1}}', "error with a non-text replyId"),
    ],
)
def test_malformed(frame: str, reason: str) -> None:
    p = BusProtocol()
    p.heartbeat(now=0)
    result = p.receive(frame, now=0)
    assert isinstance(result, Malformed) and result.reason == reason
    assert len(result.excerpt) <= 121
    assert len(p.pending) == 1


def test_malformed_excerpt_is_printable() -> None:
    r = BusProtocol().receive("\x1b[2J\r\nboom", now=0)
    assert isinstance(r, Malformed) and r.excerpt.isprintable()


def test_receive_of_a_non_text_object() -> None:
    r = BusProtocol().receive(12345, now=0)  # type: ignore[arg-type]
    assert isinstance(r, Malformed)


# -- reconnect -----------------------------------------------------------------------------------


def test_resubscribe_after_reconnect() -> None:
    p = BusProtocol()
    a = json.loads(p.subscribe("session.order", {"x": 1}, now=0))["id"]
    p.receive(ack(a), now=0)
    p.subscribe("session.qr", now=0)  # still pending when the connection drops
    p.heartbeat(now=0)
    frames = [json.loads(f) for f in p.resubscribe_frames(now=10)]
    assert [(f["type"], f["channel"], f["filter"]) for f in frames] == [
        ("subscribe", "session.order", {"x": 1}),
        ("subscribe", "session.qr", {}),
    ]
    assert set(p.pending) == {f["id"] for f in frames}  # the old connection's requests are gone
    assert a not in {f["id"] for f in frames}
    assert p.confirmed == set()
    assert p.last_traffic == 10


def test_connection_lost_returns_abandoned() -> None:
    p = BusProtocol()
    p.subscribe("session.order", now=0)
    p.heartbeat(now=0)
    abandoned = p.connection_lost()
    assert [r.type for r in abandoned] == ["subscribe", "heartbeat"]
    assert p.pending == {}
    assert p.subscriptions == {"session.order": {}}


def test_unsubscribed_channel_is_not_resubscribed() -> None:
    p = BusProtocol()
    p.subscribe("session.order", now=0)
    p.subscribe("session.qr", now=0)
    p.unsubscribe("session.qr", now=0)
    assert [json.loads(f)["channel"] for f in p.resubscribe_frames(now=0)] == ["session.order"]


# -- heartbeat -----------------------------------------------------------------------------------


def test_heartbeat_due_after_silence_either_way() -> None:
    p = BusProtocol()
    assert HEARTBEAT_INTERVAL == 30.0
    assert not p.heartbeat_due(1e9)  # no connection yet
    assert p.next_heartbeat_at is None
    p.subscribe("session.order", now=100.0)
    assert p.next_heartbeat_at == 130.0
    assert not p.heartbeat_due(129.9)
    assert p.heartbeat_due(130.0)
    p.receive(event(), now=125.0)  # traffic in
    assert not p.heartbeat_due(150.0) and p.heartbeat_due(155.0)
    p.receive("garbage", now=150.0)  # any frame counts
    assert not p.heartbeat_due(170.0)
    p.heartbeat(now=180.0)  # traffic out
    assert not p.heartbeat_due(209.0) and p.heartbeat_due(210.0)


# -- a connection's timers, on a fake clock --------------------------------------------------------


def opened(heartbeat: float = 30.0, ack_timeout: float = 10.0, idle: float = 45.0) -> BusProtocol:
    p = BusProtocol(heartbeat_interval=heartbeat)
    frames = p.open_connection("session.order", now=0.0, ack_timeout=ack_timeout, idle_timeout=idle)
    assert [json.loads(f)["type"] for f in frames] == ["subscribe"]
    return p


def ack_ours(p: BusProtocol, now: float) -> None:
    (request,) = [r for r in p.pending.values() if r.type == "subscribe"]
    assert isinstance(p.receive(ack(request.id), now=now), Acked)


def test_the_subscription_must_be_acknowledged_in_time() -> None:
    p = opened()
    assert not p.subscribed and p.next_deadline() == 10.0
    assert p.poll_timers(9.99) is None
    assert p.poll_timers(10.0) == Expired(
        "message bus did not acknowledge the subscription within 10 s"
    )


def test_heartbeat_after_silence_then_the_connection_expires() -> None:
    p = opened()
    ack_ours(p, now=1.0)
    assert p.subscribed and p.next_deadline() == 31.0  # the heartbeat, before the silence
    assert p.poll_timers(30.9) is None
    beat = p.poll_timers(31.0)
    assert isinstance(beat, str) and json.loads(beat)["type"] == "heartbeat"
    assert p.next_deadline() == 46.0  # a heartbeat is traffic out, not a sign of life in
    assert p.poll_timers(46.0) == Expired("message bus silent for 45 s")


def test_traffic_in_defers_both_timers_and_handling_time_is_not_silence() -> None:
    p = opened()
    ack_ours(p, now=1.0)
    p.receive(event(), now=20.0)
    assert p.next_deadline() == 50.0
    p.caught_up(60.0)  # the caller spent 40 s on that event (Redis was slow)
    assert p.poll_timers(60.0) is not None  # the heartbeat is due: nothing was sent or read
    assert p.next_deadline() == 90.0  # heartbeat at 60 + 30; silence counted from 60: 105
    assert p.poll_timers(104.9) is not None  # heartbeat at 90
    assert p.poll_timers(104.9) is None and p.poll_timers(105.0) == Expired(
        "message bus silent for 45 s"
    )


def test_a_lost_connection_stops_its_timers_and_a_new_one_restarts_them() -> None:
    p = opened()
    ack_ours(p, now=1.0)
    p.connection_lost()
    assert not p.subscribed
    frames = p.open_connection("session.order", now=100.0, ack_timeout=5.0, idle_timeout=45.0)
    assert [json.loads(f)["channel"] for f in frames] == ["session.order"]  # subscribed again
    assert p.next_deadline() == 105.0


@given(idle=st.floats(min_value=0.01, max_value=3600, allow_nan=False))
def test_a_quiet_healthy_connection_never_expires_whatever_the_idle_timeout(idle: float) -> None:
    """The daemon's heartbeat interval for its idle timeout: a server that only answers the
    heartbeats (at once) keeps the connection alive; one that stops answering expires it
    after ``idle`` seconds of silence."""
    p = opened(heartbeat=heartbeat_interval_for(idle), idle=idle)
    ack_ours(p, now=0.0)
    now = 0.0
    for _ in range(5):  # five quiet periods, each ended by an answered heartbeat
        now = p.next_deadline()
        beat = p.poll_timers(now)
        assert isinstance(beat, str) and json.loads(beat)["type"] == "heartbeat"
        assert isinstance(p.receive(ack(json.loads(beat)["id"]), now=now), Acked)
    silent_since = now
    while True:  # heartbeats sent, never answered
        at = p.next_deadline()
        outcome = p.poll_timers(at)
        if isinstance(outcome, Expired):
            break
        assert isinstance(outcome, str)
    assert at == pytest.approx(silent_since + idle)  # expired once the silence lasted idle
    assert heartbeat_interval_for(45.0) == HEARTBEAT_INTERVAL  # the default idle timeout


def test_bad_connection_timeouts() -> None:
    with pytest.raises(ValueError):
        BusProtocol().open_connection("c", now=0, ack_timeout=0, idle_timeout=1)


@settings(max_examples=200)
@given(
    st.lists(st.floats(0.01, 100.0), max_size=30),
    st.floats(1.0, 40.0),
    st.floats(1.0, 60.0),
)
def test_timers_driven_by_a_loop_match_the_rules(
    gaps: list[float], heartbeat: float, idle: float
) -> None:
    """A transport loop: sleep until the next deadline or the next server frame. The connection
    expires exactly when the server was silent for ``idle``; no heartbeat is sent sooner than
    ``heartbeat`` after other traffic."""
    p = opened(heartbeat=heartbeat, idle=idle)
    ack_ours(p, now=0.0)
    arrivals = list(itertools.accumulate(gaps))
    last_in = last_traffic = 0.0
    expired_at = None
    while True:
        deadline = p.next_deadline()
        if arrivals and arrivals[0] < deadline:
            now = arrivals.pop(0)
            p.receive(event(), now=now)
            last_in = last_traffic = now
            continue
        due = p.poll_timers(deadline)
        if isinstance(due, Expired):
            expired_at = deadline
            break
        assert due is not None, "woken at a deadline with nothing due"
        assert deadline - last_traffic >= heartbeat - 1e-9
        last_traffic = deadline
    assert expired_at is not None and expired_at == pytest.approx(last_in + idle)
    assert not arrivals or arrivals[0] >= expired_at  # nothing was silent for idle before


def test_heartbeat_interval_configurable() -> None:
    p = BusProtocol(heartbeat_interval=0.5)
    p.resubscribe_frames(now=0.0)  # a new connection starts the clock
    assert p.heartbeat_due(0.5)


# -- property: any sequence never raises and never loses a pending request ----------------------

_junk = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["type", "replyId", "channel", "payload", "message", "id"])
                | st.text(max_size=5),
                children,
                max_size=4,
            )
        ),
        max_leaves=10,
    ).map(json.dumps),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["ack", "error", "event", "heartbeat", "subscribe", ""]),
        },
        optional={
            "replyId": st.none() | st.text(max_size=16) | st.integers(),
            "channel": st.none() | st.sampled_from(["session.order", "session.qr", ""]),
            "payload": st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
        },
    ).map(json.dumps),
)


class BusMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        counter = itertools.count()
        self.p = BusProtocol(new_id=lambda: f"{next(counter) % 24:016x}")  # forces id reuse tries
        self.model: dict[str, str] = {}  # pending id -> type
        self.answered: set[str] = set()
        self.now = 0.0

    def _sent(self, frame: str) -> None:
        msg = json.loads(frame)
        assert HEX16.match(msg["id"]) and msg["id"] not in self.model
        self.model[msg["id"]] = msg["type"]

    @precondition(lambda self: len(self.model) < 20)
    @rule(channel=st.sampled_from(["session.order", "session.qr"]))
    def subscribe(self, channel: str) -> None:
        self._sent(self.p.subscribe(channel, now=self.now))

    @precondition(lambda self: len(self.model) < 20)
    @rule(channel=st.sampled_from(["session.order", "session.qr"]))
    def unsubscribe(self, channel: str) -> None:
        self._sent(self.p.unsubscribe(channel, now=self.now))

    @precondition(lambda self: len(self.model) < 20)
    @rule()
    def heartbeat(self) -> None:
        self._sent(self.p.heartbeat(now=self.now))

    @rule(dt=st.floats(0, 40))
    def tick(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.model)
    @rule(data=st.data(), kind=st.sampled_from(["ack", "error"]))
    def answer_pending(self, data: st.DataObject, kind: str) -> None:
        rid = data.draw(st.sampled_from(sorted(self.model)))
        r = self.p.receive(ack(rid) if kind == "ack" else err(rid), now=self.now)
        assert isinstance(r, Acked if kind == "ack" else Refused)
        assert r.request.id == rid and r.request.type == self.model.pop(rid)
        self.answered.add(rid)

    @rule(rid=st.text(max_size=20), kind=st.sampled_from(["ack", "error"]))
    def answer_anything(self, rid: str, kind: str) -> None:
        r = self.p.receive(ack(rid) if kind == "ack" else err(rid), now=self.now)
        if rid in self.model:
            assert isinstance(r, (Acked, Refused))
            del self.model[rid]
            self.answered.add(rid)
        else:
            assert isinstance(r, Unmatched)

    @rule(frame=_junk)
    def junk(self, frame: str | bytes) -> None:
        before = dict(self.p.pending)
        r = self.p.receive(frame, now=self.now)
        assert isinstance(r, (Acked, Refused, Unmatched, BusEvent, Malformed))
        if isinstance(r, (Acked, Refused)):
            # only a well-formed reply to a pending id may take it away
            assert r.request.id in before and r.request.id in self.model
            del self.model[r.request.id]
        else:
            assert self.p.pending == before

    @rule()
    def reconnect(self) -> None:
        frames = [json.loads(f) for f in self.p.resubscribe_frames(now=self.now)]
        self.model = {}
        for f in frames:
            assert f["type"] == "subscribe" and f["channel"] in self.p.subscriptions
            self.model[f["id"]] = "subscribe"
        assert {f["channel"] for f in frames} == set(self.p.subscriptions)

    @invariant()
    def pending_matches_model(self) -> None:
        assert set(self.p.pending) == set(self.model)
        assert self.p.confirmed <= set(self.p.subscriptions)
        if self.p.last_traffic is not None:
            assert self.p.heartbeat_due(self.p.last_traffic + self.p.heartbeat_interval)


BusMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestBusMachine = BusMachine.TestCase
