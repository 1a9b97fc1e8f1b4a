"""The app in a real browser: Playwright (sync API) driving Debian's chromium through the whole flow,
asserting what a user sees, not only that calls succeed.

Desktop (1440×1000): page opens (bundled model auto-loaded) → a live calibration shows a visible
progress bar whose text changes, then Cancel → the precomputed default calibration → heatmap →
a clicked heatmap cell opens that expert in the inspector → the category × expert view is on
the page with its caption → ratio slider → prune (with the category it used, and the out-of-date
warning when the category changes) → chat with an example prompt → merge instead (REAM: progress,
the merged experts' memory, the right pane merged and answering, then back to the pruned model) →
evaluate (captions name the plan measured) → export. Phone (390×844): the same steps, and nothing
wider than the screen (there the merged model stays on for the evaluation and the export).

A screenshot of every step goes to screenshots/ at the repo root (git-ignored):
desktop-NN-step.png / phone-NN-step.png (viewport around the part that changed) and a full page
at the end. Look at them after a UI change. Never runs `playwright install`: it uses
/usr/bin/chromium or skips.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from reap_core import toy_tasks

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
VIEWPORTS = {"desktop": (1440, 1000), "phone": (390, 844)}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # exports land in a temporary folder, not in the checkout's exports/
    with running_app(timeout=120, env={"REAP_STUDIO_EXPORTS": str(tmp_path_factory.mktemp("exports"))}) as a:
        yield a


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str, viewport: str):
    w, h = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": w, "height": h}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.page_errors = []
    page.on("pageerror", lambda exc: page.page_errors.append(str(exc)))
    page.goto(url)
    page.get_by_text("Experts per layer").first.wait_for()   # the bundled model loads with the page
    return context, page


class Shots:
    def __init__(self, page, prefix: str):
        self.page, self.prefix, self.n = page, prefix, 0
        SHOTS.mkdir(exist_ok=True)
        for old in SHOTS.glob(f"{prefix}-[0-9][0-9]-*.png"):
            old.unlink()

    def __call__(self, name: str, focus=None, full: bool = False) -> Path:
        """Viewport screenshot centred on `focus` (a locator), or the whole page."""
        self.n += 1
        if focus is not None:
            focus.evaluate("e => e.scrollIntoView({block: 'center'})")
        time.sleep(0.3)  # let plotly / the chatbot finish painting
        path = SHOTS / f"{self.prefix}-{self.n:02d}-{name}.png"
        self.page.screenshot(path=path, full_page=full)
        return path


def wait_until(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def pruned_marker_count(page) -> int:
    """Red × markers of the saliency heatmap (one per pruned expert per layer)."""
    return page.locator("#saliency-heatmap .scatterlayer .point").count()


def bot_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("[data-testid=bot]").all_inner_texts()]


def overflowing(page) -> dict:
    """What sticks out of the screen: the page's own width, and every visible element of the app whose
    box passes the viewport's edges without a scrolling box (overflow-x auto/scroll) around it — a
    clipped label counts too (a box with overflow hidden whose content is wider than the box)."""
    return page.evaluate("""() => {
      const vw = window.innerWidth, out = [];
      const inScroller = (el) => { for (let p = el.parentElement; p; p = p.parentElement) {
          const o = getComputedStyle(p).overflowX; if (o === 'auto' || o === 'scroll') return true; } return false; };
      const name = (el) => (el.id ? '#' + el.id : '') + '.' + String(el.className).slice(0, 40) + ' ' +
                           (el.innerText || '').trim().slice(0, 40);
      for (const el of document.querySelectorAll('.gradio-container *')) {
        const r = el.getBoundingClientRect();
        if (!r.width || !r.height || inScroller(el)) continue;
        if (r.right > vw + 1 || r.left < -1) out.push('past the edge: ' + name(el));
        if (el.matches('label, label *, [data-testid=block-info], .label-wrap *') && el.scrollWidth > el.clientWidth + 1
            && getComputedStyle(el).overflowX !== 'visible') out.push('clipped: ' + name(el));
      }
      return {scrollWidth: document.documentElement.scrollWidth, innerWidth: vw, out: out.slice(0, 20)};
    }""")


def assert_fits(page, where: str) -> None:
    o = overflowing(page)
    assert o["scrollWidth"] <= o["innerWidth"], f"{where}: page is {o['scrollWidth']} px wide on a {o['innerWidth']} px screen"
    assert not o["out"], f"{where}: {o['out']}"


def click_heatmap_cell(page, layer_row: int, expert: int) -> None:
    """Click the centre of heatmap cell (layer_row, expert), located with Plotly's own axis maps."""
    heat = page.locator("#saliency-heatmap .js-plotly-plot")
    heat.scroll_into_view_if_needed()
    pos = heat.evaluate("""(gd, [row, e]) => { const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        return {x: xa._offset + xa.d2p(e), y: ya._offset + ya.d2p(row)}; }""", [layer_row, expert])
    heat.click(position=pos)


def prune_status_now(page) -> dict:
    """#prune-status right now, read in one go (the progress bar comes and goes between two reads)."""
    return page.evaluate("""() => { const s = document.querySelector('#prune-status');
        const b = s && s.querySelector('.reap-progress-text');
        return {bar: b ? b.innerText : null, text: s ? s.innerText : ''}; }""")


def merge(page, shot=None) -> None:
    """Open the merge box, check its default method, click Merge and wait (generously: the first merge of a
    calibration runs its data through the model once more) for the merged view. The progress bar of that
    pass, when it shows long enough to be seen, names it and gets a screenshot."""
    box = page.locator("#merge-box")
    if not box.get_by_role("button", name="Merge", exact=True).is_visible():
        page.get_by_text("Prune or merge? Merge the experts instead").click()
    sync_api.expect(box.get_by_label("Merge method")).to_have_value("REAM merge")
    sync_api.expect(page.locator("#variant-pick")).to_contain_text("Right chat pane, evaluation and export use")
    box.get_by_role("button", name="Merge", exact=True).click()
    seen = wait_until(lambda: (lambda s: s if s["bar"] or "Merged view active" in s["text"] else None)(
        prune_status_now(page)), timeout=300, interval=0.1, what="the merge's progress bar or its result")
    if seen["bar"]:
        assert seen["bar"].startswith("Merge signals: one more pass of the calibration data"), seen
        if shot is not None:
            shot("merge-progress", page.locator("#prune-status"))
    status = page.locator("#prune-status")
    sync_api.expect(status).to_contain_text("Merged view active", timeout=300_000)
    sync_api.expect(status).to_contain_text(re.compile(r"Memory: .*\b\d+(\.\d+)? MB"))
    sync_api.expect(page.locator("#pruned-head")).to_contain_text(re.compile(r"Merged — \d+ of 32 experts per layer "
                                                                             r"\(REAM merge \d+%\)"))
    sync_api.expect(page.locator("#variant-pick").get_by_label("the merged model")).to_be_checked()
    page.wait_for_timeout(3000)      # nothing touched: the merged view's status stays (no stale notice over it)
    sync_api.expect(status, "a later event replaced the merge's status").to_contain_text("Merged view active")


def precomputed_calibration(page) -> None:
    page.get_by_label("Samples per category").fill("16")
    precomputed = page.get_by_label(re.compile("Use precomputed results"))
    precomputed.check()
    page.get_by_role("button", name="Run calibration").click()
    page.locator("#calib-status").get_by_text("Precomputed").wait_for()
    wait_until(lambda: pruned_marker_count(page) == 4 * 8, what="8 pruned markers in each of 4 layers")


def test_desktop_flow(app, browser):
    context, page = open_page(browser, app.url, "desktop")
    shot = Shots(page, "desktop")
    expect = sync_api.expect
    try:
        # 1. the bundled model's card says what it knows
        card = page.locator("#model-card")
        expect(card).to_contain_text("toy-gemma4-moe")
        expect(card).to_contain_text("knows only eight toy tasks")
        shot("opened", page.get_by_role("heading", name="1 · Model"))

        # 2. a live calibration (all toy domains, 64 samples each) shows a visible, moving progress bar; Cancel stops it
        precomputed = page.get_by_label(re.compile("Use precomputed results"))
        expect(precomputed).to_be_checked()          # offered: the bundled model's pack matches its weights
        precomputed.uncheck()
        page.get_by_label("Samples per category").fill("64")
        page.get_by_role("button", name="Run calibration").click()
        bar = page.locator("#calib-status .reap-progress")
        bar.wait_for(timeout=30_000)
        box = page.locator("#calib-status .reap-progress-track").bounding_box()
        assert box and box["width"] > 100 and box["height"] >= 8, f"progress bar not visible: {box}"
        text = page.locator("#calib-status .reap-progress-text")
        first = text.inner_text()
        assert re.search(r"Calibration: [\d,]+ / [\d,]+ tokens .* elapsed · (about .* left|estimating time left)",
                         first), first
        wait_until(lambda: text.inner_text() != first, timeout=30, what="the progress text to change")
        shot("calibration-progress", bar)
        page.get_by_role("button", name="Cancel").first.click()
        page.locator("#calib-status").get_by_text("calibration cancelled").wait_for()
        shot("calibration-cancelled", page.locator("#calib-status"))

        # 3. the default calibration comes precomputed, and says so; the heatmap follows (0.25 of 32 = 8 × per layer)
        precomputed_calibration(page)
        expect(page.locator("#calib-status")).to_contain_text("Observed 10,240 tokens")
        shot("calibrated", page.locator("#calib-status"))
        expect(page.locator("#heat-caption")).to_contain_text("Click a cell")
        shot("heatmap", page.locator("#saliency-heatmap"))

        # 4. clicking a heatmap cell opens that expert in the inspector
        click_heatmap_cell(page, 1, 5)
        info = page.locator("#expert-info")
        expect(info).to_contain_text("Expert 5, layer L1", timeout=30_000)
        expect(info).to_contain_text("routed tokens")
        shot("inspector-after-click", info)

        # 5. the category × expert view is on the page (not in a closed panel), with what to look for
        category_plot = page.locator("#category-heatmap .js-plotly-plot")
        expect(category_plot).to_be_visible()
        expect(page.get_by_text("Look for columns that are bright in one row only")).to_be_visible()
        shot("category-view", category_plot)
        page.get_by_text("Do two criteria prune the same experts?").click()
        compare = page.locator("#compare-plot .js-plotly-plot")
        expect(compare.locator(".legend")).to_contain_text("chance")     # a legend entry, not text on a bar
        shot("criteria-compare", compare)

        # 6. the ratio slider: 0.25 -> 0.50 with the keyboard; the size table says what Prune will use
        # one step at a time, each shown in the size table: five quick steps start change events that never
        # stop (test_ratio_keys_settle), and they would overwrite the merge's status in step 8c
        slider = page.get_by_label(RATIO_LABEL)
        slider.focus()
        for pct in (30, 35, 40, 45, 50):
            slider.press("ArrowRight")
            expect(page.locator("#size-table")).to_contain_text(f"Pruned ({pct}%)")
        expect(slider).to_have_value("0.5")
        expect(page.locator("#size-table")).to_contain_text("Pruned (50%)")
        expect(page.locator("#size-table")).to_contain_text("Prune will use: REAP scores from all calibration categories")
        wait_until(lambda: pruned_marker_count(page) == 4 * 16, what="16 pruned markers per layer at ratio 0.5")
        shot("ratio-slider", page.locator("#size-table"))

        # a mistake on the way: chatting before pruning gives an error message, no traceback, empty panes
        message = page.get_by_label("Message (goes to both)")
        message.fill("What is 2 + 3?")
        page.get_by_role("button", name="Send", exact=True).click()
        refusal = page.get_by_text("prune first").first
        refusal.wait_for()
        expect(page.locator("[data-testid=user]")).to_have_count(0)
        message.fill("")

        # 7. prune with one category: the status says so; changing the category makes it out of date
        category = page.get_by_label("Score experts on calibration category")
        category.click()
        page.get_by_role("option", name="toy-code").click()
        prune = page.get_by_role("button", name=re.compile(r"^Prune \(masked view"))
        prune.click()
        status = page.locator("#prune-status")
        expect(status).to_contain_text("Pruned using calibration category toy-code only")
        expect(status).to_contain_text("16 of 32")
        shot("pruned-one-category", status)
        category.click()
        page.get_by_role("option", name="all categories").click()
        expect(status).to_contain_text("Out of date")
        expect(status).to_contain_text("calibration category toy-code only → all calibration categories")
        shot("out-of-date", status)
        prune.click()
        expect(status).to_contain_text("Scores from all calibration categories")
        expect(page.locator("#pruned-head")).to_contain_text("16 of 32 experts per layer (REAP 50%)")

        # 8. chat: an example prompt the bundled model answers right; it was trained to think: the box is on offer
        page.get_by_text("Generation settings").click()
        expect(page.get_by_label("Thinking (gemma4)")).to_be_enabled()
        page.get_by_text("Generation settings").click()
        page.get_by_text(re.compile(r"^code: original right")).click()
        expect(message).to_have_value(re.compile(r"compute_count\(a, b\)"))
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.locator("[data-testid=user]")).to_have_count(2)
        last: list[list[str]] = []

        def settled():  # both answers non-empty and unchanged for three polls in a row
            texts = bot_texts(page)
            last.append(texts)
            return len(texts) == 2 and all(texts) and len(last) >= 3 and last[-1] == last[-2] == last[-3]

        wait_until(settled, timeout=120, interval=0.7, what="both chat panes to finish answering")
        original, pruned = bot_texts(page)
        assert "def compute_count(a, b)" in original and "min(a, b)" in original, original
        shot("chat", page.locator("#chat-original"))

        # 8b. a picture attached to the message goes to both panes, and the original says what it shows
        item = toy_tasks.generate("position", 1, toy_tasks.EVAL_SEED)[0]
        picture = SHOTS / "attached-picture.png"
        item.image.resize((256, 256)).save(picture)
        page.locator("#chat-image input[type=file]").set_input_files(str(picture))
        message.fill(item.prompt)
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.locator("[data-testid=user]")).to_have_count(4)
        seen: list[list[str]] = []

        def settled_on_picture():  # four answers (two per pane), unchanged for three polls in a row
            seen.append(bot_texts(page))
            return len(seen[-1]) == 4 and all(seen[-1]) and len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

        wait_until(settled_on_picture, timeout=120, interval=0.7, what="both panes to answer about the picture")
        texts = bot_texts(page)   # in page order: the original pane's two answers, then the pruned pane's
        assert toy_tasks.check("position", item, texts[1]), texts
        shot("image-chat", page.locator("#chat-original"))

        # 8c. merge instead (REAM, the same 50%): the right pane becomes the merged model, a text-only message
        # (the picture and the conversation cleared) gets two answers; then back to the pruned model
        merge(page, shot)
        expect(page.locator("#prune-status")).to_contain_text("32 experts merged into 16 in each of 4 MoE layers")
        expect(page.locator("#pruned-head")).to_contain_text("Merged — 16 of 32 experts per layer (REAM merge 50%)")
        shot("merge", page.locator("#merge-box"))
        page.locator("#chat-image").get_by_role("button", name=re.compile("clear|remove", re.I)).first.click()
        expect(page.locator("#chat-image img")).to_have_count(0)
        page.locator("button:text-is('Clear')").click()      # the chat's Clear (text, not an icon)
        expect(page.locator("[data-testid=user]")).to_have_count(0)
        page.get_by_text(re.compile(r"^code: original right")).click()
        page.get_by_role("button", name="Send", exact=True).click()
        expect(page.locator("[data-testid=user]")).to_have_count(2)
        last.clear()
        wait_until(settled, timeout=180, interval=0.7, what="both panes to answer, the right one merged")
        original, merged = bot_texts(page)
        assert "def compute_count(a, b)" in original and "min(a, b)" in original, original
        assert merged and merged != "…", merged
        expect(page.locator("#chat-pruned [data-testid=bot]")).to_have_count(1)
        shot("merge-chat", page.locator("#chat-pruned"))
        page.locator("#variant-pick").get_by_label("the pruned model").check()
        status = page.locator("#prune-status")
        expect(status).to_contain_text("Pruned view active", timeout=60_000)
        expect(status).not_to_contain_text("Merged view active")
        expect(page.locator("#pruned-head")).to_contain_text("Pruned — 16 of 32 experts per layer (REAP 50%)")
        expect(page.locator("#variant-pick").get_by_label("the pruned model")).to_be_checked()
        shot("back-to-pruned", page.locator("#merge-box"))

        # 9. evaluate: every result names what it measured
        for method in ("HC-SMoE merge", "M-SMoE merge", "REAM merge"):   # merge curves on offer, not chosen
            expect(page.get_by_role("checkbox", name=method, exact=True)).not_to_be_checked()
        page.get_by_role("button", name="Run fidelity sweep").click()
        fidelity = page.locator("#fidelity-status")
        expect(fidelity).to_contain_text("Measured: 4 criteria", timeout=120_000)
        expect(fidelity).to_contain_text("builtin:toy-* (128 samples, 10,240 tokens)")
        expect(page.locator("#fidelity-plot .js-plotly-plot")).to_be_visible()
        shot("fidelity", page.locator("#fidelity-plot"))
        page.get_by_role("button", name="Generation quality (current prune)").click()
        quality = page.locator("#quality-table")
        expect(quality).to_contain_text("Measured: REAP 50% — 16 of 32 experts kept per layer", timeout=180_000)
        expect(quality).to_contain_text("Loop: the answer repeats")          # loop and collapse defined in the app
        shot("generation-quality", quality)
        page.get_by_role("button", name="Task accuracy (current prune)").click()
        tasks = page.locator("#tasks-table")
        expect(tasks).to_contain_text("Measured: REAP 50% — 16 of 32 experts kept per layer", timeout=300_000)
        shot("task-accuracy", tasks)
        page.get_by_text("Does the pruned model still see?").click()       # the measured vision table
        vision = page.locator("#vision-pruning")
        expect(vision).to_contain_text("text + images")
        expect(vision).to_contain_text("Image tasks (95% CI)")
        shot("vision-under-pruning", vision)

        # 10. export: a name without the criterion twice, the tolerance explained
        page.get_by_role("button", name="Export pruned checkpoint").click()
        export = page.locator("#export-status")
        expect(export).to_contain_text("Exported to", timeout=180_000)
        expect(export).to_contain_text("toy-gemma4-moe-reap-50")
        expect(export).not_to_contain_text("reap-reap")
        expect(export).to_contain_text("× the largest |logit|")
        shot("export", export)
        shot("full-page", full=True)
        assert_fits(page, "desktop")
        assert not page.locator("[data-testid=toast-body]").count(), page.locator("[data-testid=toast-body]").all_inner_texts()
        assert not page.page_errors, page.page_errors
    finally:
        context.close()


def queue_joins(page) -> list:
    """Record the page's event calls (their function index) from now on; the list grows as they come,
    during Playwright calls (page.wait_for_timeout, not time.sleep)."""
    joins: list = []

    def on_request(request):
        if "/queue/join" in request.url:
            try:
                joins.append(json.loads(request.post_data or "{}").get("fn_index"))
            except ValueError:
                joins.append(None)

    page.on("request", on_request)
    return joins


@pytest.mark.xfail(reason="gradio bug, not reproduced in a minimal app: after five quick arrow-key steps the ratio slider keeps sending change events with the same value (~12 a second). The app skips redrawing a view from the same inputs (app.DrawnViews), so nothing on the page changes, but the events still come. Remove this mark once they stop.")
def test_ratio_keys_settle(app, browser):
    """Quick keyboard steps on the ratio slider: once the last one is handled, the page goes quiet."""
    context, page = open_page(browser, app.url, "desktop")
    try:
        precomputed_calibration(page)
        joins = queue_joins(page)
        slider = page.get_by_label(RATIO_LABEL)
        slider.focus()
        for _ in range(5):
            slider.press("ArrowRight")
        sync_api.expect(slider).to_have_value("0.5")
        sync_api.expect(page.locator("#size-table")).to_contain_text("Pruned (50%)")
        page.wait_for_timeout(3000)       # the last change's handlers finish
        before = len(joins)
        page.wait_for_timeout(4000)       # nothing touched
        assert len(joins) == before, (f"{len(joins) - before} event calls in 4 s with nothing touched "
                                      f"(function indexes {joins[before:before + 9]} …)")
    finally:
        context.close()


def test_phone_width(app, browser):
    """390 px: every step fits the screen (nothing past its edges, no clipped label)."""
    context, page = open_page(browser, app.url, "phone")
    shot = Shots(page, "phone")
    try:
        shot("opened")
        assert_fits(page, "opened")
        page.get_by_label(re.compile("Use precomputed results")).uncheck()
        page.get_by_label("Samples per category").fill("64")
        page.get_by_role("button", name="Run calibration").click()
        bar = page.locator("#calib-status .reap-progress")
        bar.wait_for(timeout=30_000)
        shot("calibration-progress", bar)
        assert_fits(page, "during the calibration")
        page.get_by_role("button", name="Cancel").first.click()
        page.locator("#calib-status").get_by_text("calibration cancelled").wait_for()
        precomputed_calibration(page)
        shot("heatmap", page.locator("#saliency-heatmap"))
        click_heatmap_cell(page, 2, 7)
        sync_api.expect(page.locator("#expert-info")).to_contain_text("Expert 7, layer L2", timeout=30_000)
        shot("inspector", page.locator("#expert-info"))
        shot("category-view", page.locator("#category-heatmap"))
        page.get_by_role("button", name=re.compile(r"^Prune \(masked view")).click()
        page.locator("#prune-status").get_by_text("Pruned view active").wait_for()
        shot("compression", page.locator("#size-table"))
        merge(page)
        sync_api.expect(page.locator("#pruned-head")).to_contain_text("24 of 32 experts per layer (REAM merge 25%)")
        shot("merge", page.locator("#merge-box"))
        shot("merge-status", page.locator("#prune-status"))
        assert_fits(page, "after a merge")
        # back to the prune for the rest: its evaluations are precomputed, so this layout check stays quick
        # (the merge's live evaluations and export: test_app_api.py::test_merge_in_the_app_chat_evaluate_export)
        page.locator("#variant-pick").get_by_label("the pruned model").check()
        sync_api.expect(page.locator("#prune-status")).to_contain_text("Pruned view active", timeout=60_000)
        page.get_by_text(re.compile(r"^translation: original right")).click()
        page.get_by_role("button", name="Send", exact=True).click()
        wait_until(lambda: len(bot_texts(page)) == 2 and all(bot_texts(page)), timeout=120, what="both answers")
        time.sleep(2)
        shot("chat", page.locator("#chat-original"))
        assert_fits(page, "after a chat")
        page.get_by_role("button", name="Run fidelity sweep").click()
        sync_api.expect(page.locator("#fidelity-status")).to_contain_text("Measured:", timeout=120_000)
        shot("fidelity", page.locator("#fidelity-status"))
        shot("fidelity-plot", page.locator("#fidelity-plot"))
        page.get_by_role("button", name="Task accuracy (current prune)").click()
        sync_api.expect(page.locator("#tasks-table")).to_contain_text("Measured:", timeout=300_000)
        shot("task-accuracy", page.locator("#tasks-table"))
        page.get_by_role("button", name="Generation quality (current prune)").click()
        sync_api.expect(page.locator("#quality-table")).to_contain_text("Measured:", timeout=300_000)
        shot("generation-quality", page.locator("#quality-table"))
        page.get_by_role("button", name="Export pruned checkpoint").click()
        sync_api.expect(page.locator("#export-status")).to_contain_text("Exported to", timeout=180_000)
        sync_api.expect(page.locator("#export-status")).to_contain_text("toy-gemma4-moe-reap-25")
        shot("export", page.locator("#export-status"))
        shot("full-page", full=True)
        assert_fits(page, "after the evaluation")
        assert not page.page_errors, page.page_errors
    finally:
        context.close()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny random Qwen3-MoE saved with a Qwen3-style ChatML template that reads enable_thinking."""
    from reap_core.tiny import build_tiny_family
    from test_flagships import chatml_tokenizer

    folder = tmp_path_factory.mktemp("tiny-qwen3-moe")
    tok = chatml_tokenizer()
    build_tiny_family("qwen3_moe", vocab_size=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_another_family(app, browser, qwen_dir, viewport):
    """A Qwen3-MoE folder typed into the picker: its card (family, gate), a live calibration's heatmap
    (2 MoE layers x 8 experts), the Thinking box named after its family; at 390 px nothing past the edge."""
    context, page = open_page(browser, app.url, viewport)
    shot = Shots(page, f"{viewport}-qwen3")
    expect = sync_api.expect
    try:
        picker = page.get_by_label(re.compile("Model: pick one"))
        picker.fill(str(qwen_dir))
        picker.press("Enter")
        page.get_by_role("button", name="Load", exact=True).click()
        card = page.locator("#model-card")
        expect(card).to_contain_text("(qwen3_moe)", timeout=60_000)
        expect(card).to_contain_text("Gate (what REAP weighs)")
        shot("card", card)
        page.get_by_label("Samples per category").fill("2")
        page.get_by_role("button", name="Run calibration").click()
        expect(page.locator("#calib-status")).to_contain_text("Observed", timeout=120_000)
        wait_until(lambda: pruned_marker_count(page) == 2 * 2, what="2 pruned markers in each of 2 layers")
        shot("heatmap", page.locator("#saliency-heatmap"))
        shot("size-table", page.locator("#size-table"))
        page.get_by_text("Generation settings").click()
        thinking = page.get_by_label("Thinking (qwen3_moe)")
        expect(thinking).to_be_enabled()
        expect(page.get_by_text("<think> … </think>")).to_be_visible()
        shot("thinking", thinking)
        assert_fits(page, f"{viewport}, another family")
        assert not page.page_errors, page.page_errors
    finally:
        context.close()
