"""A real browser (Debian's Chromium via Playwright) drives the running explorer like a visitor would:
types a query, drags the r_c slider, sees latency and results update, opens the token-match heatmap.

Screenshots go to the test's tmp dir; set METAEMBED_SCREENSHOT=/some/path.png to keep a copy.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from app_fixtures import PDF_PAGES, SHAPES, build_fixture, draw, running_app

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def budget_in(text: str) -> tuple[int, int]:
    match = re.search(r"Budget \((\d+),(\d+)\)", text)
    assert match, text
    return int(match.group(1)), int(match.group(2))


def test_browser_search_slider_heatmap(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).exists(), "Debian's chromium package is required for the browser test"
    root = tmp_path_factory.mktemp("browser")
    model, gallery = build_fixture(root)
    with running_app(model, gallery, root) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(90_000)
        sync_api.expect.set_options(timeout=90_000)  # a 2-core CI box encodes slowly
        page.goto(url)
        # The landing searches its example query on load; wait for it, so the figures read below are this
        # search's and not the landing's (whose load-time search can land after the click).
        figures = page.locator("#figures")
        sync_api.expect(figures).to_contain_text("query encode")
        landing = figures.inner_text()

        page.locator("#query textarea, #query input").first.fill(PDF_PAGES[0])
        page.locator("#search-btn").click()
        sync_api.expect(figures).not_to_have_text(landing)
        sync_api.expect(figures).to_contain_text("query encode")
        sync_api.expect(page.locator("#results img").first).to_be_visible()
        first = figures.inner_text()
        assert budget_in(first) == (8, 16)
        assert "cached" not in first.split("query encode")[1].split("\n")[0]

        # Drag the r_c slider to near its left end: results update on release, without re-encoding.
        slider = page.locator("#r_c input[type=range]")
        box = slider.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 16 / 64, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.1, y, steps=5)
        page.mouse.up()
        sync_api.expect(figures).not_to_contain_text("Budget (8,16)")
        sync_api.expect(figures).to_contain_text("cached")
        second = figures.inner_text()
        r_q, r_c = budget_in(second)
        assert r_q == 8 and r_c < 16
        assert re.search(r"total\s+[\d.]+ ms", second), second
        sync_api.expect(page.locator("#diff")).to_contain_text("(8,16)")
        sync_api.expect(page.locator("#results img").first).to_be_visible()
        shot_search = root / "search.png"
        page.screenshot(path=str(shot_search), full_page=True)

        # Dropping an image into the query searches with it (text + image: a new query, encoded once).
        picture = root / "query.png"
        draw(*SHAPES[1][1:]).save(picture)
        before = int(re.search(r"query encodes this session\s+(\d+)", figures.inner_text()).group(1))
        page.locator("input[type=file]").first.set_input_files(str(picture))
        # text + image: one encode for every kind (no trained instruction for image queries)
        sync_api.expect(figures).to_contain_text(re.compile(rf"query encodes this session\s+{before + 1}\b"))
        sync_api.expect(page.locator("#results img").first).to_be_visible()

        # Clicking a result opens the token-match view for it.
        page.locator("#results img").first.click()
        sync_api.expect(page.get_by_role("tab", name="Token matches")).to_have_attribute("aria-selected", "true")
        plot = page.locator("#heatmap .js-plotly-plot")
        sync_api.expect(plot).to_be_visible()
        sync_api.expect(page.locator("#heatmap")).to_contain_text("score")
        shot_tokens = root / "tokens.png"
        page.screenshot(path=str(shot_tokens), full_page=True)
        browser.close()

    assert shot_search.stat().st_size > 10_000 and shot_tokens.stat().st_size > 10_000
    keep = os.environ.get("METAEMBED_SCREENSHOT")
    if keep:
        shutil.copyfile(shot_search, keep)
        shutil.copyfile(shot_tokens, Path(keep).with_name(Path(keep).stem + "-tokens.png"))


def test_browser_demo_gallery_examples_markers_and_errors(tmp_path):
    """The bundled model and demo gallery, as a first-time visitor at 1400x1000 sees them: an example click,
    a PDF question finding a ReportLab page, markers after a budget change, an error that keeps the results,
    the preset following the sliders; a screenshot of every tab."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from metaembed.bundled import GALLERY_DIR
    from metaembed.models import ALIASES

    if not (Path(ALIASES["mini"]) / "config.json").is_file() or GALLERY_DIR is None:
        pytest.skip("the committed MetaEmbed-Mini and demo gallery are not in this checkout")
    with running_app(Path(ALIASES["mini"]), GALLERY_DIR, tmp_path) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        sync_api.expect.set_options(timeout=90_000)
        page.goto(url)
        sync_api.expect(page.locator("#gallery-blurb")).to_contain_text("PDF pages")
        sync_api.expect(page.locator("#results .caption-label").first).to_be_visible()  # results on arrival
        page.screenshot(path=str(tmp_path / "00-landing.png"))

        page.locator("#examples button", has_text="how to draw a table in a PDF").click()
        captions = page.locator("#results .caption-label")
        sync_api.expect(captions.first).to_be_visible()
        top3 = [captions.nth(i).inner_text() for i in range(3)]
        assert any("page" in c and "reportlab-userguide.pdf" in c for c in top3), top3
        assert page.locator("#results img").first.bounding_box()["y"] < 1000  # visible without scrolling
        sync_api.expect(page.locator("#preset input[value='(8,16)']")).to_be_checked()
        page.screenshot(path=str(tmp_path / "01-search.png"))

        # A trained budget in one click: the cards say how each item moved.
        page.locator("#preset label", has_text="(1,1)").click()
        sync_api.expect(page.locator("#figures")).to_contain_text("Budget (1,1)")
        markers = page.locator("#results .caption-label").all_inner_texts()
        assert any(re.search(r"· (↑\d+|↓\d+|new)\n", c) for c in markers), markers
        # An untrained budget from the slider: the preset radio clears and the figures say so.
        box = page.locator("#r_c input[type=range]").bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 0.02, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
        page.mouse.up()
        sync_api.expect(page.locator("#figures")).to_contain_text("not a trained group")
        assert not page.locator("#preset input:checked").count()

        # An empty query is refused inline; the results on screen stay.
        shown = page.locator("#results img").count()
        page.locator("#query textarea, #query input").first.fill("")
        page.locator("#search-btn").click()
        sync_api.expect(page.get_by_text("empty query").first).to_be_visible()
        assert page.locator("#results img").count() == shown
        page.screenshot(path=str(tmp_path / "02-empty-query.png"))

        # A page result opens its token matches: the overlay, the share of matches, its text with words marked.
        cards = page.locator("#results .caption-label").all_inner_texts()
        page.locator("#results .thumbnail-item").nth(next(i for i, c in enumerate(cards) if " · page" in c)).click()
        sync_api.expect(page.get_by_role("tab", name="Token matches")).to_have_attribute("aria-selected", "true")
        sync_api.expect(page.locator("#page-text mark").first).to_be_visible()
        sync_api.expect(page.locator("#overlay-note")).to_contain_text("Matches won")
        sync_api.expect(page.locator("#overlay img")).to_be_visible()
        page.screenshot(path=str(tmp_path / "02-page-tokens.png"), full_page=True)

        for i, tab in enumerate(page.get_by_role("tab").all()):
            tab.click()
            page.wait_for_timeout(800)
            page.screenshot(path=str(tmp_path / f"{i + 3:02d}-tab-{i}.png"), full_page=True)
        browser.close()
    shots = sorted(tmp_path.glob("*.png"))
    assert len(shots) >= 8 and all(s.stat().st_size > 10_000 for s in shots)
    keep = os.environ.get("METAEMBED_SCREENSHOT_DIR")
    if keep:
        for shot in shots:
            shutil.copyfile(shot, Path(keep) / shot.name)
