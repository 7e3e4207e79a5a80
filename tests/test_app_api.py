"""The Space through gradio_client: named endpoints, result sizes and types, bad input, concurrency."""

from __future__ import annotations

import concurrent.futures as cf
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_fixtures import app_server, app_url, tiny_model_dir  # noqa: F401
from semflow_tiny import CAMVID_CLASSES, CAMVID_COLORS
from space.examples import SEEDS, draw_street

EXAMPLES = Path(__file__).resolve().parents[1] / "space" / "examples"
K = len(CAMVID_CLASSES)
PALETTE = np.asarray(CAMVID_COLORS, np.uint8)


@pytest.fixture(scope="module")
def client(app_url):  # noqa: F811
    return Client(app_url, verbose=False)


def _photo(path: Path, size=(120, 90), mode="RGB") -> str:
    """A street-like picture: the colour-coded example layout, resized (any RGB picture would do)."""
    im = Image.open(EXAMPLES / "street_4_color.png").convert("RGB").resize(size, Image.BILINEAR)
    if mode == "I;16":
        arr = (np.asarray(im.convert("L")).astype(np.uint16) * 257)
        im = Image.fromarray(arr)  # uint16 -> mode "I;16"
        assert im.mode == "I;16"
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path)
    return str(path)


def _segment(client, path, steps=1, opacity=0.5):
    return client.predict(handle_file(str(path)), steps, opacity, api_name="/segment")


def test_api_lists_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/segment", "/synthesize", "/synthesize_canvas", "/flow"} <= names


def test_segment_returns_maps_at_input_size(client, tmp_path):
    label_map, overlay, conf, legend, note = _segment(client, _photo(tmp_path / "p.png", (121, 93)), steps=2)
    labels = Image.open(label_map)  # one file: class ids (palette indices) shown in the legend's colours
    assert labels.mode == "P" and labels.size == (121, 93) and Path(label_map).name == "p_labels.png"
    ids = np.asarray(labels)
    assert ids.max() < K
    for p in (overlay, conf):
        im = Image.open(p)
        assert im.size == (121, 93) and im.mode in ("RGB", "RGBA")
    # The colour map holds exactly the legend colours of the label ids.
    colors = np.asarray(labels.convert("RGB"))
    assert np.array_equal(colors, np.asarray(CAMVID_COLORS, np.uint8)[ids])
    assert "share" in legend and all(name in legend for name in CAMVID_CLASSES)
    assert "void" in legend and "#000000" in legend  # black in masks: the legend says what it is
    assert note == ""  # the tiny test model has no out-of-domain calibration: no warning


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16", "P", "CMYK"])
def test_segment_accepts_other_pixel_formats(client, tmp_path, mode):
    suffix = ".jpg" if mode == "CMYK" else ".png"
    label_png = _segment(client, _photo(tmp_path / f"p{suffix}", (64, 48), mode))[0]
    assert Image.open(label_png).size == (64, 48)


def test_segment_huge_image_result_at_input_size(client, tmp_path):
    # 12 megapixels: processed and shown at 1024 px, label ids returned at the input's size.
    path = tmp_path / "huge.png"
    Image.open(EXAMPLES / "street_5_color.png").convert("RGB").resize((4000, 3000), Image.NEAREST).save(path)
    label_map, overlay, conf, legend, note = _segment(client, path)
    assert Image.open(label_map).size == (4000, 3000)
    for p in (overlay, conf):
        assert Image.open(p).size == (1024, 768)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.png", b"this is not an image", "not an image"),
        ("empty.png", b"", "empty file"),
        ("truncated.png", None, "damaged or truncated"),
    ],
)
def test_bad_file_gives_error_and_app_keeps_serving(client, tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:  # a real PNG cut in half
        _photo(tmp_path / "full.png", (200, 150))
        data = (tmp_path / "full.png").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        _segment(client, path)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), 1, 0.05, 0, 1, api_name="/synthesize")
    # Still serving.
    label_png = _segment(client, _photo(tmp_path / "ok.png", (40, 30)))[0]
    assert Image.open(label_png).size == (40, 30)


def test_too_many_megapixels_is_refused(client, tmp_path):
    path = tmp_path / "giant.png"
    Image.new("L", (8000, 6000)).save(path)  # 48 MP, a few kB on disk
    with pytest.raises(AppError, match="megapixels"):
        _segment(client, path)


def test_synthesize_from_label_ids(client):
    assert Image.open(EXAMPLES / "street_0.png").mode == "P"  # label ids that also show in colour
    gallery, mask_used = client.predict(
        handle_file(str(EXAMPLES / "street_0.png")), 2, 0.05, 7, 3, api_name="/synthesize"
    )
    assert len(gallery) == 3
    for item in gallery:
        im = Image.open(item["image"])
        assert im.size == (480, 360) and im.mode == "RGB"
    ids = np.asarray(Image.open(EXAMPLES / "street_0.png"))
    assert np.array_equal(np.asarray(Image.open(mask_used).convert("RGB")), np.asarray(CAMVID_COLORS, np.uint8)[ids])


def test_synthesize_from_colour_mask_same_as_ids(client, tmp_path):
    ids = draw_street(SEEDS[2])
    Image.fromarray(ids, "L").save(tmp_path / "ids.png")  # plain 8-bit grayscale ids
    Image.fromarray(PALETTE[ids]).save(tmp_path / "rgb.png")  # the same layout, colour-coded
    pal = Image.fromarray(PALETTE[ids]).quantize(colors=16, method=Image.Quantize.FASTOCTREE)
    assert pal.mode == "P" and not np.array_equal(np.asarray(pal), ids)  # palette order != class ids
    pal.save(tmp_path / "pal.png")  # a colour mask saved as a palette PNG: read by its colours
    outs = [client.predict(handle_file(str(tmp_path / f)), 1, 0.05, 3, 1, api_name="/synthesize")
            for f in ("ids.png", "rgb.png", "pal.png")]
    first = np.asarray(Image.open(outs[0][0][0]["image"]))
    for gallery, mask_used in outs:
        assert np.array_equal(np.asarray(Image.open(gallery[0]["image"])), first)
        assert np.array_equal(np.asarray(Image.open(mask_used).convert("RGB")), PALETTE[ids])


def test_synthesize_seeds(client):
    def run(seed):
        g, _ = client.predict(handle_file(str(EXAMPLES / "street_1.png")), 1, 0.2, seed, 1, api_name="/synthesize")
        return np.asarray(Image.open(g[0]["image"]))

    assert np.array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_synthesize_bad_masks_name_the_problem(client, tmp_path):
    rgb = np.asarray(Image.open(EXAMPLES / "street_4_color.png").convert("RGB")).copy()
    rgb[:10, :10] = (255, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "magenta.png")
    with pytest.raises(AppError, match="#ff00ff"):
        client.predict(handle_file(str(tmp_path / "magenta.png")), 1, 0.05, 0, 1, api_name="/synthesize")

    ids = np.asarray(Image.open(EXAMPLES / "street_0.png")).copy()
    ids[0, 0] = 42
    Image.fromarray(ids, "L").save(tmp_path / "ids42.png")
    with pytest.raises(AppError, match="42"):
        client.predict(handle_file(str(tmp_path / "ids42.png")), 1, 0.05, 0, 1, api_name="/synthesize")

    with pytest.raises(AppError, match="Perturbation β must be between 0 and 0.42"):
        client.predict(handle_file(str(EXAMPLES / "street_0.png")), 1, 5.0, 0, 1, api_name="/synthesize")


def test_photo_uploaded_as_mask_says_so(client, tmp_path):
    photo = np.asarray(Image.open(EXAMPLES / "photo_0.png").convert("RGB"))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    with pytest.raises(AppError, match="looks like a photo, not a mask") as e:
        client.predict(handle_file(str(tmp_path / "photo.png")), 1, 0.05, 0, 1, api_name="/synthesize")
    assert "more" not in str(e.value) and "Paint a mask" in str(e.value)  # no list of 25000 colours; how to make one
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")  # a grayscale photo is not a label-id mask
    with pytest.raises(AppError, match="looks like a grayscale picture, not a label-id mask"):
        client.predict(handle_file(str(tmp_path / "gray.png")), 1, 0.05, 0, 1, api_name="/synthesize")


def _layer(path, size, strokes):
    """An RGBA paint layer: transparent, with filled rectangles of brush colours and an anti-aliased edge."""
    arr = np.zeros((size[1], size[0], 4), np.uint8)
    for (x0, y0, x1, y1), rgb in strokes:
        arr[y0:y1, x0:x1, :3] = rgb
        arr[y0:y1, x0:x1, 3] = 255
        arr[y1, x0:x1, :3] = rgb  # a half-transparent, slightly off-colour rim, as a browser brush leaves
        arr[y1, x0:x1, 3] = 140
        arr[y1 + 1, x0:x1, :3] = rgb
        arr[y1 + 1, x0:x1, 3] = 60
    Image.fromarray(arr, "RGBA").save(path)
    return handle_file(str(path))


def test_synthesize_canvas(client, tmp_path):
    road, car = CAMVID_COLORS[3], [66, 2, 125]  # the car stroke is near, not exactly, the car colour
    layer = _layer(tmp_path / "layer.png", (96, 72), [((0, 40, 96, 70), road), ((20, 30, 50, 45), car)])
    editor = {"background": None, "layers": [layer], "composite": layer, "id": None}
    gallery, mask_used = client.predict(editor, 1, 2, 0.05, 0, 2, api_name="/synthesize_canvas")
    assert len(gallery) == 2 and Image.open(gallery[0]["image"]).size == (96, 72)
    used = np.asarray(Image.open(mask_used).convert("RGB"))
    assert tuple(used[5, 5]) == tuple(CAMVID_COLORS[1])  # unpainted -> background class "building" (id 1)
    assert tuple(used[35, 30]) == tuple(CAMVID_COLORS[8])  # snapped to the car colour
    assert tuple(used[60, 80]) == tuple(CAMVID_COLORS[3])
    assert len({tuple(c) for c in used.reshape(-1, 3)}) == 3  # nothing but the three classes


def test_empty_canvas_is_an_error(client, tmp_path):
    layer = _layer(tmp_path / "blank.png", (96, 72), [])
    editor = {"background": None, "layers": [layer], "composite": layer, "id": None}
    with pytest.raises(AppError, match="canvas is empty"):
        client.predict(editor, 0, 1, 0.05, 0, 1, api_name="/synthesize_canvas")


def test_edit_predict_then_synthesize(client, tmp_path):
    editor, photo, note = client.predict(handle_file(_photo(tmp_path / "p.png", (80, 60))), 1, api_name="/edit_predict")  # note: the inline warning
    assert Image.open(editor["background"]).size == (80, 60)
    # The canvas is PNG, so the predicted mask's colours round-trip exactly.
    assert Image.open(editor["background"]).format == "PNG"
    editor = {"background": handle_file(editor["background"]), "layers": [], "composite": None, "id": None}
    gallery, _ = client.predict(editor, 1, 0.05, 0, 1, api_name="/edit_synthesize")
    assert Image.open(gallery[0]["image"]).size == (80, 60)


def test_flow_shows_every_state(client, tmp_path):
    forward, backward = client.predict(handle_file(_photo(tmp_path / "p.png", (64, 48))), 4, api_name="/flow")
    assert [g["caption"] for g in forward] == ["t = 0.00", "t = 0.25", "t = 0.50", "t = 0.75", "t = 1.00"]
    assert [g["caption"] for g in backward] == ["t = 1.00", "t = 0.75", "t = 0.50", "t = 0.25", "t = 0.00"]


def test_flow_at_max_steps_shows_bounded_frames_with_both_ends(client, tmp_path):
    forward, backward = client.predict(handle_file(_photo(tmp_path / "p.png", (64, 48))), 25, api_name="/flow")
    fc, bc = [g["caption"] for g in forward], [g["caption"] for g in backward]
    assert len(fc) == len(bc) == 11  # MAX_FLOW_FRAMES, evenly spaced over the 26 states
    assert fc[0] == "t = 0.00" and fc[-1] == "t = 1.00" and bc[0] == "t = 1.00" and bc[-1] == "t = 0.00"
    assert fc == sorted(fc) and len(set(fc)) == 11


def test_twenty_concurrent_requests_all_complete(app_url, tmp_path):  # noqa: F811
    photo = _photo(tmp_path / "p.png", (96, 72))
    mask = str(EXAMPLES / "street_3.png")

    def one(i):
        c = Client(app_url, verbose=False)  # separate clients = separate sessions, as 20 users would be
        if i % 2:
            label_png = c.predict(handle_file(photo), 1, 0.5, api_name="/segment")[0]
            return Image.open(label_png).size
        gallery, _ = c.predict(handle_file(mask), 1, 0.05, i, 1, api_name="/synthesize")
        return Image.open(gallery[0]["image"]).size

    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=20) as pool:
        sizes = list(pool.map(one, range(20), timeout=180))
    assert sizes == [(480, 360) if i % 2 == 0 else (96, 72) for i in range(20)]
    assert time.time() - t0 < 180


def test_models_with_more_than_256_ids_get_a_16_bit_label_file(tmp_path):
    """The label map is a palette PNG of ids up to 256 ids; beyond, a 16-bit label-id PNG comes as an extra output."""
    import shutil
    import uuid

    import torch
    from diffusers import UNet2DModel
    from gradio.utils import get_upload_folder

    from semflow_pipeline import AnchorCodec, SemFlowPipeline, SemFlowScheduler
    from space import build_demo

    k = 300
    torch.manual_seed(0)
    c = AnchorCodec("simplex", k).num_channels
    unet = UNet2DModel(sample_size=16, in_channels=c, out_channels=2 * c, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = SemFlowPipeline(unet=unet, scheduler=SemFlowScheduler(prediction_type="endpoints"),
                           id2label={str(i): f"c{i}" for i in range(k)}, default_processing_resolution=16)
    demo = build_demo(pipe, warmup=False)
    segment = next(f.fn for f in demo.fns.values() if f.api_name == "segment")
    folder = Path(get_upload_folder()) / f"semflow-test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    try:
        photo = _photo(folder / "p.png", (40, 30))
        demo.upload_file_set.add(photo)  # as gradio's upload route records it
        out = segment({"path": photo, "orig_name": "p.png"}, 1, 0.5, progress=None)
        assert len(out) == 7
        label_map, label_file = Image.open(out[0]), Image.open(out[6])
        assert label_map.mode == "RGB" and label_file.size == (40, 30) and label_file.mode.startswith("I")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
