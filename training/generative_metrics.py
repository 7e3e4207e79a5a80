"""Metrics that judge synthesis as a generative model: sharpness, diversity and Fréchet distance.

- ``laplacian_variance``: high-frequency energy of an image, the variance of its 3x3 Laplacian (grey, [0, 1]).
  The *sharpness ratio* is the mean over synthesized images divided by the mean over the real photos, both at
  the output size: 1 is photo-like detail, a thumbnail upscaled 1.5x scores far lower, noise scores higher.
- ``mean_abs_diff`` / ``pixel_std``: how much samples of one mask differ (two seeds; several seeds).
- ``frechet_distance``: the FID formula, ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, on features of
  the cross-entropy baseline segmenter's encoder (``SegmenterFeatures``). No Inception weights exist offline,
  so the numbers compare models with each other, not with published FIDs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` RGB in [0, 1] -> ``(N,)`` variance of the grey image's Laplacian (valid pixels only)."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]  # (N, 1, H, W)
    lap = F.conv2d(grey, _LAPLACIAN[None, None])
    return lap.flatten(1).var(dim=1).numpy()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| over pixels and channels of two ``(H, W, 3)`` images in [0, 1]."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def pixel_std(samples: np.ndarray) -> float:
    """``(S, H, W, 3)`` samples of one mask -> the mean over pixels of the per-pixel std across samples."""
    return float(samples.astype(np.float32).std(axis=0).mean())


class SegmenterFeatures:
    """Image features from a ``BaselineSegmenter``'s UNet: its mid block and the deepest down block,
    globally average-pooled (``(N, D)``), computed at the segmenter's processing resolution."""

    def __init__(self, segmenter):
        self.seg = segmenter
        self._feats: list = []
        unet = segmenter.unet
        self._hooks = [unet.mid_block.register_forward_hook(self._keep),
                       unet.down_blocks[-1].register_forward_hook(self._keep)]

    def _keep(self, module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        self._feats.append(out.float().mean(dim=(2, 3)))

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 or float in [0, 1] -> ``(N, D)`` features."""
        from training.baseline import to_tensor_batch

        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        out = []
        for i in range(0, len(arr), batch_size):
            x = to_tensor_batch(list(arr[i:i + batch_size]))
            x = F.interpolate(x, size=self.seg.processing_resolution, mode="bilinear", align_corners=False,
                              antialias=True)
            self._feats = []
            self.seg.logits(x)
            out.append(torch.cat(self._feats, dim=1).numpy())
        return np.concatenate(out)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)``."""
    a, b = torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD matrix.
    sqrt_a = _sqrtm_psd(cov_a)
    eig = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0)
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * eig.sqrt().sum())


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def summarize_sharpness(synth: Sequence[float], real: Sequence[float]) -> float:
    """Sharpness ratio: mean Laplacian variance of synthesized images / that of the real photos."""
    return float(np.mean(synth) / max(np.mean(real), 1e-12))
