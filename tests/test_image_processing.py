"""semflow_pipeline/image_processing.py on its own (issue 17 item 20), and the value rules of issue 18 items 5-7:
a mode-F image in [0, 1], a uint16 array that holds 0..255 values, and a dark 0..255 float photo below 1.5."""

import warnings

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from semflow_pipeline import SemFlowPipeline
from semflow_pipeline import image_processing as ip
from semflow_pipeline.cli import main
from semflow_pipeline.pipeline_semflow import REMOTE_CODE_FILES
from semflow_tiny import CAMVID_COLORS, tiny_pixel_pipeline

TABLE = ip.color_table(np.array(CAMVID_COLORS[:11], np.uint8), np.array(CAMVID_COLORS[11], np.uint8), 11)


def _photo(h=30, w=40, seed=0, high=256):
    return np.random.default_rng(seed).integers(0, high, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- the module itself
def test_the_module_needs_no_pipeline_and_is_shipped_as_remote_code():
    t = ip.to_image_tensor(_photo())
    assert t.shape == (3, 30, 40) and t.dtype == torch.float32 and 0 <= float(t.min()) and float(t.max()) <= 1
    assert REMOTE_CODE_FILES["image_processing.py"] == ["image_processing.py"]
    # The pipeline's methods are thin bindings of these functions.
    assert torch.equal(SemFlowPipeline._to_image_tensor(_photo()), t)


def test_as_list_unpacks_batches():
    assert len(ip.as_list(np.zeros((2, 8, 8, 3), np.uint8), "image")) == 2
    assert len(ip.as_list([np.zeros((2, 8, 8, 3)), np.zeros((8, 8, 3))], "image")) == 3
    with pytest.raises(ValueError, match="empty list"):
        ip.as_list([], "image")
    with pytest.raises(ValueError, match="must be given"):
        ip.as_list(None, "mask")


def test_label_maps_from_ids_colours_and_palettes():
    lab = np.zeros((6, 8), np.int64)
    lab[3:] = 3
    lab[0, 0] = 11  # void
    colours = np.array(CAMVID_COLORS, np.uint8)[lab]
    assert np.array_equal(ip.mask_from_colors(colours, TABLE), lab)
    assert np.array_equal(ip.to_label_map(PIL.Image.fromarray(colours), TABLE, 11, 11).numpy(), lab)
    assert np.array_equal(ip.to_label_map(lab, TABLE, 11, 11).numpy(), lab)
    pal = PIL.Image.fromarray(lab.astype(np.uint8), mode="P")
    pal.putpalette(np.array(CAMVID_COLORS, np.uint8).ravel().tolist())
    assert not ip.palette_is_label_colors(pal, TABLE, 11)  # the palette agrees with the ids: both readings agree
    with pytest.raises(ValueError, match="unknown class ids \\[12\\]"):
        ip.to_label_map(np.full((4, 4), 12), TABLE, 11, 11)
    with pytest.raises(ValueError, match="not class colours"):
        ip.mask_from_colors(np.full((4, 4, 3), 7, np.uint8), TABLE)


def test_check_inputs_names_the_argument_and_the_bound():
    ip.check_inputs(1, None, 1, "np")
    with pytest.raises(ValueError, match="num_inference_steps"):
        ip.check_inputs(0, None, 1, "np")
    with pytest.raises(ValueError, match="output_type"):
        ip.check_inputs(1, None, 1, "jpg")
    with pytest.raises(ValueError, match="pipe.max_num_inference_steps = 7"):
        ip.check_inputs(7, None, 1, "np", bounds={"max_num_inference_steps": 5})
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        ip.check_inputs(1, None, 1, "np", callback_on_step_end_tensor_inputs=["noise"])
    seen = []
    ip.check_inputs(1, None, 1, "pil", perturbation=0.1, check_perturbation=seen.append)
    assert seen == [0.1]


# ------------------------------------------------------------------------ issue 18 item 5: mode F in [0, 1]
def test_mode_f_image_in_0_1_is_read_like_the_same_photo_in_mode_l():
    gray = _photo()[..., 0]
    as_l = SemFlowPipeline._to_image_tensor(PIL.Image.fromarray(gray, mode="L"))
    as_f = SemFlowPipeline._to_image_tensor(PIL.Image.fromarray(gray.astype(np.float32) / 255, mode="F"))
    torch.testing.assert_close(as_f, as_l)
    # PIL's own scale for mode F (0..255, as convert("L") reads it) still works.
    as_f255 = SemFlowPipeline._to_image_tensor(PIL.Image.fromarray(gray.astype(np.float32), mode="F"))
    torch.testing.assert_close(as_f255, as_l)


def test_mode_f_dark_0_255_data_below_1_5_raises():
    dark = np.clip(_photo(high=30)[..., 0].astype(np.float32), 0, 1.4)
    with pytest.raises(ValueError, match="divide by 255"):
        SemFlowPipeline._to_image_tensor(PIL.Image.fromarray(dark, mode="F"))


def test_cli_reads_a_float32_tiff_in_0_1_like_the_same_photo(tmp_path):
    pipe = tiny_pixel_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    gray = _photo(h=32, w=48)[..., 0]
    PIL.Image.fromarray(gray, mode="L").save(tmp_path / "a.png")
    PIL.Image.fromarray(gray.astype(np.float32) / 255, mode="F").save(tmp_path / "b.tif")
    assert main(["segment", str(tmp_path / "a.png"), str(tmp_path / "b.tif"), "-o", str(tmp_path / "out"),
                 "--model", str(tmp_path / "model")]) == 0
    a = np.asarray(PIL.Image.open(tmp_path / "out" / "a_labels.png"))
    b = np.asarray(PIL.Image.open(tmp_path / "out" / "b_labels.png"))
    assert np.array_equal(a, b)


# ------------------------------------------------------------- issue 18 item 6: uint16 holding 0..255 values
def test_uint16_array_with_0_255_values_is_read_as_8_bit_with_a_warning():
    photo = _photo()
    with pytest.warns(ip.EightBitDataWarning, match="read as 8-bit"):
        got = SemFlowPipeline._to_image_tensor(photo.astype(np.uint16))
    torch.testing.assert_close(got, SemFlowPipeline._to_image_tensor(photo))
    with pytest.warns(ip.EightBitDataWarning):
        got = SemFlowPipeline._to_image_tensor(PIL.Image.fromarray(photo[..., 0].astype(np.uint16)))
    torch.testing.assert_close(got, SemFlowPipeline._to_image_tensor(PIL.Image.fromarray(photo[..., 0])))


def test_real_16_bit_data_and_black_stay_16_bit_without_a_warning():
    photo16 = _photo().astype(np.uint16) * 257
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(SemFlowPipeline._to_image_tensor(photo16),
                                   SemFlowPipeline._to_image_tensor(_photo()))
        assert float(SemFlowPipeline._to_image_tensor(np.zeros((4, 4, 3), np.uint16)).max()) == 0


def test_segmenting_8_bit_data_in_uint16_gives_the_8_bit_result():
    pipe = tiny_pixel_pipeline()
    photo = _photo()
    with pytest.warns(ip.EightBitDataWarning):
        got = pipe.segment(photo.astype(np.uint16)).labels
    assert np.array_equal(got, pipe.segment(photo).labels)


# ------------------------------------------------- issue 18 item 7: a dark 0..255 float photo clipped to <= 1.4
@pytest.mark.parametrize("to", [lambda a: a, lambda a: torch.from_numpy(a).permute(2, 0, 1)],
                         ids=["array", "tensor"])
def test_dark_0_255_float_photo_below_1_5_raises(to):
    dark = np.clip(_photo(high=30).astype(np.float32), 0, 1.4)  # 0..255 data from a very dark scene
    with pytest.raises(ValueError, match="above 1.*divide by 255"):
        SemFlowPipeline._to_image_tensor(to(dark))
    with pytest.raises(ValueError, match="above 1"):
        tiny_pixel_pipeline().segment(to(dark))


def test_negative_bulk_within_the_margin_raises():
    img = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32) * 1.3 - 0.4  # [-1, 1]-ish, >= -0.5
    with pytest.raises(ValueError, match=r"below 0.*\(image \+ 1\) / 2"):
        ip.to_image_tensor(img)


def test_resampling_overshoot_still_passes():
    img = torch.from_numpy(_photo().astype(np.float32) / 255).permute(2, 0, 1)[None]
    up = F.interpolate(img, scale_factor=3, mode="bicubic", align_corners=False)[0]
    assert float(up.max()) > 1 and float(up.min()) < 0  # real overshoot
    assert ip.to_image_tensor(up).shape == (3, 90, 120)
    # A saturated-sky photo: a quarter of the values exactly 1, a few edge pixels above it.
    sky = np.random.default_rng(1).random((30, 40, 3)).astype(np.float32)
    sky[:8] = 1.0
    sky[8, ::4] = 1.08
    assert ip.to_image_tensor(sky).shape == (3, 30, 40)


# --------------------------------------------------- issue 17 item 8: pipe.segment bounds memory for huge inputs
def test_huge_inputs_are_reduced_first_and_labels_come_back_at_the_input_size():
    pipe = tiny_pixel_pipeline()
    pipe.max_full_resolution_pixels = 1200  # stands for the default 4 MP, at a test's size
    photo = PIL.Image.fromarray(_photo(h=60, w=80))
    out = pipe.segment(photo)
    assert out.labels.shape == (1, 60, 80) and out.confidence.shape == (1, 60, 80)
    reduced, size = ip.reduce_large_image(photo, 1200)
    assert size == (60, 80) and reduced.size[0] * reduced.size[1] <= 1200
    small = pipe.segment(reduced)
    lab, conf = ip.upscale_labels(torch.from_numpy(small.labels[0]), torch.from_numpy(small.confidence[0]), (60, 80))
    assert np.array_equal(out.labels[0], lab.numpy())
    np.testing.assert_allclose(out.confidence[0], conf.numpy(), atol=1e-6)
    assert np.array_equal(pipe.segment(np.asarray(photo)).labels, out.labels)  # uint8 arrays too
    assert np.array_equal(pipe.segment(photo, match_input_resolution=False).labels,
                          pipe.segment(reduced, match_input_resolution=False).labels)  # the processing size
    # At or below the bound nothing changes.
    pipe.max_full_resolution_pixels = None
    exact = pipe.segment(photo)
    pipe.max_full_resolution_pixels = 60 * 80
    assert np.array_equal(pipe.segment(photo).labels, exact.labels)


def test_upscale_labels_is_nearest():
    lab = torch.tensor([[0, 1], [2, 3]])
    up, conf = ip.upscale_labels(lab, torch.ones(2, 2), (4, 6))
    assert up.tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2 and conf.shape == (4, 6)


def test_a_48_megapixel_photo_segments_within_1_5_gb(tmp_path):
    # Before: 6.2 GB peak (float copies of the photo and K class channels at 8000x6000). Measured in a fresh
    # process; the tiny model stands in for the shipped one (the model's own cost does not grow with the input).
    import subprocess
    import sys
    import textwrap

    tiny_pixel_pipeline().save_pretrained(tmp_path / "model")
    code = textwrap.dedent(f"""
        import resource, numpy as np, PIL.Image
        from semflow_pipeline import SemFlowPipeline
        pipe = SemFlowPipeline.from_pretrained({str(tmp_path / "model")!r})
        pipe.set_progress_bar_config(disable=True)
        ramp = np.linspace(0, 255, 8000, dtype=np.float32).astype(np.uint8)
        photo = PIL.Image.fromarray(np.broadcast_to(ramp[None, :, None], (6000, 8000, 3)).copy())
        out = pipe.segment(photo)
        assert out.labels.shape == (1, 6000, 8000) and out.confidence.shape == (1, 6000, 8000)
        print("PEAK_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = float(done.stdout.split("PEAK_MB")[1])
    assert peak <= 1536, f"peak RSS {peak:.0f} MB"
