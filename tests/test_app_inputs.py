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
from space.examples import SEEDS, draw_street
from space.inputs import (InputError, editor_to_ids, load_mask_file, load_photo, load_photo_fitted,
                          snap_to_palette)

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


def test_load_mask_file_palette_pngs_and_size_bound(tmp_path):
    full = np.asarray(CAMVID_COLORS, np.uint8)
    ids = draw_street(SEEDS[0])
    # Palette PNG, index = class id, palette = label colours (the examples): ids either way.
    im = Image.fromarray(ids, "P")
    im.putpalette(full.ravel().tolist())
    im.save(tmp_path / "p.png")
    kind, arr = load_mask_file(str(tmp_path / "p.png"), label_colors=full)
    assert kind == "colors" and np.array_equal(arr, full[ids])
    # A colour mask saved as a palette PNG in another order: read by its colours (issue 10 item 4).
    q = Image.fromarray(full[ids]).quantize(colors=16, method=Image.Quantize.FASTOCTREE)
    q.save(tmp_path / "q.png")
    kind, arr = load_mask_file(str(tmp_path / "q.png"), label_colors=full)
    assert kind == "colors" and np.array_equal(arr, full[ids])
    # A palette PNG whose palette is not the label colours (e.g. a grey ramp): its indices are the ids.
    g = Image.fromarray(ids, "P")
    g.putpalette([v for i in range(256) for v in (i, i, i)])
    g.save(tmp_path / "g.png")
    kind, arr = load_mask_file(str(tmp_path / "g.png"), label_colors=full)
    assert kind == "ids" and np.array_equal(arr, ids)
    # Large masks are reduced by nearest neighbour: only existing ids, at most max_side.
    Image.fromarray(ids).resize((4800, 3600), Image.NEAREST).save(tmp_path / "big.png")
    kind, arr = load_mask_file(str(tmp_path / "big.png"), max_side=1024)
    assert arr.shape == (768, 1024) and set(np.unique(arr)) <= set(np.unique(ids))


def test_load_photo_fitted_reduces_early_and_keeps_the_upright_size(tmp_path):
    arr = np.zeros((3000, 4000, 3), np.uint8)
    arr[:, :2000] = (250, 10, 10)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=90)
    im, size = load_photo_fitted(str(tmp_path / "big.jpg"), 1024)
    assert size == (4000, 3000) and im.size == (1024, 768) and im.mode == "RGB"
    assert np.asarray(im)[10, 10, 0] > 200 and np.asarray(im)[10, -10, 0] < 50
    # EXIF orientation 6 (rotate 90° clockwise to view): the upright size swaps.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr[:300, :400]).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    im, size = load_photo_fitted(str(tmp_path / "rot.jpg"), 1024)
    assert size == (300, 400) and im.size == (300, 400)
    for w, h in ((3000, 2000), (4500, 3000)):  # reduction by 2 and by 4 (16-bit images cannot use reduce())
        Image.fromarray((np.arange(w * h) % 65536).astype(np.uint16).reshape(h, w)).save(tmp_path / "w16.png")
        im, size = load_photo_fitted(str(tmp_path / "w16.png"), 1024)
        assert size == (w, h) and im.size == (1024, round(1024 * h / w)) and im.mode == "RGB"
    # A palette image with transparency, reduced before it is made RGB.
    p = Image.fromarray((np.arange(3000 * 4000) % 7).astype(np.uint8).reshape(3000, 4000), "P")
    p.putpalette([v for i in range(256) for v in (i * 30 % 256, 0, 0)])
    p.save(tmp_path / "pal.png", transparency=0)
    im, size = load_photo_fitted(str(tmp_path / "pal.png"), 1024)
    assert size == (4000, 3000) and im.size == (1024, 768) and im.mode == "RGB"


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
    for f in ("street_0.png", "street_4_color.png"):
        assert (ROOT / "space" / "examples" / f).stat().st_size < 50_000


def test_examples_are_made_by_the_project(tmp_path, tiny_model_dir):  # noqa: F811
    """`python -m space.examples` draws the committed masks exactly (from the seeds in examples.json), ranks
    candidate photos of any SemFlow model by round-trip agreement, and writes the same files (issue 17 item 2)."""
    import json

    from space.examples import CAMVID_COLORS as COLORS
    from space.examples import MANIFEST, main
    from space.model import SpaceModel

    committed = ROOT / "space" / "examples"
    full = np.asarray(COLORS, np.uint8)
    if (committed / MANIFEST).is_file():  # examples made by ranking round-trips: their seeds are in the manifest
        shipped_seeds = {ex["mask"]: ex["layout_seed"] for ex in json.loads((committed / MANIFEST).read_text())["examples"]}
    else:  # examples made before the ranking (issue 17 item 2): the fixed SEEDS
        from space.examples import COLOR_LAYOUTS, ID_LAYOUTS

        shipped_seeds = {**{f"street_{i}.png": SEEDS[i] for i in ID_LAYOUTS},
                         **{f"street_{i}_color.png": SEEDS[i] for i in COLOR_LAYOUTS}}
    for name, seed in shipped_seeds.items():
        shipped = Image.open(committed / name)
        assert np.array_equal(np.asarray(shipped.convert("RGB")), full[draw_street(seed)]), name
    assert len(list(committed.glob("photo_*.png"))) == 4  # Segment, Edit and Flow have examples
    main(["--model", tiny_model_dir, "--out", str(tmp_path / "tiny"), "--candidates", "8", "--seeds-per-layout", "1"])
    made = sorted(q.name for q in (tmp_path / "tiny").glob("*"))
    assert made == sorted([q.name for q in committed.glob("*.png")] + [MANIFEST])
    tiny = json.loads((tmp_path / "tiny" / MANIFEST).read_text())
    agreements = [r["agreement"] for r in tiny["candidates"]]
    assert len(agreements) == 8 and agreements == sorted(agreements, reverse=True)  # best round-trips first
    m = SpaceModel(tiny_model_dir)  # each photo is that model's synthesis of its layout, with its defaults
    ex = tiny["examples"][1]
    again = m.synthesize(draw_street(ex["layout_seed"]).astype(np.int64), m.synthesis_steps,
                         m.synthesis_perturbation, 1, seed=ex["synthesis_seed"])[ex["sample"]]
    assert np.array_equal(np.asarray(again), np.asarray(Image.open(tmp_path / "tiny" / ex["photo"])))


def test_examples_are_not_dataset_files():
    data = ROOT.parent / "shared" / "datasets" / "camvid"
    if not data.is_dir():
        pytest.skip("no CamVid folder to compare with")
    import hashlib

    ours = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (ROOT / "space" / "examples").glob("*.png")}
    for p in data.rglob("*.png"):
        assert hashlib.sha256(p.read_bytes()).hexdigest() not in ours, p


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
    photo = Image.open(ROOT / "space" / "examples" / "photo_0.png").convert("RGB")
    seg = model.segment(photo, 1)
    assert seg.labels.shape == (360, 480)
    images = model.synthesize(draw_street(1), 2, 0.05, 1, 0)
    assert images[0].size == (480, 360)


@pytest.mark.skipif(not (ROOT / "checkpoints" / "semflow-camvid").is_dir(),
                    reason="checkpoints/semflow-camvid not shipped yet (training issue)")
def test_app_runs_the_unet_channels_last_with_the_same_labels():
    """The app keeps the UNet's weights channels_last (faster oneDNN convolutions on CPU) and that must not change
    what it answers: the same labels as the weights in the default memory format."""
    import torch

    from space import SpaceModel

    fast = SpaceModel(str(ROOT / "checkpoints" / "semflow-camvid"))
    assert fast.pipe.unet.encoder.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not fast.pipe.unet.encoder.stem.weight.is_contiguous()
    plain = SpaceModel(str(ROOT / "checkpoints" / "semflow-camvid"))
    plain.pipe.unet.to(memory_format=torch.contiguous_format)
    photo = Image.open(ROOT / "space" / "examples" / "photo_0.png").convert("RGB")
    a, b = fast.segment(photo, 1), plain.segment(photo, 1)
    assert (a.labels == b.labels).mean() > 0.999
    assert np.abs(a.confidence - b.confidence).max() < 1e-3
