"""The bench pairs each received event with the send that caused it, never by position."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.bench.pairing import added_latencies, pair_all, pair_order, percentiles


def test_a_status_published_at_opening_is_apart_and_shifts_nothing() -> None:
    # The GET after the stream opens publishes `initialized` at t=1; the drive sends from t=10.
    sent = [("declined", 10.0), ("initialized", 11.0), ("completed", 12.0)]
    received = [
        ("initialized", 1.0, "e0", "s0"),
        ("declined", 10.001, "e1", "s1"),
        ("initialized", 11.002, "e2", "s2"),
        ("completed", 12.5, "e3", "s3"),
    ]
    p = pair_order("o", sent, received)
    assert p.unprompted == 1 and p.lost == p.unexpected == p.duplicates == 0
    assert [(s, round(r - t, 3)) for s, t, r in p.pairs["o"]] == [
        ("declined", 0.001),
        ("initialized", 0.002),
        ("completed", 0.5),
    ]


def test_lost_duplicated_and_unexpected_events_are_counted() -> None:
    sent = [("declined", 10.0), ("initialized", 11.0), ("declined", 12.0)]
    received = [
        ("declined", 10.1, "e1", "s1"),
        ("declined", 10.2, "e1", "s1"),  # the same event again
        ("declined", 12.1, "e3", "s3"),  # `initialized` at 11 never came
        ("void", 13.0, "e4", "s4"),  # never sent
    ]
    p = pair_order("o", sent, received)
    assert (p.lost, p.duplicates, p.unexpected, len(p.pairs["o"])) == (1, 1, 1, 2)


def test_an_event_never_pairs_with_a_later_send() -> None:
    p = pair_order("o", [("declined", 10.0)], [("declined", 9.0, "e", "s")])
    assert p.pairs["o"] == [] and p.lost == 1 and p.unprompted == 1


def test_added_latency_is_a_difference_of_pairs() -> None:
    bridge = {"bench-00000": [("declined", 0.0, 0.003), ("initialized", 1.0, 1.001)]}
    base = {"base-00000": [("initialized", 5.0, 5.001), ("declined", 6.0, 6.001)]}
    added = added_latencies(bridge, base, {"bench-00000": "base-00000"})
    assert [round(a, 6) for a in added] == [2.0, 0.0]


@given(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=40), st.booleans())
def test_every_send_received_once_pairs_every_send(delays: list[float], opening: bool) -> None:
    statuses = ["declined", "initialized"]
    sent = [(statuses[i % 2], 100.0 + i) for i in range(len(delays))]
    # In send order (pub/sub keeps one publisher's order), each late by its delay.
    received = [("initialized", 50.0, "e-open", "s-open")] if opening else []
    received += [
        (s, t + d, f"e{i}", f"s{i}") for i, ((s, t), d) in enumerate(zip(sent, delays, strict=True))
    ]
    p = pair_all({"o": sent}, {"o": received})
    assert p.lost == p.unexpected == p.duplicates == 0
    assert p.unprompted == int(opening)
    assert len(p.pairs["o"]) == len(sent)
    assert all(t_recv >= t_send for _, t_send, t_recv in p.pairs["o"])


def test_percentiles() -> None:
    assert percentiles([]) == {"n": 0}
    p = percentiles([float(i) for i in range(1, 101)])
    assert (p["p50"], p["p90"], p["p99"], p["max"], p["n"]) == (50.0, 90.0, 99.0, 100.0, 100)
