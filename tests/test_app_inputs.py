"""The Space's input handling without a server (space.inputs), the example drawer, and app.py's entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_fixtures import free_port, tiny_model_dir  # noqa: F401
from semflow_tiny import CAMVID_COLORS
from space.examples import draw_street
from space.inputs import InputError, editor_to_ids, load_mask_file, load_photo, snap_to_palette

ROOT = Path(__file__).resolve().parents[1]
PALETTE = np.asarray(CAMVID_COLORS[:11], np.uint8)


def test_load_photo_normalises_pixel_formats(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :3, 3] = 255  # left half opaque red, right half transparent -> white, as a viewer shows it
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    im = load_photo(str(tmp_path / "a.png"))
    assert im.mode == "RGB" and im.size == (6, 4)
    assert tuple(np.asarray(im)[0, 0]) == (200, 0, 0) and tuple(np.asarray(im)[0, 5]) == (255, 255, 255)

    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "w16.png")  # 16-bit white
    assert np.asarray(load_photo(str(tmp_path / "w16.png"))).min() == 255
    Image.fromarray(np.full((4, 6), 4096, np.uint16)).save(tmp_path / "d16.png")  # a dark 16-bit photo stays dark
    assert np.asarray(load_photo(str(tmp_path / "d16.png"))).max() == 16

    Image.new("L", (6, 4), 77).save(tmp_path / "g.png")
    assert np.asarray(load_photo(str(tmp_path / "g.png"))).tolist()[0][0] == [77, 77, 77]


def test_load_photo_errors(tmp_path):
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(InputError, match="not an image"):
        load_photo(str(tmp_path / "t.png"))
    with pytest.raises(InputError, match="No image"):
        load_photo(None)
    Image.new("L", (9000, 5000)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="45 megapixels"):
        load_photo(str(tmp_path / "big.png"))


def test_load_mask_file_kinds(tmp_path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(ids).save(tmp_path / "ids.png")
    kind, arr = load_mask_file(str(tmp_path / "ids.png"))
    assert kind == "ids" and np.array_equal(arr, ids)
    Image.fromarray(ids.astype(np.uint16) * 1000).save(tmp_path / "ids16.png")  # 16-bit ids stay ids
    kind, arr = load_mask_file(str(tmp_path / "ids16.png"))
    assert kind == "ids" and arr.max() == 11000
    Image.fromarray(PALETTE[ids % 11]).save(tmp_path / "c.png")
    kind, arr = load_mask_file(str(tmp_path / "c.png"))
    assert kind == "colors" and arr.shape == (3, 4, 3)


def test_snap_to_palette_picks_nearest():
    rgb = np.array([[[130, 62, 126], [0, 0, 0], [255, 255, 255]]], np.uint8)
    assert snap_to_palette(rgb, PALETTE).tolist() == [[3, 9, 2]]  # road; black -> pedestrian (64,64,0); white -> pole


def _rgba(h, w):
    return np.zeros((h, w, 4), np.uint8)


def test_editor_to_ids_layers_background_and_empty():
    layer = _rgba(10, 12)
    layer[5:, :, :3] = (126, 66, 130)  # near road
    layer[5:, :, 3] = 255
    layer[4, :, :3] = (40, 200, 40)  # anti-aliased rim, mostly transparent: unpainted
    layer[4, :, 3] = 60
    white = np.full((10, 12, 4), 255, np.uint8)  # the editor's blank canvas
    ids = editor_to_ids({"background": white, "layers": [layer], "composite": None}, PALETTE, background_class=1)
    assert (ids[:5] == 1).all() and (ids[5:] == 3).all()

    mask_bg = np.concatenate([PALETTE[np.full((10, 12), 8)], np.full((10, 12, 1), 255, np.uint8)], axis=-1)
    ids = editor_to_ids({"background": mask_bg, "layers": [layer], "composite": None}, PALETTE, background_class=1)
    assert (ids[:5] == 8).all() and (ids[5:] == 3).all()  # an opaque mask background is kept, then painted on
    ids = editor_to_ids({"background": mask_bg, "layers": [], "composite": None}, PALETTE, 0)
    assert (ids == 8).all()  # an untouched predicted mask is a valid mask

    for empty in (None, {}, {"background": white, "layers": [_rgba(10, 12)], "composite": white},
                  {"background": None, "layers": [], "composite": None}):
        with pytest.raises(InputError, match="canvas is empty"):
            editor_to_ids(empty, PALETTE, 0)


def test_drawn_examples_are_street_layouts():
    ids = draw_street(3)
    assert ids.shape == (360, 480) and ids.max() <= 10
    assert np.bincount(ids[:20].ravel()).argmax() in (0, 1)  # sky or buildings on top
    assert np.bincount(ids[-20:].ravel()).argmax() in (3, 4)  # road or pavement at the bottom
    for f in ("street_0.png", "street_0_color.png"):
        assert (ROOT / "space" / "examples" / f).stat().st_size < 50_000


def test_app_py_missing_default_model_is_a_clear_error(tmp_path):
    env = {**os.environ, "SEMFLOW_MODEL": str(tmp_path / "nope")}
    r = subprocess.run([sys.executable, str(ROOT / "app.py")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Model folder not found" in r.stderr and "Traceback" not in r.stderr


def test_python_app_py_serves_the_page(tiny_model_dir):  # noqa: F811
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--model", tiny_model_dir, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, html = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert html is not None, f"app.py did not serve the page: {proc.stdout.read() if proc.poll() is not None else ''}"
        assert "SemFlow" in html
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(not (ROOT / "checkpoints" / "semflow-camvid").is_dir(),
                    reason="checkpoints/semflow-camvid not shipped yet (training issue)")
def test_shipped_checkpoint_runs_in_the_app():
    from space import SpaceModel

    model = SpaceModel(str(ROOT / "checkpoints" / "semflow-camvid"))
    assert model.class_names[:4] == ["sky", "building", "pole", "road"]
    photo = Image.open(ROOT / "space" / "examples" / "street_0_color.png").convert("RGB")
    seg = model.segment(photo, 1)
    assert seg.labels.shape == (360, 480)
    images = model.synthesize(draw_street(1), 2, 0.05, 1, 0)
    assert images[0].size == (480, 360)
