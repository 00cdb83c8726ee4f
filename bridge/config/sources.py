"""Where configuration comes from: the TOML file and ``POS_BRIDGE__SECTION__KEY`` variables.

Both are pydantic-settings sources. The TOML source reports an unreadable or malformed file as
one ``ConfigError`` line (with the line and column). The environment source follows the
settings' ``env_prefix`` and ``env_nested_delimiter`` (``POS_BRIDGE__`` and ``__``) and adds
what pydantic-settings' own does not do: a value is read as a TOML literal (``true``, ``2.5``,
``["a", "b"]``; a string field takes the text as is), a numeric segment indexes a list of
tables (``POS_BRIDGE__MULTISAFEPAY__TERMINAL_GROUPS__0__API_KEY_ENV``), an unknown key is an
error naming the variable, and every problem is kept in ``errors`` to be reported with the
file's own.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, TomlConfigSettingsSource

from bridge.config.errors import ConfigError, loc_to_path

DEFAULT_CONFIG_PATH = "/etc/pos-bridge/config.toml"
ENV_CONFIG_PATH = "POS_BRIDGE_CONFIG"

_TOML_POS_RE = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$")


def resolve_config_path(path: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``path``, else ``$POS_BRIDGE_CONFIG``, else ``/etc/pos-bridge/config.toml``."""
    if path is not None and str(path) != "":
        return Path(path)
    return Path(environ.get(ENV_CONFIG_PATH) or DEFAULT_CONFIG_PATH)


def read_toml(path: Path, hint: str = "") -> dict[str, Any]:
    """The parsed file, or a ``ConfigError`` (``hint`` follows "no such file")."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, [("", f"no such file{hint}")]) from None
    except IsADirectoryError:
        raise ConfigError(source, [("", "is a directory, not a config file")]) from None
    except PermissionError:
        raise ConfigError(source, [("", "permission denied")]) from None
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(source, [(f"line {line}", "invalid TOML: not UTF-8 text")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_POS_RE.match(str(exc))
        where, reason = ("", str(exc)) if not m else (f"line {m['line']}", m["msg"])
        column = f" (column {m['col']})" if m else ""
        raise ConfigError(source, [(where, f"invalid TOML: {reason}{column}")]) from None


class TomlFileSource(TomlConfigSettingsSource):
    """One TOML file, read strictly: a missing or broken file is an error, never ``{}``."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, hint: str = "") -> None:
        self._hint = hint
        super().__init__(settings_cls, toml_file=path)

    def _read_files(self, files: Any, deep_merge: bool = False) -> dict[str, Any]:
        return read_toml(Path(files), self._hint)


class EnvOverrideSource(EnvSettingsSource):
    """``POS_BRIDGE__SECTION__KEY=value`` applied over ``base`` (the file's data).

    Returns the sections it changed, whole (a list item is changed inside a copy of the list).
    ``overridden`` maps each changed field path to its variable; ``errors`` holds the problems.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        base: Mapping[str, Any],
        environ: Mapping[str, str],
    ) -> None:
        self._environ = environ
        self._base = base
        self.overridden: dict[str, str] = {}
        self.errors: list[tuple[str, str]] = []
        super().__init__(settings_cls, case_sensitive=False)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        prefix = self.env_prefix.upper()
        return {k: v for k, v in self._environ.items() if k.upper().startswith(prefix)}

    def __call__(self) -> dict[str, Any]:
        data = copy.deepcopy(dict(self._base))
        touched: set[str] = set()
        delimiter = self.env_nested_delimiter or "__"
        for name in sorted(self.env_vars):
            segs = [s.lower() for s in name[len(self.env_prefix) :].split(delimiter)]
            if len(segs) < 2 or not all(segs):
                self.errors.append(
                    (name, "must be POS_BRIDGE__SECTION__KEY (e.g. POS_BRIDGE__REDIS__URL)")
                )
                continue
            problem = self._apply(data, segs, self.env_vars[name] or "", name)
            if problem:
                self.errors.append(problem)
            else:
                touched.add(segs[0])
        return {k: data[k] for k in touched}

    def _apply(
        self, data: dict[str, Any], segs: list[str], raw: str, name: str
    ) -> tuple[str, str] | None:
        fields: dict[str, FieldInfo] = self.settings_cls.model_fields
        node, i = data, 0
        loc: list[str | int] = []
        while True:
            seg = segs[i]
            loc.append(seg)
            where = f"{loc_to_path(loc)} (from {name})"
            field = fields.get(seg)
            if field is None:
                return where, "unknown key"
            if i == len(segs) - 1:
                node[seg] = _parse_value(raw, field.annotation)
                self.overridden[loc_to_path(loc)] = name
                return None
            ann, sub = field.annotation, node.get(seg)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                sub = node.setdefault(seg, {}) if sub is None else sub
                if not isinstance(sub, dict):
                    return where, "is not a table"
                node, fields, i = sub, ann.model_fields, i + 1
                continue
            item = get_args(ann)[0] if get_origin(ann) is list and get_args(ann) else None
            if not (isinstance(item, type) and issubclass(item, BaseModel)):
                return where, "is not a section"
            idx = segs[i + 1]
            if not isinstance(sub, list) or not idx.isdigit() or int(idx) >= len(sub):
                return where, f"has no item [{idx}] to override"
            if i + 1 == len(segs) - 1:
                return where, "name a key inside the item, e.g. ...__0__API_KEY_ENV"
            loc.append(int(idx))
            if not isinstance(sub[int(idx)], dict):
                return f"{loc_to_path(loc)} (from {name})", "is not a table"
            node, fields, i = sub[int(idx)], item.model_fields, i + 2


def _is_text(annotation: Any) -> bool:
    """Does a field of this type take text (``str``, ``SecretStr``, a Literal of strings)?"""
    members = get_args(annotation) if get_origin(annotation) not in (list, Literal) else ()
    for a in [m for m in members if m is not type(None)] or [annotation]:
        a = get_args(a)[0] if hasattr(a, "__metadata__") else a  # Annotated[str, ...]
        if a in (str, SecretStr):
            return True
        if get_origin(a) is Literal and all(isinstance(x, str) for x in get_args(a)):
            return True
    return False


def _parse_value(raw: str, annotation: Any) -> Any:
    """An environment value as a TOML literal; a text field takes the text (unquoting it)."""
    text = raw.strip()
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"
    if _is_text(annotation) and not quoted:
        return raw
    try:
        return tomllib.loads(f"v = {text if quoted else raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
