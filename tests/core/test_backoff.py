"""Backoff delays and the polling of quiet orders (pure)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.backoff import Backoff, next_poll_wait, quiet_poll_wait


def test_quiet_polls_back_off_to_the_limit_and_news_resets() -> None:
    waits = [10.0]
    for _ in range(5):
        waits.append(next_poll_wait(waits[-1], 10.0, found=False, late=False, limit=6))
    assert waits == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert next_poll_wait(60.0, 10.0, found=True, late=False, limit=6) == 10.0
    assert next_poll_wait(60.0, 10.0, found=False, late=True, limit=6) == 10.0


@given(
    st.floats(0.1, 100.0),
    st.lists(st.tuples(st.booleans(), st.booleans()), max_size=20),
    st.floats(1.0, 10.0),
)
def test_poll_wait_stays_between_the_interval_and_the_limit(
    interval: float, polls: list[tuple[bool, bool]], limit: float
) -> None:
    wait = interval
    for found, late in polls:
        wait = next_poll_wait(wait, interval, found=found, late=late, limit=limit)
        assert interval <= wait <= interval * limit + 1e-9
        if found or late:
            assert wait == interval


def test_a_connected_stream_stretches_the_quiet_wait_to_the_limit() -> None:
    assert quiet_poll_wait(10.0, 10.0, live=True, late=False, limit=6) == 60.0
    assert quiet_poll_wait(10.0, 10.0, live=False, late=False, limit=6) == 10.0
    # past the deadline the payment is polled at its own pace, stream or not
    assert quiet_poll_wait(10.0, 10.0, live=True, late=True, limit=6) == 10.0


@given(
    st.floats(0.1, 100.0),
    st.floats(1.0, 10.0),
    st.floats(0.1, 1000.0),
    st.booleans(),
    st.booleans(),
)
def test_the_quiet_wait_never_polls_sooner_than_the_backoff(
    interval: float, limit: float, wait: float, live: bool, late: bool
) -> None:
    got = quiet_poll_wait(wait, interval, live=live, late=late, limit=limit)
    assert got >= wait
    if live and not late:
        assert got >= interval * limit
    else:
        assert got == wait


def test_backoffs_share_one_generator_unless_given_one() -> None:
    a, b = Backoff(), Backoff()
    assert a.rng is b.rng
    own = random.Random(7)
    assert Backoff(rng=own).rng is own
    assert 0.8 <= Backoff(initial=1.0, jitter=0.2).next() <= 1.2
