"""Public mode in a real browser, at desktop and phone width: the footer says so, no server path
can be typed, an export lands in the session's own folder as a zip, a push without sign-in says why.

Screenshots go to screenshots/public-*.png (git-ignored); look at them after a UI change.
"""

from __future__ import annotations

import re

import pytest

from test_app_browser import SHOTS, VIEWPORTS, browser, open_page, sync_api  # noqa: F401  (skips without chromium; browser is a fixture)
from app_server import running_app  # noqa: E402



@pytest.fixture(scope="module")
def public_app(tmp_path_factory):
    env = {"REAP_STUDIO_PUBLIC": "1", "REAP_STUDIO_WORKDIR": str(tmp_path_factory.mktemp("work")),
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home"))}
    with running_app(timeout=120, env=env, cwd=tmp_path_factory.mktemp("cwd")) as a:
        yield a


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_public_page_shows_its_mode_and_offers_no_server_paths(public_app, browser, viewport):
    SHOTS.mkdir(exist_ok=True)
    context, page = open_page(browser, public_app.url, viewport)
    try:
        footer = page.locator("#server-mode")
        footer.scroll_into_view_if_needed()
        sync_api.expect(footer).to_contain_text("Public mode")
        sync_api.expect(footer).to_contain_text("REAP_STUDIO_PUBLIC is set")
        assert page.get_by_label(re.compile("Output folder")).count() == 0
        assert page.get_by_label(re.compile("local folder")).count() == 0       # the model box: Hub ids only
        page.screenshot(path=SHOTS / f"public-{viewport}-footer.png")
        page.screenshot(path=SHOTS / f"public-{viewport}-full.png", full_page=True)
        assert not page.page_errors, page.page_errors
    finally:
        context.close()


def test_public_export_is_a_zip_of_the_sessions_own_folder(public_app, browser):
    context, page = open_page(browser, public_app.url, "desktop")
    try:
        for name in ("toy-code", "toy-facts", "toy-tools", "toy-translation"):
            page.get_by_label(name, exact=True).uncheck()
        page.get_by_label("Samples per category").fill("2")
        page.get_by_role("button", name="Run calibration").click()
        page.get_by_text("Observed").first.wait_for()
        page.get_by_role("button", name=re.compile(r"^Prune \(masked view")).click()
        page.get_by_text("Pruned view active").first.wait_for()
        page.get_by_role("button", name="Export pruned checkpoint").click()
        status = page.get_by_text(re.compile("Exported to")).first
        status.wait_for(timeout=120_000)
        assert "this session's folder" in status.inner_text() and "verified" in status.inner_text()
        download = page.get_by_text("Download the exported folder (.zip)").first
        sync_api.expect(download).to_be_visible()
        page.get_by_role("button", name="Push to the Hub").click()
        refusal = page.get_by_text(re.compile("needs a Hugging Face sign-in")).first
        refusal.wait_for()
        refusal.scroll_into_view_if_needed()
        page.screenshot(path=SHOTS / "public-desktop-export.png")
        assert not page.page_errors, page.page_errors
    finally:
        context.close()
