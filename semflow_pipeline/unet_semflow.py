"""``SemFlowUNet2DModel``: a pixel-space ``UNet2DModel`` that also sees pretrained image features.

The ODE state of a simplex SemFlow model holds the image in its first 3 channels (``(1 - t) * image + t * noise``
along the path). This model runs an ImageNet-pretrained EfficientNet-Lite0 trunk (stride 4, 8 and 16 features) on
those channels, projects and resizes the features to the UNet's (folded) grid and feeds them to the UNet beside the
state. At t=0 (segmentation) the trunk sees the clean photo, which is where 367 training photos are not enough to
learn vision from scratch; along the path it sees the partly noised image, and the UNet learns how far to trust it.

The file is self-contained (torch + diffusers only) so that a saved checkpoint carries it as ``unet/unet_semflow.py``
and loads with ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` without this package.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput

# EfficientNet-Lite0 up to stride 16: (expand ratio, kernel, first stride, out channels, repeats) per stage.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3))
LITE0_TAPS = (1, 2, 4)  # stages whose outputs are used: strides 4, 8, 16 (24, 40, 112 channels)


class SameConv2d(nn.Conv2d):
    """Conv with TensorFlow's 'SAME' padding (asymmetric for stride 2), as the pretrained weights were trained."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        s = self.stride[0]
        ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise kxk, project 1x1), ReLU6, batch norm folded into the convs."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.expand_conv = nn.Conv2d(cin, mid, 1) if expand != 1 else None
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.project_conv = nn.Conv2d(mid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand_conv(x)) if self.expand_conv is not None else x
        h = self.project_conv(F.relu6(self.depthwise_conv(h)))
        return x + h if self.residual else h


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0 trunk: image ``(N, 3, H, W)`` in [-1, 1] (Lite's own input scaling) -> features at
    strides 4, 8, 16: ``(N, 24, H/4, W/4)``, ``(N, 40, H/8, W/8)``, ``(N, 112, H/16, W/16)``."""

    out_channels = tuple(LITE0_STAGES[i][3] for i in LITE0_TAPS)

    def __init__(self):
        super().__init__()
        self.stem = SameConv2d(3, 32, 3, 2)
        stages, cin = [], 32
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            blocks = [MBConv(cin if i == 0 else cout, cout, expand, kernel, stride if i == 0 else 1) for i in range(repeats)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, image: torch.Tensor) -> list:
        x = F.relu6(self.stem(image))
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in LITE0_TAPS:
                feats.append(x)
        return feats


class SemFlowUNet2DModel(ModelMixin, ConfigMixin):
    """``UNet2DModel`` over the folded ODE state plus EfficientNet-Lite0 features of the state's image channels.

    Drop-in for the pipeline's pixel UNet: ``forward(sample, timestep).sample``; ``config.in_channels`` and
    ``config.out_channels`` are the state's (folded) channels, as for a plain ``UNet2DModel``.

    Args:
        in_channels, out_channels, block_out_channels, layers_per_block, down_block_types, up_block_types,
            norm_num_groups, attention_head_dim, sample_size: the inner ``UNet2DModel``'s (its ``conv_in`` takes
            ``in_channels + feature_channels``).
        space_to_depth: the pipeline's folding factor (the image is unfolded before the trunk sees it).
        image_channels: how many leading state channels hold the image (3).
        feature_channels: channels of the fused trunk features given to the UNet.
        trunk_downscale: the trunk sees the image shrunk by this factor (1 = full size). At full size the trunk
            is about a quarter of a 1-step segmentation; at half size it costs a quarter of that, and small objects
            (signs, pedestrians) lose the most (the v7 student in the model card).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: Optional[Union[int, Tuple[int, int]]] = None,
        in_channels: int = 126,
        out_channels: int = 252,
        block_out_channels: Sequence[int] = (32, 64, 128, 128),
        layers_per_block: int = 2,
        down_block_types: Sequence[str] = ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types: Sequence[str] = ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups: int = 8,
        attention_head_dim: int = 8,
        space_to_depth: int = 3,
        image_channels: int = 3,
        feature_channels: int = 64,
        trunk_downscale: int = 1,
    ):
        super().__init__()
        self.encoder = EfficientNetLite0Features()
        self.feature_proj = nn.ModuleList(nn.Conv2d(c, feature_channels, 1) for c in self.encoder.out_channels)
        self.unet = UNet2DModel(
            sample_size=sample_size, in_channels=in_channels + feature_channels, out_channels=out_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim,
        )

    def image_features(self, sample: torch.Tensor) -> torch.Tensor:
        """Folded state ``(N, C * r^2, h, w)`` -> fused trunk features ``(N, feature_channels, h, w)``."""
        r, c = self.config.space_to_depth, self.config.image_channels
        # pixel_unshuffle puts input channel i in folded channels [i*r^2, (i+1)*r^2): the image is the first c*r^2.
        image = F.pixel_shuffle(sample[:, : c * r * r], r) if r > 1 else sample[:, :c]
        if self.config.trunk_downscale > 1:  # (N, 3, H/d, W/d)
            image = F.avg_pool2d(image, self.config.trunk_downscale, ceil_mode=True)
        size = sample.shape[-2:]
        fused = 0
        for proj, feat in zip(self.feature_proj, self.encoder(image)):
            fused = fused + F.interpolate(proj(feat), size=size, mode="bilinear", align_corners=False)
        return F.silu(fused)

    def forward(
        self, sample: torch.Tensor, timestep: Union[torch.Tensor, float, int], return_dict: bool = True
    ) -> Union[UNet2DOutput, tuple]:
        """``sample`` ``(N, in_channels, h, w)``, ``timestep`` ``(N,)`` or scalar (t * 1000) ->
        ``(N, out_channels, h, w)``."""
        x = torch.cat([sample, self.image_features(sample).to(sample.dtype)], dim=1)
        out = self.unet(x, timestep).sample
        return UNet2DOutput(sample=out) if return_dict else (out,)
