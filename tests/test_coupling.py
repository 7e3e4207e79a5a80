"""The entropy-preserving ("gaussian") coupling: noise in the mask end's image channels, never in its labels."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from semflow_tiny import tiny_pixel_pipeline

from semflow_pipeline import AnchorCodec, SemFlowPipeline


def gaussian_pipe():
    pipe = tiny_pixel_pipeline(prediction_type="endpoints", palette="simplex")
    return SemFlowPipeline(**{**pipe.components, **{k: v for k, v in pipe.config.items() if not k.startswith("_")
                                                    and k not in pipe.components}, "coupling": "gaussian"})


def test_mask_end_noise_is_in_the_image_channels_only():
    codec = AnchorCodec("simplex", 11, ignore_index=11, coupling="gaussian")
    labels = torch.randint(0, 12, (2, 40, 50), generator=torch.Generator().manual_seed(0))
    anchors = codec.encode(labels)
    end = codec.mask_end(anchors, 0.05, torch.Generator().manual_seed(1))
    image_part = end[:, :3]
    # N(0, I) in channels 0-2: mean ~0, std ~1 (4000 values per channel).
    assert abs(float(image_part.mean())) < 0.05 and abs(float(image_part.std()) - 1) < 0.05
    # Class channels: the anchors plus at most β, so every label reads back unchanged.
    assert float((end[:, 3:] - anchors[:, 3:]).abs().max()) <= 0.05 + 1e-6
    decoded, _ = codec.decode(end)
    valid = labels != 11
    assert torch.equal(decoded[valid], labels[valid])
    # Same generator seed, same draw; another seed, another draw.
    again = codec.mask_end(anchors, 0.05, torch.Generator().manual_seed(1))
    other = codec.mask_end(anchors, 0.05, torch.Generator().manual_seed(2))
    assert torch.equal(end, again) and not torch.allclose(end[:, :3], other[:, :3])


def test_paper_coupling_is_the_finite_perturbation_only():
    codec = AnchorCodec("max_spread", 11, ignore_index=11)
    assert codec.coupling == "paper"
    anchors = codec.encode(torch.randint(0, 11, (1, 20, 20)))
    end = codec.mask_end(anchors, 0.05, torch.Generator().manual_seed(0))
    assert float((end - anchors).abs().max()) <= 0.05 + 1e-6
    assert torch.equal(codec.mask_end(anchors, 0.0), anchors)


def test_gaussian_coupling_needs_separate_image_channels():
    with pytest.raises(ValueError, match="simplex"):
        AnchorCodec("max_spread", 11, coupling="gaussian")
    with pytest.raises(ValueError, match="coupling"):
        AnchorCodec("simplex", 11, coupling="uniform")


def test_seeds_give_different_photos_and_segmentation_stays_deterministic():
    pipe = gaussian_pipe()
    assert pipe.config.coupling == "gaussian"
    mask = np.random.default_rng(3).integers(0, 11, (32, 32))

    def synth(seed):
        g = torch.Generator().manual_seed(seed)
        return pipe.synthesize(mask, num_inference_steps=3, perturbation=0.0, generator=g, output_type="np").images

    a, a2, b = synth(0), synth(0), synth(1)
    assert np.array_equal(a, a2)
    # With β = 0 the paper's coupling has no randomness at all; the Gaussian one still varies with the seed.
    assert np.abs(a - b).mean() > 0.01
    image = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    s1, s2 = pipe.segment(image, num_inference_steps=4), pipe.segment(image, num_inference_steps=4)
    assert np.array_equal(s1.labels, s2.labels) and np.array_equal(s1.confidence, s2.confidence)


def test_stochastic_sampling_redraws_noise_per_step_reproducibly_per_generator():
    from semflow_pipeline import SemFlowScheduler

    pipe = gaussian_pipe()
    mask = np.random.default_rng(3).integers(0, 11, (32, 32))

    def synth(generator):
        return pipe.synthesize(mask, num_inference_steps=3, num_images_per_mask=2, generator=generator,
                               output_type="np").images

    ode = synth(torch.Generator().manual_seed(0))
    pipe.scheduler = SemFlowScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    draws = []
    pipe.codec.mask_end = (lambda f: lambda *a, **k: draws.append(1) or f(*a, **k))(pipe.codec.mask_end)
    sde = synth(torch.Generator().manual_seed(0))
    assert len(draws) == 3  # the start and one fresh draw per step but the last
    assert np.abs(sde - ode).mean() > 0.01  # the same seed's start, then other noise
    assert np.array_equal(sde, synth(torch.Generator().manual_seed(0)))
    # A list of generators: image i is what a one-image call with generator i gives, noise re-draws included.
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    both = synth(gens())
    one = pipe.synthesize(mask, num_inference_steps=3, generator=[gens()[1]], output_type="np").images
    np.testing.assert_allclose(both[1], one[0], atol=1e-4)  # batch-size rounding only
    image = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    s1, s2 = pipe.segment(image, num_inference_steps=4), pipe.segment(image, num_inference_steps=4)
    assert np.array_equal(s1.labels, s2.labels)


def test_paper_coupling_without_perturbation_is_deterministic():
    pipe = tiny_pixel_pipeline(prediction_type="endpoints", palette="simplex")
    mask = np.random.default_rng(3).integers(0, 11, (32, 32))
    imgs = [pipe.synthesize(mask, num_inference_steps=2, perturbation=0.0, output_type="np",
                            generator=torch.Generator().manual_seed(s)).images for s in (0, 1)]
    assert np.array_equal(imgs[0], imgs[1])


def test_coupling_is_saved_and_loads_with_trust_remote_code_without_the_package(tmp_path):
    pipe = gaussian_pipe()
    pipe.save_pretrained(tmp_path)
    mask = np.random.default_rng(5).integers(0, 11, (32, 32))
    np.save(tmp_path / "mask.npy", mask)
    expected = [pipe.synthesize(mask, num_inference_steps=2, generator=torch.Generator().manual_seed(s),
                                output_type="np").images for s in (0, 1)]
    np.save(tmp_path / "expected.npy", np.stack(expected))
    code = textwrap.dedent(f"""
        import sys, numpy as np, torch
        class Block:  # the package must not be importable: the folder's own code has to do the work
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "semflow_pipeline":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        assert type(pipe).__module__ != "semflow_pipeline.pipeline_semflow", type(pipe).__module__
        assert pipe.config.coupling == "gaussian" and pipe.codec.coupling == "gaussian"
        mask = np.load({str(tmp_path / "mask.npy")!r})
        got = np.stack([pipe.synthesize(mask, num_inference_steps=2, generator=torch.Generator().manual_seed(s),
                                        output_type="np").images for s in (0, 1)])
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-5)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_training_mixture_gives_noise_to_a_share_of_samples():
    codec = AnchorCodec("simplex", 11, coupling="gaussian")
    anchors = codec.encode(torch.randint(0, 11, (400, 4, 4)))
    end = codec.mask_end(anchors, 0.0, torch.Generator().manual_seed(0), noise_prob=0.5)
    noisy = end[:, :3].flatten(1).abs().amax(dim=1) > 0
    assert 150 < int(noisy.sum()) < 250  # ~Binomial(400, 0.5)
    assert torch.equal(end[~noisy, :3], torch.zeros_like(end[~noisy, :3]))
    assert torch.equal(end[:, 3:], anchors[:, 3:])


def test_clip_mask_end_keeps_class_channels_in_the_anchor_range_except_on_the_last_call():
    pipe = tiny_pixel_pipeline(prediction_type="endpoints", palette="simplex")
    c = pipe.codec.num_channels
    out = torch.full((1, 2 * c, 4, 4), 3.0)
    clipped = pipe.clip_mask_end(out)
    assert float(clipped[:, 3:c].max()) == 1.0  # mask end's class channels
    assert torch.equal(clipped[:, :3], out[:, :3]) and torch.equal(clipped[:, c:], out[:, c:])
    assert float(out.max()) == 3.0  # the network's output itself is not modified
    seen = []
    pipe.predict = lambda *a, **k: seen.append(1) or torch.full((1, 2 * c, 32, 32), 3.0)
    state = pipe.integrate(torch.zeros(1, c, 32, 32), 3, "segment")
    # Steps 1-2 move towards the clipped end (1.0); the last call is raw, so the answer is the raw 3.0.
    assert len(seen) == 3 and torch.allclose(state[:, 3:], torch.full_like(state[:, 3:], 3.0))
    pipe.register_to_config(clip_mask_end=False)
    assert torch.equal(pipe.clip_mask_end(out), out)
