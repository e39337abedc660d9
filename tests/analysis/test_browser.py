"""The mood-ring page in a real headless browser: Debian's ``chromium`` driven by Playwright through
``executable_path`` (Playwright's own browser download is not used). Skips, saying why, only where no
browser or no Playwright is installed (README, "Set-up": ``apt-get install chromium``,
``pip install playwright``)."""

import os
import shutil
import tempfile

import pytest

from moia.analysis.view import CHROMIUM_ARGS
from tests.analysis.test_view import NAMES, TOKENS, page_data


def chromium_path() -> str | None:
    for candidate in (os.environ.get("MOIA_CHROMIUM"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_page():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium executable on PATH (apt-get install chromium, or set MOIA_CHROMIUM)")
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_ARGS),  # headless: --headless
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def test_page_loads_without_errors_and_shows_every_token(browser_page, tmp_path):
    from moia.analysis.view import write_view

    z, spans = page_data()
    page_file, _ = write_view(tmp_path, TOKENS, z, NAMES, spans, prompt_length=7)
    page = browser_page
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.resolve().as_uri())
    page.wait_for_load_state("load")
    assert errors == []
    assert [u for u in requests if not u.startswith("file://")] == []  # no network resource
    assert page.locator("span.tok").count() == len(TOKENS)
    assert page.locator("span.tok.ann").count() == 4
    assert page.locator("span.tok").nth(8).inner_text() == TOKENS[8]  # shown as text (pre-wrap), not run
    page.locator("span.tok").nth(9).hover()
    panel = page.locator("#panel").inner_text()
    assert "token 9 (generated)" in panel and all(name in panel for name in NAMES)
    assert "2.20" in panel  # desperation's z at token 9
    assert errors == []
