"""Which orders a verified notification may change, and the unsigned-GET budget: pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.notifications import KnownOrder, TokenBucket, refuse_for_group, valid_order_id

GROUPS = {"TILL-A": "shop", "OTHER-01": "other"}


def group_of(terminal: str) -> str | None:
    return GROUPS.get(terminal.upper())


def test_a_group_changes_its_own_orders_on_their_own_terminal() -> None:
    mine = KnownOrder("TILL-A", None)
    assert refuse_for_group("shop", mine, None, group_of) is None
    assert refuse_for_group("shop", mine, "till-a", group_of) is None
    assert refuse_for_group("other", mine, None, group_of) is not None
    assert refuse_for_group("other", mine, "other-01", group_of) is not None
    assert refuse_for_group("shop", mine, "OTHER-01", group_of) is not None
    # the registry's group wins over the terminal's (a watch, a discovered terminal)
    assert refuse_for_group("other", KnownOrder("till-a", "other"), None, group_of) is None


def test_an_order_never_seen_must_name_a_terminal_of_the_group() -> None:
    assert refuse_for_group("shop", None, "till-a", group_of) is None
    assert refuse_for_group("shop", None, "OTHER-01", group_of) is not None
    assert refuse_for_group("shop", None, "NOWHERE", group_of) is not None
    assert refuse_for_group("shop", None, None, group_of) is None  # unroutable: nothing published


@given(st.text(max_size=60))
def test_order_ids(value: str) -> None:
    ok = valid_order_id(value)
    assert ok == (
        0 < len(value) <= 50 and all(c.isascii() and (c.isalnum() or c in "/_-") for c in value)
    )


def test_order_ids_that_broke_the_path() -> None:
    for bad in ("../../terminals", "x?api_key=1", "", None, "a b", "x" * 51, "ü"):
        assert not valid_order_id(bad)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.25) is False
    assert bucket.take(0.5) is True  # one more after half a second at 2/s
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
