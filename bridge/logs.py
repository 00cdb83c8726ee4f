"""Structured logging (structlog over stdlib ``logging``), with secrets masked on every line.

Public API:

- ``configure_logging(level="info", fmt="auto", stream=None)``: call once at start, and again
  whenever (SIGHUP) the level or format changes; ``set_level(level)`` changes only the level.
- ``get_logger(name=None, **bound)``: a structlog logger (``log.info("order.created", order_id=...)``).
- ``register_secret(value)`` / ``register_secrets(values)``: values masked wherever they appear
  (``load_config`` registers the API keys and the Redis password itself). ``clear_secrets()``.
- ``redact_text(str) -> str`` / ``redact(obj) -> obj``: the same masking, for anything that
  leaves the process other than through a log (an error message in a published event, say).
- ``redact_processor``: the structlog processor (always in the chain ``configure_logging`` builds).

Output: JSON lines (``timestamp`` ISO UTC, ``level``, ``logger``, ``event``, then the fields)
under systemd or when not on a terminal; a readable console format on a terminal. Records of
stdlib loggers (uvicorn, httpx, websockets, redis, asyncio...) go through the same formatter
and masking; third-party loggers are held at WARNING unless the level is stricter. For uvicorn
pass ``log_config=None`` so it does not install its own handlers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import IO, Any
from urllib.parse import quote

import structlog
from structlog.types import EventDict, WrappedLogger

__all__ = [
    "MASK",
    "THIRD_PARTY_LOGGERS",
    "clear_secrets",
    "configure_logging",
    "get_logger",
    "is_secret_key",
    "redact",
    "redact_processor",
    "redact_text",
    "register_secret",
    "register_secrets",
    "reset_logging",
    "set_level",
]

MASK = "***"
MIN_SECRET_LENGTH = 6
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: stdlib loggers of libraries: shown at WARNING and above (or the configured level if stricter)
THIRD_PARTY_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "httpx",
    "httpcore",
    "websockets",
    "redis",
    "asyncio",
    "anyio",
    "hpack",
    "h11",
    "starlette",
    "httpx_sse",
    "hypothesis",
    "multipart",
    "python_multipart",
)

# --------------------------------------------------------------------------------------------
# redaction

# a field whose name contains one of these (case-insensitive) has its value masked
_SECRET_NAME_PARTS = (
    "api_key",
    "apikey",
    "api-key",
    "token",
    "auth",
    "signature",
    "password",
    "passwd",
    "secret",
    "credential",
    "cookie",
    "private_key",
)

_QUERY_NAMES = r"[\w.-]*?(?:api[_-]?key|token|secret|password|passwd|signature|auth)"
_PATTERNS: list[tuple[str, str]] = [
    # "Authorization: Bearer x", "Auth: base64", "api_key: KEY", '"authorization": "..."'
    (
        "header",
        (
            r"(?<![\w-])(?P<h_name>authorization|proxy-authorization|auth|x-api-key|"
            r"api[_-]?key|events?[_-]token|token)(?P<h_sep>[\"']?[ \t]*:[ \t]*[\"']?)"
            r"(?P<h_val>[^\r\n\"',}\]]+)"
        ),
    ),
    # https://host/x?api_key=KEY&token=JWT
    ("query", rf"(?<![\w-])(?P<q_name>{_QUERY_NAMES})(?P<q_sep>=)(?P<q_val>[^&\s\"',;#)\]}}]+)"),
    ("bearer", r"\b(?P<b_name>bearer)(?P<b_sep>[ \t]+)(?P<b_val>[A-Za-z0-9._~+/=-]+)"),
    ("jwt", r"(?-i:eyJ)[\w-]*\.[\w-]+\.[\w-]*"),
    # scheme://user:password@host
    ("urlpw", r"(?P<u_pre>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<u_val>[^@\s/]+)(?=@)"),
    # HMAC-SHA512 in hex
    ("hex", r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{128}(?![0-9A-Fa-f])"),
    # long base64 blobs, e.g. a webhook Auth header value on its own
    ("b64", r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{160,}={0,2}(?![A-Za-z0-9+/=])"),
]
_PATTERN_RE = re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in _PATTERNS), re.IGNORECASE)
# cheap pre-filter: a string whose lower case holds none of these (and shorter than a hex
# signature) cannot match any pattern above; `in` on a lowered string beats any regex here
_TRIGGERS = ("auth", "api", "token", "secret", "passw", "signature", "bearer", "://", "eyj")
_LONG = 128


def _may_match(text: str) -> bool:
    if len(text) >= _LONG:
        return True
    low = text.lower()
    for t in _TRIGGERS:
        if t in low:
            return True
    return False


_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None
_generation = 0  # bumped whenever the secrets change: part of the cache key


def _sub(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "header":
        return f"{m['h_name']}{m['h_sep']}{MASK}"
    if kind == "query":
        return f"{m['q_name']}={MASK}"
    if kind == "bearer":
        return f"{m['b_name']}{m['b_sep']}{MASK}"
    if kind == "urlpw":
        return f"{m['u_pre']}{MASK}"
    return MASK


def register_secret(value: Any) -> None:
    """Mask ``value`` (a str, bytes or ``SecretStr``) wherever it appears in a log line.

    Values shorter than 6 characters are ignored (they would mask ordinary words).
    """
    global _secrets_re, _generation
    if value is None:
        return
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value).strip()
    if len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, quote(value, safe=""), quote(value, safe="/")}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(f for f in forms if len(f) >= MIN_SECRET_LENGTH)
        _secrets_re = re.compile(
            "|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True))
        )
        _generation += 1
        _redact_short.cache_clear()


def register_secrets(values: Iterable[Any]) -> None:
    """``register_secret`` for each value."""
    for v in values:
        register_secret(v)


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets_re, _generation
    with _secrets_lock:
        _secrets.clear()
        _secrets_re = None
        _generation += 1
        _redact_short.cache_clear()


def redact_text(text: str) -> str:
    """``text`` with every secret it contains replaced by ``***``."""
    if len(text) < 4:
        return text  # nothing secret fits in 3 characters
    if len(text) <= 256:
        return _redact_short(text, _generation)
    return _redact_text(text)


def _redact_text(text: str, generation: int = 0) -> str:
    sre = _secrets_re
    if sre is not None and sre.search(text):
        text = sre.sub(MASK, text)
    if _may_match(text):
        text = _PATTERN_RE.sub(_sub, text)
    if sre is not None:
        # a replacement can, in theory, join with its neighbours into a secret again
        for _ in range(8):
            if not sre.search(text):
                break
            text = sre.sub(MASK, text)
        else:
            return MASK
    return text


# log lines repeat the same short strings (event names, statuses, IDs) over and over
_redact_short = lru_cache(maxsize=8192)(_redact_text)


@lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Is a field called ``name`` secret by its name (``api_key``, ``x_api_key``, ``events_token``,
    ``Authorization``, ``signature``, ``password``...)? Case-insensitive."""
    low = name.lower()
    return any(part in low for part in _SECRET_NAME_PARTS)


_SCALARS = (int, float, bool, type(None))
_MAX_DEPTH = 12


def _mask_named(value: Any) -> Any:
    # a secret-named field keeps numbers, booleans and None (``signature_ok=False`` helps)
    if isinstance(value, _SCALARS):
        return value
    return MASK


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` (str, dict, list, tuple, set, or any object via its repr) with every
    secret masked: by field name in mappings and ``(name, value)`` pairs, and by content in text.
    Objects without secrets are returned unchanged (the same object)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _SCALARS):
        return value
    if _depth > _MAX_DEPTH:
        return redact_text(repr(value))
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, str):
                if is_secret_key(k):
                    out[redact_text(k)] = _mask_named(v)
                    continue
                k2 = redact_text(k)
            else:
                k2 = redact(k, _depth + 1)
            out[k2] = redact(v, _depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if (
            isinstance(value, tuple)
            and len(items) == 2
            and isinstance(items[0], (str, bytes))
            and is_secret_key(
                items[0].decode("latin-1") if isinstance(items[0], bytes) else items[0]
            )
        ):
            # a header pair: ("Authorization", "Bearer ...")
            return (redact(items[0], _depth + 1), _mask_named(items[1]))
        red = [redact(v, _depth + 1) for v in items]
        if isinstance(value, list):
            return red
        if isinstance(value, tuple):
            return tuple(red)
        return red  # sets: a list (masked items may collide)
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "backslashreplace")
        red = redact_text(text)
        return value if red == text else red
    # anything else is rendered with repr() by both renderers: mask that text
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not break logging
        return f"<unprintable {type(value).__name__}>"
    red = redact_text(text)
    return value if red == text else red


def redact_processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every key and value (exception text included)."""
    out: dict[str, Any] = {}
    for k, v in event_dict.items():
        if k in ("_record", "_from_structlog"):
            out[k] = v
            continue
        if k == "exc_info" and v:
            # not yet rendered (a renderer will format it): render it now so it can be masked
            v = _format_exc(v)
            k = "exception"
        if isinstance(k, str) and k not in ("event", "exception", "stack") and is_secret_key(k):
            out[redact_text(k)] = _mask_named(v)
        else:
            out[redact_text(k) if isinstance(k, str) else k] = redact(v)
    return out


def _redact_foreign(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """In the formatter: mask records from stdlib loggers (structlog's were masked already)."""
    if event_dict.get("_from_structlog"):
        return event_dict
    return redact_processor(logger, method_name, event_dict)


def _format_exc(exc_info: Any) -> str:
    import traceback

    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif not isinstance(exc_info, tuple):
        exc_info = sys.exc_info()
    if not exc_info or exc_info[0] is None:
        return ""
    return "".join(traceback.format_exception(*exc_info)).rstrip("\n")


# --------------------------------------------------------------------------------------------
# rendering


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _order_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    ordered = {k: event_dict.pop(k) for k in _FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _json_default(obj: Any) -> Any:
    return repr(obj)


_LINE_BREAKERS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _json_dumps(obj: Any, **kw: Any) -> str:
    out = json.dumps(obj, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    # one object per line, whatever splits lines: escape the Unicode line separators too
    if "\x85" in out or "\u2028" in out or "\u2029" in out:
        out = out.translate(_LINE_BREAKERS)
    return out


class _SafeStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler whose failures never print the record (which may hold a secret) or a traceback.

    Built with ``stream=None`` it writes to whatever ``sys.stderr`` is at each write.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._fixed_stream = stream
        super().__init__(stream)

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return self._fixed_stream if self._fixed_stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        if value is not None and value is not sys.stderr:
            self._fixed_stream = value

    def handleError(self, record: logging.LogRecord) -> None:
        try:
            exc = sys.exc_info()[1]
            self.stream.write(
                _json_dumps(
                    {
                        "level": "error",
                        "logger": "bridge.logs",
                        "event": "log record could not be written",
                        "error": type(exc).__name__ if exc else None,
                        "record_logger": record.name,
                    }
                )
                + "\n"
            )
            self.flush()
        except Exception:  # noqa: BLE001, S110 - nothing left to report it with
            pass


_state_lock = threading.Lock()
_handler: logging.Handler | None = None
_level = logging.INFO


def _is_systemd(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


def _want_json(fmt: str, stream: IO[str], environ: Mapping[str, str]) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    if fmt != "auto":
        raise ValueError(f"log format must be auto, json or console, not {fmt!r}")
    if _is_systemd(environ):
        return True
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[str(level).strip().lower()]
    except KeyError:
        raise ValueError(
            f"log level must be debug, info, warning or error, not {level!r}"
        ) from None


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(
    level: str | int = "info",
    fmt: str = "auto",
    stream: IO[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Set up structlog and stdlib logging to write to ``stream`` (default ``sys.stderr``).

    ``fmt``: ``json``, ``console`` or ``auto`` (JSON under systemd, i.e. ``$JOURNAL_STREAM`` or
    ``$INVOCATION_ID`` set, or when ``stream`` is not a TTY; console on a TTY). Safe to call
    again at runtime (SIGHUP): it replaces the handler it installed before.
    """
    global _handler
    env = os.environ if environ is None else environ
    out = stream if stream is not None else sys.stderr
    number = _level_number(level)
    as_json = _want_json(str(fmt).strip().lower(), out, env)

    if as_json:
        renderer: Any = structlog.processors.JSONRenderer(serializer=_json_dumps)
    else:
        colors = False
        try:
            colors = out.isatty() and not env.get("NO_COLOR")
        except (AttributeError, ValueError):
            pass
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback, sort_keys=False
        )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.processors.format_exc_info,
            _redact_foreign,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _order_keys,
            renderer,
        ],
    )
    handler = _SafeStreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("pos-bridge")

    with _state_lock:
        root = logging.getLogger()
        if _handler is not None:
            root.removeHandler(_handler)
        # nothing may print raw lines beside ours: drop an earlier copy of our handler and
        # plain stream handlers (logging.basicConfig's); keep others (files, pytest's capture)
        for h in list(root.handlers):
            if getattr(h, "name", None) == "pos-bridge" or type(h) is logging.StreamHandler:
                root.removeHandler(h)
        root.addHandler(handler)
        _handler = handler
        logging.captureWarnings(True)

        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                *_shared_processors(),
                structlog.processors.format_exc_info,
                # masked before the record exists, so no other handler (pytest's caplog, one a
                # library added) can ever see the raw values
                redact_processor,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            context_class=dict,
            # not cached: a logger used before configure_logging must follow it afterwards
            cache_logger_on_first_use=False,
        )
        _set_level_locked(number)


def _set_level_locked(number: int) -> None:
    global _level
    _level = number
    logging.getLogger().setLevel(number)
    for name in THIRD_PARTY_LOGGERS:
        lg = logging.getLogger(name)
        lg.setLevel(max(number, logging.WARNING))
        # uvicorn's own config (if any) would print raw lines: send everything through ours
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True


def set_level(level: str | int) -> None:
    """Change the level at runtime (e.g. on SIGHUP after re-reading the config)."""
    number = _level_number(level)
    with _state_lock:
        _set_level_locked(number)


def get_level() -> int:
    """The current level as a stdlib number."""
    return _level


def get_logger(name: str | None = None, **initial_values: Any) -> Any:
    """A structlog logger called ``name`` (default: the calling module), optionally bound."""
    if not name:
        name = sys._getframe(1).f_globals.get("__name__") or "bridge"
    log = structlog.stdlib.get_logger(name)
    return log.bind(**initial_values) if initial_values else log


class _StderrLogger:
    """structlog's default logger, writing to the current ``sys.stderr`` at each call."""

    def __init__(self, *args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        try:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    log = debug = info = warn = warning = error = err = critical = exception = fatal = msg
    failure = msg


def reset_logging() -> None:
    """Undo ``configure_logging`` (remove its handler, back to the masked stderr default)."""
    global _handler
    with _state_lock:
        if _handler is not None:
            logging.getLogger().removeHandler(_handler)
            _handler = None
        structlog.reset_defaults()
        _install_safe_default()


def _install_safe_default() -> None:
    """Until ``configure_logging`` runs, structlog's default would print unmasked lines to
    stdout: make the default mask secrets and write to stderr instead."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            redact_processor,
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ],
        logger_factory=_StderrLogger,
        cache_logger_on_first_use=False,
    )


_install_safe_default()
