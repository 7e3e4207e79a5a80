"""Segmentation metrics: a confusion matrix accumulated over a whole split (the SegNet/mmseg convention)."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulates ``K x K`` counts (rows: ground truth, columns: prediction); ignore pixels are skipped."""

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred, target) -> None:
        """pred, target: integer arrays/tensors of the same shape (..., H, W)."""
        pred = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred).long().flatten()
        target = torch.as_tensor(np.asarray(target) if not torch.is_tensor(target) else target).long().flatten()
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in size")
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        # Predictions outside 0..K-1 (cannot happen for argmax/nearest-anchor) would count as wrong for
        # the row but land in no column; clamp keeps the bincount valid and still counts them as errors.
        p = pred[keep].clamp(0, self.num_classes - 1)
        idx = target[keep] * self.num_classes + p
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, -1).numpy()

    def iou(self) -> np.ndarray:
        """Per-class IoU (K,); NaN for classes absent from both prediction and labels."""
        tp = np.diag(self.mat).astype(np.float64)
        denom = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def miou(self) -> float:
        return float(np.nanmean(self.iou()))

    def pixel_accuracy(self) -> float:
        return float(np.diag(self.mat).sum() / max(self.mat.sum(), 1))


def markdown_table(rows: List[Dict], class_names: Sequence[str]) -> str:
    """rows: dicts with 'name', 'iou' (K,), 'miou', optional 'sec_per_image' -> markdown table."""
    short = list(class_names)  # full names: a header such as "sign_symbo" reads as a typo
    head = "| model | " + " | ".join(short) + " | **mIoU** | pixel acc | s/image |"
    sep = "|" + "---|" * (len(short) + 4)
    lines = [head, sep]
    for r in rows:
        cells = ["-" if np.isnan(v) else f"{v:.3f}" for v in r["iou"]]
        spi = r.get("sec_per_image")
        lines.append(
            f"| {r['name']} | " + " | ".join(cells)
            + f" | **{r['miou']:.3f}** | {r.get('pixel_acc', float('nan')):.3f} | "
            + (f"{spi:.3f}" if spi is not None else "-") + " |"
        )
    return "\n".join(lines)
