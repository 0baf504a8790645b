"""Headless Chromium (Debian's package) driven by Playwright, against real servers."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

SHOTS = os.environ.get("CONFMESH_SCREENSHOTS", "")  # a directory: save each page's screenshot there


def chromium_path() -> str:
    for candidate in (
        "/usr/lib/chromium/chromium",
        shutil.which("chromium") or "",
        shutil.which("chromium-browser") or "",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return ""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: pip install '.[test]' (playwright)")
        pytest.skip("playwright is not installed")
    path = chromium_path()
    if not path:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield launched
        finally:
            await launched.close()


async def login(browser: Any, base: str, token: str) -> Any:
    """A new browser context logged in with `token`; returns its first page, on the home page."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    await page.goto(f"{base}/console/#/login")
    await page.get_by_test_id("token").fill(token)
    await page.get_by_test_id("login").click()
    await page.get_by_test_id("services").wait_for()
    return page


async def shot(page: Any, name: str) -> None:
    if SHOTS:
        await asyncio.to_thread(Path(SHOTS).mkdir, parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)
