"""A minimal async W3C WebDriver client for Debian's ``chromium`` + ``chromium-driver``.

Why not Selenium: the tests need a handful of commands (open, find, click, type, run a script,
screenshot), and they must not block the event loop the daemon under test runs in. The W3C
protocol is plain JSON over HTTP, which ``httpx`` (already a dependency) speaks asynchronously;
Selenium is synchronous, a large extra dependency, and its "Selenium Manager" may try to
download browsers and drivers, which must never happen at test time.
Protocol: https://www.w3.org/TR/webdriver2/ (sessions, elements, execute/async, screenshot).
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
ENTER = "\ue007"

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver", "chromium-driver")


class WebDriverError(RuntimeError):
    pass


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) paths, or None when either is missing."""
    browser = next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)
    driver = next((p for n in DRIVER_NAMES if (p := shutil.which(n))), None)
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def chromedriver(driver_path: str, log_path: str, ready_timeout: float = 60.0) -> Iterator[str]:
    """Run chromedriver on a free local port; yields its URL once it answers ``/status``."""
    port = _free_port()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [driver_path, f"--port={port}", "--allowed-ips=127.0.0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:  # a process starting up has no event to wait for: ask until it answers
            if proc.poll() is not None:
                raise WebDriverError(f"chromedriver exited with {proc.returncode}; see {log_path}")
            try:
                if httpx.get(url + "/status", timeout=2.0).json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    raise WebDriverError(f"chromedriver not ready; see {log_path}") from None
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answer(resp: httpx.Response) -> Any:
    try:
        value = resp.json()["value"]
    except (ValueError, KeyError):
        raise WebDriverError(f"HTTP {resp.status_code}: {resp.text[:300]}") from None
    if resp.status_code != 200:
        raise WebDriverError(f"{value.get('error')}: {str(value.get('message'))[:1000]}")
    return value


def capabilities(browser_path: str, width: int = 1280, height: int = 900) -> dict[str, Any]:
    args = [
        "--headless=new",
        "--no-sandbox",  # tests may run as root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ]
    return {
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": browser_path, "args": args},
            }
        }
    }


def new_session(driver_url: str, browser_path: str, script_timeout: float) -> str:
    """Start a browser; returns the session id (blocking: done once, before any test runs)."""
    resp = httpx.post(f"{driver_url}/session", json=capabilities(browser_path), timeout=120.0)
    session_id = str(_answer(resp)["sessionId"])
    ms = int(script_timeout * 1000)
    _answer(
        httpx.post(
            f"{driver_url}/session/{session_id}/timeouts",
            json={"script": ms, "pageLoad": ms, "implicit": 0},
            timeout=30.0,
        )
    )
    return session_id


def end_session(driver_url: str, session_id: str) -> None:
    httpx.delete(f"{driver_url}/session/{session_id}", timeout=30.0)


# Resolves when the element matching the selector exists (and contains the text, if given);
# a MutationObserver re-checks on every change of the page, so the wait follows the page's own
# events instead of polling. WebDriver's script timeout bounds it.
_WAIT_SCRIPT = """
const [selector, text, done] = arguments;
function check() {
  const el = document.querySelector(selector);
  return el !== null && (text === null || el.textContent.includes(text));
}
if (check()) { done(true); return; }
const observer = new MutationObserver(() => {
  if (check()) { observer.disconnect(); done(true); }
});
observer.observe(document.documentElement,
  {subtree: true, childList: true, attributes: true, characterData: true});
"""


class Browser:
    """One WebDriver session, driven asynchronously."""

    def __init__(self, client: httpx.AsyncClient, session_id: str, request_timeout: float) -> None:
        self.client = client
        self.session = f"/session/{session_id}"
        self.timeout = request_timeout

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = await self.client.request(
            method, self.session + path, json=body if body is not None else {}, timeout=self.timeout
        )
        return _answer(resp)

    async def open(self, url: str) -> None:
        await self._call("POST", "/url", {"url": url})

    async def set_window(self, width: int, height: int) -> None:
        await self._call("POST", "/window/rect", {"width": width, "height": height})

    async def find(self, selector: str) -> str:
        found = await self._call("POST", "/element", {"using": "css selector", "value": selector})
        return str(found[ELEMENT])

    async def click(self, selector: str) -> None:
        await self._call("POST", f"/element/{await self.find(selector)}/click")

    async def type(self, selector: str, text: str) -> None:
        await self._call("POST", f"/element/{await self.find(selector)}/value", {"text": text})

    async def text(self, selector: str) -> str:
        return str(await self._call("GET", f"/element/{await self.find(selector)}/text"))

    async def script(self, source: str, *args: Any) -> Any:
        return await self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    async def wait_for(self, selector: str, text: str | None = None) -> None:
        """Until an element matches ``selector`` (and holds ``text``); WebDriverError on the
        session's script timeout, with what the page showed then."""
        try:
            await self._call(
                "POST", "/execute/async", {"script": _WAIT_SCRIPT, "args": [selector, text]}
            )
        except WebDriverError as exc:
            notice = await self.script(
                "const n = document.getElementById('notice'); return n ? n.textContent : null;"
            )
            raise WebDriverError(
                f"waiting for {selector!r} ({text!r}): {exc}; notice: {notice!r}"
            ) from exc

    async def screenshot(self) -> bytes:
        return base64.b64decode(await self._call("GET", "/screenshot"))


def log_path(name: str) -> str:
    directory = os.environ.get("TMPDIR", "/tmp")
    return os.path.join(directory, f"pos-bridge-{name}-{os.getpid()}.log")
