"""The daemon's clients read ``INFO`` as redis-py does, without leaving a reference cycle per
call (the health probe asks every second: ``bridge.redis.client.parse_info``)."""

from __future__ import annotations

import gc

from hypothesis import given
from hypothesis import strategies as st
from redis._parsers.helpers import parse_info as redis_py_parse_info

from bridge.redis.client import connect, parse_info

REPLICATION = (
    "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n"
    "slave0:ip=10.0.0.2,port=6380,state=online,offset=3961,lag=0\r\n"
    "slave1:ip=10.0.0.3,port=6381,state=wait_bgsave,offset=0,lag=1\r\n"
    "master_failover_state:no-failover\r\nmaster_replid:8e2b6c0a\r\n"
    "master_repl_offset:3961\r\nsecond_repl_offset:-1\r\nrepl_backlog_histlen:0.5\r\n"
)

_piece = st.text(alphabet="ab1.-_,=:# x", max_size=12)


def test_a_replication_section_reads_as_redis_py_reads_it() -> None:
    info = parse_info(REPLICATION)
    assert info == redis_py_parse_info(REPLICATION)
    assert info["role"] == "master" and info["connected_slaves"] == 2
    assert info["slave1"]["state"] == "wait_bgsave" and info["slave0"]["port"] == 6380
    assert parse_info(REPLICATION.encode()) == info


@given(st.lists(st.tuples(_piece, _piece), max_size=8), st.lists(_piece, max_size=3))
def test_any_reply_reads_as_redis_py_reads_it(
    fields: list[tuple[str, str]], raw: list[str]
) -> None:
    lines = [f"{k}:{v}" for k, v in fields] + [r for r in raw if ":" not in r]
    lines += ["module:name=search,ver=20804", "module:name=json,ver=20607"]
    reply = "\r\n".join(lines)
    assert parse_info(reply) == redis_py_parse_info(reply)


def test_reading_a_reply_leaves_nothing_for_the_collector() -> None:
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            parse_info(REPLICATION)
        assert gc.collect() == 0
        for _ in range(100):
            redis_py_parse_info(REPLICATION)
        assert gc.collect() >= 100  # what the daemon no longer leaves behind each second
    finally:
        gc.enable()


def test_every_client_the_daemon_opens_reads_info_so() -> None:
    client = connect("redis://127.0.0.1:1/0")
    assert client.response_callbacks["INFO"] is parse_info
    assert client.response_callbacks["info"] is parse_info  # redis-py's names are case-blind
