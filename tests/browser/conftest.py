"""Fixtures for tests in a real headless Chromium: Debian's /usr/bin/chromium driven by
Playwright (never a downloaded browser), and example apps under a real uvicorn process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, CHROMIUM, Server, serve
from playwright.sync_api import Browser, Playwright, sync_playwright


# Module scope, not session: a second sync_playwright() cannot start while one runs, so
# other test modules (e.g. the report's) can launch their own after this module finished.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """One Playwright driver per test module."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def chromium_browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """Headless Debian Chromium, shared by a module's tests (open a new context per test)."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    browser = playwright_driver.chromium.launch(executable_path=str(CHROMIUM), headless=True)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The folder for screenshots and other test artifacts (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Server]:
    """The example shop (examples/shop_app.py) with its own RAW directory."""
    with serve("examples.shop_app:app", tmp_path / "raw") as server:
        yield server


@pytest.fixture(scope="module")
def shared_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One example shop for the tests of a module that do not read RAW."""
    with serve("examples.shop_app:app", tmp_path_factory.mktemp("raw")) as server:
        yield server
