"""``pos-bridge check-config``: validate the config and print it, every secret masked."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote

from bridge.config.errors import ConfigError
from bridge.config.settings import load_config
from bridge.config.types import MASK
from bridge.errors import UserError


def check_config_command(args: Any) -> int:
    """``pos-bridge check-config [--config PATH]``: 0 valid (config printed as JSON), 2 invalid."""
    path = getattr(args, "config", None)

    def warn(message: str) -> None:
        print(f"pos-bridge: warning: {message}", file=sys.stderr)

    try:
        cfg = load_config(path, warn=warn)
    except ConfigError as exc:
        raise UserError(str(exc), exc.exit_code) from None
    text = json.dumps(cfg.masked_dict(), indent=2, ensure_ascii=False)
    # belt and braces: nothing secret may leave, whatever a future field does
    for secret in sorted(cfg.secrets(), key=len, reverse=True):
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    print(text)
    groups = cfg.terminal_groups
    n_term = sum(len(g.terminals) for g in groups)
    print(
        f"pos-bridge: {cfg.source}: valid ({len(groups)} terminal group(s), {n_term} terminal(s))",
        file=sys.stderr,
    )
    return 0
