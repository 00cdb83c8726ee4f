"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) for the page tests.

``./scripts/bootstrap`` installs both when missing; where they cannot be installed the browser
tests are skipped, saying why. One browser serves the whole session; each test opens its page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from helpers.webdriver import (
    Browser,
    chromedriver,
    end_session,
    find_browser,
    log_path,
    new_session,
)

from bridge.simulator.server import SimulatorServer

WAIT = 60.0  # generous: two shared cores, a daemon, a simulator and a browser


@pytest.fixture(scope="session")
def webdriver_session() -> Iterator[tuple[str, str]]:
    found = find_browser()
    if found is None:
        pytest.skip(
            "no chromium + chromedriver on this machine: ./scripts/bootstrap installs Debian's "
            "chromium and chromium-driver (it needs apt-get and root or sudo)"
        )
    browser_path, driver_path = found
    with chromedriver(driver_path, log_path("chromedriver")) as url:
        session_id = new_session(url, browser_path, script_timeout=WAIT)
        try:
            yield url, session_id
        finally:
            end_session(url, session_id)


@pytest.fixture
async def browser(webdriver_session: tuple[str, str]) -> AsyncIterator[Browser]:
    url, session_id = webdriver_session
    async with httpx.AsyncClient(base_url=url) as client:
        page = Browser(client, session_id, request_timeout=WAIT + 30)
        await page.set_window(1280, 900)
        yield page


@pytest.fixture
def simulator() -> Iterator[SimulatorServer]:
    # speed 10, as in tests/daemon: scripted steps are quick, a person's clicks are not timed
    with SimulatorServer(speed=10) as sim:
        yield sim
