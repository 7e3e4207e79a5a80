"""A frozen cross-entropy segmenter as teacher (issue 15, levers 2 and 3).

Two training terms read the same frozen teacher (a ``BaselineSegmenter`` folder, e.g. the same-trunk CE net
``runs/baseline-camvid-lite0-long/final``):

* **distillation** (segmentation): the mask head's class logits learn the teacher's softened class
  probabilities on the real photo (Hinton et al. 2015), beside the ground-truth cross-entropy;
* **layout** (synthesis): the teacher segments the *predicted* image end x̂₀, and its cross-entropy against the
  mask asks that the synthesized photo show the mask's layout (seg(synth(m)) ≈ m, as OASIS's segmentation critic).
  Gradients flow through the frozen teacher into x̂₀ only.

The teacher never ships: it is a training-time dependency, like the perceptual term's Lite0.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from training.baseline import BaselineSegmenter


def load_teacher(path: str, device) -> BaselineSegmenter:
    """A frozen teacher in eval mode; its parameters need no gradient (only its input may)."""
    teacher = BaselineSegmenter.from_pretrained(path, device=device)
    teacher.unet.eval().requires_grad_(False)
    return teacher


def teacher_logits(teacher: BaselineSegmenter, photos: Optional[torch.Tensor],
                   image_hat: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One teacher batch for both terms: photos ``(N, 3, H, W)`` (no gradient) and the predicted image ends
    ``(M, 3, H, W)`` (gradient to the input), both in [-1, 1] -> logits ``(N, K, H, W)``, ``(M, K, H, W)``.
    A term that is off passes None and gets None: the teacher runs only on what a term reads."""
    parts = [x.float() for x in (photos, image_hat) if x is not None]
    if not parts:
        return None, None
    logits = teacher.logits(torch.cat(parts)).float()
    n = photos.shape[0] if photos is not None else 0
    return (logits[:n].detach() if photos is not None else None), (logits[n:] if image_hat is not None else None)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the class distributions at ``temperature``, x T^2 (so its gradient scale does
    not depend on T), mean over pixels. Both ``(N, K, H, W)``."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=1)
    q = F.softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p, q, reduction="none").sum(1).mean() * t * t


def layout_loss(logits_on_synth: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int],
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Cross-entropy of the teacher's logits on predicted image ends ``(M, K, H, W)`` against their masks
    ``(M, H, W)``."""
    return F.cross_entropy(logits_on_synth, labels, weight=weight,
                           ignore_index=ignore_index if ignore_index is not None else -100)
