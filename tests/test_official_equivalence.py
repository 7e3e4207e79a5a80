"""Our pipeline runs the authors' checkpoint exactly as the authors' own loop does.

The reference loop below is written from the conventions of the official code (github.com/wang-chaoyang/SemFlow,
scripts/demo.py and module/pipe/pipe.py), not copied from it:

- the grid is ``arange(1, 1000, 1000 // N)``; segmentation calls the UNet at ``grid - 1`` in ascending order
  (0, 40, ..., 960 for N = 25) and adds ``v / len(grid)``; synthesis calls it at ``1000 - max(grid) + grid`` in
  descending order (1000, 960, ..., 40) and subtracts ``v / len(grid)``;
- images and painted masks are scaled to [-1, 1]; a mask is painted with the k=6, s=50 palette, and perturbed by
  ``(U(0, 1) - 0.5) * 0.1`` before ``vae.encode(...).latent_dist.mode() * scaling_factor``;
- the UNet gets the empty prompt's CLIP embedding (the text encoder's last hidden state of ``""`` padded to 77);
- decoding is ``vae.decode(z / scaling_factor)``; a mask is read back by nearest palette colour.

The reference side builds its UNet from the SD folder's config plus ``face.pt`` and computes the embedding with the
SD folder's text encoder, independently of the converter; the pipeline side is the converted folder loaded with
``SemFlowPipeline.from_pretrained``. Tiny random weights with SD-1.5's layout (tests/official_fixtures.py).
"""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from official_fixtures import RESOLUTION, make_tiny_official_checkpoint, make_tiny_sd_folder

from semflow_pipeline import SemFlowPipeline, SemFlowScheduler
from semflow_pipeline.convert_official import convert_official

ATOL = 1e-5


# ----------------------------------------------------------------------------------------- the authors' loop
def authors_grid(n):
    return torch.arange(1, 1000, 1000 // n)


def authors_palette(num_classes=19, k=6, s=50):
    c = np.arange(num_classes)
    return np.stack([c // (k * k), (c % (k * k)) // k, c % k], axis=1) * s  # (K, 3) on 0..255


class AuthorsModel:
    """UNet from the SD config + face.pt, SD's VAE, the empty prompt embedded by SD's text encoder."""

    def __init__(self, sd, checkpoint):
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd, subfolder="unet"))
        self.unet.load_state_dict(torch.load(checkpoint, weights_only=True))
        self.unet.eval()
        self.vae = AutoencoderKL.from_pretrained(sd, subfolder="vae").eval()
        tokenizer = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder").eval()
        ids = tokenizer("", max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            self.null_condition = text_encoder(ids)[0]
        self.calls = []  # (timestep, latents fed to the UNet)

    def velocity(self, z, t):
        self.calls.append((float(t), z.clone()))
        return self.unet(z, t, self.null_condition.repeat(z.shape[0], 1, 1)).sample

    def encode(self, x):
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def decode(self, z):
        return self.vae.decode(z / self.vae.config.scaling_factor).sample

    @torch.no_grad()
    def segment(self, image_uint8, n, grid=None):
        """image (H, W, 3) uint8 -> (labels (H, W), the latents after every step)."""
        x = torch.from_numpy(image_uint8).permute(2, 0, 1)[None].float() / 255.0
        z = self.encode((x - 0.5) / 0.5)
        grid = authors_grid(n) if grid is None else grid
        states = []
        for t in grid - 1:
            z = z + self.velocity(z, t) / len(grid)
            states.append(z)
        painted = (self.decode(z)[0].permute(1, 2, 0).numpy() * 127.5 + 127.5)  # back to the 0..255 palette scale
        dist = ((painted[:, :, None, :] - authors_palette()[None, None]) ** 2).sum(-1)
        return dist.argmin(-1), states

    @torch.no_grad()
    def synthesize(self, labels, uniform, n, grid=None):
        """labels (H, W), uniform: U(0, 1) draws (1, 3, H, W) -> (image (H, W, 3) in [0, 1], latents per step)."""
        painted = np.full(labels.shape + (3,), 255.0)
        palette = authors_palette()
        for c in np.unique(labels):
            painted[labels == c] = palette[c]
        x = (torch.from_numpy(painted).permute(2, 0, 1)[None].float() / 255.0 - 0.5) / 0.5
        x = x + (uniform - 0.5) * 0.1
        z = self.encode(x)
        grid = authors_grid(n) if grid is None else grid
        states = []
        for t in 1000 - grid.max() + grid.flip(0):
            z = z - self.velocity(z, t) / len(grid)
            states.append(z)
        image = ((self.decode(z).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0).numpy()
        return image, states


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    sd = make_tiny_sd_folder(root / "sd")
    checkpoint = make_tiny_official_checkpoint(root / "face.pt")
    convert_official(checkpoint, str(sd), root / "converted")
    pipe = SemFlowPipeline.from_pretrained(root / "converted")
    pipe.set_progress_bar_config(disable=True)
    return {"pipe": pipe, "authors": AuthorsModel(str(sd), checkpoint), "root": root}


def record(pipe):
    """Hooks the pipeline's UNet and steps: returns (calls [(timestep, latents in)], states after each step)."""
    calls, states = [], []

    def hook(module, args, kwargs):
        calls.append((float(torch.as_tensor(args[1]).reshape(-1)[0]), args[0].clone()))

    def on_step(p, i, t, kw):
        states.append(kw["latents"].clone())
        return kw

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    return calls, states, handle, on_step


def assert_same_run(ours_calls, ours_states, theirs_calls, theirs_states):
    got_t, want_t = [t for t, _ in ours_calls], [t for t, _ in theirs_calls]
    assert got_t == want_t, f"UNet timesteps differ: ours {got_t} vs the authors' {want_t}"
    for i, ((_, a), (_, b)) in enumerate(zip(ours_calls, theirs_calls)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m: f"UNet input of call {i}: {m}")
    assert len(ours_states) == len(theirs_states)
    for i, (a, b) in enumerate(zip(ours_states, theirs_states)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m: f"latents after step {i}: {m}")


def run_segmentation(release, n, grid=None):
    pipe, authors = release["pipe"], release["authors"]
    image = np.random.default_rng(n).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    calls, states, handle, on_step = record(pipe)
    try:
        out = pipe.segment(image, num_inference_steps=n, processing_resolution=RESOLUTION, callback_on_step_end=on_step)
    finally:
        handle.remove()
    authors.calls = []
    labels, their_states = authors.segment(image, n, grid)
    return out, calls, states, labels, authors.calls, their_states


def run_synthesis(release, n, grid=None):
    pipe, authors = release["pipe"], release["authors"]
    labels = np.random.default_rng(100 + n).integers(0, 19, (RESOLUTION // 8, RESOLUTION // 8)).repeat(8, 0).repeat(8, 1)
    seed = 7
    calls, states, handle, on_step = record(pipe)
    try:
        out = pipe.synthesize(labels, num_inference_steps=n, processing_resolution=RESOLUTION, output_type="np",
                              generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step)
    finally:
        handle.remove()
    uniform = torch.rand((1, 3, RESOLUTION, RESOLUTION), generator=torch.Generator().manual_seed(seed))
    authors.calls = []
    image, their_states = authors.synthesize(labels, uniform, n, grid)
    return out, calls, states, image, authors.calls, their_states


# --------------------------------------------------------------------------------------------------- tests
def test_converted_scheduler_is_on_the_authors_grid(release):
    scheduler = release["pipe"].scheduler
    assert scheduler.config.timestep_spacing == "official" and scheduler.config.prediction_type == "velocity"
    scheduler.set_timesteps(25, direction="segment")
    assert scheduler.timesteps.tolist() == list(range(0, 1000, 40))
    scheduler.set_timesteps(25, direction="synthesize")
    assert scheduler.timesteps.tolist() == list(range(1000, 0, -40))


@pytest.mark.parametrize("n", [1, 25])
def test_segmentation_matches_the_authors_loop(release, n):
    out, calls, states, their_labels, their_calls, their_states = run_segmentation(release, n)
    assert len(calls) == n
    assert_same_run(calls, states, their_calls, their_states)
    np.testing.assert_array_equal(out.labels[0], their_labels)
    # the decoded mask itself, before the nearest-anchor read-back
    decoded = release["authors"].decode(their_states[-1]).detach()[0].numpy()
    np.testing.assert_allclose(out.anchor_images[0], decoded, atol=ATOL)


@pytest.mark.parametrize("n", [1, 25])
def test_synthesis_matches_the_authors_loop(release, n):
    out, calls, states, their_image, their_calls, their_states = run_synthesis(release, n)
    assert len(calls) == n
    assert_same_run(calls, states, their_calls, their_states)
    np.testing.assert_allclose(out.images[0], their_image, atol=ATOL)


def test_steps_that_do_not_divide_1000_follow_the_authors_grid_too(release):
    # N = 7: the authors' arange(1, 1000, 142) has 8 entries, so their loop makes 8 calls of 1/8 each.
    out, calls, states, their_labels, their_calls, their_states = run_segmentation(release, 7)
    assert [t for t, _ in calls] == [0, 142, 284, 426, 568, 710, 852, 994]
    assert_same_run(calls, states, their_calls, their_states)
    np.testing.assert_array_equal(out.labels[0], their_labels)


def test_a_wrong_timestep_grid_is_caught(release):
    # Forgetting the authors' "- 1" (1, 41, ..., 961 instead of 0, 40, ..., 960) must fail the comparison ...
    _, calls, states, _, their_calls, their_states = run_segmentation(release, 25, grid=authors_grid(25) + 1)
    with pytest.raises(AssertionError, match="UNet timesteps differ"):
        assert_same_run(calls, states, their_calls, their_states)
    # ... and so must our own default grid where it differs from theirs (N = 7: 7 even steps vs their 8 calls).
    pipe = release["pipe"]
    official = pipe.scheduler
    pipe.scheduler = SemFlowScheduler.from_config(official.config, timestep_spacing="linspace")
    try:
        _, calls, states, _, their_calls, their_states = run_synthesis(release, 7)
    finally:
        pipe.scheduler = official
    with pytest.raises(AssertionError, match="UNet timesteps differ"):
        assert_same_run(calls, states, their_calls, their_states)


def test_a_wrong_step_size_with_the_right_timesteps_is_caught_by_the_latents(release):
    # Same UNet times, wrong step size (x += v / 6 instead of v / 5): only the latents can tell.
    _, calls, states, _, _, _ = run_segmentation(release, 5)
    authors = release["authors"]
    image = np.random.default_rng(5).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    authors.calls = []
    with torch.no_grad():
        z = authors.encode((x - 0.5) / 0.5)
        their_states = []
        for t in authors_grid(5) - 1:
            z = z + authors.velocity(z, t) / 6
            their_states.append(z)
    with pytest.raises(AssertionError, match="UNet input of call 1"):
        assert_same_run(calls, states, authors.calls, their_states)
