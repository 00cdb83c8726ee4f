"""What ``pos-bridge bench`` reports: the result record and its table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.daemon.payment import POLL_BACKOFF_LIMIT

#: initialized, declined | initialized, completed: a typical payment's status events.
EVENTS_PER_PAYMENT = 3
#: The payment the "CPU per payment" figure describes: opened, held this long at the
#: terminal (polled at the daemon's defaults while quiet), two non-final events, one final.
PAYMENT_SECONDS = 30.0
PAYMENT_EVENTS = 2


@dataclass
class Result:
    settings: dict[str, Any]
    ok: bool = True
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    streams_requested: int = 0
    streams_held: int = 0
    streams_by_transport: dict[str, int] = field(default_factory=dict)
    daemon_connections_to_upstream: int = 0
    open_seconds: float = 0.0
    payments_opened_per_s: float = 0.0
    events_sent: int = 0
    events_received: int = 0
    events_lost: int = 0
    #: Received events the bridge published on its own before anything was driven (the status
    #: ``GET`` reports once the first stream opens): not samples, not errors.
    events_unprompted: int = 0
    events_duplicated: int = 0
    events_unexpected: int = 0
    drive_events: int = 0
    drive_events_per_s: float = 0.0
    target_rate: float = 0.0
    implied_payments_per_s: float = 0.0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_events: int = 0
    baseline_events_per_s: float = 0.0
    final_events: int = 0
    daemon_rss_before_mb: float = 0.0
    daemon_rss_streams_mb: float = 0.0
    daemon_rss_peak_mb: float = 0.0
    daemon_kb_per_stream: float = 0.0
    daemon_cpu_s_per_1000_events: float = 0.0
    daemon_cpu_utilisation: float = 0.0
    #: Daemon CPU per payment, ms: opening (command -> order -> stream open), holding a quiet
    #: payment for a minute (polling at the configured interval), closing (the final event,
    #: details, stream and session end), and a whole typical payment (see PAYMENT_SECONDS).
    cpu_ms_per_payment: dict[str, float] = field(default_factory=dict)
    #: CPU used while driven, as a share of one core, by every process of the run.
    cpu_while_driven: dict[str, float] = field(default_factory=dict)
    #: Garbage collections of 5 ms or more in the daemon over the whole run: count, longest.
    daemon_gc_pauses: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0


def cpu_per_payment(
    open_ms: float, hold_ms_per_minute: float, event_ms: float, close_ms: float
) -> dict[str, float]:
    whole = open_ms + hold_ms_per_minute * PAYMENT_SECONDS / 60 + PAYMENT_EVENTS * event_ms
    return {
        "open": round(open_ms, 3),
        "hold_per_minute": round(hold_ms_per_minute, 3),
        "event": round(event_ms, 3),
        "close": round(close_ms, 3),
        "payment": round(whole + close_ms, 3),
    }


def _latency_rows(res: Result) -> list[str]:
    lines = ["  latency ms             p50      p90      p99      max        n"]
    for name in ("bridge", "baseline", "added", "final (bridge)"):
        row = res.latency_ms.get(name, {})
        if "p50" in row:
            lines.append(
                f"  {name:<20}"
                + "".join(f"{row[k]:>9.2f}" for k in ("p50", "p90", "p99", "max"))
                + f"{row['n']:>9.0f}"
            )
    return lines


def over_tls(settings: dict[str, Any]) -> str:
    """How a run's label says it went over TLS (``--tls``): the simulator serving HTTPS/WSS."""
    return " over TLS (HTTPS/WSS, a throwaway local CA)" if settings.get("tls") else ""


def table(res: Result) -> str:
    s = res.settings
    cpu = res.cpu_ms_per_payment
    interval = s["poll_interval"]
    poll = (
        f"polling every {interval:g} s, {interval * POLL_BACKOFF_LIMIT:g} s while a stream is "
        "connected"
        if interval
        else "polling off"
    )
    lines = [
        (
            f"pos-bridge bench: {s['transport']}{over_tls(s)}, {s['streams']} streams, "
            f"{s['rate']:g} events/s "
            f"for {s['duration']:g} s (baseline {s['baseline_duration']:g} s, {poll})"
            + (
                f"; daemon: {s['workers']} workers + supervisor, figures summed"
                if s.get("workers", 1) > 1
                else ""
            )
        ),
        "",
        (
            f"  streams held           {res.streams_held} of {res.streams_requested}"
            f"  ({', '.join(f'{k} {v}' for k, v in res.streams_by_transport.items())}; "
            f"daemon TCP connections upstream {res.daemon_connections_to_upstream})"
        ),
        f"  payments opened        {res.payments_opened_per_s:.0f}/s  ({res.open_seconds:.1f} s)",
        (
            f"  events sent/received   {res.events_sent} / {res.events_received}  "
            f"(lost {res.events_lost}, duplicated {res.events_duplicated}, unexpected "
            f"{res.events_unexpected}; bridge {res.drive_events} + finals {res.final_events}, "
            f"baseline {res.baseline_events}; {res.events_unprompted} published at opening)"
        ),
        (
            f"  events/s achieved      {res.drive_events_per_s:.0f}  (target {res.target_rate:g}; "
            f"baseline {res.baseline_events_per_s:.0f}) = {res.implied_payments_per_s:.0f} "
            f"payments/s at {EVENTS_PER_PAYMENT} events each"
        ),
        "",
        *_latency_rows(res),
        "",
        (
            f"  daemon RSS             {res.daemon_rss_before_mb:.1f} MB idle, "
            f"{res.daemon_rss_streams_mb:.1f} MB with the streams, "
            f"peak {res.daemon_rss_peak_mb:.1f} MB  -> {res.daemon_kb_per_stream:.1f} KB per stream"
        ),
        (
            f"  daemon CPU             {res.daemon_cpu_s_per_1000_events:.3f} s per 1000 events "
            f"({res.daemon_cpu_utilisation * 100:.0f}% of a core while driven)"
        ),
        (
            f"  CPU per payment ms     open {cpu.get('open', 0):.2f}, hold "
            f"{cpu.get('hold_per_minute', 0):.2f} per minute ({poll}), event "
            f"{cpu.get('event', 0):.2f}, close {cpu.get('close', 0):.2f} -> "
            f"{cpu.get('payment', 0):.2f} for a {PAYMENT_SECONDS:.0f} s payment "
            f"with {PAYMENT_EVENTS} events and a final"
        ),
        "  CPU while driven       "
        + ", ".join(f"{k} {v * 100:.0f}%" for k, v in res.cpu_while_driven.items())
        + " of a core",
        (
            f"  daemon GC pauses       {res.daemon_gc_pauses.get('count', 0):.0f} of 5 ms or more, "
            f"longest {res.daemon_gc_pauses.get('max_ms', 0):.0f} ms (gc: {s['gc']})"
        ),
        f"  wall time              {res.wall_seconds:.0f} s",
    ]
    lines += [f"  note: {note}" for note in res.notes]
    lines += [f"  ERROR: {err}" for err in res.errors]
    lines.append("  result: " + ("OK" if res.ok else "FAILED"))
    return "\n".join(lines)
