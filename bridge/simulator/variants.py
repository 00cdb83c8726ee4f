"""Where MultiSafepay's real behaviour is uncertain, the simulator plays each way (a variant)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# The first value of each is the default: for what the docs leave open, the reading least kind
# to a client (docs/simulator.md has the sources).
CHOICES: dict[str, tuple[str, ...]] = {
    "sse_ids": ("off", "on"),  # emit `id:` lines on the SSE stream (and honour Last-Event-ID)
    "keepalive": ("data", "comment"),  # `data: ping` or `: ping`
    "field_spelling": ("events", "event"),  # events_token/... or event_token/...
    "transaction_id": ("string", "number"),  # type of transaction_id in stream/bus events
    "events_url": ("on", "off"),  # offer the WebSocket URL in the create answer
}


class VariantError(ValueError):
    pass


@dataclass
class Variants:
    sse_ids: str = "off"  # the docs' stream example has no id: lines
    keepalive: str = "data"  # the official SDK's stream test feeds `data: ping`
    field_spelling: str = "events"
    transaction_id: str = "string"
    events_url: str = "on"
    token_ttl: int = 600

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def set(self, name: str, value: Any) -> None:
        """Set one variant from a string (CLI) or JSON value (admin API); VariantError if bad."""
        names = [f.name for f in fields(self)]
        if name not in names:
            raise VariantError(f"unknown variant {name!r} (known: {', '.join(names)})")
        if name == "token_ttl":
            try:
                ttl = int(value)
            except (TypeError, ValueError):
                raise VariantError(
                    f"token_ttl must be a whole number of seconds, not {value!r}"
                ) from None
            if ttl <= 0 or isinstance(value, bool):
                raise VariantError("token_ttl must be > 0")
            self.token_ttl = ttl
            return
        text = str(value).lower()
        if text not in CHOICES[name]:
            raise VariantError(
                f"variant {name} must be one of {'|'.join(CHOICES[name])}, not {value!r}"
            )
        setattr(self, name, text)

    def update(self, values: dict[str, Any]) -> None:
        # Validate everything before changing anything, so a bad PUT changes nothing.
        trial = Variants(**self.as_dict())
        for name, value in values.items():
            trial.set(name, value)
        for name, value in trial.as_dict().items():
            setattr(self, name, value)

    @classmethod
    def parse(cls, specs: list[str]) -> Variants:
        v = cls()
        for spec in specs:
            name, sep, value = spec.partition("=")
            if not sep:
                raise VariantError(f"variant {spec!r} is not NAME=VALUE")
            v.set(name.strip(), value.strip())
        return v
