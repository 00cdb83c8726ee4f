"""Backoff delays and the polling of quiet orders (pure)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from bridge.core.backoff import Backoff, RetryWindow, next_poll_wait, quiet_poll_wait


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


# -- RetryWindow: a till tool's retries within a deadline ---------------------------------------


def test_retry_window_backs_off_and_gives_up_at_the_deadline() -> None:
    window = RetryWindow(10.0, started=100.0, backoff=Backoff(initial=1.0, cap=4.0, jitter=0))
    now, delays = 100.0, []
    while (delay := window.next_delay(now)) is not None:
        delays.append(delay)
        now += delay
    assert delays == [1.0, 2.0, 4.0, 3.0]  # the last wait is cut to end at the deadline
    assert now == 110.0 and window.failures == 5


def test_retry_window_of_zero_seconds_never_retries() -> None:
    window = RetryWindow(0.0, started=5.0)
    assert window.next_delay(5.0) is None and window.failures == 1


@given(
    st.floats(0.0, 120.0),
    st.floats(0.0, 1e6),
    st.lists(st.floats(0.0, 30.0), min_size=1, max_size=60),
    st.integers(0, 2**32),
)
def test_retry_window_never_waits_past_its_deadline(
    seconds: float, started: float, attempt_costs: list[float], seed: int
) -> None:
    """Whatever each attempt costs, a wait never ends after the deadline, and once the clock
    is at or past the deadline the window gives up."""
    window = RetryWindow(seconds, started, Backoff(0.1, 2.0, 2.0, rng=random.Random(seed)))
    now = started
    for cost in attempt_costs:
        now += cost  # the attempt itself takes time
        delay = window.next_delay(now)
        if now >= window.deadline:
            assert delay is None
            return
        assert delay is not None and 0.0 <= delay <= 2.0 * 1.2 + 1e-9
        assert now + delay <= window.deadline + 1e-9
        now += delay
