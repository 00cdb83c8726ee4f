"""The HTML of the simulator's web page (pure: data in, text out; every value escaped).

The page is rendered here once; the live stream sends the same card fragments again when a
terminal changes, so the browser never builds HTML itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from bridge.simulator.orders import Order
from bridge.simulator.terminal_face import ALLOWED, LABELS, TITLES, Action, Screen
from bridge.simulator.variants import CHOICES

STATIC = "/_sim/static"


@dataclass(frozen=True)
class TerminalCard:
    """One terminal as the page shows it."""

    terminal_id: str
    name: str
    manual: bool
    screen: Screen
    order: Order | None
    webhooks: Sequence[dict[str, Any]]  # the simulator's delivery records for this order
    open_streams: int


def dom_id(terminal_id: str) -> str:
    """An HTML id for the terminal's card: letters, digits, - and _ only (others as _hex)."""
    return "terminal-" + re.sub(r"[^A-Za-z0-9-]", lambda m: f"_{ord(m.group()):x}", terminal_id)


def money(amount: int, currency: str) -> str:
    value = f"{amount // 100}.{amount % 100:02d}"
    return f"€ {value}" if currency == "EUR" else f"{value} {currency}"


def _a(value: object) -> str:
    """An attribute value, quoted."""
    return '"' + escape(str(value), quote=True) + '"'


def _screen_html(card: TerminalCard) -> str:
    order = card.order
    lines = []
    if order is not None:
        lines.append(f'<p class="amount">{escape(money(order.amount, order.currency))}</p>')
        if order.description:
            lines.append(f'<p class="description">{escape(order.description)}</p>')
    lines.append(f'<p class="message">{escape(TITLES[card.screen])}</p>')
    if order is not None and card.screen in (Screen.DECLINED, Screen.CANCELLED, Screen.ENTER_PIN):
        lines.append(f'<p class="reason">{escape(order.reason)}</p>')
    return (
        f'<div class="device"><div class="screen screen-{card.screen.value}">'
        + "".join(lines)
        + "</div></div>"
    )


def _buttons_html(card: TerminalCard) -> str:
    base = dom_id(card.terminal_id)
    parts = []
    for action in ALLOWED[card.screen]:
        if action is Action.PIN:
            parts.append(
                '<form class="pin" data-action="pin">'
                f'<label for="{base}-pin">PIN</label>'
                f'<input id="{base}-pin" name="pin" type="password" inputmode="numeric" '
                'autocomplete="off" pattern="[0-9]{4,6}" minlength="4" maxlength="6" required>'
                f'<button type="submit">{escape(LABELS[action])}</button></form>'
            )
        else:
            kind = "network" if action is Action.DROP else "customer"
            parts.append(
                f'<button type="button" class="{kind}" data-action={_a(action.value)}>'
                f"{escape(LABELS[action])}</button>"
            )
    if not parts:
        hint = "Waiting for a payment" if card.screen is Screen.IDLE else "Payment finished"
        parts.append(f'<p class="hint">{hint}</p>')
    return '<div class="buttons">' + "".join(parts) + "</div>"


def _log_html(card: TerminalCard) -> str:
    order = card.order
    if order is None:
        return ""
    history = (
        "".join(f"<li><code>{escape(e.status)}</code></li>" for e in order.events)
        or '<li class="none">nothing sent yet</li>'
    )
    hooks = (
        "".join(
            f"<li><code>{escape(str(w.get('status')))}</code> → "
            f"{escape(_answer(w.get('result')))}"
            + (f" (attempt {int(w.get('attempt') or 0)})" if (w.get("attempt") or 1) > 1 else "")
            + "</li>"
            for w in card.webhooks
        )
        or '<li class="none">none sent</li>'
    )
    return (
        '<div class="log">'
        f'<p class="order">Order <code>{escape(order.order_id)}</code> · '
        f"scenario <code>{escape(order.scenario.value)}</code> · "
        f"streams open: {card.open_streams}</p>"
        '<div class="columns"><div><h4>Statuses sent</h4>'
        f'<ol class="history">{history}</ol></div>'
        f'<div><h4>Webhooks</h4><ul class="webhooks">{hooks}</ul></div></div></div>'
    )


def _answer(result: object) -> str:
    if result is None:
        return "waiting"
    if isinstance(result, int):
        return f"HTTP {result}"
    return str(result)


def card_html(card: TerminalCard) -> str:
    """The terminal's card (an ``<article>``), replaced as a whole when it changes."""
    base = dom_id(card.terminal_id)
    checked = " checked" if card.manual else ""
    name = f'<p class="name">{escape(card.name)}</p>' if card.name else ""
    return (
        f'<article class="terminal" id="{base}" data-terminal={_a(card.terminal_id)} '
        f'data-screen="{card.screen.value}" aria-labelledby="{base}-title">'
        f'<header><h3 id="{base}-title">{escape(card.terminal_id)}</h3>{name}'
        f'<label class="manual"><input type="checkbox" data-manual{checked}> '
        "Manual: waits for a person</label></header>"
        + _screen_html(card)
        + _buttons_html(card)
        + _log_html(card)
        + "</article>"
    )


def _variants_html(variants: dict[str, Any]) -> str:
    fields = []
    for name, value in variants.items():
        fid = f"variant-{name}"
        if name in CHOICES:
            options = "".join(
                f"<option value={_a(choice)}{' selected' if choice == value else ''}>"
                f"{escape(choice)}</option>"
                for choice in CHOICES[name]
            )
            control = f'<select id="{fid}" name="{name}">{options}</select>'
        else:
            control = (
                f'<input id="{fid}" name="{name}" type="number" min="1" step="1" value={_a(value)}>'
            )
        fields.append(
            f'<div class="field"><label for="{fid}">{escape(name)}</label>{control}</div>'
        )
    return (
        '<form id="variants-form" class="admin-form" aria-labelledby="variants-title">'
        '<h3 id="variants-title">Variants</h3>'
        + "".join(fields)
        + '<button type="submit">Apply variants</button></form>'
    )


def page_html(
    cards: Iterable[TerminalCard], *, variants: dict[str, Any], speed: float, api_url: str
) -> str:
    """The whole page, as served at ``/``."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Terminals · pos-bridge MultiSafepay simulator</title>"
        f'<link rel="stylesheet" href="{STATIC}/page.css">'
        f'<script src="{STATIC}/page.js" defer></script></head><body>'
        '<header class="top"><h1>Simulated terminals</h1>'
        f"<p>MultiSafepay simulator · API at <code>{escape(api_url)}</code> · "
        f'speed ×<span id="speed-now">{speed:g}</span> · '
        '<span id="live" data-live="off">connecting…</span></p>'
        "<p>Each card is a SmartPOS terminal. A terminal set to <em>manual</em> waits for you "
        "to play the customer; the others follow their scenario (by terminal ID or amount), "
        "and your buttons take over.</p></header>"
        '<p id="notice" role="status" aria-live="polite"></p>'
        '<main><section aria-labelledby="terminals-title">'
        '<h2 id="terminals-title">Terminals</h2><div id="terminals" class="terminals">'
        + "".join(card_html(c) for c in cards)
        + "</div></section>"
        '<section class="admin" aria-labelledby="admin-title"><h2 id="admin-title">Admin</h2>'
        + _variants_html(variants)
        + '<form id="speed-form" class="admin-form" aria-labelledby="speed-title">'
        '<h3 id="speed-title">Speed</h3><div class="field"><label for="speed">'
        "Time factor (10: ten times faster)</label>"
        f'<input id="speed" name="speed" type="number" min="0.01" step="any" value="{speed:g}">'
        '</div><button type="submit">Apply speed</button></form>'
        "</section></main></body></html>"
    )
