"""The Space in a real browser: Debian's Chromium driven by Playwright, clicking through the tabs.

Chromium comes from the system (``apt-get install chromium``), not from Playwright's own download, which
cannot work on a closed network. Without it they are skipped with the reason, or FAIL under
``SEMFLOW_REQUIRE_BROWSER=1`` as in ``.ci/run`` (``browser_gate.py``); if it cannot start, they FAIL with the reason.
Screenshots go to ``outputs/app-screenshots/`` (git-ignored), or to ``$SEMFLOW_SCREENSHOTS``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_fixtures import app_url, tiny_model_dir  # noqa: F401
from semflow_tiny import CAMVID_COLORS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "space" / "examples"
CHROMIUM = os.environ.get("SEMFLOW_CHROMIUM", "/usr/bin/chromium")
# Without the networking flags Chromium stalls on this closed network (update/sync/QUIC probes).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("SEMFLOW_SCREENSHOTS", ROOT / "outputs" / "app-screenshots"))
TIMEOUT_MS = 120_000  # generous: CI machines may be busy; a healthy run takes seconds per step
INSTALL_HINT = ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                "chromium")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"Playwright for Python is not installed ({e}): pip install playwright")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}. Install it with: {INSTALL_HINT}")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as e:  # noqa: BLE001 - report why, and fail: a browser test must not silently skip
            pytest.fail(f"Chromium at {CHROMIUM} could not start: {e}")
        yield b
        b.close()


@pytest.fixture(scope="module")
def _page(browser, app_url):  # noqa: F811
    # One page for the module: loading gradio's frontend is the slowest step on a busy 2-core machine.
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(app_url, wait_until="domcontentloaded")
    pg.wait_for_selector("#seg-run")
    yield pg, errors
    pg.close()


@pytest.fixture
def page(_page):
    pg, errors = _page
    yield pg
    assert not errors, f"JavaScript errors in the page: {errors}"


def _shot(pg, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def _fetch_image(pg, selector: str) -> Image.Image:
    """The image an <img> shows, fetched from the app's file route."""
    src = pg.locator(selector).first.get_attribute("src")
    assert src, f"{selector} has no src"
    return Image.open(io.BytesIO(pg.request.get(src).body()))


def _src(page, selector: str):
    loc = page.locator(selector)
    return loc.first.get_attribute("src") if loc.count() else None


def _click_and_wait(page, button: str, *outputs: str) -> None:
    """Click ``button`` and wait until every ``outputs`` <img> shows a new picture (the page is shared by the
    tests, so an output can already hold an earlier result)."""
    before = [_src(page, sel) for sel in outputs]
    page.click(button)
    for sel, old in zip(outputs, before):
        page.wait_for_function(
            "([sel, old]) => { const e = document.querySelector(sel); return !!e && !!e.getAttribute('src')"
            " && e.getAttribute('src') !== old; }",
            arg=[sel, old],
        )


def _tab(page, *names: str) -> None:
    for name in names:
        page.get_by_role("tab", name=name, exact=True).click()


def _painter(page, canvas: str):
    """pick(rgb) selects a brush colour, stroke(y, x0, x1) drags a horizontal line (fractions of the canvas's
    size, from its centre) in the ImageEditor ``canvas``."""
    page.locator(f"{canvas} button[aria-label=Brush]").click()

    def pick(rgb):
        page.locator(f"{canvas} button[aria-label=Color]").click()
        swatch = page.locator(f"{canvas} button[style*='background-color: rgb({rgb[0]}, {rgb[1]}, {rgb[2]})']")
        swatch.click()
        page.mouse.click(5, 5)  # the palette popover covers the canvas; a click outside closes it
        swatch.wait_for(state="detached")

    box = page.locator(f"{canvas} canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def stroke(y_frac, x0_frac=-0.2, x1_frac=0.2):  # the drawing area is narrower than the <canvas>: stay inside
        page.mouse.move(cx + x0_frac * box["width"], cy + y_frac * box["height"])
        page.mouse.down()
        for k in range(1, 5):  # few events: each one repaints the canvas, slow in software WebGL
            x = cx + (x0_frac + (x1_frac - x0_frac) * k / 4) * box["width"]
            page.mouse.move(x, cy + y_frac * box["height"])
        page.mouse.up()

    return pick, stroke


def test_page_loads_with_all_tabs(page):
    tabs = page.get_by_role("tab").all_inner_texts()
    for name in ("Segment", "Synthesize", "Edit", "Flow"):
        assert name in tabs
    assert "sky" in page.locator("#seg-legend").inner_text()


def test_segment_by_clicking(page, tmp_path):
    photo = tmp_path / "street.png"
    Image.open(EXAMPLES / "street_0_color.png").convert("RGB").resize((240, 180)).save(photo)
    _tab(page, "Segment")
    page.locator("#seg-input input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#seg-input img")  # the upload finished and shows the photo
    _click_and_wait(page, "#seg-run", "#seg-map img", "#seg-overlay img", "#seg-conf img")
    page.wait_for_selector("#seg-file a")  # the label-id PNG download link
    assert "share" in page.locator("#seg-legend").inner_text()
    label_map = _fetch_image(page, "#seg-map img")
    assert label_map.size == (240, 180)
    colours = {tuple(c) for c in np.asarray(label_map.convert("RGB")).reshape(-1, 3)}
    assert colours <= {tuple(c) for c in CAMVID_COLORS}
    _shot(page, "segment")


def test_synthesize_upload_by_clicking(page):
    _tab(page, "Synthesize", "Upload a mask")
    page.locator("#syn-input input[type=file]").set_input_files(str(EXAMPLES / "street_0.png"))
    page.wait_for_selector("#syn-input img")
    _click_and_wait(page, "#syn-run", "#syn-mask img", "#syn-gallery img")
    page.wait_for_function("document.querySelectorAll('#syn-gallery img').length >= 2")
    sample = _fetch_image(page, "#syn-gallery img")
    assert sample.size == (480, 360)
    _shot(page, "synthesize_upload")


def test_synthesize_paint_by_clicking(page):
    """Paint road and a car with the class brushes; unpainted canvas becomes the background class (sky)."""
    _tab(page, "Synthesize", "Paint a mask")
    canvas = "#syn-canvas"

    pick, stroke = _painter(page, canvas)
    pick(CAMVID_COLORS[3])  # road
    for y in (0.18, 0.24):
        stroke(y)
    pick(CAMVID_COLORS[8])  # car
    stroke(0.05, -0.08, 0.08)
    _click_and_wait(page, "#syn-canvas-run", "#syn-mask img", "#syn-gallery img")
    mask = np.asarray(_fetch_image(page, "#syn-mask img").convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(mask, axis=0, return_counts=True)
    found = {tuple(c): n / len(mask) for c, n in zip(colours, counts)}
    allowed = {tuple(CAMVID_COLORS[i]) for i in range(11)}
    assert set(found) <= allowed, f"unsnapped colours in the painted mask: {set(found) - allowed}"
    assert found.get(tuple(CAMVID_COLORS[0]), 0) > 0.3  # background class: sky
    assert found.get(tuple(CAMVID_COLORS[3]), 0) > 0.02  # the road strokes
    assert found.get(tuple(CAMVID_COLORS[8]), 0) > 0.002  # the car stroke
    _shot(page, "synthesize_paint")


def test_bad_upload_shows_readable_error(page, tmp_path):
    broken = tmp_path / "broken.png"
    full = tmp_path / "full.png"
    Image.open(EXAMPLES / "street_0_color.png").convert("RGB").save(full)
    broken.write_bytes(full.read_bytes()[:600])  # a truncated PNG: the browser may still show part of it
    _tab(page, "Segment")
    page.locator("#seg-input input[type=file]").set_input_files(str(broken))
    page.wait_for_timeout(500)
    page.click("#seg-run")
    toast = page.get_by_text("damaged or truncated")
    toast.first.wait_for()
    _shot(page, "error_toast")
    assert "Traceback" not in page.content()


def test_edit_by_clicking(page, tmp_path):
    """Photo -> predicted mask on the canvas -> paint a car on it -> a new photo with that layout."""
    photo = tmp_path / "street.png"
    Image.open(EXAMPLES / "street_2_color.png").convert("RGB").resize((240, 180)).save(photo)
    _tab(page, "Edit")
    page.locator("#edit-input input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#edit-input img")
    _click_and_wait(page, "#edit-predict", "#edit-photo img")
    page.wait_for_timeout(1000)  # the editor draws the predicted mask as its background
    pick, stroke = _painter(page, "#edit-canvas")
    pick(CAMVID_COLORS[8])  # car
    for y in (-0.03, 0.03):
        stroke(y, -0.12, 0.12)
    _click_and_wait(page, "#edit-run", "#edit-mask img")
    page.wait_for_function("document.querySelectorAll('#edit-gallery img').length >= 2")
    mask = np.asarray(_fetch_image(page, "#edit-mask img").convert("RGB"))
    assert mask.shape[:2] == (180, 240)
    car = (mask == np.asarray(CAMVID_COLORS[8], np.uint8)).all(-1)
    assert car[80:100, 100:140].mean() > 0.5, "the painted car is not in the mask"
    assert len(np.unique(mask.reshape(-1, 3), axis=0)) > 1  # the predicted layout is kept around it
    _shot(page, "edit")


def test_flow_by_clicking(page, tmp_path):
    photo = tmp_path / "street.png"
    Image.open(EXAMPLES / "street_3_color.png").convert("RGB").resize((240, 180)).save(photo)
    _tab(page, "Flow")
    page.locator("#flow-input input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#flow-input img")
    page.click("#flow-run")
    page.wait_for_function("document.querySelectorAll('#flow-forward img').length >= 9"
                           " && document.querySelectorAll('#flow-backward img').length >= 9")
    _shot(page, "flow")
