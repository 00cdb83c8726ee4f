"""bridge.logs: JSON/console output, stdlib routing, levels, and secrets never reaching a line."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import logs
from bridge.bench.redaction import EVENT as TYPICAL_EVENT

API_KEY = "live_4f1c9d2e8a7b6c5d4e3f2a1b0c9d8e7f"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJleHAiOjE3MDAwMDAwMDAsInBpZCI6IjEyMzQ1IiwiZ3J0IjpbIm1idXM6c2Vzc2lvbi5vcmRlciJdfQ."
    "Zm9vYmFyYmF6cXV4LXNpZ25hdHVyZS1ieXRlcw"
)
SIGNATURE = hmac.new(API_KEY.encode(), b'1700000000:{"x":1}', hashlib.sha512).hexdigest()
AUTH_HEADER = base64.b64encode(f"1700000000:{SIGNATURE}".encode()).decode()
REDIS_PW = "r3dis-Pa55word"
REDIS_URL = f"redis://bridge:{REDIS_PW}@redis.internal:6379/0"
BEARER_TOKEN = "opaque-bearer-0123456789"
QUERY_KEY = "q-key-abcdef987654"

SECRETS = [API_KEY, JWT, SIGNATURE, AUTH_HEADER, REDIS_PW, BEARER_TOKEN, QUERY_KEY]


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    logs.clear_secrets()
    yield
    logs.reset_logging()
    logs.clear_secrets()


def capture(fmt: str, level: str = "debug") -> io.StringIO:
    buf = io.StringIO()
    logs.configure_logging(level, fmt, buf, environ={})
    return buf


def emit_everything() -> None:
    """Log each secret in every place it could hide."""
    log = structlog.get_logger("bridge.test", order_id="till7-000123")
    log.info(
        "create_order",
        api_key=API_KEY,  # by name
        X_Api_Key=API_KEY,
        events_token=JWT,
        event_token=JWT,
        authorization=f"Bearer {JWT}",
        webhook_signature=SIGNATURE,
        redis_password=REDIS_PW,
        note=f"using key {API_KEY} now",  # by value (registered)
        stream=f"connecting with token {JWT} to wss://x/events/",
        header_text=f"Authorization: Bearer {BEARER_TOKEN}",
        auth_line=f"Auth: {AUTH_HEADER}",
        raw_sig=f"computed {SIGNATURE} vs expected",
        url=f"https://api.example.com/v1/json/orders/1?api_key={QUERY_KEY}&x=1",
        ws=f"wss://h/events/?token={JWT}",
        redis=REDIS_URL,
        nested={
            "headers": {"Authorization": f"Bearer {BEARER_TOKEN}", "Accept": "text/event-stream"},
            "list": [REDIS_URL, ("api_key", API_KEY), {"deep": [f"x {JWT} y"]}],
            "tuple": ("ok", SIGNATURE),
        },
        **{API_KEY: "a secret used as a key"},
        amount=1250,
        status="completed",
        signature_valid=False,
    )
    log.warning(f"event message itself has {API_KEY} and Bearer {BEARER_TOKEN}")
    log.info("positional %s %s", REDIS_URL, JWT)
    try:
        raise RuntimeError(f"upstream said no to {API_KEY} with {JWT} at {REDIS_URL}")
    except RuntimeError:
        log.exception("create_failed", terminal_id="0000004D")
    try:
        raise ValueError(f"Authorization: Bearer {BEARER_TOKEN}")
    except ValueError as exc:
        log.error("as_value", error=exc, exc_info=exc)
    logging.getLogger("httpx").warning(
        "HTTP Request: GET %s", f"https://h/v1/json/x?api_key={QUERY_KEY}"
    )
    logging.getLogger("uvicorn.error").error("bad header %s", f"Auth: {AUTH_HEADER}")
    try:
        raise ConnectionError(f"cannot reach {REDIS_URL}")
    except ConnectionError:
        logging.getLogger("redis").exception("stdlib exception")


def assert_clean(out: str) -> None:
    for secret in SECRETS:
        assert secret not in out, f"secret leaked: {secret[:12]}..."
    assert "***" in out
    # the quoted / escaped forms a renderer might produce
    assert REDIS_PW not in out.replace("\\", "")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_secret_reaches_the_output(fmt: str) -> None:
    logs.register_secrets([API_KEY])
    buf = capture(fmt)
    emit_everything()
    out = buf.getvalue()
    assert_clean(out)
    # normal fields survive
    for text in (
        "create_order",
        "till7-000123",
        "1250",
        "completed",
        "0000004D",
        "text/event-stream",
        "redis.internal:6379/0",
        "bridge:***@",
        "wss://x/events/",
        "create_failed",
        "RuntimeError",
        "HTTP Request: GET",
        "stdlib exception",
        "ConnectionError",
        "positional",
    ):
        assert text in out, text


def test_json_lines_shape() -> None:
    logs.register_secrets([API_KEY])
    buf = capture("json")
    emit_everything()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 8
    records = [json.loads(line) for line in lines]
    first = records[0]
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert first["timestamp"].endswith("Z") and "T" in first["timestamp"]
    assert first["level"] == "info" and first["logger"] == "bridge.test"
    assert first["event"] == "create_order"
    assert first["api_key"] == first["x_api_key".replace("x_api_key", "X_Api_Key")] == "***"
    assert first["events_token"] == first["event_token"] == first["authorization"] == "***"
    assert first["webhook_signature"] == first["redis_password"] == "***"
    assert first["signature_valid"] is False  # booleans under a secret name are harmless
    assert first["amount"] == 1250 and first["status"] == "completed"
    assert first["nested"]["headers"] == {"Authorization": "***", "Accept": "text/event-stream"}
    assert first["nested"]["list"][1] == ["api_key", "***"]
    assert first["nested"]["tuple"] == ["ok", "***"]
    assert first["redis"] == "redis://bridge:***@redis.internal:6379/0"
    assert first["url"] == "https://api.example.com/v1/json/orders/1?api_key=***&x=1"
    assert first["header_text"] == "Authorization: ***"
    assert "***" in first  # the secret used as a key
    exc = records[3]
    assert exc["level"] == "error" and exc["terminal_id"] == "0000004D"
    assert (
        "RuntimeError: upstream said no to *** with *** at redis://bridge:***@" in exc["exception"]
    )
    assert records[5]["logger"] == "httpx" and records[5]["level"] == "warning"
    assert "exception" in records[7] and "ConnectionError" in records[7]["exception"]


def test_console_format_is_readable() -> None:
    buf = capture("console")
    structlog.get_logger("bridge.x").info("hello", order_id="o-1", amount=5)
    line = buf.getvalue()
    assert (
        "hello" in line and "order_id=o-1" in line and "amount=5" in line and "[bridge.x]" in line
    )
    assert not line.lstrip().startswith("{")


def test_auto_format(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = io.StringIO()  # not a TTY -> json
    logs.configure_logging("info", "auto", buf, environ={})
    structlog.get_logger("bridge.a").info("x")
    json.loads(buf.getvalue())

    tty = Tty()
    logs.configure_logging("info", "auto", tty, environ={"NO_COLOR": "1"})
    structlog.get_logger("bridge.a").info("on-a-terminal")
    assert not tty.getvalue().startswith("{") and "on-a-terminal" in tty.getvalue()

    tty2 = Tty()  # under systemd: json even on a TTY
    logs.configure_logging("info", "auto", tty2, environ={"INVOCATION_ID": "abc"})
    structlog.get_logger("bridge.a").info("journal")
    assert json.loads(tty2.getvalue())["event"] == "journal"


def test_levels_and_runtime_change() -> None:
    buf = capture("json", level="info")
    log = structlog.get_logger("bridge.lvl")
    log.debug("hidden")
    log.info("shown")
    logging.getLogger("httpx").info("third-party info hidden")
    logging.getLogger("httpx").warning("third-party warning shown")
    logs.configure_logging("debug", "json", buf, environ={})  # as on SIGHUP
    log.debug("now shown")
    logs.configure_logging("ERROR", "json", buf, environ={})
    log.warning("hidden again")
    events = [json.loads(line)["event"] for line in buf.getvalue().splitlines()]
    assert events == ["shown", "third-party warning shown", "now shown"]
    with pytest.raises(ValueError, match="log level"):
        logs.configure_logging("loud", "json", buf, environ={})
    with pytest.raises(ValueError, match="log format"):
        logs.configure_logging("info", "yaml", buf, environ={})


def test_reconfigure_replaces_handler() -> None:
    first = capture("json")
    second = capture("console")
    structlog.get_logger("bridge.r").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_logger_used_before_configure_follows_it() -> None:
    log = structlog.get_logger("bridge.early")
    buf = capture("json")
    log.info("late", token=JWT)
    rec = json.loads(buf.getvalue())
    assert rec["event"] == "late" and rec["token"] == "***"


def test_bound_context_and_contextvars() -> None:
    import structlog

    buf = capture("json")
    structlog.contextvars.bind_contextvars(request_id="r-1", authorization="Bearer zzz")
    try:
        structlog.get_logger("bridge.ctx").bind(terminal_id="T1").info("ctx")
    finally:
        structlog.contextvars.clear_contextvars()
    rec = json.loads(buf.getvalue())
    assert (
        rec["request_id"] == "r-1" and rec["terminal_id"] == "T1" and rec["authorization"] == "***"
    )


def test_config_secrets_are_masked_once_registered() -> None:
    from bridge.config import Config

    cfg = Config.from_mapping(
        {
            "multisafepay": {
                "terminal_groups": [{"name": "g", "api_key_env": "K", "terminals": ["T"]}]
            },
            "redis": {"url": REDIS_URL},
        },
        environ={"K": API_KEY},
    )
    logs.register_secrets(cfg.secrets())  # the daemon does this with the config it runs
    buf = capture("json")
    structlog.get_logger("bridge.c").info(f"key {API_KEY} pw {REDIS_PW} alone")
    out = buf.getvalue()
    assert API_KEY not in out and REDIS_PW not in out and "key *** pw *** alone" in out


def test_short_values_are_not_registered() -> None:
    logs.register_secrets(["abc"])
    logs.register_secrets([""])
    logs.register_secrets([None])
    assert logs.redact_text("abc abcdef") == "abc abcdef"


def test_redact_helpers() -> None:
    logs.register_secrets([API_KEY])
    assert logs.redact_text(f"x{API_KEY}y") == "x***y"
    assert logs.redact_text("nothing secret here") == "nothing secret here"
    assert logs.redact_text(f"key={API_KEY}") == "key=***"
    assert logs.redact_text("amqp://guest:guest-pw@h/") == "amqp://guest:***@h/"
    assert logs.redact_text("Bearer abc.def") == "Bearer ***"
    assert (
        logs.redact_text("see https://h/p?events_token=abc&x=1")
        == "see https://h/p?events_token=***&x=1"
    )
    obj = {"order_id": "o1", "items": [1, 2.5, None, True]}
    assert logs.redact(obj) == obj
    named = {"X-Api-Key": "k1", "events_token": "t1", "order_id": "o1", "status": "s1"}
    assert logs.redact(named) == {**named, "X-Api-Key": "***", "events_token": "***"}
    from pydantic import SecretStr

    logs.register_secrets([SecretStr("secret-str-value")])
    assert logs.redact_text("a secret-str-value b") == "a *** b"
    # a URL-encoded form of a registered key is masked too
    logs.register_secrets(["ab+cd/ef==gh"])
    assert logs.redact_text("?k=ab%2Bcd%2Fef%3D%3Dgh") == "?k=***"


def test_unprintable_and_odd_values() -> None:
    class Boom:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    class Holder:
        def __repr__(self) -> str:
            return f"Holder(key={API_KEY})"

    logs.register_secrets([API_KEY])
    buf = capture("json")
    structlog.get_logger("bridge.o").info(
        "odd", a=Boom(), b=Holder(), c=API_KEY.encode(), d={1: API_KEY}, e={API_KEY[:3]}
    )
    out = buf.getvalue()
    assert API_KEY not in out and "unprintable Boom" in out
    rec = json.loads(out)
    assert rec["b"] == "Holder(key=***)" and rec["c"] == "***" and rec["d"] == {"1": "***"}


# --------------------------------------------------------------------------------------------
# property: a registered secret never survives, wherever it is embedded

_secret = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=6, max_size=40
).filter(lambda s: len(s.strip()) >= 6)
_noise = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(secret=_secret, before=_noise, after=_noise, times=st.integers(1, 3))
def test_registered_secret_never_survives(secret: str, before: str, after: str, times: int) -> None:
    logs.clear_secrets()
    logs.register_secrets([secret])
    secret = secret.strip()
    text = before + (secret + after) * times
    red = logs.redact_text(text)
    assert secret not in red
    # and in a structure, as key and value
    out = logs.redact({"k": [text, (text,)], text: {"n": text}})
    assert all(secret not in leaf for leaf in _strings(out))


def _strings(obj: object) -> list[str]:
    """Every string (keys included) inside a structure."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _strings(k) + _strings(v)]
    if isinstance(obj, (list, tuple, set)):
        return [s for v in obj for s in _strings(v)]
    return []


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    secret=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=40),
    noise=_noise,
)
def test_registered_secret_never_reaches_a_log_line(secret: str, noise: str) -> None:
    logs.clear_secrets()
    logs.register_secrets([secret])
    buf = capture("json")
    log = structlog.get_logger("bridge.prop")
    log.info(noise + secret, field=noise + secret + noise, nested=[{"x": secret}])
    try:
        raise RuntimeError(noise + secret)
    except RuntimeError:
        log.exception("e")
    out = buf.getvalue()
    assert secret not in out
    for line in out.splitlines():  # nor once JSON escapes are undone
        assert all(secret not in leaf for leaf in _strings(json.loads(line)))


def test_common_case_is_answered_from_the_cache() -> None:
    """A typical event (short strings, no secret) is scanned once; after that, every one of its
    strings is a cache hit. What it costs is measured by ``python -m bridge.bench.redaction``."""
    event = dict(TYPICAL_EVENT)
    logs.register_secrets([API_KEY, "another-key-1234567"])
    assert logs.redact(event) == event  # nothing to mask
    before = logs._redact_short.cache_info()
    assert logs.redact(dict(event)) == event
    after = logs._redact_short.cache_info()
    # every key and string value that could hold a secret (4 characters or more) is looked up
    strings = [x for x in _all_strings(event) if len(x) >= 4]
    assert (after.hits - before.hits, after.misses - before.misses) == (len(strings), 0)


def _all_strings(obj: object) -> list[str]:
    """Every string in ``obj``: dict keys and values, recursively."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in _all_strings(k) + _all_strings(v)]
    return []
