"""The app in a real browser: Playwright (sync API) driving Debian's chromium through the whole flow.

page opens (bundled model auto-loaded) → choose toy categories, run calibration → heatmap →
move the ratio slider with the keyboard → Prune → send one chat message → both panes answer.

A screenshot of every step goes to screenshots/ at the repo root (git-ignored): NN-step.png is
the viewport around the part that changed, NN-step-full.png the whole page. Look at them after a
UI change. Never runs `playwright install`: it uses /usr/bin/chromium or skips.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("REAP_TEST_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set REAP_TEST_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")

from app_server import running_app  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
RATIO_LABEL = "range slider for Compression ratio (share of experts removed)"


@pytest.fixture(scope="module")
def app():
    with running_app(timeout=120) as a:
        yield a


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.page_errors = []
    pg.on("pageerror", lambda exc: pg.page_errors.append(str(exc)))
    yield pg
    context.close()


class Shots:
    def __init__(self, page):
        self.page, self.n = page, 0
        SHOTS.mkdir(exist_ok=True)
        for old in SHOTS.glob("[0-9][0-9]-*.png"):
            old.unlink()

    def __call__(self, name: str, focus=None) -> Path:
        """Viewport screenshot centred on `focus` (a locator) plus a full-page one."""
        self.n += 1
        stem = f"{self.n:02d}-{name}"
        if focus is not None:
            focus.scroll_into_view_if_needed()
            focus.evaluate("e => e.scrollIntoView({block: 'center'})")
        time.sleep(0.3)  # let plotly / the chatbot finish painting
        path = SHOTS / f"{stem}.png"
        self.page.screenshot(path=path)
        self.page.screenshot(path=SHOTS / f"{stem}-full.png", full_page=True)
        return path


def pruned_marker_count(page) -> int:
    """Red × markers of the saliency heatmap (one per pruned expert per layer)."""
    heat = page.locator(".js-plotly-plot").first
    return heat.locator(".scatterlayer .point").count()


def wait_until(predicate, timeout: float = 60, interval: float = 0.3, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def bot_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("[data-testid=bot]").all_inner_texts()]


def test_click_through_flow(app, page):
    shot = Shots(page)
    expect = sync_api.expect

    # 1. the page opens on the bundled model, already loaded (demo.load)
    t0 = time.perf_counter()
    page.goto(app.url)
    card = page.get_by_text("Experts per layer").first
    card.wait_for()
    opened = time.perf_counter() - t0
    expect(page.get_by_text("toy-gemma4-moe").first).to_be_visible()
    shot("opened", page.get_by_role("heading", name="1 · Model"))
    assert opened < 45, f"bundled model took {opened:.1f} s to appear"

    # 2. calibration: two toy categories, 2 samples each, 64 tokens each
    for name in ("toy-facts", "toy-tools", "toy-translation"):
        page.get_by_label(name, exact=True).uncheck()
    for name in ("toy-math", "toy-code"):
        page.get_by_label(name, exact=True).check()
        expect(page.get_by_label(name, exact=True)).to_be_checked()
    page.get_by_label("Samples per category").fill("2")
    max_tokens = page.get_by_label("number input for Max tokens per sample")
    max_tokens.fill("64")
    max_tokens.press("Enter")
    run = page.get_by_role("button", name="Run calibration")
    shot("calibration-setup", run)
    run.click()

    # 3. the heatmap appears (calibrate -> view chain), 0.25 of 32 experts = 8 × per layer
    status = page.get_by_text("Observed").first
    status.wait_for()
    assert re.search(r"Observed \d+ tokens", status.inner_text()), status.inner_text()
    heat = page.locator(".js-plotly-plot").first
    heat.wait_for()
    wait_until(lambda: pruned_marker_count(page) == 4 * 8, what="8 pruned markers in each of 4 layers")
    expect(page.get_by_text("REAP saliency").first).to_be_visible()
    shot("heatmap", heat)

    # 4. move the ratio slider with the keyboard: 0.25 -> 0.50, heatmap and size table follow
    slider = page.get_by_label(RATIO_LABEL)
    slider.focus()
    for _ in range(5):
        slider.press("ArrowRight")
    expect(slider).to_have_value("0.5")
    page.get_by_text("Pruned (50%)").first.wait_for()
    wait_until(lambda: pruned_marker_count(page) == 4 * 16, what="16 pruned markers per layer at ratio 0.5")
    shot("ratio-slider", slider)

    # a mistake on the way: chatting before pruning gives a ⚠️ message, no traceback, empty panes
    message = page.get_by_label("Message (goes to both)")
    message.fill("What is 2 + 3?")
    page.get_by_role("button", name="Send", exact=True).click()
    refusal = page.get_by_text("prune first").first
    refusal.wait_for()
    expect(page.locator("[data-testid=user]")).to_have_count(0)
    shot("chat-before-prune", refusal)

    # 5. prune
    page.get_by_role("button", name=re.compile(r"^Prune")).click()
    pruned_status = page.get_by_text("Pruned view active").first
    pruned_status.wait_for()
    assert "16 of 32" in pruned_status.inner_text()
    shot("pruned", pruned_status)

    # 6. one chat message (32 new tokens, to keep the test short): both panes show it and stream an answer
    page.get_by_text("Generation settings").click()
    max_new = page.get_by_label("number input for Max new tokens")
    max_new.fill("32")
    max_new.press("Enter")
    expect(page.get_by_label("range slider for Max new tokens")).to_have_value("32")
    page.get_by_text("Generation settings").click()   # fold it again
    page.get_by_label("Message (goes to both)").fill("What is 2 + 3?")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("[data-testid=user]")).to_have_count(2)
    last: list[list[str]] = []

    def settled():  # both answers non-empty and unchanged for three polls in a row
        texts = bot_texts(page)
        last.append(texts)
        return len(texts) == 2 and all(texts) and len(last) >= 3 and last[-1] == last[-2] == last[-3]

    wait_until(settled, timeout=120, interval=0.7, what="both chat panes to finish answering")
    shot("chat", page.get_by_role("heading", name=re.compile("5 · Chat")))

    # 7. extras for the screenshot review: the expert inspector and the criteria comparison
    page.get_by_text("What does one expert do?").click()
    page.get_by_role("button", name="Show its top tokens").click()
    page.get_by_text(re.compile(r"Expert 0")).first.wait_for()
    shot("expert-inspector", page.get_by_role("button", name="Show its top tokens"))
    page.get_by_text("Do two criteria prune the same experts?").click()
    time.sleep(1.0)
    shot("criteria-compare", page.get_by_text("Do two criteria prune the same experts?"))

    assert not page.locator("[data-testid=toast-body]").count(), page.locator("[data-testid=toast-body]").all_inner_texts()
    assert not page.page_errors, page.page_errors
