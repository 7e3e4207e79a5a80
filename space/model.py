"""The Space's view of a SemFlowPipeline: one lock, progress callbacks, and results shaped for display.

Gradio runs handlers in worker threads, but a pipeline is not re-entrant (its scheduler keeps per-run state
such as the step index), so every model call holds ``self.lock``. The queue's concurrency limit bounds the
waiting; the lock keeps the runs correct.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

ProgressFn = Optional[Callable[[int, int], None]]

# Inputs above this are downscaled before the model (which works at a few hundred pixels anyway): the
# pipeline upsamples K class channels to the input size before its nearest-anchor search, which for a
# 40-megapixel photo would need gigabytes. Labels are then brought back to the input's size here.
MAX_MODEL_INPUT_PIXELS = 2_000_000


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) int64 at the input's size
    confidence: np.ndarray  # (H, W) float32 in [0, 1]


def _fit(im: Image.Image, max_pixels: int) -> Image.Image:
    w, h = im.size
    if w * h <= max_pixels:
        return im
    s = (max_pixels / (w * h)) ** 0.5
    return im.resize((max(1, int(w * s)), max(1, int(h * s))), Image.BILINEAR, reducing_gap=2.0)


class SpaceModel:
    """Wraps a loaded pipeline for the UI. ``model`` is a path, a Hub repo id, or a pipeline object."""

    def __init__(self, model: Union[str, "SemFlowPipeline"]):  # noqa: F821
        from semflow_pipeline import SemFlowPipeline

        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            self.source = str(model)
            pipe = SemFlowPipeline.from_pretrained(str(model))
        else:
            self.source = getattr(getattr(model, "config", None), "_name_or_path", None) or "in-memory pipeline"
            pipe = model
        pipe.set_progress_bar_config(disable=True)  # the UI shows its own progress; keep the server log clean
        self.pipe = pipe
        self.lock = threading.Lock()
        self.class_names: list[str] = list(pipe.class_names)
        self.colors: np.ndarray = np.asarray(pipe.label_colors, dtype=np.uint8)  # (K, 3)
        self.ignore_index: Optional[int] = pipe.config.ignore_index
        self.ignore_color = np.asarray(getattr(pipe, "ignore_color", (0, 0, 0)), dtype=np.uint8)
        self.max_perturbation = float(pipe.codec.max_perturbation)
        self.default_steps = int(pipe.config.default_num_inference_steps)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def hex_colors(self) -> list[str]:
        return ["#{:02x}{:02x}{:02x}".format(*c) for c in self.colors.tolist()]

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        return self.pipe.colorize(labels).astype(np.uint8)

    # --------------------------------------------------------------------------------------------- running
    @staticmethod
    def _step_callback(progress: ProgressFn, total: int, record: Optional[list] = None):
        def cb(pipe, i, t, kwargs):
            if record is not None:
                record.append(kwargs["latents"].detach().float().cpu())
            if progress is not None:
                progress(i + 1, total)
            return kwargs

        return cb

    def _num_calls(self, steps: int) -> int:
        # Heun adds a corrector call per step except the last one.
        return 2 * steps - 1 if self.pipe.scheduler.config.solver == "heun" else steps

    def segment(self, photo: Image.Image, steps: int, progress: ProgressFn = None) -> Segmentation:
        small = _fit(photo, MAX_MODEL_INPUT_PIXELS)
        with self.lock:
            out = self.pipe.segment(
                small,
                num_inference_steps=int(steps),
                output_type="np",
                callback_on_step_end=self._step_callback(progress, self._num_calls(int(steps))),
            )
        labels, conf = out.labels[0], out.confidence[0].astype(np.float32)
        if small.size != photo.size:  # back to the input's size: nearest for ids, bilinear for confidence
            labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(photo.size, Image.NEAREST)).astype(np.int64)
            conf = np.asarray(Image.fromarray(conf).resize(photo.size, Image.BILINEAR), dtype=np.float32)
        return Segmentation(labels=labels, confidence=conf)

    def synthesize(
        self,
        mask: np.ndarray,
        steps: int,
        perturbation: float,
        num_samples: int,
        seed: int,
        progress: ProgressFn = None,
    ) -> list[Image.Image]:
        """``mask``: ``(H, W)`` int label ids, or ``(H, W, 3)`` uint8 in the display colours."""
        generator = torch.Generator().manual_seed(int(seed))
        with self.lock:
            out = self.pipe.synthesize(
                mask,
                num_inference_steps=int(steps),
                perturbation=float(perturbation),
                num_images_per_mask=int(num_samples),
                generator=generator,
                output_type="pil",
                callback_on_step_end=self._step_callback(progress, self._num_calls(int(steps))),
            )
        return list(out.images)

    def labels_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """Colour-coded (H, W, 3) -> ids (strict; ValueError names unknown colours); ids pass through."""
        if mask.ndim == 3:
            return self.pipe.mask_from_colors(mask)
        return mask

    def flow(
        self, photo: Image.Image, steps: int, progress: ProgressFn = None
    ) -> tuple[list[tuple[Image.Image, str]], list[tuple[Image.Image, str]]]:
        """The ODE's intermediate states, rendered as pictures.

        Returns (segmentation path photo t=0 -> mask t=1, synthesis path back from that predicted mask t=1 -> 0).
        """
        steps = int(steps)
        small = _fit(photo, MAX_MODEL_INPUT_PIXELS)
        calls = self._num_calls(steps)

        def half(fn):  # report the two integrations as one bar
            return None if progress is None else fn

        fwd: list[torch.Tensor] = []
        bwd: list[torch.Tensor] = []
        with self.lock:
            seg = self.pipe.segment(
                small, num_inference_steps=steps, output_type="np", match_input_resolution=False,
                callback_on_step_end=self._step_callback(half(lambda i, n: progress(i, 2 * n)), calls, fwd),
            )
            start_grid = self.pipe.scheduler.time_grid.tolist()
            labels = seg.labels[0]
            self.pipe.synthesize(
                labels, num_inference_steps=steps, perturbation=0.0, output_type="np",
                callback_on_step_end=self._step_callback(half(lambda i, n: progress(n + i, 2 * n)), calls, bwd),
            )
            back_grid = self.pipe.scheduler.time_grid.tolist()
            size = labels.shape[::-1]
            # The start states are not passed to callbacks: rebuild them the way the pipeline does.
            x0 = torch.from_numpy(np.asarray(small.resize(size, Image.BILINEAR), dtype=np.float32) / 127.5 - 1)
            first = self.pipe.image_to_state(x0.permute(2, 0, 1)[None])
            last = self.pipe.mask_to_state(self.pipe.codec.encode(torch.from_numpy(labels)[None]))
            pics_f = self._render([first] + fwd)
            pics_b = self._render([last] + bwd)

        def captions(grid, n):
            if self.pipe.scheduler.config.solver == "euler" and len(grid) == n:
                return [f"t = {t:.2f}" for t in grid]
            return [f"call {i}" for i in range(n)]

        return (
            list(zip(pics_f, captions(start_grid, len(pics_f)))),
            list(zip(pics_b, captions(back_grid, len(pics_b)))),
        )

    def _render(self, states: list[torch.Tensor]) -> list[Image.Image]:
        with torch.inference_mode():
            x = self.pipe.render_states(torch.cat(states).to(self.pipe.device))
        arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]
