"""Files a config names besides secrets (TLS certificates and keys): checked when the config is
loaded, so a wrong path is one clear line then, not a TLS error at the first connection."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from pathlib import Path


def expand_path(path: str | None) -> str | None:
    """``path`` with ``~`` expanded (None stays None)."""
    return str(Path(path).expanduser()) if path is not None else None


def unreadable_pem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a PEM file (certificate or key), or None (it can)."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return f"cannot read ({type(exc).__name__})"
    if b"-----BEGIN " not in head:
        return "not a PEM file (no -----BEGIN line)"
    return None


def unloadable_ca(path: Path) -> str | None:
    """Why ``path`` cannot be loaded as CA certificates to trust, or None (it can)."""
    reason = unreadable_pem(path)
    if reason is not None:
        return reason
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        return f"no CA certificate that TLS can load ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read ({type(exc).__name__})"
    return None


def file_problems(
    section: str,
    files: Iterable[tuple[str, str | None]],
    check: Callable[[Path], str | None] = unreadable_pem,
) -> list[tuple[str, str]]:
    """``(section.name, "path: reason")`` for every named file of ``files`` (``(name, path)``,
    None skipped) that ``check`` (:func:`unreadable_pem` or :func:`unloadable_ca`) refuses."""
    problems: list[tuple[str, str]] = []
    for name, path in files:
        if path is not None:
            reason = check(Path(path).expanduser())
            if reason:
                problems.append((f"{section}.{name}", f"{path}: {reason}"))
    return problems
