"""Issue 10, library and CLI side: bounded cost per call (item 2), Hub ids in the CLI (3), no silent wrong
segmentation from bad inputs (4), no silent overwrite of CLI outputs (8). Tiny pipelines, tiny images."""

import os

import numpy as np
import PIL.Image
import pytest
import torch

from semflow_pipeline import SemFlowPipeline
from semflow_pipeline import cli
from semflow_pipeline.cli import main
from semflow_tiny import CAMVID_COLORS, tiny_pixel_pipeline


@pytest.fixture(scope="module")
def pipe():
    return tiny_pixel_pipeline()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_pixel_pipeline().save_pretrained(path)
    return path


def _photo(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------- item 2: bounded cost per call
def test_cost_bounds_are_documented_class_attributes():
    assert SemFlowPipeline.max_processing_resolution == 2048
    assert SemFlowPipeline.max_num_inference_steps == 100
    assert SemFlowPipeline.max_num_images_per_mask == 32


@pytest.mark.parametrize("call,match", [
    (lambda p: p.segment(_photo(), processing_resolution=4000), r"processing_resolution`=4000 .*limit of 2048"),
    (lambda p: p.synthesize(np.zeros((8, 8), np.int64), processing_resolution=4000), "max_processing_resolution"),
    (lambda p: p.segment(_photo(), num_inference_steps=1000), r"num_inference_steps`=1000 .*limit of 100"),
    (lambda p: p.synthesize(np.zeros((8, 8), np.int64), num_inference_steps=101), "max_num_inference_steps = 101"),
    (lambda p: p.synthesize(np.zeros((8, 8), np.int64), num_images_per_mask=1000), "max_num_images_per_mask"),
], ids=["segment-resolution", "synthesize-resolution", "segment-steps", "synthesize-steps", "samples"])
def test_requests_above_the_bounds_raise_before_any_work(pipe, call, match):
    with pytest.raises(ValueError, match=match):
        call(pipe)


def test_bounds_can_be_raised_deliberately_per_pipeline():
    p = tiny_pixel_pipeline()
    p.max_processing_resolution = 48
    with pytest.raises(ValueError, match="max_processing_resolution = 64"):
        p.segment(_photo(), processing_resolution=64)
    # Native processing (0) is bounded by the input's own size.
    with pytest.raises(ValueError, match=r"processing_resolution=0` \(native\) on a 60x50 input"):
        p.segment(_photo(50, 60), processing_resolution=0)
    assert p.segment(_photo(), processing_resolution=0).labels.shape == (1, 30, 40)
    p.max_processing_resolution = None  # unbounded
    assert p.segment(_photo(), processing_resolution=64).labels.shape == (1, 30, 40)
    p.max_num_inference_steps = 2
    with pytest.raises(ValueError, match="num_inference_steps"):
        p.segment(_photo(), num_inference_steps=3)
    assert SemFlowPipeline.max_num_inference_steps == 100  # the instance's bound, not the class's


def test_a_config_default_above_a_bound_still_works():
    p = tiny_pixel_pipeline()
    p.register_to_config(default_num_inference_steps=3)
    p.max_num_inference_steps = 1
    assert p.segment(_photo()).labels.shape == (1, 30, 40)  # the model's own default is allowed
    with pytest.raises(ValueError):
        p.segment(_photo(), num_inference_steps=4)


def test_cli_works_on_a_reduced_copy_of_huge_inputs(model_dir, tmp_path, monkeypatch):
    """Huge files are downscaled before the model and the outputs brought back to the input's size, so the cost
    stays that of MAX_MODEL_INPUT_PIXELS (a 24 MP photo: 3.3 -> 1.05 GB peak RSS with the shipped model)."""
    monkeypatch.setattr(cli, "MAX_MODEL_INPUT_PIXELS", 300)
    seen = []
    segment, synthesize = SemFlowPipeline.segment, SemFlowPipeline.synthesize

    def spy_segment(self, image, **kw):
        seen.append(("segment", image.size))
        return segment(self, image, **kw)

    def spy_synthesize(self, mask, **kw):
        seen.append(("synthesize", mask.size))
        return synthesize(self, mask, **kw)

    monkeypatch.setattr(SemFlowPipeline, "segment", spy_segment)
    monkeypatch.setattr(SemFlowPipeline, "synthesize", spy_synthesize)
    PIL.Image.fromarray(_photo()).save(tmp_path / "photo.png")
    labels = np.zeros((30, 40), np.uint8)
    labels[:, 20:] = 3
    labels[10:20, 5:15] = 8
    PIL.Image.fromarray(labels).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "photo.png"), "-o", str(out), "--model", str(model_dir),
                 "--save-confidence"]) == 0
    assert main(["synthesize", str(tmp_path / "mask.png"), "-o", str(out), "--model", str(model_dir),
                 "--num-samples", "2"]) == 0
    assert [k for k, _ in seen] == ["segment", "synthesize"]
    assert all(w * h <= 300 for _, (w, h) in seen)
    for name in ("photo_labels", "photo_color", "photo_confidence", "mask_sample0", "mask_sample1"):
        assert PIL.Image.open(out / f"{name}.png").size == (40, 30)
    # Colours are the nearest-upscaled colour map of the labels (identical to colouring the upscaled labels).
    ids = np.asarray(PIL.Image.open(out / "photo_labels.png"))
    p = SemFlowPipeline.from_pretrained(model_dir)
    assert np.array_equal(np.asarray(PIL.Image.open(out / "photo_color.png")), p.colorize(ids))


def test_cli_small_inputs_give_exactly_the_pipeline_results(model_dir, tmp_path):
    PIL.Image.fromarray(_photo()).save(tmp_path / "photo.png")
    assert main(["segment", str(tmp_path / "photo.png"), "-o", str(tmp_path / "o"), "--model", str(model_dir)]) == 0
    p = SemFlowPipeline.from_pretrained(model_dir)
    p.set_progress_bar_config(disable=True)
    expected = p.segment(PIL.Image.open(tmp_path / "photo.png")).labels[0]
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "o" / "photo_labels.png")), expected)


def test_cli_steps_above_the_bound_are_refused_with_a_clear_message(model_dir, tmp_path):
    # Refused once, before the model is loaded (issue 17 item 10), rather than on every file.
    PIL.Image.fromarray(_photo()).save(tmp_path / "photo.png")
    with pytest.raises(SystemExit, match="max_num_inference_steps"):
        main(["segment", str(tmp_path / "photo.png"), "-o", str(tmp_path / "o"), "--model", str(model_dir),
              "--num-inference-steps", "100000"])
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ item 3: Hub ids in the CLI
@pytest.fixture
def record_loads(monkeypatch):
    loaded = []

    def fake_from_pretrained(cls, name, **kw):
        loaded.append(str(name))
        return tiny_pixel_pipeline()

    monkeypatch.setattr(SemFlowPipeline, "from_pretrained", classmethod(fake_from_pretrained))
    return loaded


def test_cli_accepts_hub_repo_ids(record_loads, tmp_path, monkeypatch):
    PIL.Image.fromarray(_photo()).save(tmp_path / "p.png")
    assert main(["segment", str(tmp_path / "p.png"), "-o", str(tmp_path / "o1"), "--model", "user/semflow-camvid"]) == 0
    monkeypatch.setenv("SEMFLOW_MODEL", "someone/semflow-x")
    assert main(["segment", str(tmp_path / "p.png"), "-o", str(tmp_path / "o2")]) == 0
    assert record_loads == ["user/semflow-camvid", "someone/semflow-x"]


@pytest.mark.parametrize("model", ["./missing-model", "../missing/model", "/abs/missing/model", "a/b/c",
                                   "~/missing-semflow-model", "not a repo!"],
                         ids=["dot", "dotdot", "absolute", "three-parts", "home", "invalid-id"])
def test_cli_local_looking_missing_models_are_missing_folders(record_loads, tmp_path, model):
    PIL.Image.fromarray(_photo()).save(tmp_path / "p.png")
    with pytest.raises(SystemExit, match="model folder not found"):
        main(["segment", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), "--model", model])
    assert record_loads == []


def test_cli_model_path_that_is_a_file_is_refused(record_loads, tmp_path):
    PIL.Image.fromarray(_photo()).save(tmp_path / "p.png")
    with pytest.raises(SystemExit, match="is a file, not a pipeline folder"):
        main(["segment", str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "p.png")])


def test_cli_existing_relative_folder_is_a_folder_not_a_hub_id(record_loads, tmp_path, monkeypatch):
    (tmp_path / "user" / "repo").mkdir(parents=True)  # a folder that looks like a repo id wins
    PIL.Image.fromarray(_photo()).save(tmp_path / "p.png")
    monkeypatch.chdir(tmp_path)
    assert main(["segment", "p.png", "-o", "o", "--model", "user/repo"]) == 0
    assert record_loads == ["user/repo"] and os.path.isdir(record_loads[0])


# ---------------------------------------------------------------------------- item 4: no silent wrong results
def test_non_finite_images_raise(pipe):
    img = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    img[3, 3, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite value"):
        pipe.segment(img)
    with pytest.raises(ValueError, match="non-finite"):
        pipe.segment(torch.full((3, 8, 8), float("inf")))
    with pytest.raises(ValueError, match="non-finite"):
        pipe.segment(PIL.Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F"))
    with pytest.raises(ValueError, match="non-finite"):
        pipe.overlay(img, np.zeros((30, 40), np.int64))


def test_float_images_on_the_wrong_scale_raise_and_name_the_fix(pipe):
    img = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="divide by 255"):
        pipe.segment(img * 255)
    with pytest.raises(ValueError, match="divide by 255"):
        pipe.segment(torch.from_numpy(img * 255).permute(2, 0, 1))
    with pytest.raises(ValueError, match="divide by 65535"):
        pipe.segment(img * 65535)
    with pytest.raises(ValueError, match=r"\(image \+ 1\) / 2"):
        pipe.segment(img * 2 - 1)
    # Slight excursions (resampling overshoot) and the valid range pass.
    assert pipe.segment(np.clip(img * 1.2 - 0.1, -0.2, 1.2)).labels.shape == (1, 30, 40)
    assert pipe.segment((img * 255).astype(np.uint8)).labels.shape == (1, 30, 40)


def _layout():
    lab = np.zeros((30, 40), np.int64)
    lab[10:] = 1
    lab[20:] = 3
    lab[22:28, 10:30] = 8
    lab[:3, :5] = 11  # void
    return lab


def test_palette_png_in_the_display_colours_is_read_as_colours(pipe, tmp_path):
    lab = _layout()
    rgb = np.asarray(CAMVID_COLORS, np.uint8)[lab]
    # As image editors save it: an adaptive palette whose indices have nothing to do with class ids.
    PIL.Image.fromarray(rgb).convert("P", palette=PIL.Image.ADAPTIVE, colors=16).save(tmp_path / "colour_p.png")
    im = PIL.Image.open(tmp_path / "colour_p.png")
    assert im.mode == "P"
    np.testing.assert_array_equal(pipe._to_label_map(im).numpy(), lab)
    assert len(pipe.synthesize(im, output_type="np").images) == 1


def test_palette_png_with_class_id_indices_stays_ids(pipe, tmp_path):
    lab = _layout()
    # A label-id PNG with the Pascal VOC colormap (index i -> VOC colour i), as many tools save them.
    voc = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        voc += [r, g, b]
    im = PIL.Image.frombytes("P", (40, 30), lab.astype(np.uint8).tobytes())
    im.putpalette(voc)
    im.save(tmp_path / "ids_voc.png")
    np.testing.assert_array_equal(pipe._to_label_map(PIL.Image.open(tmp_path / "ids_voc.png")).numpy(), lab)
    # Indices whose palette is the display colours themselves: both readings agree.
    im.putpalette(np.asarray(CAMVID_COLORS, np.uint8).ravel().tolist())
    np.testing.assert_array_equal(pipe._to_label_map(im).numpy(), lab)
    # Only index 0 used, its palette entry black (the ignore colour): no evidence of a colour mask -> ids.
    zeros = PIL.Image.frombytes("P", (8, 8), bytes(64))
    zeros.putpalette(voc)
    assert pipe._to_label_map(zeros).unique().tolist() == [0]


# ----------------------------------------------------------------------------- item 8: no silent overwrite
def test_cli_same_stem_inputs_get_unique_output_names(model_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    a, b = _photo(seed=1), _photo(seed=2)
    PIL.Image.fromarray(a).save(folder / "a.png")
    PIL.Image.fromarray(b).save(folder / "a.bmp")  # lossless, so the expected labels are easy to recompute
    PIL.Image.fromarray(_photo(seed=3)).save(folder / "c.png")
    out = tmp_path / "out"
    assert main(["segment", str(folder), str(folder / "c.png"), "-o", str(out), "--model", str(model_dir)]) == 0
    assert "share the name 'a'" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_{k}.png" for s in ("a_png", "a_bmp", "c") for k in ("labels", "color"))
    p = SemFlowPipeline.from_pretrained(model_dir)
    p.set_progress_bar_config(disable=True)
    for stem, img in (("a_png", a), ("a_bmp", b)):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(out / f"{stem}_labels.png")), p.segment(img).labels[0])


def test_cli_unresolvable_name_clash_is_refused_before_any_work(model_dir, tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        PIL.Image.fromarray(_photo()).save(tmp_path / sub / "a.png")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="would write the same output files") as e:
        main(["segment", str(tmp_path / "x"), str(tmp_path / "y"), "-o", str(out), "--model", str(model_dir)])
    assert "x/a.png" in str(e.value.code) and not out.exists()


def test_cli_synthesize_names_are_unique_too(model_dir, tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    PIL.Image.fromarray(np.full((16, 16), 3, np.uint8)).save(folder / "m.png")
    PIL.Image.fromarray(np.full((16, 16), 8, np.uint8)).save(folder / "M.bmp")  # case-insensitive clash
    assert main(["synthesize", str(folder), "-o", str(tmp_path / "o"), "--model", str(model_dir)]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["M_bmp_sample0.png", "m_png_sample0.png"]
