// The simulator's web page: live cards (server-sent events) and the buttons that play the
// customer. Plain JavaScript, no build step. The server renders every card; this only swaps
// them in and sends what a person pressed.
"use strict";

(function () {
  const notice = document.getElementById("notice");
  const live = document.getElementById("live");
  const terminals = document.getElementById("terminals");

  function say(text) {
    notice.textContent = text;
  }

  async function call(method, url, body) {
    let response;
    try {
      response = await fetch(url, {
        method: method,
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (err) {
      say("The simulator did not answer: " + err);
      return null;
    }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok || answer.success === false) {
      say(answer.error || answer.error_info || "Refused (HTTP " + response.status + ")");
      return null;
    }
    return answer.data;
  }

  // Which element of a card has the focus, as a selector that finds it again after a swap.
  function focusKey(active) {
    if (active.id) return "#" + CSS.escape(active.id);
    if (active.dataset.action) return '[data-action="' + active.dataset.action + '"]';
    if (active.hasAttribute("data-manual")) return "[data-manual]";
    return null;
  }

  // Bring a card up to date: only the parts whose HTML changed are replaced, so a button the
  // person is about to press stays the same element while only the history grows. Keyboard
  // focus (and a PIN being typed) stays where the person left it.
  function swap(id, html) {
    const old = document.getElementById(id);
    const holder = document.createElement("div");
    holder.innerHTML = html;
    const card = holder.firstElementChild;
    if (!old) {
      terminals.appendChild(card);
      return;
    }
    const active = document.activeElement;
    const key = active && old.contains(active) ? focusKey(active) : null;
    const pin = old.querySelector("input[name=pin]");
    const typed = pin ? pin.value : "";
    if (old.children.length !== card.children.length) {
      old.replaceWith(card);
    } else {
      for (const name of card.getAttributeNames()) old.setAttribute(name, card.getAttribute(name));
      [...card.children].forEach((part, i) => {
        if (old.children[i].outerHTML !== part.outerHTML) old.children[i].replaceWith(part);
      });
    }
    const now = document.getElementById(id);
    const newPin = now.querySelector("input[name=pin]");
    if (newPin && !newPin.value) newPin.value = typed;
    if (key && !now.contains(document.activeElement)) {
      const target = now.querySelector(key) || now.querySelector("button, input");
      if (target) target.focus();
    }
  }

  function connect() {
    const source = new EventSource("/_sim/page/stream");
    source.addEventListener("open", () => {
      live.textContent = "live";
      live.dataset.live = "on";
    });
    source.addEventListener("error", () => {
      live.textContent = "reconnecting…";
      live.dataset.live = "off";
    });
    source.addEventListener("card", (message) => {
      const card = JSON.parse(message.data);
      const old = document.getElementById(card.id);
      const before = old ? old.dataset.screen : null;
      swap(card.id, card.html);
      if (before !== null && before !== card.screen) {
        say(card.terminal_id + ": " + card.title);
      }
    });
  }

  function terminalOf(element) {
    const card = element.closest("article.terminal");
    return card ? card.dataset.terminal : null;
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const terminal = terminalOf(button);
    if (!terminal) return;
    await call("POST", "/_sim/press", { terminal_id: terminal, action: button.dataset.action });
  });

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    event.preventDefault();
    if (form.matches("form.pin")) {
      const terminal = terminalOf(form);
      const pin = form.elements.pin.value;
      await call("POST", "/_sim/press", { terminal_id: terminal, action: "pin", pin: pin });
    } else if (form.id === "variants-form") {
      const values = {};
      for (const field of form.elements) {
        if (!field.name) continue;
        values[field.name] = field.type === "number" ? Number(field.value) : field.value;
      }
      if (await call("PUT", "/_sim/variants", values)) say("Variants applied");
    } else if (form.id === "speed-form") {
      const data = await call("PUT", "/_sim/speed", { speed: Number(form.elements.speed.value) });
      if (data) {
        document.getElementById("speed-now").textContent = data.speed;
        say("Speed ×" + data.speed);
      }
    }
  });

  document.addEventListener("change", async (event) => {
    const box = event.target;
    if (!box.matches("input[data-manual]")) return;
    const terminal = terminalOf(box);
    const data = await call("PUT", "/_sim/manual", { terminal_id: terminal, manual: box.checked });
    if (data) {
      say(terminal + (box.checked ? ": manual, waits for you" : ": follows its scenario"));
    }
  });

  connect();
})();
