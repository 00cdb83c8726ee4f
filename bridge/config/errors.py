"""``ConfigError`` and the wording of pydantic's validation errors: one line per problem."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from bridge.errors import UserError

# a field whose path holds one of these never has its value echoed in an error
_SECRETISH = ("api_key", "password", "secret", "token", "url")


class ConfigError(UserError):
    """An invalid or unreadable configuration. ``str()`` is one line naming source, field, reason.

    ``errors`` holds every problem found as ``(field_path, reason)`` (``field_path`` may be "").
    """

    def __init__(self, source: str, errors: Iterable[tuple[str, str]], exit_code: int = 2) -> None:
        self.source = source
        self.errors = [(p, _one_line(r)) for p, r in errors] or [("", "invalid configuration")]
        parts = [f"{p}: {r}" if p else r for p, r in self.errors]
        super().__init__(f"{source}: " + "; ".join(parts), exit_code)

    def __str__(self) -> str:
        return self.message


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def loc_to_path(loc: Iterable[Any]) -> str:
    """``("multisafepay", "terminal_groups", 0)`` -> ``multisafepay.terminal_groups[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe_input(loc: tuple[Any, ...], value: Any) -> str:
    """A short ``(got ...)`` suffix for an error, never for anything that may hold a secret."""
    if any(isinstance(p, str) and any(s in p.lower() for s in _SECRETISH) for p in loc):
        return ""
    if isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 60):
        return f" (got {value!r})"
    if isinstance(value, (dict, list)):
        return f" (got a {'table' if isinstance(value, dict) else 'list'})"
    return ""


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _reason(err: Any, loc: tuple[Any, ...]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "greater_than":
        return f"must be greater than {_number(ctx['gt'])}"
    if kind == "greater_than_equal":
        return "must be 0 or more" if ctx["ge"] == 0 else f"must be at least {_number(ctx['ge'])}"
    if kind in ("value_error", "assertion_error"):
        return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return str(err["msg"]) + _describe_input(loc, err.get("input"))


def validation_errors(exc: ValidationError, overridden: Mapping[str, str]) -> list[tuple[str, str]]:
    """Each pydantic error as ``(field path, reason)``; an overridden field names its variable."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = loc_to_path(loc)
        env = overridden.get(path)
        out.append((f"{path} (from {env})" if env else path, _reason(err, loc)))
    return out
