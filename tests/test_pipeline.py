import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

from semflow_pipeline import SemFlowPipeline, SemFlowScheduler
from semflow_tiny import camvid_label_config, tiny_pixel_pipeline


class OracleUNet(torch.nn.Module):
    """Stands in for the network: returns the true straight-line answer for one known image/mask pair."""

    def __init__(self, image_state, mask_state, prediction_type):
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(4,), cross_attention_dim=None)
        self.register_buffer("image_state", image_state)
        self.register_buffer("mask_state", mask_state)
        self.prediction_type = prediction_type
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device and dtype

    @property
    def dtype(self):
        return self.anchor.dtype

    @property
    def device(self):
        return self.anchor.device

    def forward(self, x, timestep):
        if self.prediction_type == "velocity":
            return SimpleNamespace(sample=self.mask_state - self.image_state)
        return SimpleNamespace(sample=torch.cat([self.mask_state, self.image_state], 1))


@pytest.mark.parametrize("prediction_type", ["velocity", "endpoints"])
@pytest.mark.parametrize("palette", ["simplex", "paper", "max_spread"])
def test_oracle_one_step_segments_and_synthesizes_exactly(prediction_type, palette):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 11, (24, 32))
    labels[0, :5] = 11  # void pixels come back as the nearest class, so leave them out of the check
    pipe = SemFlowPipeline(unet=torch.nn.Identity(), scheduler=SemFlowScheduler(prediction_type=prediction_type),
                           palette=palette, **camvid_label_config())
    image_state = pipe.codec.lift_image(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 * 2 - 1)
    mask_state = pipe.codec.encode(torch.from_numpy(labels)[None])
    pipe = SemFlowPipeline(unet=OracleUNet(image_state, mask_state, prediction_type),
                           scheduler=SemFlowScheduler(prediction_type=prediction_type), palette=palette,
                           **camvid_label_config())
    pipe.set_progress_bar_config(disable=True)

    seg = pipe.segment(image, num_inference_steps=1, processing_resolution=0)
    valid = labels != 11
    assert np.array_equal(seg.labels[0][valid], labels[valid])
    syn = pipe.synthesize(labels, num_inference_steps=1, perturbation=0.0, processing_resolution=0, output_type="np")
    np.testing.assert_allclose(syn.images[0], image / 255.0, atol=1e-5)


def test_segment_outputs_have_the_input_size(pixel_pipe):
    out = pixel_pipe.segment(PIL.Image.new("RGB", (50, 37), (10, 200, 30)), num_inference_steps=2)
    assert out.labels.shape == (1, 37, 50) and out.labels.dtype == np.int64
    assert out.confidence.shape == (1, 37, 50) and 0 <= out.confidence.min() and out.confidence.max() <= 1
    assert out.anchor_images.shape[:2] == (1, 11)
    assert out.labels.min() >= 0 and out.labels.max() < 11
    small = pixel_pipe.segment(np.zeros((37, 50, 3), np.uint8), match_input_resolution=False)
    assert small.labels.shape == (1, 24, 32)  # longest edge 32, multiples of the UNet's factor 2


@pytest.mark.parametrize("make", [
    lambda: PIL.Image.new("RGBA", (40, 30), (1, 2, 3, 4)),
    lambda: PIL.Image.new("L", (40, 30), 128),
    lambda: PIL.Image.fromarray(np.full((30, 40), 40000, np.uint16)),
    lambda: np.full((30, 40), 0.5, np.float32),
    lambda: np.zeros((30, 40, 4), np.uint8),
    lambda: np.zeros((30, 40, 3), np.uint16),
    lambda: torch.rand(3, 30, 40),
    lambda: torch.zeros(1, 30, 40, dtype=torch.uint8),
])
def test_segment_accepts_common_image_kinds(pixel_pipe, make):
    assert pixel_pipe.segment(make()).labels.shape == (1, 30, 40)


def test_lists_of_different_sizes_give_lists(pixel_pipe):
    out = pixel_pipe.segment([np.zeros((30, 40, 3), np.uint8), np.zeros((20, 20, 3), np.uint8)])
    assert isinstance(out.labels, list) and [x.shape for x in out.labels] == [(30, 40), (20, 20)]


def test_batch_of_three_equals_three_single_calls(pixel_pipe):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(3)]
    batched = pixel_pipe.segment(images, batch_size=3, num_inference_steps=2)
    for i, im in enumerate(images):
        single = pixel_pipe.segment(im, num_inference_steps=2)
        assert np.array_equal(batched.labels[i], single.labels[0])
        np.testing.assert_allclose(batched.confidence[i], single.confidence[0], atol=1e-5)


def test_segmentation_is_bit_for_bit_deterministic(pixel_pipe):
    image = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    a, b = pixel_pipe.segment(image, num_inference_steps=3), pixel_pipe.segment(image, num_inference_steps=3)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)
    assert np.array_equal(a.anchor_images, b.anchor_images)


def test_synthesis_seeds(pixel_pipe):
    mask = np.random.default_rng(3).integers(0, 12, (30, 40))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return pixel_pipe.synthesize(mask, num_inference_steps=2, perturbation=0.3, generator=g, output_type="np")

    a, b, c = run(0).images, run(0).images, run(1).images
    assert a.shape == (1, 30, 40, 3) and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_synthesis_outputs_and_masks(pixel_pipe):
    mask = np.zeros((30, 40), np.int64)
    mask[15:] = 3
    pil = pixel_pipe.synthesize(mask, num_images_per_mask=3)
    assert len(pil.images) == 3 and all(im.size == (40, 30) for im in pil.images)
    pt = pixel_pipe.synthesize(mask, output_type="pt").images
    assert pt.shape == (1, 3, 30, 40)
    # The same layout as a label-id PNG and as a colour-coded image in the display colours.
    as_png = PIL.Image.fromarray(mask.astype(np.uint8), mode="L")
    as_colors = pixel_pipe.visualize_labels(mask)[0]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ref = pixel_pipe.synthesize(mask, generator=g(), output_type="np").images
    for m in (as_png, as_colors):
        np.testing.assert_allclose(pixel_pipe.synthesize(m, generator=g(), output_type="np").images, ref, atol=1e-6)


def test_call_dispatches(pixel_pipe):
    image = np.zeros((30, 40, 3), np.uint8)
    assert np.array_equal(pixel_pipe(image=image).labels, pixel_pipe.segment(image).labels)
    assert len(pixel_pipe(mask=np.zeros((30, 40), np.int64)).images) == 1
    with pytest.raises(ValueError, match="exactly one"):
        pixel_pipe(image=image, mask=np.zeros((30, 40), np.int64))
    with pytest.raises(ValueError, match="exactly one"):
        pixel_pipe()


def test_colors_round_trip_and_overlay(pixel_pipe):
    labels = np.random.default_rng(4).integers(0, 12, (30, 40))
    colored = pixel_pipe.visualize_labels(labels)[0]
    assert colored.size == (40, 30)
    assert np.array_equal(pixel_pipe.mask_from_colors(colored), labels)
    over = pixel_pipe.overlay(np.zeros((30, 40, 3), np.uint8), labels, alpha=1.0)
    assert np.array_equal(np.asarray(over), np.asarray(colored))


@pytest.mark.parametrize("call,message", [
    (lambda p: p.segment(np.zeros((8, 8, 3), np.uint8), num_inference_steps=0), "num_inference_steps"),
    (lambda p: p.segment(np.zeros((8, 8, 3), np.uint8), num_inference_steps=1.5), "num_inference_steps"),
    (lambda p: p.segment([]), "`image` is an empty list"),
    (lambda p: p.segment(None), "`image` must be given"),
    (lambda p: p.segment(np.zeros((0, 8, 3), np.uint8)), "empty"),
    (lambda p: p.segment(np.zeros((8, 8, 3), np.int32)), "dtype int32"),
    (lambda p: p.segment(np.zeros((8, 8, 2), np.uint8)), "channels"),
    (lambda p: p.segment("photo.png"), "PIL image"),
    (lambda p: p.segment(np.zeros((8, 8, 3), np.uint8), output_type="jpeg"), "output_type"),
    (lambda p: p.synthesize(np.full((8, 8), 42)), r"unknown class ids \[42\]"),
    (lambda p: p.synthesize(np.zeros((8, 8), np.float32)), "integer label map"),
    (lambda p: p.synthesize(PIL.Image.new("RGB", (8, 8), (1, 2, 3))), r"#010203 rgb\(1, 2, 3\)"),
    (lambda p: p.synthesize(np.zeros((8, 8), np.int64), perturbation=5.0), "perturbation"),
    (lambda p: p.synthesize(np.zeros((8, 8), np.int64), num_images_per_mask=0), "num_images_per_mask"),
    (lambda p: p.synthesize(np.zeros((0, 0), np.int64)), "non-empty"),
])
def test_bad_inputs_raise_messages_that_name_the_argument(pixel_pipe, call, message):
    with pytest.raises(ValueError, match=message):
        call(pixel_pipe)


def test_save_load_round_trip_gives_identical_outputs(pixel_pipe, tmp_path):
    pixel_pipe.save_pretrained(tmp_path)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"model_index.json", "pipeline_semflow.py", "anchors.py", "scheduler/scheduling_semflow.py",
            "scheduler/scheduler_config.json", "unet/diffusion_pytorch_model.safetensors"} <= files
    assert not any(f.endswith(".bin") for f in files)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_semflow", "SemFlowPipeline"]
    assert index["scheduler"] == ["scheduling_semflow", "SemFlowScheduler"]

    loaded = SemFlowPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded, SemFlowPipeline) and loaded.class_names == pixel_pipe.class_names
    image = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    a, b = pixel_pipe.segment(image, num_inference_steps=2), loaded.segment(image, num_inference_steps=2)
    assert np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
    mask = np.random.default_rng(6).integers(0, 11, (30, 40))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    np.testing.assert_allclose(pixel_pipe.synthesize(mask, generator=g(), output_type="np").images,
                               loaded.synthesize(mask, generator=g(), output_type="np").images, atol=1e-5)


FRESH_PROCESS = textwrap.dedent("""
    import sys, numpy as np
    sys.modules["semflow_pipeline"] = None  # make the package NOT importable, as on a user's machine
    try:
        import semflow_pipeline
        raise SystemExit("semflow_pipeline is importable")
    except ImportError:
        pass
    from diffusers import DiffusionPipeline
    kwargs = dict(trust_remote_code=True)
    if len(sys.argv) > 3:
        kwargs["cache_dir"] = sys.argv[3]
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1], **kwargs)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == "SemFlowPipeline", type(pipe)
    image = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    np.save(sys.argv[2], pipe.segment(image, num_inference_steps=2).labels)
""")


def run_fresh_process(tmp_path, source, cache_dir=None):
    out = tmp_path / "labels.npy"
    args = [sys.executable, "-c", FRESH_PROCESS, str(source), str(out)] + ([str(cache_dir)] if cache_dir else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(out)


def test_loads_in_a_fresh_process_without_the_package(pixel_pipe, tmp_path):
    pixel_pipe.save_pretrained(tmp_path / "model")
    image = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = pixel_pipe.segment(image, num_inference_steps=2).labels
    assert np.array_equal(run_fresh_process(tmp_path, tmp_path / "model"), expected)


def make_local_hub_cache(pipe, cache_dir, repo_id):
    """Lays out a saved pipeline as huggingface_hub's cache would after a download of ``repo_id``."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    pipe.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_loads_by_repo_id_from_a_local_hub_cache_offline(pixel_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    make_local_hub_cache(pixel_pipe, cache, "semflow/tiny-camvid")
    image = np.random.default_rng(5).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    expected = pixel_pipe.segment(image, num_inference_steps=2).labels
    loaded = SemFlowPipeline.from_pretrained("semflow/tiny-camvid", cache_dir=cache)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(loaded.segment(image, num_inference_steps=2).labels, expected)
    assert np.array_equal(run_fresh_process(tmp_path, "semflow/tiny-camvid", cache), expected)


def test_latent_mode_segments_and_synthesizes(latent_pipe, tmp_path):
    image = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    seg = latent_pipe.segment(image, num_inference_steps=2)
    assert seg.labels.shape == (1, 30, 40) and seg.anchor_images.shape[1] == 3
    syn = latent_pipe.synthesize(seg.labels[0], num_inference_steps=2, num_images_per_mask=2,
                                 generator=torch.Generator().manual_seed(0))
    assert len(syn.images) == 2 and syn.images[0].size == (40, 30)
    image_end, mask_end = latent_pipe.prepare_endpoints(torch.zeros(2, 3, 32, 32), torch.zeros(2, 32, 32).long())
    assert image_end.shape == mask_end.shape == (2, 4, 16, 16)  # a 2-block VAE halves the size
    latent_pipe.save_pretrained(tmp_path)
    loaded = SemFlowPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(loaded.segment(image, num_inference_steps=2).labels, seg.labels)
    with pytest.raises(ValueError, match="RGB palette"):
        SemFlowPipeline(unet=latent_pipe.unet, vae=latent_pipe.vae, scheduler=SemFlowScheduler(), palette="simplex",
                        **camvid_label_config())


def test_space_to_depth_folds_the_state_for_the_unet():
    pipe = tiny_pixel_pipeline(space_to_depth=2)
    assert pipe.unet.config.in_channels == 14 * 4
    out = pipe.segment(np.zeros((30, 40, 3), np.uint8), match_input_resolution=False)
    assert out.labels.shape == (1, 24, 32)
    image_end, mask_end = pipe.prepare_endpoints(torch.zeros(1, 3, 32, 32), torch.zeros(1, 64, 64).long())
    assert pipe.predict(mask_end, torch.tensor([500.0])).shape == (1, 28, 32, 32)


def test_flow_callback_sees_every_intermediate_state(pixel_pipe):
    states = []

    def record(pipe, i, t, kwargs):
        states.append(pipe.render_states(kwargs["latents"]))
        return kwargs

    pixel_pipe.segment(np.zeros((30, 40, 3), np.uint8), num_inference_steps=4, callback_on_step_end=record)
    assert len(states) == 4 and states[0].shape == (1, 3, 24, 32)
