"""The per-order state machine: examples of each rule, then properties over any interleaving."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.events import FINAL_STATUSES, ErrorCode, EventType, Source
from bridge.core.normalize import Observation
from bridge.core.state import Decision, OrderState, Verdict, observe, order_created, order_failed

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def created(seconds: float = 0) -> OrderState:
    decision = order_created(
        order_id="till7-1",
        terminal_id="0000004d",
        command_id="c-1",
        amount=1250,
        currency="EUR",
        session_id="sess",
        now=at(seconds),
    )
    assert decision.state is not None
    return decision.state


def obs(status: str, source: Source = Source.STREAM, **kw: object) -> Observation:
    return Observation(source=source, order_id="till7-1", status=status, **kw)  # type: ignore[arg-type]


def run(state: OrderState | None, *steps: tuple[Observation, float]) -> list[Decision]:
    decisions = []
    for observation, seconds in steps:
        d = observe(state, observation, at(seconds))
        decisions.append(d)
        state = d.state
    return decisions


def test_created_event_is_canonical_and_not_final() -> None:
    d = order_created(
        order_id="o",
        terminal_id="0000004d",
        command_id="c",
        amount=1,
        currency="EUR",
        session_id=None,
        now=T0,
    )
    (event,) = d.events
    assert event.type is EventType.ORDER_CREATED
    assert event.terminal_id == "0000004D"
    assert event.final is False and event.status is None and event.source is Source.BRIDGE


def test_happy_path_publishes_each_status_once_and_final_once() -> None:
    ds = run(created(), (obs("initialized"), 1), (obs("initialized"), 1.1), (obs("completed"), 2))
    assert [d.verdict for d in ds] == [Verdict.NEW, Verdict.DUPLICATE, Verdict.NEW]
    final = ds[-1].events[0]
    assert final.final is True and final.status == "completed" and final.command_id == "c-1"


def test_declined_is_not_final_and_retry_may_repeat_statuses() -> None:
    ds = run(
        created(),
        (obs("initialized"), 1),
        (obs("declined"), 2),
        (obs("initialized"), 3),
        (obs("completed"), 4),
    )
    events = [e for d in ds for e in d.events]
    assert [e.status for e in events] == ["initialized", "declined", "initialized", "completed"]
    assert [e.final for e in events] == [False, False, False, True]
    assert len({e.event_id for e in events}) == 4


def test_duplicate_from_another_channel_is_not_published() -> None:
    ds = run(
        created(),
        (obs("initialized"), 1),
        (obs("initialized", Source.WEBHOOK, modified=at(1)), 5),
        (obs("initialized", Source.POLL, as_of=at(6)), 6),
    )
    assert [d.verdict for d in ds] == [Verdict.NEW, Verdict.DUPLICATE, Verdict.DUPLICATE]


def test_stale_webhook_after_newer_stream_transition_is_dropped() -> None:
    ds = run(
        created(),
        (obs("initialized"), 1),
        (obs("declined"), 3),
        (obs("initialized", Source.WEBHOOK, modified=at(1)), 4),  # a late webhook from t=1
    )
    assert ds[-1].verdict is Verdict.STALE


def test_webhook_only_flow_within_one_second_is_published_whole() -> None:
    """MultiSafepay's times have whole seconds: statuses of one second are not stale to each
    other, and nothing upstream predates the order's creation."""
    hook = Source.WEBHOOK
    ds = run(
        created(10.7),
        (obs("initialized", hook, modified=at(10)), 11.0),
        (obs("declined", hook, modified=at(10)), 11.1),
        (obs("initialized", hook, modified=at(10)), 11.2),
        (obs("completed", hook, modified=at(11)), 11.9),
    )
    assert [d.verdict for d in ds] == [Verdict.NEW] * 4


def test_older_webhook_than_the_last_webhook_transition_is_stale() -> None:
    hook = Source.WEBHOOK
    ds = run(
        created(),
        (obs("initialized", hook, modified=at(12)), 20),
        (obs("declined", hook, modified=at(14)), 21),
        (obs("initialized", hook, modified=at(12)), 22),  # a resend of the first
    )
    assert ds[-1].verdict is Verdict.STALE


def test_poll_sent_before_the_last_transition_is_stale() -> None:
    ds = run(
        created(),
        (obs("initialized"), 1),
        (obs("declined"), 3),
        (obs("initialized", Source.POLL, as_of=at(2.5)), 3.2),
    )
    assert ds[-1].verdict is Verdict.STALE


def test_final_is_never_stale() -> None:
    ds = run(created(), (obs("declined"), 3), (obs("cancelled", Source.WEBHOOK, modified=at(1)), 4))
    assert ds[-1].verdict is Verdict.NEW and ds[-1].events[0].final


def test_nothing_non_final_after_final_and_a_second_final_is_a_conflict() -> None:
    ds = run(
        created(),
        (obs("completed"), 1),
        (obs("initialized"), 2),
        (obs("completed", Source.WEBHOOK), 3),
        (obs("cancelled", Source.POLL), 4),
    )
    assert [d.verdict for d in ds] == [
        Verdict.NEW,
        Verdict.AFTER_FINAL,
        Verdict.DUPLICATE,
        Verdict.CONFLICT,
    ]


def test_refunds_after_completed_one_event_per_new_amount() -> None:
    ds = run(
        created(),
        (obs("completed"), 1),
        (obs("partial_refunded", Source.WEBHOOK, amount_refunded=500), 10),
        (obs("partial_refunded", Source.POLL, amount_refunded=500), 11),
        (obs("refunded", Source.WEBHOOK, amount_refunded=1250), 12),
    )
    assert [d.verdict for d in ds] == [Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE, Verdict.NEW]
    refunds = [e for d in ds for e in d.events if e.type is EventType.ORDER_REFUND]
    assert [(e.details["refund_amount"], e.details["amount_refunded"]) for e in refunds] == [
        (500, 500),
        (750, 1250),
    ]
    assert all(not e.final for e in refunds)
    assert ds[-1].state is not None and ds[-1].state.status == "completed"


def test_a_final_from_the_stream_is_published_at_once_its_details_follow_once() -> None:
    card = {"card": "VISA", "last4": "1234", "authorization_code": "A1"}
    ds = run(
        created(),
        (obs("completed"), 1),  # the stream carries no card details
        (obs("completed", Source.POLL, details=card, transaction_id="890001"), 2),
        (obs("completed", Source.WEBHOOK, details=card), 3),
    )
    assert [d.verdict for d in ds] == [Verdict.NEW, Verdict.NEW, Verdict.DUPLICATE]
    final, details = ds[0].events[0], ds[1].events[0]
    assert final.final and final.details == {}
    assert (details.type, details.status, details.final) == (
        EventType.ORDER_DETAILS,
        "completed",
        False,
    )
    assert details.details == card and details.transaction_id == "890001"
    assert ds[1].state is not None and ds[1].state.details_published


def test_a_final_with_its_details_gets_no_details_event() -> None:
    card = {"card": "VISA", "last4": "1234"}
    ds = run(
        created(),
        (obs("completed", Source.WEBHOOK, details=card), 1),
        (obs("completed", Source.POLL, details=card), 2),
    )
    assert [d.verdict for d in ds] == [Verdict.NEW, Verdict.DUPLICATE]
    assert ds[0].events[0].details == card


def test_refund_seen_before_completion_says_completed_then_refund() -> None:
    (d,) = run(created(), (obs("refunded", Source.POLL, amount_refunded=1250), 5))
    assert [(e.type, e.status, e.final) for e in d.events] == [
        (EventType.ORDER_STATUS, "completed", True),
        (EventType.ORDER_REFUND, "refunded", False),
    ]


def test_refund_status_is_never_stale_it_implies_completed() -> None:
    """Found by the property test: a late webhook made a transition, then a refund webhook
    older than that arrival was dropped as stale, losing the payment's completion."""
    ds = run(
        created(),
        (obs("declined", Source.WEBHOOK, modified=at(4)), 9),
        (obs("partial_refunded", Source.WEBHOOK, amount_refunded=1, modified=at(8)), 9),
    )
    assert [(e.type, e.status) for e in ds[-1].events] == [
        (EventType.ORDER_STATUS, "completed"),
        (EventType.ORDER_REFUND, "partial_refunded"),
    ]


def test_order_failed_is_final_and_later_upstream_news_is_a_conflict() -> None:
    d = order_failed(
        None,
        order_id="o",
        terminal_id="t1",
        command_id="c",
        amount=5,
        currency="EUR",
        code=ErrorCode.TERMINAL_BUSY,
        message="busy",
        now=T0,
    )
    (event,) = d.events
    assert event.type is EventType.ORDER_FAILED and event.final
    assert event.error is not None and event.error.code is ErrorCode.TERMINAL_BUSY
    assert observe(d.state, obs("completed"), at(1)).verdict is Verdict.CONFLICT
    again = order_failed(
        d.state,
        order_id="o",
        terminal_id="t1",
        command_id="c",
        amount=5,
        currency="EUR",
        code=ErrorCode.TERMINAL_BUSY,
        message="busy",
        now=T0,
    )
    assert again.verdict is Verdict.AFTER_FINAL and not again.events


def test_unknown_order_needs_a_terminal() -> None:
    assert observe(None, obs("initialized"), T0).verdict is Verdict.UNROUTABLE
    d = observe(None, obs("initialized"), T0, terminal_id="abc")
    assert d.events[0].terminal_id == "ABC"
    d = observe(None, obs("initialized", terminal_id="XYZ"), T0)
    assert d.events[0].terminal_id == "XYZ"


def test_amount_charged_differs_from_requested() -> None:
    (d,) = run(created(), (obs("completed", Source.POLL, amount=1450), 3))
    assert d.events[0].amount == 1250 and d.events[0].details["amount_charged"] == 1450


def test_event_ids_are_deterministic_across_channels() -> None:
    a = observe(created(), obs("initialized", Source.STREAM), at(1)).events[0]
    b = observe(created(), obs("initialized", Source.WEBHOOK), at(9)).events[0]
    assert a.event_id == b.event_id and a.source != b.source


def test_state_round_trips_through_json() -> None:
    state = run(created(), (obs("declined"), 1))[0].state
    assert state is not None
    assert OrderState.from_json(state.to_json()) == state


# --- properties -------------------------------------------------------------------------------

ALL_STATUSES = [
    "initialized",
    "declined",
    "completed",
    "cancelled",
    "void",
    "expired",
    "uncleared",
    "reserved",
    "refunded",
    "partial_refunded",
    "chargedback",
]


def check_invariants(events: list) -> None:
    statuses = [e for e in events if e.type is EventType.ORDER_STATUS]
    finals = [e for e in events if e.final]
    assert len(finals) <= 1, "two finals"
    if finals:
        after = events[events.index(finals[0]) + 1 :]
        allowed = (EventType.ORDER_REFUND, EventType.ORDER_DETAILS)
        assert all(e.type in allowed for e in after), "non-final after final"
        details = [e for e in after if e.type is EventType.ORDER_DETAILS]
        assert len(details) <= 1, "details twice"
        assert all(e.status == finals[0].status and not e.final for e in details)
        assert not (details and finals[0].details.get("card")), "details already in the final"
    assert not [e for e in events if e.type is EventType.ORDER_DETAILS and not finals]
    assert len({e.event_id for e in events}) == len(events), "same transition twice"
    for a, b in zip(statuses, statuses[1:], strict=False):
        assert a.status != b.status, "a status repeated back to back"
    refunded = [e.details["amount_refunded"] for e in events if e.type is EventType.ORDER_REFUND]
    assert refunded == sorted(set(refunded)), "refund amounts must strictly grow"
    assert [e.event_id for e in events] == list(dict.fromkeys(e.event_id for e in events))


observations = st.builds(
    Observation,
    source=st.sampled_from(list(Source)),
    order_id=st.just("till7-1"),
    status=st.sampled_from(ALL_STATUSES),
    amount_refunded=st.one_of(st.none(), st.integers(0, 1250)),
    modified=st.one_of(st.none(), st.integers(0, 100).map(at)),
    as_of=st.one_of(st.none(), st.integers(0, 100).map(at)),
    details=st.sampled_from([{}, {"card": "VISA", "last4": "1234"}]),
)


@settings(max_examples=400)
@given(st.lists(st.tuples(observations, st.floats(0, 100)), max_size=30))
def test_any_observations_in_any_order_keep_the_invariants(steps: list) -> None:
    state: OrderState | None = created()
    events = []
    clock = 0.0
    for observation, dt in steps:
        clock += dt  # time only moves forward on one daemon
        d = observe(state, observation, at(clock))
        events.extend(d.events)
        state = d.state
        assert state is not None
        assert state.seq == 1 + len(events)
    check_invariants(events)


# A realistic model: a true history of one POS payment, seen through three channels.
@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, float, int]]:
    """[(status, upstream time, amount_refunded)] with strictly growing times."""
    statuses = ["initialized"]
    for _ in range(draw(st.integers(0, 3))):
        statuses += ["declined", "initialized"]
    if draw(st.booleans()):
        statuses.append("declined")  # a soft decline, then the outcome
    statuses.append(draw(st.sampled_from(sorted(FINAL_STATUSES))))
    t = 0.0
    history = []
    for status in statuses:
        t += draw(st.floats(1.0, 20.0))
        history.append((status, t, 0))
    if statuses[-1] == "completed":
        refunded = 0
        for _ in range(draw(st.integers(0, 3))):
            refunded += draw(st.integers(1, 300))
            t += draw(st.floats(1.0, 600.0))
            history.append(("partial_refunded", t, refunded))
    return history


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list, list[tuple[float, Observation]]]:
    history = draw(histories())
    out: list[tuple[float, Observation]] = []
    final_index = max(i for i, (s, _, _) in enumerate(history) if s in FINAL_STATUSES)
    # stream: in order, some messages lost (reconnects), latency below the gap between events
    for status, t, _ in history[: final_index + 1]:
        if draw(st.booleans()):
            out.append(
                (
                    t + draw(st.floats(0.001, 0.5)),
                    Observation(
                        source=draw(st.sampled_from([Source.STREAM, Source.WEBSOCKET])),
                        order_id="till7-1",
                        status=status,
                    ),
                )
            )
    # webhook: every status, delivered late and possibly resent, with MSP's second-precision time
    for status, t, refunded in history:
        for _ in range(draw(st.integers(0, 3))):
            out.append(
                (
                    t + draw(st.floats(0.01, 3000.0)),
                    Observation(
                        source=Source.WEBHOOK,
                        order_id="till7-1",
                        status=status,
                        amount_refunded=refunded,
                        modified=at(math.floor(t)),
                    ),
                )
            )
    # poll: a snapshot of the truth at a random moment
    for p in draw(st.lists(st.floats(0.0, history[-1][1] + 100), max_size=6)):
        past = [h for h in history if h[1] <= p]
        if past:
            status, t, refunded = past[-1]
            out.append(
                (
                    p + draw(st.floats(0.001, 2.0)),
                    Observation(
                        source=Source.POLL,
                        order_id="till7-1",
                        status=status,
                        amount_refunded=refunded,
                        modified=at(math.floor(t)),
                        as_of=at(p),
                    ),
                )
            )
    out.sort(key=lambda item: item[0])
    return history, out


def is_subsequence(small: list, big: list) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@settings(max_examples=400)
@given(deliveries())
def test_three_channels_publish_a_faithful_subsequence_of_the_truth(case: tuple) -> None:
    history, delivered = case
    state: OrderState | None = created()
    events = []
    for arrival, observation in delivered:
        d = observe(state, observation, at(arrival))
        events.extend(d.events)
        state = d.state
    check_invariants(events)
    truth = [s for s, _, _ in history if s not in ("partial_refunded",)]
    published = [e.status for e in events if e.type is EventType.ORDER_STATUS]
    assert is_subsequence(published, truth), (published, truth)
    true_final = next(s for s in truth if s in FINAL_STATUSES)
    delivered_final = any(o.status in FINAL_STATUSES or o.amount_refunded for _, o in delivered)
    finals = [e.status for e in events if e.final]
    assert finals == ([true_final] if delivered_final else [])
    refunds = [e.details["amount_refunded"] for e in events if e.type is EventType.ORDER_REFUND]
    seen = [o.amount_refunded for _, o in delivered if o.amount_refunded]
    assert (refunds[-1] if refunds else 0) == max(seen, default=0)
