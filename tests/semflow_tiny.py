"""Tiny randomly initialised SemFlow pipelines for tests (seeded, CPU, a few hundred kB), and a tiny CamVid-layout
dataset for the training tests."""

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

from semflow_pipeline import AnchorCodec, SemFlowPipeline, SemFlowScheduler

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist"]
CAMVID_COLORS = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                 [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0]]


def camvid_label_config():
    id2label = {str(i): n for i, n in enumerate(CAMVID_CLASSES)}
    label_colors = {str(i): c for i, c in enumerate(CAMVID_COLORS)}
    return dict(id2label=id2label, label_colors=label_colors, ignore_index=11)


def tiny_pixel_pipeline(prediction_type="endpoints", palette="simplex", space_to_depth=1, seed=0, resolution=32):
    torch.manual_seed(seed)
    channels = AnchorCodec(palette, len(CAMVID_CLASSES)).num_channels
    folded = channels * space_to_depth**2
    unet = UNet2DModel(
        sample_size=resolution // space_to_depth, in_channels=folded,
        out_channels=folded * (2 if prediction_type == "endpoints" else 1),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    pipe = SemFlowPipeline(
        unet=unet, scheduler=SemFlowScheduler(prediction_type=prediction_type), palette=palette,
        space_to_depth=space_to_depth, default_processing_resolution=resolution, **camvid_label_config(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_latent_pipeline(seed=0):
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    pipe = SemFlowPipeline(
        unet=unet, vae=vae, scheduler=SemFlowScheduler(prediction_type="velocity"), palette="paper",
        default_processing_resolution=32, **camvid_label_config(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_toy_camvid(root: Path, n: int = 6, h: int = 24, w: int = 32):
    """CamVid-layout split files; each class paints its region with its own colour (learnable)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (11, 3))
    for split in ("train", "val"):
        lines = []
        for i in range(n):
            lab = np.zeros((h, w), np.uint8)
            a, b = rng.integers(0, 11, 2)
            lab[:, : w // 2] = a
            lab[:, w // 2:] = b
            lab[: h // 6] = 11  # void
            img = palette[np.minimum(lab, 10)].astype(np.uint8)
            os.makedirs(root / split, exist_ok=True)
            os.makedirs(root / f"{split}annot", exist_ok=True)
            Image.fromarray(img).save(root / split / f"{i}.png")
            Image.fromarray(lab).save(root / f"{split}annot" / f"{i}.png")
            lines.append(f"{split}/{i}.png {split}annot/{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
