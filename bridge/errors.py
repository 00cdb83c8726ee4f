"""Errors that end a CLI command with one clear line instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix (bad flag, bad file, unreachable service).

    The CLI prints ``pos-bridge: <message>`` on stderr and exits with ``exit_code``.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
