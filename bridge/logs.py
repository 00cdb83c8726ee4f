"""Logging for the daemon and the tools: structlog over stdlib ``logging``, secrets masked.

- ``configure_logging(level, fmt, stream=None, *, environ=None)``: the daemon calls it once it
  has read its config, and again with the new level and format on SIGHUP; the call replaces
  the handler the previous one installed. Nothing is configured at import.
- ``reset_logging()``: remove that handler and go back to structlog's defaults (tests).
- ``register_secrets(values)``: values masked wherever they appear; whoever holds a config
  registers ``config.secrets()`` (the daemon does, at start and on reload). ``clear_secrets()``.
- ``redact(value)`` / ``redact_text(text)``: the masking itself, for anything that leaves the
  process other than through a log.

Masked on every line, whatever the logger (ours or a library's through stdlib ``logging``):
registered values, fields named like a secret (``api_key``, ``events_token``,
``Authorization``, ``signature``, ``password``...), ``Authorization:``/``Auth:`` headers,
bearer tokens, JWTs, ``api_key=``/``token=`` query parameters, URL passwords, HMAC-SHA512
signatures (128 hex digits) and long base64 blobs (a webhook ``Auth`` header on its own).

Output: JSON lines (``timestamp`` ISO UTC, ``level``, ``logger``, ``event``, then the fields)
with ``fmt="json"``, or with ``"auto"`` under systemd or when the stream is not a terminal;
readable console lines otherwise. Library loggers are held at WARNING unless the level is
stricter, and their own handlers are removed so every line goes through the masking.
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
    "clear_secrets",
    "configure_logging",
    "redact",
    "redact_text",
    "register_secrets",
    "reset_logging",
]

MASK = "***"
_MIN_SECRET_LENGTH = 6  # shorter values would mask ordinary words
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}
_LIBRARY_LOGGERS = (
    "uvicorn uvicorn.error uvicorn.access httpx httpcore websockets redis asyncio anyio hpack h11 "
    "starlette httpx_sse hypothesis multipart python_multipart"
).split()

# a field whose name contains one of these (case-insensitive) has its value masked
_SECRET_NAME_PARTS = (
    "api_key apikey api-key token auth signature password passwd secret credential cookie "
    "private_key"
).split()
_QUERY_NAMES = r"[\w.-]*?(?:api[_-]?key|token|secret|password|passwd|signature|auth)"
_PATTERNS = {
    # "Authorization: Bearer x", "Auth: base64", "api_key: KEY", '"authorization": "..."'
    "header": (
        r"(?<![\w-])(?P<h_name>authorization|proxy-authorization|auth|x-api-key|"
        r"api[_-]?key|events?[_-]token|token)(?P<h_sep>[\"']?[ \t]*:[ \t]*[\"']?)"
        r"(?P<h_val>[^\r\n\"',}\]]+)"
    ),
    # https://host/x?api_key=KEY&token=JWT
    "query": rf"(?<![\w-])(?P<q_name>{_QUERY_NAMES})(?P<q_sep>=)(?P<q_val>[^&\s\"',;#)\]}}]+)",
    "bearer": r"\b(?P<b_name>bearer)(?P<b_sep>[ \t]+)(?P<b_val>[A-Za-z0-9._~+/=-]+)",
    "jwt": r"(?-i:eyJ)[\w-]*\.[\w-]+\.[\w-]*",
    # scheme://user:password@host
    "urlpw": r"(?P<u_pre>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<u_val>[^@\s/]+)(?=@)",
    # an HMAC-SHA512 signature in hex
    "hex": r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{128}(?![0-9A-Fa-f])",
    # long base64 blobs, e.g. a webhook Auth header value on its own
    "b64": r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{160,}={0,2}(?![A-Za-z0-9+/=])",
}
_PATTERN_RE = re.compile("|".join(f"(?P<{k}>{rx})" for k, rx in _PATTERNS.items()), re.I)
# cheap pre-filter: text shorter than a hex signature whose lower case holds none of these
# cannot match a pattern above (`in` on a lowered string beats any regex here)
_TRIGGERS = ("auth", "api", "token", "secret", "passw", "signature", "bearer", "://", "eyj")
_KEEP_NAME = {"header": "h", "query": "q", "bearer": "b"}


def _masked_match(m: re.Match[str]) -> str:
    kind = m.lastgroup or ""
    if kind in _KEEP_NAME:
        g = _KEEP_NAME[kind]
        return f"{m[g + '_name']}{m[g + '_sep']}{MASK}"
    return f"{m['u_pre']}{MASK}" if kind == "urlpw" else MASK


_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secrets(values: Iterable[Any]) -> None:
    """Mask each value (str, bytes or ``SecretStr``; its URL-quoted forms too) wherever it
    appears from now on. Values shorter than 6 characters and None are ignored."""
    global _secrets_re
    forms: set[str] = set()
    for value in values:
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text = "" if value is None else str(value).strip()
        if len(text) >= _MIN_SECRET_LENGTH:
            forms |= {text, quote(text, safe=""), quote(text, safe="/")}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        _secrets_re = re.compile("|".join(map(re.escape, sorted(_secrets, key=len, reverse=True))))
        _redact_short.cache_clear()


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets_re
    with _secrets_lock:
        _secrets.clear()
        _secrets_re = None
        _redact_short.cache_clear()


def _redact_text(text: str) -> str:
    sre = _secrets_re
    if sre is not None:
        text = sre.sub(MASK, text)
    low = text.lower()
    if len(text) >= 128 or any(t in low for t in _TRIGGERS):
        text = _PATTERN_RE.sub(_masked_match, text)
    if sre is not None:
        # a replacement can, in theory, join with its neighbours into a secret again
        for _ in range(8):
            if not sre.search(text):
                return text
            text = sre.sub(MASK, text)
        return MASK
    return text


# log lines repeat the same short strings (event names, statuses, IDs) over and over; the
# cache is cleared whenever the registered secrets change
_redact_short = lru_cache(maxsize=8192)(_redact_text)


def redact_text(text: str) -> str:
    """``text`` with every secret it contains replaced by ``***``."""
    if len(text) < 4:
        return text  # nothing secret fits in 3 characters
    return _redact_short(text) if len(text) <= 256 else _redact_text(text)


def cache_sizes() -> dict[str, int]:
    """Entries in the redaction caches now (each an LRU of a fixed ``maxsize``)."""
    return {
        "log_redact_cache": _redact_short.cache_info().currsize,
        "log_secret_name_cache": _is_secret_name.cache_info().currsize,
    }


@lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    low = name.lower()
    return any(part in low for part in _SECRET_NAME_PARTS)


_SCALARS = (int, float, bool, type(None))
_MAX_DEPTH = 12


def _mask_named(value: Any) -> Any:
    # a secret-named field keeps numbers, booleans and None (``signature_ok=False`` helps)
    return value if isinstance(value, _SCALARS) else MASK


def _is_secret_pair(value: tuple[Any, ...]) -> bool:
    """A header pair such as ``("Authorization", "Bearer ...")``."""
    if len(value) != 2 or not isinstance(value[0], (str, bytes)):
        return False
    name = value[0].decode("latin-1") if isinstance(value[0], bytes) else value[0]
    return _is_secret_name(name)


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` (str, dict, list, tuple, set, or any object via its repr) with every
    secret masked: by field name in mappings and ``(name, value)`` pairs, and by content in text.
    Sets come back as lists. Objects without secrets are returned unchanged (the same object)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _SCALARS):
        return value
    if _depth > _MAX_DEPTH:
        return redact_text(repr(value))
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and _is_secret_name(k):
                out[redact_text(k)] = _mask_named(v)
            else:
                out[redact(k, _depth + 1)] = redact(v, _depth + 1)
        return out
    if isinstance(value, tuple) and _is_secret_pair(value):
        return (redact(value[0], _depth + 1), _mask_named(value[1]))
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [redact(v, _depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        # anything else is rendered with repr() by both renderers: mask that text
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not break logging
            return f"<unprintable {type(value).__name__}>"
    masked = redact_text(text)
    return value if masked == text else masked


def _redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every key and value, the exception text included
    (``format_exc_info`` runs before it). In the formatter it masks the records of stdlib
    loggers only: structlog's own were masked before they became records."""
    if event_dict.get("_from_structlog"):
        return event_dict
    out: dict[str, Any] = {}
    for k, v in event_dict.items():
        if k in ("_record", "_from_structlog"):
            out[k] = v
            continue
        if isinstance(k, str) and k not in ("event", "exception", "stack") and _is_secret_name(k):
            out[redact_text(k)] = _mask_named(v)
        else:
            out[redact_text(k) if isinstance(k, str) else k] = redact(v)
    return out


def _first_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    first = ("timestamp", "level", "logger", "event")
    return {**{k: event_dict.pop(k) for k in first if k in event_dict}, **event_dict}


_LINE_BREAKERS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def _json_line(obj: Any, **_: Any) -> str:
    out = json.dumps(obj, default=repr, ensure_ascii=False, separators=(",", ":"))
    # one object per line, whatever splits lines: escape the Unicode line separators too
    return out.translate(_LINE_BREAKERS)


class _SafeStreamHandler(logging.Handler):
    """Writes to ``stream``, or to whatever ``sys.stderr`` is at each write when built without
    one. A failure to write never prints the record (it may hold a secret) nor a traceback."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = self._stream or sys.stderr
            out.write(self.format(record) + "\n")
            out.flush()
        except Exception:  # noqa: BLE001 - reported without the record, by handleError
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        failure = {
            "level": "error",
            "logger": "bridge.logs",
            "event": "log record could not be written",
            "error": type(sys.exc_info()[1]).__name__,
            "record_logger": record.name,
        }
        try:
            (self._stream or sys.stderr).write(_json_line(failure) + "\n")
        except Exception:  # noqa: BLE001, S110 - nothing is left to report it with
            pass


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = _LEVELS.get(str(level).strip().lower())
    if number is None:
        raise ValueError(f"log level must be debug, info, warning or error, not {level!r}")
    return number


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _renderer(fmt: str, stream: IO[str], environ: Mapping[str, str]) -> Any:
    """JSON for ``json``, and for ``auto`` under systemd or off a terminal; else console."""
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"log format must be auto, json or console, not {fmt!r}")
    systemd = environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID")
    if fmt == "json" or (fmt == "auto" and (systemd or not _is_tty(stream))):
        return structlog.processors.JSONRenderer(serializer=_json_line)
    return structlog.dev.ConsoleRenderer(
        colors=_is_tty(stream) and not environ.get("NO_COLOR"),
        exception_formatter=structlog.dev.plain_traceback,
        sort_keys=False,
    )


_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.PositionalArgumentsFormatter(),
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    structlog.processors.StackInfoRenderer(),
]
_HANDLER_NAME = "pos-bridge"


def configure_logging(
    level: str | int = "info",
    fmt: str = "auto",
    stream: IO[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Send structlog's and stdlib's records, masked, to ``stream`` (default: ``sys.stderr``).

    ``fmt``: ``json``, ``console`` or ``auto`` (JSON under systemd, i.e. ``$JOURNAL_STREAM`` or
    ``$INVOCATION_ID`` set, or when ``stream`` is not a TTY). Raises ``ValueError`` on an
    unknown level or format. Calling it again replaces the handler it installed before.
    """
    env = os.environ if environ is None else environ
    number = _level_number(level)
    renderer = _renderer(str(fmt).strip().lower(), stream or sys.stderr, env)
    handler = _SafeStreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.processors.format_exc_info,
                _redact_event,
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _first_keys,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    # nothing may print raw lines beside ours: drop our previous handler and plain stream
    # handlers (logging.basicConfig's); keep others (files, pytest's capture)
    for h in list(root.handlers):
        if h.name == _HANDLER_NAME or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(number)
    logging.captureWarnings(True)
    for name in _LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.setLevel(max(number, logging.WARNING))
        for h in list(library.handlers):  # e.g. uvicorn's own, which would print raw lines
            library.removeHandler(h)
        library.propagate = True
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.processors.format_exc_info,
            # masked before the record exists, so no other handler (pytest's caplog, one a
            # library added) can see the raw values
            _redact_event,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # not cached: a logger made before configure_logging must follow it afterwards
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo ``configure_logging``: remove its handler, back to structlog's defaults."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.name == _HANDLER_NAME:
            root.removeHandler(h)
    structlog.reset_defaults()
