"""Browser fixtures: Debian's /usr/bin/chromium driven by Playwright (no browser download), and
a screenshot of the page under tests/console/artifacts/ when a test fails."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    """Keep each phase's report on the item, so a fixture can tell that its test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
async def browser_page(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh Chromium page; on failure its screenshot and HTML are kept as test artifacts."""
    from playwright.async_api import async_playwright

    assert CHROMIUM.exists(), "the browser tests need Debian's chromium (make test installs it)"  # noqa: ASYNC240
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(20_000)
        try:
            yield page
        finally:
            report = getattr(request.node, "report_call", None)
            if report is not None and report.failed:
                ARTIFACTS.mkdir(exist_ok=True)
                name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
                await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
                (ARTIFACTS / f"{name}.html").write_text(await page.content())
            await context.close()
            await browser.close()
