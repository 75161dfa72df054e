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

        page.locator("#query textarea, #query input").first.fill(PDF_PAGES[0])
        page.locator("#search-btn").click()
        figures = page.locator("#figures")
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
        page.locator("input[type=file]").first.set_input_files(str(picture))
        sync_api.expect(figures).to_contain_text(re.compile(r"query encodes this session\s+2"))
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
