"""A logged-in Chromium tab for the browser tests, failing the test on any page error."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
USER, PASSWORD = "ops", "ops-password-1"


@contextmanager
def logged_in_tab(site: str, *, timeout_ms: int) -> Iterator[Any]:
    """Opens the Workers page, logs in as USER through the admin form, yields the tab."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            tab = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            tab.set_default_timeout(timeout_ms)
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
            tab.goto(f"{site}/workers/")
            # Not logged in yet: the admin login form, then back to the page asked for.
            tab.fill("#id_username", USER)
            tab.fill("#id_password", PASSWORD)
            tab.click("input[type=submit]")
            tab.wait_for_url(f"{site}/workers/")
            yield tab
        finally:
            browser.close()
    assert errors == [], f"browser errors: {errors}"
