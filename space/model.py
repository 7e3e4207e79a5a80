"""The Space's view of a SemFlowPipeline: one lock, progress callbacks, bounded work, and results shaped for display.

Gradio runs handlers in worker threads, but a pipeline is not re-entrant (its scheduler keeps per-run state
such as the step index), so every model call runs on one dedicated model thread (and holds ``self.lock``). One
thread also keeps torch to one OpenMP thread team: calls from gradio's many worker threads would each start a
team of their own, whose idle threads spin and compete for the CPU (measured: +35% on a 1-step segmentation,
+60% on 25-step synthesis on 2 cores). The queue's concurrency limit bounds the waiting.

Synthesis defaults: the app synthesizes with the pipeline config's ``default_synthesis_num_inference_steps`` and
``default_synthesis_perturbation`` (in the model's ``model_index.json``) when it has them, else with
:data:`DEFAULT_SYNTHESIS_STEPS` and :data:`DEFAULT_SYNTHESIS_PERTURBATION`. Segmentation uses the pipeline's own
``default_num_inference_steps``.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import hashlib
import json
import math
import os
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from .inputs import InputError, describe_colors, snap_to_palette

ProgressFn = Optional[Callable[[int, int], None]]

# App-level synthesis defaults, used when the model's config does not name its own (see the module docstring).
DEFAULT_SYNTHESIS_STEPS = 25
DEFAULT_SYNTHESIS_PERTURBATION = 0.05
# Samples per network batch in synthesis: n samples run as ceil(n / SYNTHESIS_BATCH) batches, so a request's
# memory does not grow with the number of samples.
SYNTHESIS_BATCH = 2
# Flow: the most frames shown per direction (evenly spaced over the steps, both ends always included).
MAX_FLOW_FRAMES = 11
# A colour mask saved in a lossy format (JPEG) is read by snapping each pixel to the nearest legend colour when
# at least SNAP_MIN_SHARE of its pixels lie within SNAP_TOLERANCE (RGB distance) of one: measured on the drawn
# example masks saved as JPEG at quality 50..95, 97.7-99.2% of pixels are within 40; on street photos saved as
# JPEG, 12-60%.
SNAP_TOLERANCE = 40.0
SNAP_MIN_SHARE = 0.9


@dataclass
class Segmentation:
    labels: np.ndarray  # (H, W) int64 at the photo's size
    confidence: np.ndarray  # (H, W) float32 in [0, 1]


def display_name(source: str) -> str:
    """What the page calls the model: a local folder's name, or the Hub repo id as given (never a server path)."""
    s = str(source).rstrip("/\\")
    if os.path.isdir(s) or os.path.isabs(s) or s.startswith(("./", "../", "~")):
        return os.path.basename(s) or "model"
    return s


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
        # oneDNN's convolutions are faster with channels_last weights on CPU (7-10% per request in paired runs,
        # same labels): benchmarks/memory_format.py.
        pipe.unet.to(memory_format=torch.channels_last)
        self.pipe = pipe
        self.name = display_name(self.source)
        self.lock = threading.Lock()
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="semflow-model")
        self.class_names: list[str] = list(pipe.class_names)
        self.colors: np.ndarray = np.asarray(pipe.label_colors, dtype=np.uint8)  # (K, 3)
        self.ignore_index: Optional[int] = pipe.config.ignore_index
        self.ignore_color = np.asarray(getattr(pipe, "ignore_color", (0, 0, 0)), dtype=np.uint8)
        self.max_perturbation = float(pipe.codec.max_perturbation)
        # The largest β the UI offers, rounded *down* to the slider's 0.001 grid, so the maximum shown is accepted.
        self.beta_max = math.floor(self.max_perturbation * 1000 + 1e-9) / 1000
        self.default_steps = int(pipe.config.default_num_inference_steps)
        steps = pipe.config.get("default_synthesis_num_inference_steps")  # None in configs older than the key
        beta = pipe.config.get("default_synthesis_perturbation")
        self.synthesis_steps = int(steps) if steps is not None else DEFAULT_SYNTHESIS_STEPS
        beta = float(beta) if beta is not None else DEFAULT_SYNTHESIS_PERTURBATION
        self.synthesis_perturbation = min(max(0.0, beta), self.beta_max)
        self.processing_resolution = int(pipe.config.default_processing_resolution)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def hex_colors(self) -> list[str]:
        return ["#{:02x}{:02x}{:02x}".format(*c) for c in self.colors.tolist()]

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        table = np.concatenate([self.colors, self.ignore_color[None]]).astype(np.uint8)
        labels = np.asarray(labels)
        k = self.num_classes
        if labels.dtype == np.uint8 and k < 255:
            lut = np.full(256, k, np.int64)
            lut[:k] = np.arange(k)
            return table[lut[labels]]
        return table[np.where((labels >= 0) & (labels < k), labels, k)]

    def fingerprint(self) -> str:
        """A digest of the weights and configs: which model a calibration file belongs to."""
        def settings(config) -> bytes:  # without paths ("_name_or_path") and component class names
            keep = {k: v for k, v in dict(config).items() if not k.startswith("_")
                    and k not in ("unet", "scheduler", "vae", "text_encoder", "tokenizer")}
            return json.dumps(keep, sort_keys=True, default=str).encode()

        h = hashlib.sha256()
        h.update(settings(self.pipe.config))
        h.update(settings(self.pipe.scheduler.config))
        for name in ("unet", "vae"):
            module = getattr(self.pipe, name, None)
            if module is None:
                continue
            h.update(settings(module.config))
            for key, tensor in sorted(module.state_dict().items()):
                h.update(key.encode())
                h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    # --------------------------------------------------------------------------------------------- running
    def run(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the model thread, holding the lock, in the caller's context (so gradio's
        progress tracker, which lives in context variables, still reaches the caller's event)."""
        ctx = contextvars.copy_context()

        def call():
            with self.lock:
                return ctx.run(fn, *args, **kwargs)

        return self._thread.submit(call).result()

    @staticmethod
    def _step_callback(progress: ProgressFn, offset: int, total: int, record: Optional[Callable] = None):
        def cb(pipe, i, t, kwargs):
            if record is not None:
                record(kwargs["latents"])
            if progress is not None:
                progress(offset + i + 1, total)
            return kwargs

        return cb

    def num_calls(self, steps: int) -> int:
        """Network calls of one integration: Heun adds a corrector call per step except the last one."""
        return 2 * steps - 1 if self.pipe.scheduler.config.solver == "heun" else steps

    def warmup(self) -> None:
        """One small run of each path at start, so the first visitor does not wait for lazy initialisation."""
        photo = Image.new("RGB", (480, 360), (120, 120, 120))
        self.segment(photo, self.default_steps)
        self.synthesize(np.zeros((36, 48), np.int64), 1, 0.0, 1, 0)

    def segment(self, photo: Image.Image, steps: int, progress: ProgressFn = None) -> Segmentation:
        """Labels and confidence at the photo's size (the caller bounds that size)."""
        out = self.run(
            self.pipe.segment,
            photo,
            num_inference_steps=int(steps),
            output_type="np",
            callback_on_step_end=self._step_callback(progress, 0, self.num_calls(int(steps))),
        )
        return Segmentation(labels=out.labels[0], confidence=out.confidence[0].astype(np.float32, copy=False))

    def synthesize(
        self,
        mask: np.ndarray,
        steps: int,
        perturbation: float,
        num_samples: int,
        seed: int,
        progress: ProgressFn = None,
    ) -> list[Image.Image]:
        """``mask``: ``(H, W)`` int label ids (the caller bounds its size). Images come back at the mask's size.

        Samples run ``SYNTHESIS_BATCH`` at a time from one seeded generator, so memory stays flat in the number of
        samples and a seed always gives the same images.
        """
        generator = torch.Generator().manual_seed(int(seed))
        steps, n = int(steps), int(num_samples)
        calls = self.num_calls(steps)
        chunks = [min(SYNTHESIS_BATCH, n - i) for i in range(0, n, SYNTHESIS_BATCH)]
        def run_all() -> list[Image.Image]:
            images: list[Image.Image] = []
            for c, size in enumerate(chunks):
                out = self.pipe.synthesize(
                    mask,
                    num_inference_steps=steps,
                    perturbation=float(perturbation),
                    num_images_per_mask=size,
                    generator=generator,
                    output_type="pil",
                    callback_on_step_end=self._step_callback(progress, c * calls, len(chunks) * calls),
                )
                images.extend(out.images)
            return images

        return self.run(run_all)

    def labels_from_mask(self, kind: str, mask: np.ndarray, lossy: bool = False) -> np.ndarray:
        """A loaded mask -> label ids ``(H, W)`` int64, with errors that say what the file looks like instead."""
        return self.read_mask(kind, mask, lossy)[0]

    def read_mask(self, kind: str, mask: np.ndarray, lossy: bool = False) -> tuple[np.ndarray, Optional[str]]:
        """A loaded mask -> (label ids ``(H, W)`` int64, a note on how it was read or None).

        ``lossy``: the file was saved in a lossy format (JPEG): its colours are snapped to the legend's when it is
        plainly a compressed colour mask (see :data:`SNAP_MIN_SHARE`), and errors name JPEG as the cause.
        """
        k = self.num_classes
        if kind == "ids":
            valid = (mask >= 0) & (mask < k)
            if self.ignore_index is not None:
                valid |= mask == self.ignore_index
            if valid.mean() < 0.5:
                values = np.unique(mask)
                raise InputError(
                    f"This looks like a grayscale picture, not a label-id mask: {(~valid).mean():.0%} of its pixels "
                    f"hold values outside the class ids 0..{k - 1} ({len(values)} distinct values, up to "
                    f"{int(values.max())}). A label-id mask holds one class id per pixel. " + _HOW_TO_MAKE_A_MASK
                )
            return mask, None
        rgb = mask.reshape(-1, 3)
        keys = (rgb[:, 0].astype(np.int64) << 16) | (rgb[:, 1].astype(np.int64) << 8) | rgb[:, 2]
        known = {int(c[0]) << 16 | int(c[1]) << 8 | int(c[2]) for c in self.colors}
        if self.ignore_index is not None:
            c = self.ignore_color
            known.add(int(c[0]) << 16 | int(c[1]) << 8 | int(c[2]))
        uniq, counts = np.unique(keys, return_counts=True)
        unknown = np.array([int(u) not in known for u in uniq])
        share_unknown = counts[unknown].sum() / max(1, keys.size)
        if unknown.any() and lossy:
            return self._snap_lossy(mask, share_unknown)
        if unknown.sum() > 64 or share_unknown > 0.2:
            raise InputError(
                f"This looks like a photo, not a mask: it has {len(uniq)} different colours, and "
                f"{share_unknown:.0%} of its pixels are not legend colours. A colour-coded mask uses only the "
                "legend's colours, one per class. " + _HOW_TO_MAKE_A_MASK
            )
        if unknown.any():
            order = np.argsort(-counts[unknown])
            bad = uniq[unknown][order]
            colors = np.stack([(bad >> 16) & 255, (bad >> 8) & 255, bad & 255], axis=-1)
            raise InputError(
                f"The mask has {len(bad)} colour(s) that are not class colours: {describe_colors(colors)}. "
                "Use the legend's colours exactly (no anti-aliasing, no JPEG), or upload a label-id PNG."
            )
        return self.pipe.mask_from_colors(mask), None

    def _snap_lossy(self, mask: np.ndarray, share_unknown: float) -> tuple[np.ndarray, str]:
        table = np.concatenate([self.colors, self.ignore_color[None]]).astype(np.int32)
        flat = mask.reshape(-1, 3).astype(np.int32)
        uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
        dist = np.sqrt(((uniq[:, None, :] - table[None]) ** 2).sum(-1)).min(1)[inverse.ravel()]
        near = float((dist <= SNAP_TOLERANCE).mean())
        if near < SNAP_MIN_SHARE:
            raise InputError(
                f"This JPEG does not look like a colour mask: {1 - near:.0%} of its pixels are far from every legend "
                "colour, as in a photo. If it is a colour mask, JPEG compression changed its colours: save it as PNG "
                "(lossless) and upload it again. " + _HOW_TO_MAKE_A_MASK
            )
        idx = snap_to_palette(mask, table)
        ignore = self.ignore_index if self.ignore_index is not None else 0  # the ignore colour's row is K
        ids = np.where(idx == self.num_classes, ignore, idx)
        return ids.astype(np.int64), (
            f"Read as a colour mask saved as JPEG: JPEG compression had changed the colours of {share_unknown:.0%} "
            "of its pixels, so every pixel was snapped to the nearest legend colour. Save masks as PNG to keep "
            "them exact.")

    def flow(
        self, photo: Image.Image, steps: int, progress: ProgressFn = None, max_frames: int = MAX_FLOW_FRAMES
    ) -> tuple[list[tuple[Image.Image, str]], list[tuple[Image.Image, str]]]:
        """The ODE's intermediate states, rendered as pictures at the processing size.

        Returns (segmentation path photo t=0 -> mask t=1, synthesis path back from that predicted mask t=1 -> 0),
        each at most ``max_frames`` frames, evenly spaced, always with both ends.
        """
        steps = int(steps)
        calls = self.num_calls(steps)
        fwd: list[Image.Image] = []
        bwd: list[Image.Image] = []

        def half(offset):  # report the two integrations as one bar
            return None if progress is None else (lambda i, n: progress(offset + i, 2 * calls))

        def run_both():
            rec_f = lambda s: fwd.append(self._render(s)[0])  # noqa: E731 - render now: keep pictures, not states
            rec_b = lambda s: bwd.append(self._render(s)[0])  # noqa: E731
            seg = self.pipe.segment(
                photo, num_inference_steps=steps, output_type="np", match_input_resolution=False,
                callback_on_step_end=self._step_callback(half(0), 0, calls, rec_f),
            )
            start_grid = self.pipe.scheduler.time_grid.tolist()
            labels = seg.labels[0]
            self.pipe.synthesize(
                labels, num_inference_steps=steps, perturbation=0.0, output_type="np",
                callback_on_step_end=self._step_callback(half(calls), 0, calls, rec_b),
            )
            back_grid = self.pipe.scheduler.time_grid.tolist()
            size = labels.shape[::-1]
            # The start states are not passed to callbacks: rebuild them the way the pipeline does.
            x0 = torch.from_numpy(np.asarray(photo.resize(size, Image.BILINEAR), dtype=np.float32) / 127.5 - 1)
            first = self._render(self.pipe.image_to_state(x0.permute(2, 0, 1)[None].to(self.pipe.device)))[0]
            last = self._render(self.pipe.mask_to_state(
                self.pipe.codec.encode(torch.from_numpy(labels)[None].to(self.pipe.device))))[0]
            return first, last, start_grid, back_grid

        first, last, start_grid, back_grid = self.run(run_both)
        pics_f, pics_b = [first] + fwd, [last] + bwd

        def captions(grid, n):
            if self.pipe.scheduler.config.solver == "euler" and len(grid) == n:
                return [f"t = {t:.2f}" for t in grid]
            return [f"call {i}" for i in range(n)]

        def pick(pics, caps):
            keep = np.unique(np.round(np.linspace(0, len(pics) - 1, min(max_frames, len(pics)))).astype(int))
            return [(pics[i], caps[i]) for i in keep]

        return pick(pics_f, captions(start_grid, len(pics_f))), pick(pics_b, captions(back_grid, len(pics_b)))

    @torch.inference_mode()
    def _render(self, states: torch.Tensor) -> list[Image.Image]:
        x = self.pipe.render_states(states.to(self.pipe.device).float())
        arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]


_HOW_TO_MAKE_A_MASK = (
    "To make one: paint it in the 'Paint a mask' tab, or segment a photo in the Segment tab and download its "
    "label-id PNG, or click one of the examples."
)
