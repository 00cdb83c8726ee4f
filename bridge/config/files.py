"""Files a config names besides secrets (TLS certificates and keys): checked when the config is
loaded, so a wrong path is one clear line then, not a TLS error at the first connection."""

from __future__ import annotations

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
