"""The discriminative baseline: the same ``UNet2DModel`` as pixel-mode SemFlow, trained with cross-entropy.

Saved layout (``checkpoints/baseline-camvid/``)::

    unet/config.json, unet/diffusion_pytorch_model.safetensors   # diffusers UNet2DModel
    segmenter_config.json                                         # classes, colours, resolution, space_to_depth

Usage::

    from training.baseline import BaselineSegmenter
    seg = BaselineSegmenter.from_pretrained("checkpoints/baseline-camvid")
    labels = seg.segment(images)          # list of uint8 HxWx3 arrays / PIL images -> (N, H, W) int64 numpy

The UNet gets ``pixel_unshuffle(image, s)`` (3*s*s channels) at ``processing_resolution / s`` and a
constant timestep 0 (the UNet2DModel API needs one); its K*s*s output channels are pixel-shuffled back
to K logits at the processing resolution and bilinearly upsampled to the input size before argmax.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

CONFIG_NAME = "segmenter_config.json"


def build_unet(in_channels: int, out_channels: int, sample_size: Tuple[int, int], block_out_channels: Sequence[int],
               layers_per_block: int = 1, attention_levels: Sequence[int] = (), norm_num_groups: int = 8,
               attention_head_dim: int = 8) -> UNet2DModel:
    """A pixel-space ``UNet2DModel``; ``attention_levels`` lists the resolution levels (0 = finest) with attention."""
    n = len(block_out_channels)
    down = ["AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if (n - 1 - i) in attention_levels else "UpBlock2D" for i in range(n)]
    return UNet2DModel(
        sample_size=tuple(sample_size), in_channels=in_channels, out_channels=out_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=norm_num_groups,
        attention_head_dim=attention_head_dim,
    )


def to_tensor_batch(images) -> torch.Tensor:
    """PIL / uint8 HxWx3 numpy / list thereof / float tensor (N,3,H,W) in [-1,1] -> float (N,3,H,W) in [-1,1].

    All list items must share one size (batch per size otherwise).
    """
    if torch.is_tensor(images):
        x = images.float()
        return x[None] if x.ndim == 3 else x
    if not isinstance(images, (list, tuple)):
        images = [images]
    arrs = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in images]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class BaselineSegmenter:
    """Cross-entropy UNet segmenter with the same processing as the SemFlow pixel pipeline."""

    def __init__(self, unet: UNet2DModel, class_names: List[str], ignore_index: Optional[int],
                 processing_resolution: Tuple[int, int], space_to_depth: int = 1,
                 label_colors: Optional[List[List[int]]] = None, objective: str = "ce"):
        self.unet = unet.eval()
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.ignore_index = ignore_index
        self.processing_resolution = tuple(processing_resolution)
        self.space_to_depth = space_to_depth
        self.label_colors = label_colors
        self.objective = objective  # "ce" or "mse": how it was trained (both decode by argmax)

    # ---------------------------------------------------------------- model
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N,3,h,w) in [-1,1] at the processing resolution -> logits (N,K,h,w). Differentiable (training)."""
        return forward_logits(self.unet, x, self.space_to_depth)

    @torch.no_grad()
    def segment(self, images, batch_size: int = 8, return_probs: bool = False):
        """images: see ``to_tensor_batch`` -> labels (N,H,W) int64 numpy at the input size."""
        x = to_tensor_batch(images)
        dev = next(self.unet.parameters()).device
        out, probs = [], []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev)
            h, w = xb.shape[-2:]
            xs = F.interpolate(xb, size=self.processing_resolution, mode="bilinear", align_corners=False, antialias=True)
            lg = self.logits(xs).float()
            lg = F.interpolate(lg, size=(h, w), mode="bilinear", align_corners=False)
            out.append(lg.argmax(1).cpu())
            if return_probs:
                probs.append(lg.softmax(1).cpu())
        labels = torch.cat(out).numpy()
        return (labels, torch.cat(probs).numpy()) if return_probs else labels

    # ---------------------------------------------------------------- I/O
    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.unet.save_pretrained(os.path.join(path, "unet"), safe_serialization=True)
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump({
                "model_type": f"semflow-baseline-{self.objective}",
                "objective": self.objective,
                "class_names": self.class_names,
                "ignore_index": self.ignore_index,
                "processing_resolution": list(self.processing_resolution),
                "space_to_depth": self.space_to_depth,
                "label_colors": self.label_colors,
            }, f, indent=2)

    @classmethod
    def from_pretrained(cls, path: str, device: Union[str, torch.device] = "cpu") -> "BaselineSegmenter":
        if not os.path.isdir(path):  # a Hub repo id
            from huggingface_hub import snapshot_download
            path = snapshot_download(path)
        with open(os.path.join(path, CONFIG_NAME)) as f:
            cfg = json.load(f)
        unet_dir = os.path.join(path, "unet")
        with open(os.path.join(unet_dir, "config.json")) as f:
            class_name = json.load(f).get("_class_name")
        if class_name == "SemFlowUNet2DModel":  # the baseline with the pretrained trunk (image_encoder in its config)
            from semflow_pipeline.unet_semflow import SemFlowUNet2DModel as model_cls
        else:
            model_cls = UNet2DModel
        unet = model_cls.from_pretrained(unet_dir).to(device)
        return cls(unet, cfg["class_names"], cfg.get("ignore_index"), cfg["processing_resolution"],
                   cfg.get("space_to_depth", 1), cfg.get("label_colors"), cfg.get("objective", "ce"))

    @staticmethod
    def is_baseline_dir(path: str) -> bool:
        return os.path.isfile(os.path.join(path, CONFIG_NAME))


def forward_logits(unet, x: torch.Tensor, space_to_depth: int = 1) -> torch.Tensor:
    """(N,3,h,w) -> (N,K,h,w); ``unet`` may be wrapped (DDP); timestep 0 is a constant input."""
    s = space_to_depth
    if s > 1:
        x = F.pixel_unshuffle(x, s)
    t = torch.zeros(x.shape[0], device=x.device, dtype=torch.long)
    y = unet(x, t).sample
    return F.pixel_shuffle(y, s) if s > 1 else y
