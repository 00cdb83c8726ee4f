"""Shared fixtures: a private redis-server per test session (never the machine's shared one)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from bridge import logs
from bridge.redis.client import connect
from bridge.redis.server import RedisServer


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def logging_as_found() -> Iterator[None]:
    """Each test leaves logging as it found it: a till tool run in-process configures it (its
    warnings to stderr) when nothing is configured, and a test that configured it for a daemon
    must not decide where the next test's lines go (one such leak printed a log line among a
    tool's JSON on stdout in CI)."""
    root = logging.getLogger()
    level = root.level
    yield
    logs.reset_logging()
    root.setLevel(level)


@pytest.fixture
def daemon_log() -> Iterator[io.StringIO]:
    """The log of a daemon run in-process, as JSON lines: configured here, so its lines stay
    off the stdout a till tool run in-process prints its JSON on (and the tool, finding
    logging configured, sends its own warnings here too)."""
    buf = io.StringIO()
    logs.configure_logging("info", "json", buf, environ={})
    try:
        yield buf
    finally:
        logs.reset_logging()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    if not redis_server.running:  # a test that stopped it must not break the next one
        redis_server.start()
    client = connect(redis_server.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()
