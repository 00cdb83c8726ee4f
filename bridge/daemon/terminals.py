"""Which terminal group, and so which API key, each terminal belongs to.

Terminals listed in the config route directly; groups with ``discover = true`` also get the
terminals MultiSafepay lists for them (at start and on SIGHUP). MultiSafepay must be sent a
terminal ID as configured (or as listed); keys and events use the canonical upper case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from bridge.core.normalize import canonical_terminal_id
from bridge.multisafepay.api import ApiError, MultiSafepayApi

if TYPE_CHECKING:
    from bridge.config import Config, TerminalGroup

log = structlog.get_logger("bridge.terminals")


class TerminalDirectory:
    def __init__(self, config: Config) -> None:
        self.config = config
        #: canonical terminal id -> (group name, the id as MultiSafepay listed it)
        self._discovered: dict[str, tuple[str, str]] = {}

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        # one lookup per pay, however many terminals a shop has
        self._config = config
        self._groups = {g.name: g for g in config.multisafepay.terminal_groups}
        self._configured = {
            canonical_terminal_id(t): (g.name, t)
            for g in config.multisafepay.terminal_groups
            for t in g.terminals
        }

    def route(self, terminal_id: str) -> tuple[TerminalGroup, str] | None:
        """The terminal's group and its ID as MultiSafepay knows it, or None."""
        wanted = canonical_terminal_id(terminal_id)
        found = self._configured.get(wanted) or self._discovered.get(wanted)
        if found is None:
            return None
        group = self._groups.get(found[0])
        return (group, found[1]) if group is not None else None

    async def discover(self, api: MultiSafepayApi) -> None:
        """Ask MultiSafepay for the terminals of every group with ``discover = true``. A group
        whose listing fails keeps what it had: discovery never removes a working route."""
        found: dict[str, tuple[str, str]] = {}
        for group in self.config.multisafepay.terminal_groups:
            if not group.discover:
                continue
            try:
                listed = await api.list_terminals(group.key.get_secret_value(), group.group_id)
            except ApiError as exc:
                log.error("terminals.discovery_failed", group=group.name, error=exc.message)
                found.update({t: v for t, v in self._discovered.items() if v[0] == group.name})
                continue
            ids = [str(t["id"]) for t in listed if t.get("id") and t.get("active", True)]
            for tid in ids:
                found.setdefault(canonical_terminal_id(tid), (group.name, tid))
            log.info("terminals.discovered", group=group.name, count=len(ids))
        self._discovered = found
