"""The Space in a real browser: Debian's Chromium driven by Playwright, clicking through the tabs.

Chromium comes from the system (``apt-get install chromium``), not from Playwright's own download, which
cannot work on a closed network. Without it they are skipped with the reason, or FAIL under
``SEMFLOW_REQUIRE_BROWSER=1`` as in ``.ci/run`` (``browser_gate.py``); if it cannot start, they FAIL with the reason.
Screenshots go to ``outputs/app-screenshots/`` (git-ignored), or to ``$SEMFLOW_SCREENSHOTS``.
Each test asserts what a user sees (issue 9): examples on every tab, errors that survive an example click,
colour previews of label-id masks, whole (uncropped) gallery images, Flow's end states in view, class names
next to the brush colours, live opacity typing, the model's name and domain, a complete and never stale legend,
consistent step numbers, and download names that fit a phone's width.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_fixtures import app_server, app_url, tiny_model_dir  # noqa: F401
from semflow_tiny import CAMVID_CLASSES, CAMVID_COLORS

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


def _seen(locator) -> np.ndarray:
    """What the user sees of an element: its screenshot as an RGB array."""
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB"))


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
            " && e.getAttribute('src') !== old && e.complete && e.naturalWidth > 0; }",
            arg=[sel, old],
        )


def _tab(page, *names: str) -> None:
    for name in names:
        page.get_by_role("tab", name=name, exact=True).click()


def _toasts(page) -> str:
    return " ".join(page.locator(".toast-body").all_inner_texts())


def _close_toasts(page) -> None:
    for btn in page.locator(".toast-close").all():
        try:
            btn.click(timeout=2000)
        except Exception:  # noqa: BLE001 - a toast may close itself meanwhile
            pass


def _painter(page, canvas: str):
    """pick(rgb) selects a brush colour, stroke(y, x0, x1) drags a horizontal line (fractions of the canvas's
    size, from its centre) in the ImageEditor ``canvas``."""
    page.locator(f"{canvas} button[aria-label=Brush]").click()

    def pick(rgb):
        page.locator(f"{canvas} button[aria-label=Color]").click()
        swatch = page.locator(f"{canvas} button[style*='background-color: rgb({rgb[0]}, {rgb[1]}, {rgb[2]})']")
        swatch.click()
        swatch.wait_for(state="detached")  # the palette closes by itself once a colour is picked (issue 9 item 7)

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


def _street_photo(path: Path, size=(240, 180), source="street_4_color.png") -> Path:
    Image.open(EXAMPLES / source).convert("RGB").resize(size).save(path)
    return path


# ------------------------------------------------------------------------------------------------------ tests
def test_page_loads_with_all_tabs_model_name_domain_and_limits(page, tiny_model_dir):  # noqa: F811
    tabs = page.get_by_role("tab").all_inner_texts()
    for name in ("Segment", "Synthesize", "Edit", "Flow"):
        assert name in tabs
    header = page.locator("#header").inner_text()
    assert Path(tiny_model_dir).name in header and tiny_model_dir not in header  # a name, not a server path
    assert "Domain" in header and "sky" in header
    limits = page.locator("#limits").inner_text()
    assert "25 MB" in limits and "100 network calls" in limits
    legend = page.locator("#seg-legend").inner_text()
    assert "sky" in legend and "void" in legend  # the legend says what black is


@pytest.mark.parametrize("tab, examples, target", [
    ("Segment", "#seg-examples", "#seg-input"),
    ("Edit", "#edit-examples", "#edit-input"),
    ("Flow", "#flow-examples", "#flow-input"),
    ("Synthesize", "#syn-examples", "#syn-input"),
])
def test_every_tab_has_clickable_examples(page, tab, examples, target):
    _tab(page, tab)
    items = page.locator(f"{examples} button.gallery-item")
    items.first.wait_for()
    assert items.count() >= 4
    page.wait_for_function(f"[...document.querySelectorAll('{examples} img')].every(i => i.complete && i.naturalWidth)")
    items.first.click()
    page.wait_for_selector(f"{target} img")


def test_segment_by_clicking(page, tmp_path):
    photo = _street_photo(tmp_path / "street.png")
    _tab(page, "Segment")
    page.locator("#seg-input input[type=file]").set_input_files(str(photo))
    page.wait_for_selector("#seg-input img")
    _click_and_wait(page, "#seg-run", "#seg-map img", "#seg-overlay img", "#seg-conf img")
    page.wait_for_selector("#seg-map a[download]")  # the label-id PNG download
    assert "share" in page.locator("#seg-legend").inner_text()
    label_map = _fetch_image(page, "#seg-map img")
    assert label_map.size == (240, 180)
    colours = {tuple(c) for c in np.asarray(label_map.convert("RGB")).reshape(-1, 3)}
    assert colours <= {tuple(c) for c in CAMVID_COLORS}
    _shot(page, "segment")


def test_typing_an_opacity_updates_the_overlay_at_once(page):
    """Issue 9 item 8: typed values apply without leaving the box."""
    before = _src(page, "#seg-overlay img")
    assert before, "run test_segment_by_clicking first"
    box = page.locator("#seg-opacity input[type=number]")
    box.click()
    box.fill("0.95")  # no blur, no Enter
    page.wait_for_function("old => { const e = document.querySelector('#seg-overlay img');"
                           " return e && e.getAttribute('src') !== old; }", arg=before)
    assert page.evaluate("document.activeElement === document.querySelector('#seg-opacity input[type=number]')")


def test_error_clears_the_stale_legend_and_results(page, tmp_path):
    """Issue 9 item 10: after an error no result of the previous photo stays on screen, the legend included."""
    _tab(page, "Segment")
    assert "share" in page.locator("#seg-legend").inner_text()  # the previous run's shares
    broken = tmp_path / "broken.png"
    broken.write_bytes(_street_photo(tmp_path / "full.png").read_bytes()[:600])  # a truncated PNG
    page.locator("#seg-input input[type=file]").set_input_files(str(broken))
    page.wait_for_timeout(500)
    page.click("#seg-run")
    page.get_by_text("damaged or truncated").first.wait_for()
    legend = page.locator("#seg-legend")
    assert "share" not in legend.inner_text() and "void" in legend.inner_text()
    assert page.locator("#seg-map img").count() == 0 and page.locator("#seg-overlay img").count() == 0
    assert legend.locator("text=Error").count() == 0  # no error badge over the legend
    _shot(page, "error_toast")
    assert "Traceback" not in page.content()
    _close_toasts(page)


def test_example_then_corrupt_upload_keeps_friendly_errors(page, tmp_path):
    """Issue 9 item 2: click an example, then upload a text file renamed .png: a readable message, twice."""
    _tab(page, "Synthesize", "Upload a mask")
    page.locator("#syn-examples button.gallery-item").first.click()
    page.wait_for_selector("#syn-input img")
    notes = tmp_path / "notes.png"
    notes.write_text("this is not an image")
    for _ in range(2):
        page.locator("#syn-input input[type=file]").set_input_files(str(notes))
        page.wait_for_timeout(800)
        page.click("#syn-run")
        page.get_by_text("is not an image file PIL can read").first.wait_for()
        assert "Refused" not in _toasts(page)
        _close_toasts(page)


def test_label_id_example_shows_in_colour_and_synthesizes(page):
    """Issue 9 items 4 and 5: label-id examples look like colour masks (thumbnail, input, preview); the gallery
    shows whole 4:3 images, not square crops."""
    _tab(page, "Synthesize", "Upload a mask")
    first = page.locator("#syn-examples button.gallery-item").first
    thumb = _seen(first.locator("img"))
    assert thumb.mean() > 40 and len(np.unique(thumb.reshape(-1, 3) // 32, axis=0)) >= 4, "black thumbnail"
    first.click()
    page.wait_for_selector("#syn-input img")
    page.wait_for_function("() => { const e = document.querySelector('#syn-preview img'); return e && e.complete"
                           " && e.naturalWidth > 0; }")
    shown = _seen(page.locator("#syn-input img"))
    assert shown.mean() > 40, "the label-id mask shows black in the input"
    preview = np.asarray(_fetch_image(page, "#syn-preview img").convert("RGB")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(preview, axis=0)} <= {tuple(c) for c in CAMVID_COLORS}
    _click_and_wait(page, "#syn-run", "#syn-mask img", "#syn-gallery img")
    page.wait_for_function("document.querySelectorAll('#syn-gallery img').length >= 2")
    assert _fetch_image(page, "#syn-gallery img").size == (480, 360)
    _assert_whole_images(page, "#syn-gallery")
    _shot(page, "synthesize_upload")


def _assert_whole_images(page, gallery: str) -> None:
    """Every thumbnail shows the whole picture: scaled to fit (object-fit contain), or boxed at its own ratio."""
    page.wait_for_function(f"[...document.querySelectorAll('{gallery} img')].every(i => i.complete && i.naturalWidth)")
    info = page.evaluate(f"""() => [...document.querySelectorAll('{gallery} img')].map(i => {{
        const r = i.getBoundingClientRect();
        return [getComputedStyle(i).objectFit, r.width / r.height, i.naturalWidth / i.naturalHeight]; }})""")
    assert info
    for fit, box_ratio, ratio in info:
        assert fit in ("contain", "scale-down") or abs(box_ratio - ratio) < 0.03, (fit, box_ratio, ratio)


def test_synthesize_paint_by_clicking(page):
    """Paint road and a car with the class brushes; unpainted canvas becomes the background class (sky).
    The brush palette names its classes (issue 9 item 7) and closes itself after a pick."""
    _tab(page, "Synthesize", "Paint a mask")
    canvas = "#syn-canvas"
    legend = page.locator("#syn-brush-legend").inner_text()
    assert all(name in legend for name in CAMVID_CLASSES)
    pick, stroke = _painter(page, canvas)
    page.locator(f"{canvas} button[aria-label=Color]").click()
    labels = page.evaluate(f"""() => [...document.querySelectorAll('{canvas} menu.swatch button.color')].map(
        b => getComputedStyle(b, '::after').content)""")
    assert labels[3] == '"3 road"' and labels[8] == '"8 car"', labels
    _shot(page, "synthesize_palette")
    page.mouse.click(5, 5)  # close it with a click outside
    page.locator(f"{canvas} menu.swatch").wait_for(state="detached")
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


def test_edit_by_clicking(page, tmp_path):
    """Photo -> predicted mask on the canvas -> paint a car on it -> a new photo with that layout; the page's
    steps 1, 2, 3 match its controls (issue 9 item 12)."""
    photo = _street_photo(tmp_path / "street.png", source="street_6_color.png")
    _tab(page, "Edit")
    text = page.locator("text=Upload a photo and predict its mask").inner_text()
    assert "1." in text and "2." in text and "3." in text
    assert page.locator("#edit-predict").inner_text().startswith("1.")
    assert page.locator("#edit-run").inner_text().startswith("3.")
    assert "2. Repaint" in page.locator("#edit-canvas").inner_text()
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
    _assert_whole_images(page, "#edit-gallery")
    _shot(page, "edit")


def test_flow_at_max_steps_keeps_both_ends_in_view(page):
    """Issue 9 item 6: at 25 steps the final mask (t=1) and photo (t=0) are shown, with no inner scroll."""
    _tab(page, "Flow")
    page.locator("#flow-examples button.gallery-item").first.click()
    page.wait_for_selector("#flow-input img")
    steps = page.locator("#flow-steps input[type=number]")
    steps.fill("25")
    steps.press("Enter")
    page.click("#flow-run")
    page.wait_for_function("document.querySelectorAll('#flow-forward img').length == 11"
                           " && document.querySelectorAll('#flow-backward img').length == 11")
    for gallery, last in (("#flow-forward", "t = 1.00"), ("#flow-backward", "t = 0.00")):
        _assert_whole_images(page, gallery)
        g = page.locator(gallery)
        assert g.get_by_text(last, exact=True).count() == 1
        cut = page.evaluate(f"""() => [...document.querySelectorAll('{gallery} *')].filter(
            e => e.scrollHeight > e.clientHeight + 2 && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY))
            .length""")
        assert cut == 0, f"{gallery} scrolls inside"
        gbox = g.bounding_box()
        lbox = g.locator("img").last.bounding_box()
        assert lbox["y"] + lbox["height"] <= gbox["y"] + gbox["height"] + 1, "the last frame is cut off"
    _shot(page, "flow")


def test_label_download_fits_a_phone_screen(browser, app_url, tmp_path):  # noqa: F811
    """Issue 9 item 12: at mobile width the label file keeps its whole name (it was cut to '.p') and its
    download button is on screen. The label map itself is the label-id PNG."""
    pg = browser.new_page(viewport={"width": 390, "height": 844})
    pg.set_default_timeout(TIMEOUT_MS)
    try:
        pg.goto(app_url, wait_until="domcontentloaded")
        pg.wait_for_selector("#seg-run")
        photo = _street_photo(tmp_path / "a_rather_long_street_photo_name.png", (96, 72))
        pg.locator("#seg-input input[type=file]").set_input_files(str(photo))
        pg.wait_for_selector("#seg-input img")
        pg.click("#seg-run")
        pg.wait_for_selector("#seg-map img")
        link = pg.locator("#seg-map a[download]")
        assert link.get_attribute("download") == "a_rather_long_street_photo_name_labels.png"
        button = link.locator("button").bounding_box()
        assert 0 <= button["x"] and button["x"] + button["width"] <= 390, button
        label = pg.locator("#seg-map label").bounding_box()
        assert label["x"] + label["width"] <= button["x"] + 1, "the label runs under the buttons"
        labels = Image.open(io.BytesIO(pg.request.get(link.get_attribute("href")).body()))
        assert labels.mode == "P" and labels.size == (96, 72) and np.asarray(labels).max() < len(CAMVID_CLASSES)
        assert "class ids" in pg.locator("#seg-map-note").inner_text()
        pg.locator("#seg-map").screenshot(path=str(SHOTS / "segment_label_map_mobile.png"))
    finally:
        pg.close()


def test_screenshots_of_every_tab(page):
    """Fresh screenshots of every tab, as the tests left them, for the closing note."""
    for name, tabs in (("tab_segment", ["Segment"]), ("tab_synthesize_upload", ["Synthesize", "Upload a mask"]),
                       ("tab_synthesize_paint", ["Synthesize", "Paint a mask"]), ("tab_edit", ["Edit"]),
                       ("tab_flow", ["Flow"])):
        _tab(page, *tabs)
        page.wait_for_timeout(500)
        assert _shot(page, name).stat().st_size > 10_000


# ------------------------------------------------------------------------------------------- issue 17 items 3-6
def test_a_new_upload_clears_the_previous_results(page, tmp_path):
    """Item 4: after a new photo, the previous label map, overlay, confidence, shares and warning are gone."""
    _tab(page, "Segment")
    page.locator("#seg-input input[type=file]").set_input_files(str(_street_photo(tmp_path / "a.png")))
    page.wait_for_selector("#seg-input img")
    _click_and_wait(page, "#seg-run", "#seg-map img", "#seg-overlay img", "#seg-conf img")
    assert "share" in page.locator("#seg-legend").inner_text()
    page.locator("#seg-input input[type=file]").set_input_files(
        str(_street_photo(tmp_path / "b.png", source="street_6_color.png")))
    page.wait_for_function("() => !document.querySelector('#seg-map img') && !document.querySelector('#seg-overlay img')"
                           " && !document.querySelector('#seg-conf img')")
    assert "share" not in page.locator("#seg-legend").inner_text()
    assert page.locator("#seg-note").inner_text().strip() == ""
    assert page.locator("#seg-map, #seg-overlay, #seg-conf").get_by_text("Error").count() == 0


def test_mask_uploads_get_immediate_feedback(page, tmp_path):
    """Item 6: a plain label-id PNG (looks black) is previewed in colour under the input with a note; a photo in
    the mask slot gets its message at once, before Synthesize is pressed."""
    _tab(page, "Synthesize", "Upload a mask")
    ids = tmp_path / "camvid_ids.png"
    Image.fromarray(np.asarray(Image.open(EXAMPLES / "street_1.png")).astype(np.uint8), mode="L").save(ids)
    old = _src(page, "#syn-preview img")  # an earlier test's preview may still show until the upload clears it
    page.locator("#syn-input input[type=file]").set_input_files(str(ids))
    page.wait_for_function("old => { const e = document.querySelector('#syn-preview img'); return e && e.complete"
                           " && e.naturalWidth > 0 && e.getAttribute('src') !== old; }", arg=old)
    assert "label-id" in page.locator("#syn-note").inner_text()
    preview = np.asarray(_fetch_image(page, "#syn-preview img").convert("RGB")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(preview, axis=0)} <= {tuple(c) for c in CAMVID_COLORS}
    assert preview.mean() > 40
    note = page.locator("#syn-note").bounding_box()
    inp = page.locator("#syn-input").bounding_box()
    assert 0 <= note["y"] - (inp["y"] + inp["height"]) < 80, "the note is not right under the mask input"
    photo = tmp_path / "photo.png"
    Image.open(EXAMPLES / "photo_0.png").save(photo)
    page.locator("#syn-input input[type=file]").set_input_files(str(photo))
    page.get_by_text("looks like a photo").first.wait_for()
    assert page.locator("#syn-preview img").count() == 0
    _shot(page, "synthesize_mask_feedback")


_OUTSIDE_JS = """(sel) => {
  // Elements matching sel that a user cannot see or reach: outside the page's width, or cut by an ancestor that
  // clips without a visible way to scroll (overflow hidden/clip), or inside a scroll box too small to show them.
  const W = document.documentElement.clientWidth, bad = [];
  for (const e of document.querySelectorAll(sel)) {
    const r = e.getBoundingClientRect();
    if (r.width < 2 || r.height < 2) { bad.push(['empty', e.outerHTML.slice(0, 80)]); continue; }
    if (r.left < -1 || r.right > W + 1) { bad.push(['off-page', Math.round(r.left), Math.round(r.right), W]); continue; }
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a), ar = a.getBoundingClientRect();
      const clips = ['hidden', 'clip'].includes(s.overflowX) || ['hidden', 'clip'].includes(s.overflowY);
      if (clips && (r.left < ar.left - 1 || r.right > ar.right + 1 || r.top < ar.top - 1 || r.bottom > ar.bottom + 1)) {
        bad.push(['clipped', a.className.toString().slice(0, 40)]); break; }
    }
  }
  return bad;
}"""


@pytest.mark.parametrize("width, height", [(390, 844), (1280, 900)])
def test_every_frame_sample_and_palette_entry_is_reachable(browser, app_url, width, height):  # noqa: F811
    """Items 3 and 5 at a phone's and a desktop's width: all Flow frames, all 8 samples and the whole brush palette
    inside the page (no clipping, no inner scroll box), captions under the pictures, canvas labels whole, and the
    results scrolled into view after pressing a run button. Screenshots of every tab before and after a run."""
    pg = browser.new_page(viewport={"width": width, "height": height})
    pg.set_default_timeout(TIMEOUT_MS)
    tag = f"w{width}"
    try:
        pg.goto(app_url, wait_until="domcontentloaded")
        pg.wait_for_selector("#seg-run")
        for name, tabs in (("segment", ["Segment"]), ("synthesize", ["Synthesize", "Upload a mask"]),
                           ("paint", ["Synthesize", "Paint a mask"]), ("edit", ["Edit"]), ("flow", ["Flow"])):
            _tab(pg, *tabs)
            pg.wait_for_timeout(300)
            _shot(pg, f"{tag}_{name}_before")
        # Flow: 8 steps -> 9 frames per direction
        _tab(pg, "Flow")
        pg.locator("#flow-examples button.gallery-item").first.click()
        pg.wait_for_selector("#flow-input img")
        steps = pg.locator("#flow-steps input[type=number]")
        steps.fill("8")
        steps.press("Enter")
        pg.click("#flow-run")
        pg.wait_for_function("document.querySelectorAll('#flow-forward img').length == 9"
                             " && document.querySelectorAll('#flow-backward img').length == 9")
        pg.wait_for_function("[...document.querySelectorAll('#flow-forward img, #flow-backward img')]"
                             ".every(i => i.complete && i.naturalWidth)")
        assert pg.evaluate(_OUTSIDE_JS, "#flow-forward img, #flow-backward img") == []
        _assert_captions_below(pg, "#flow-forward")
        _shot(pg, f"{tag}_flow_after")
        # Synthesize: 8 samples, results scrolled into view
        _tab(pg, "Synthesize", "Upload a mask")
        pg.locator("#syn-examples button.gallery-item").first.click()
        pg.wait_for_selector("#syn-input img")
        for sel, value in (("#syn-steps", "1"), ("#syn-n", "8")):
            box = pg.locator(f"{sel} input[type=number]")
            box.fill(value)
            box.press("Enter")
        pg.locator("#syn-run").scroll_into_view_if_needed()
        pg.click("#syn-run")
        pg.wait_for_function("document.querySelectorAll('#syn-gallery img').length == 8")
        pg.wait_for_function("[...document.querySelectorAll('#syn-gallery img')].every(i => i.complete && i.naturalWidth)")
        pg.wait_for_timeout(500)
        g = pg.locator("#syn-gallery").bounding_box()
        assert g["y"] < height and g["y"] + g["height"] > 0, "the samples are not scrolled into view"
        assert pg.evaluate(_OUTSIDE_JS, "#syn-gallery img") == []
        cut = pg.evaluate("""() => [...document.querySelectorAll('#syn-gallery *')].filter(e => e.scrollHeight >
            e.clientHeight + 2 && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY)).length""")
        assert cut == 0, "the samples scroll inside an inner box"
        _assert_captions_below(pg, "#syn-gallery")
        _shot(pg, f"{tag}_synthesize_after")
        # Segment: results scrolled into view
        _tab(pg, "Segment")
        pg.locator("#seg-examples button.gallery-item").first.click()
        pg.wait_for_selector("#seg-input img")
        pg.locator("#seg-run").scroll_into_view_if_needed()
        pg.click("#seg-run")
        pg.wait_for_selector("#seg-map img")
        pg.wait_for_timeout(500)
        m = pg.locator("#seg-map").bounding_box()
        assert m["y"] < height and m["y"] + m["height"] > 0, "the label map is not scrolled into view"
        _shot(pg, f"{tag}_segment_after")
        # Paint: the whole palette with its class names, and the canvas label
        _tab(pg, "Synthesize", "Paint a mask")
        pg.locator("#syn-canvas button[aria-label=Brush]").click()
        pg.locator("#syn-canvas button[aria-label=Color]").click()
        pg.wait_for_selector("#syn-canvas menu.swatch")
        assert pg.evaluate(_OUTSIDE_JS, "#syn-canvas menu.swatch, #syn-canvas menu.swatch button.color") == []
        menu = pg.locator("#syn-canvas menu.swatch").bounding_box()
        assert menu["x"] >= 0 and menu["x"] + menu["width"] <= width, menu
        label = pg.evaluate("""() => { const l = document.querySelector('#syn-canvas label');
            return l ? [l.scrollWidth, l.clientWidth] : [0, 0]; }""")
        assert label[0] <= label[1] + 1, f"the canvas label is cut: {label}"
        _assert_label_clear_of_toolbar(pg, "#syn-canvas")
        _shot(pg, f"{tag}_paint_palette")
        pg.mouse.click(2, 2)
        _tab(pg, "Edit")
        pg.locator("#edit-examples button.gallery-item").first.click()
        pg.wait_for_selector("#edit-input img")
        pg.click("#edit-predict")
        pg.wait_for_selector("#edit-photo img")
        _assert_label_clear_of_toolbar(pg, "#edit-canvas")
        _shot(pg, f"{tag}_edit_after")
        _tab(pg, "Synthesize", "Paint a mask")
        _shot(pg, f"{tag}_paint_after")
    finally:
        pg.close()


def _assert_label_clear_of_toolbar(pg, canvas: str) -> None:
    """The canvas's label is not covered by the editor's toolbar (zoom, undo, clear) at its top right."""
    label = pg.locator(f"{canvas} label").first.bounding_box()
    bar = pg.locator(f"{canvas} .top-panel").first.bounding_box()
    overlap = (label["x"] < bar["x"] + bar["width"] and bar["x"] < label["x"] + label["width"]
               and label["y"] < bar["y"] + bar["height"] and bar["y"] < label["y"] + label["height"])
    assert not overlap, f"the toolbar covers the canvas label: {label} {bar}"


def _assert_captions_below(pg, gallery: str) -> None:
    """No caption covers its picture (they used to sit over the bottom-right corner)."""
    overlaps = pg.evaluate(f"""() => [...document.querySelectorAll('{gallery} .thumbnail-item')].filter(t => {{
        const i = t.querySelector('img'), c = t.querySelector('.caption-label');
        if (!i || !c) return false;
        const a = i.getBoundingClientRect(), b = c.getBoundingClientRect();
        return b.top < a.bottom - 1 && b.bottom > a.top + 1 && b.left < a.right - 1 && b.right > a.left + 1; }}).length""")
    assert overlaps == 0, f"{overlaps} captions cover their pictures in {gallery}"


def test_a_canvas_edit_marks_the_samples_stale_without_clearing_them(page):
    """Item 4 for canvases: after a stroke, the samples made from the earlier canvas stay, dimmed under a note,
    until the next run. The editor sends its change event only after uploading a stroke, which under load can be
    after a run that used the stroke: that late event must neither clear the new samples nor mark them stale."""
    _tab(page, "Synthesize", "Paint a mask")
    for sel, value in (("#syn-steps", "1"), ("#syn-n", "2")):
        box = page.locator(f"{sel} input[type=number]")
        box.fill(value)
        box.press("Enter")
    pick, stroke = _painter(page, "#syn-canvas")
    pick(CAMVID_COLORS[3])  # road
    stroke(0.2)  # inside the drawing area, which is smaller than the <canvas>
    _click_and_wait(page, "#syn-canvas-run", "#syn-mask img", "#syn-gallery img")  # at once: the race
    page.wait_for_timeout(5000)  # room for the stroke's change event to land after the run
    assert page.locator("#syn-gallery img").count() == 2, "a late change event cleared the samples"
    assert page.locator("#syn-stale .stale-note").count() == 0, "samples of the canvas shown are marked stale"
    pick(CAMVID_COLORS[5])  # tree
    stroke(-0.15, -0.1, 0.1)
    page.locator("#syn-stale .stale-note").wait_for()
    assert "canvas has changed" in page.locator("#syn-stale").inner_text()
    assert page.locator("#syn-gallery img").count() == 2  # kept, for comparison
    assert float(page.evaluate("getComputedStyle(document.querySelector('#syn-gallery img')).opacity")) < 0.6
    _shot(page, "synthesize_stale")
    _click_and_wait(page, "#syn-canvas-run", "#syn-mask img", "#syn-gallery img")
    page.locator("#syn-stale .stale-note").wait_for(state="detached")
    page.wait_for_timeout(3000)
    assert page.locator("#syn-stale .stale-note").count() == 0 and page.locator("#syn-gallery img").count() == 2
