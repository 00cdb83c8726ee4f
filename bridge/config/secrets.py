"""Resolving a terminal group's API key: run after validation, as a step of its own.

Order: inline ``api_key`` (development), ``api_key_file``, ``api_key_env``, else the systemd
credential named after the group in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``).
Nothing here registers the key with the log redaction: whoever runs with the config does
(``bridge.logs.register_secrets(config.secrets())``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr


@dataclass(frozen=True)
class ApiKey:
    """A resolved key and where it came from (``"file /run/credentials/..."``, ``"env X"``)."""

    value: SecretStr
    source: str


@dataclass(frozen=True)
class KeyProblem:
    """Why a key could not be resolved: ``field`` of the group ("" for the group itself)."""

    field: str
    reason: str


def _read_key_file(path: Path, field: str, label: str) -> str | KeyProblem:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return KeyProblem(field, f"{label}: no such file")
    except IsADirectoryError:
        return KeyProblem(field, f"{label}: is a directory")
    except PermissionError:
        return KeyProblem(field, f"{label}: permission denied")
    except (OSError, UnicodeDecodeError) as exc:
        return KeyProblem(field, f"{label}: cannot read ({type(exc).__name__})")
    return key if key else KeyProblem(field, f"{label}: file is empty")


def _from_credentials(name: str, environ: Mapping[str, str]) -> tuple[str | KeyProblem, str]:
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if not cred_dir:
        return KeyProblem(
            "",
            "no API key: set api_key_file or api_key_env, or give the daemon the systemd "
            f"credential {name!r} (LoadCredential={name}:...); $CREDENTIALS_DIRECTORY is not set",
        ), ""
    path = Path(cred_dir) / name
    if not path.exists():
        return KeyProblem(
            "",
            f"no API key: no systemd credential {name!r} in {cred_dir} and neither "
            "api_key_file nor api_key_env is set",
        ), ""
    return _read_key_file(path, "", f"credential {path}"), f"credential {path}"


def resolve_api_key(
    name: str,
    inline: SecretStr | None,
    key_file: str | None,
    key_env: str | None,
    environ: Mapping[str, str],
) -> ApiKey | KeyProblem:
    """The API key of group ``name``, or why there is none (never showing the key)."""
    key: str | KeyProblem
    if inline is not None:
        field, source = "api_key", "inline api_key"
        key = inline.get_secret_value().strip() or KeyProblem(field, "is empty")
    elif key_file is not None:
        path = Path(key_file).expanduser()
        field, source = "api_key_file", f"file {path}"
        key = _read_key_file(path, field, str(path))
    elif key_env is not None:
        field, source = "api_key_env", f"env {key_env}"
        if key_env not in environ:
            key = KeyProblem(field, f"environment variable {key_env} is not set")
        else:
            key = environ[key_env].strip() or KeyProblem(
                field, f"environment variable {key_env} is empty"
            )
    else:
        field = ""
        key, source = _from_credentials(name, environ)
    if isinstance(key, KeyProblem):
        return key
    if any(c.isspace() or not c.isprintable() for c in key):
        return KeyProblem(field, "the API key contains whitespace or control characters")
    return ApiKey(SecretStr(key), source)
