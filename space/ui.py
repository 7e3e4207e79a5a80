"""The Gradio Blocks app: Segment, Synthesize, Edit and Flow tabs around one SemFlowPipeline.

Named API endpoints (``gradio_client``): ``/segment``, ``/synthesize`` (uploaded mask), ``/synthesize_canvas``
(an ImageEditor value), ``/edit_predict``, ``/edit_synthesize``, ``/flow``.

Uploads are validated through a supported gradio path: the model events run with ``preprocess=False``, so
gradio hands each handler the raw payload; the handler lets :class:`space.uploads.UploadGate` decide whether it
names a file gradio uploaded for this app (or an example), opens it with the checks in ``space.inputs``, and
checks every number against the limits below. Every failure is a ``gr.Error`` with a readable message.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import html
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
from gradio.utils import get_upload_folder
from PIL import Image

from . import inputs
from .inputs import (InputError, editor_to_ids, fit_size, load_mask_file, load_photo_fitted, load_rgba,
                     release_memory, resize_nearest)
from .model import MAX_FLOW_FRAMES, SpaceModel
from .ood import OODCheck
from .disk import AppFiles, UploadBudget
from .uploads import UploadGate, example_files

logger = logging.getLogger("semflow.space")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

# ------------------------------------------------------------------------------------------------ limits
# In space/limits.py (ood.py reads them too); imported here under their old names.
from .limits import (  # noqa: E402,F401
    CANVAS_SIZE, MASK_MAX_SIDE, MAX_CLIENT_UPLOAD_BYTES, MAX_DISK_BYTES, MAX_FLOW_STEPS, MAX_JSON_BODY_BYTES,
    MAX_PIXELS, MAX_SAMPLES, MAX_SESSIONS, MAX_STEPS, MAX_SYNTHESIS_CALLS, MAX_UPLOAD_BODY_BYTES, MAX_UPLOAD_BYTES,
    SEED_MAX, WORK_MAX_SIDE,
)

CSS = """
.legend table { border-collapse: collapse; font-size: 0.9em; }
.legend td, .legend th { padding: 2px 8px; }
.swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #8888; vertical-align: middle; }
.brush-legend { display: flex; flex-wrap: wrap; gap: 2px 12px; font-size: 0.9em; margin-top: 4px; }
.brush-legend span.item { white-space: nowrap; }
.ood-warning { border: 2px solid #d97706; background: #fef3c7; color: #78350f; border-radius: 6px; padding: 6px 10px; }
.mask-note { border: 1px solid #2563eb88; background: #eff6ff; color: #1e3a8a; border-radius: 6px; padding: 4px 10px;
  font-size: 0.9em; }
.limits { font-size: 0.85em; opacity: 0.85; }
/* File names of downloads wrap instead of being cut to ".p" on narrow screens. */
#seg-file table.file-preview { table-layout: fixed; width: 100%; }
#seg-file td.filename { display: table-cell !important; }
#seg-file td.filename, #seg-file td.filename span { white-space: normal !important; overflow-wrap: anywhere;
  word-break: break-all; overflow: visible !important; text-overflow: clip !important; max-width: none !important; }
#seg-file td.filename span { display: inline !important; }
#seg-file td.download { width: 6em; white-space: nowrap; }
/* Galleries (Flow, Samples, Edit): every image visible at any width, no inner scroll box, no empty square boxes
   around 4:3 pictures, captions under the pictures instead of over them (issue 17 items 3 and 5). */
.semflow-gallery .grid-wrap { max-height: none !important; height: auto !important; overflow: visible !important; }
.semflow-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(104px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; }
.semflow-gallery.samples .grid-container { grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)) !important; }
.semflow-gallery .thumbnail-item { aspect-ratio: auto !important; height: auto !important; display: flex !important;
  flex-direction: column; }
.semflow-gallery .thumbnail-item img { width: 100% !important; height: auto !important; aspect-ratio: 4 / 3;
  object-fit: contain !important; }
.semflow-gallery .caption-label { position: static !important; max-width: none !important; border: none !important;
  background: none !important; opacity: 0.85; text-align: center; padding: 2px 0 !important; }
/* Results made from an earlier canvas stay, dimmed under a note, until the next run (issue 17 item 4): a
   canvas's change event can arrive after a run, so it marks instead of clearing. */
.semflow-results:has(.stale-note) .semflow-gallery img, .semflow-results:has(.stale-note) .semflow-stale-dim img {
  opacity: 0.4; filter: grayscale(0.6); }
/* The check behind the note is light and frequent (every stroke): no timer over the results for it. */
.semflow-results .stale-slot [data-testid=status-tracker] { display: none !important; }
.stale-note { border: 1px solid #6b7280; background: #f3f4f6; color: #1f2937; border-radius: 6px; padding: 4px 10px;
  font-size: 0.9em; }
/* Canvas labels: wrap instead of running under the toolbar on a phone. */
.semflow-canvas label, .semflow-canvas label span { white-space: normal !important; overflow: visible !important; }
/* ... and stop short of the editor's toolbar (zoom, undo, clear: about 180 px at the top right), wrapping onto a
   second line where the two do not fit side by side (a phone's width). */
.semflow-canvas label.float { max-width: calc(100% - 196px) !important; height: auto !important; }
"""


# The brush palette closes itself once a colour is picked (as a click outside it would), so the next stroke
# paints instead of only closing the palette.
JS = """
() => {
  document.addEventListener('click', (e) => {
    const swatch = e.target.closest && e.target.closest('.semflow-canvas menu.swatch button.color');
    if (!swatch) return;
    setTimeout(() => document.body.dispatchEvent(new MouseEvent('mousedown', {bubbles: true})), 60);
  }, true);
}
"""


def scroll_js(elem_id: str) -> str:
    """Browser-side, on a run button's click: bring the run's results (where its progress shows) into view when
    they are off screen or low on it, as on a phone, where they sit below the inputs and examples (issue 17 item
    3). On a wide screen they are already beside the button and nothing moves."""
    return (f"() => {{ const e = document.getElementById('{elem_id}'); if (!e) return; "
            "const top = e.getBoundingClientRect().top; "
            "if (top < 0 || top > window.innerHeight * 0.6) window.scrollBy({top: top - 12, behavior: 'instant'}); }")


STALE_NOTE = ("<div class='stale-note'>⟳ The canvas has changed since these results were made: they show the earlier "
              "mask. Press the button again to update them.</div>")


def _fingerprint(ids: np.ndarray) -> str:
    """Identifies a mask's label ids (to tell whether a canvas still shows the mask behind the results)."""
    ids = np.ascontiguousarray(ids, dtype=np.int32)
    return f"{ids.shape}:{hashlib.sha1(ids.tobytes()).hexdigest()}"


def palette_css(class_names: list[str]) -> str:
    """Class names next to the brush colours in the ImageEditor's palette (CSS only: one rule per swatch)."""
    rules = [
        ".semflow-canvas .wrap.padded:has(menu.swatch), .semflow-canvas .swatch-wrap, "
        ".semflow-canvas .swatch-container { height: auto !important; width: max-content !important; "
        "max-width: none !important; overflow: visible !important; justify-content: flex-start !important; }",
        ".semflow-canvas menu.swatch { display: grid !important; grid-template-columns: repeat(3, max-content); "
        "gap: 4px 4px; height: auto !important; width: auto !important; overflow: visible !important; "
        "background: var(--background-fill-primary); padding: 4px !important; }",
        ".semflow-canvas menu.swatch button.color { position: relative; overflow: visible !important; "
        "margin-right: 7.8em !important; }",
        ".semflow-canvas menu.swatch button.color::after { position: absolute; left: calc(100% + 4px); top: 50%; "
        "transform: translateY(-50%); white-space: nowrap; font-size: 12px; color: var(--body-text-color); "
        "pointer-events: none; }",
    ]
    rules.append("@media (max-width: 640px) { .semflow-canvas menu.swatch { grid-template-columns: "
                 "repeat(2, max-content); } .semflow-canvas menu.swatch button.color { margin-right: 6.6em !important; } "
                 ".semflow-canvas menu.swatch button.color::after { font-size: 11px; } }")
    for i, name in enumerate(class_names):
        label = f"{i} {name}".replace("\\", "").replace('"', "")
        rules.append(f'.semflow-canvas menu.swatch button.color:nth-child({i + 1})::after {{ content: "{label}"; }}')
    return "\n".join(rules)


def launch_kwargs(demo: Optional[gr.Blocks] = None) -> dict:
    """Arguments for ``demo.launch`` that belong to the app: its CSS (with the model's class names in the brush
    palette, which ``build_demo`` stores on the demo), its JS, the upload size limit (gradio's ``max_file_size``:
    larger uploads are refused with HTTP 413 before they reach the disk), the number of sessions gradio keeps in
    memory (``state_session_capacity``) and, for a demo from ``build_demo``, its disk budget (uploads make room
    before they are written) and the removal of its files at shutdown."""
    from starlette.middleware import Middleware

    from .body_limit import BodySizeLimit

    # A request body above the limit is answered 413 before it is read (a 300 MB JSON body used to be parsed
    # whole, peaking at 2 GB, before the handler's own "larger than 25 MB" check): FastAPI's `middleware`, passed
    # through gradio's `app_kwargs` (middleware cannot be added once the server has started).
    middleware = [Middleware(BodySizeLimit, max_json_bytes=MAX_JSON_BODY_BYTES,
                             max_upload_bytes=MAX_UPLOAD_BODY_BYTES)]
    app_kwargs = {"middleware": middleware}
    files = getattr(demo, "semflow_files", None)
    if files is not None:
        middleware.append(Middleware(UploadBudget, files=files, max_body_bytes=MAX_UPLOAD_BODY_BYTES))
        app_kwargs["lifespan"] = files.lifespan()
    return dict(css=getattr(demo, "semflow_css", CSS), js=JS, max_file_size=MAX_UPLOAD_BYTES, app_kwargs=app_kwargs,
                state_session_capacity=getattr(demo, "semflow_max_sessions", MAX_SESSIONS))


def user_errors(fn):
    """Bad input -> gr.Error with its message; anything unexpected -> gr.Error too, logged with traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (InputError, ValueError) as e:  # the pipeline's check_inputs speaks ValueError
            raise gr.Error(str(e), print_exception=False) from None
        except MemoryError:
            raise gr.Error("Out of memory: try a smaller image or fewer samples.") from None
        except Exception as e:  # noqa: BLE001 - a demo must answer, not crash
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Internal error ({type(e).__name__}). The app keeps running; try again.") from None

    return wrapper


def _progress_fn(progress, desc: str):
    if progress is None:
        return None
    return lambda i, n: progress((i, n), desc=desc, unit="network calls")


# ---------------------------------------------------------------------------------------- number inputs
def _number(value, name: str) -> float:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise InputError(f"{name} must be a number; got {value!r}.")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number; got {str(value)[:40]!r}.") from None
    if not math.isfinite(x):
        raise InputError(f"{name} must be a finite number; got {value!r}.")
    return x


def _int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        x = value  # exact, also beyond float precision
    else:
        f = _number(value, name)
        x = int(f) if f == math.floor(f) else None
    if x is None or not lo <= x <= hi:
        raise InputError(f"{name} must be a whole number from {lo} to {hi}; got {value!r}.")
    return x


def _float(value, name: str, lo: float, hi: float) -> float:
    x = _number(value, name)
    if not lo <= x <= hi:
        raise InputError(f"{name} must be between {lo:g} and {hi:g}; got {value!r}.")
    return x


# ------------------------------------------------------------------------------------------ output files
def _file(files: AppFiles, im: Image.Image | np.ndarray, stem: str = "image", jpeg: bool = False) -> str:
    """An output image as a file of our own (PNG, lossless; or JPEG for photo-like views, 5-10x faster to write).

    Returning paths rather than PIL images matters under concurrency: gradio caches PIL outputs by content
    hash and rewrites the cached file in place, so two requests with identical outputs (the same photo
    segmented twice at once) can serve each other a half-written file. Our files have unique names, live in
    gradio's cache folder (gradio serves them as they are, without hashing and copying each one) and count
    against the app's disk budget (``space.disk``).
    """
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    if jpeg:
        path = files.new_path(stem, ".jpg")
        im.save(path, quality=90)
    else:
        path = files.new_path(stem)
        im.save(path, compress_level=1)  # fast; these are served once
    files.add(path)
    return path


def _label_path(files: AppFiles, stem: str) -> str:
    """``<upload's name>_labels.png`` in a folder of its own, so a download keeps that clean name."""
    return os.path.join(files.new_folder("labels_"), f"{stem}_labels.png")


def _label_map_png(files: AppFiles, labels: np.ndarray, size: tuple[int, int], stem: str,
                   palette: np.ndarray) -> str:
    """The label map as a palette PNG at ``size`` (the upload's size): pixel value = class id, palette = the
    legend's colours. One file that shows in colour and reads back as ids (``np.asarray(Image.open(path))``)."""
    path = _label_path(files, stem)
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(palette)] = palette
    im.putpalette(pal.ravel().tolist())
    if im.size != tuple(size):
        im = im.resize(size, Image.NEAREST)
    im.save(path, compress_level=1)
    files.add(path)
    return path


def _label_png16(files: AppFiles, labels: np.ndarray, size: tuple[int, int], stem: str) -> str:
    """Label ids as a 16-bit single-channel PNG at ``size`` (models with more than 256 ids)."""
    path = _label_path(files, stem)
    im = Image.fromarray(labels.astype(np.uint16))
    if im.size != tuple(size):
        im = im.resize(size, Image.NEAREST)
    im.save(path, compress_level=1)
    files.add(path)
    return path


def _stem(payload) -> str:
    name = payload.get("orig_name") if isinstance(payload, dict) else None
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(str(name or "image")).stem)[:40].strip("_")
    return stem or "image"


def legend_html(model: SpaceModel, labels: Optional[np.ndarray] = None) -> str:
    """Class names and colours (and void, black in masks); with ``labels``, each class's share, largest first."""
    k = model.num_classes
    shares = None
    if labels is not None:
        counts = np.bincount(np.asarray(labels).ravel().clip(0, k), minlength=k + 1)[:k]
        shares = counts / max(1, np.asarray(labels).size)
    order = np.argsort(-shares, kind="stable") if shares is not None else range(k)
    rows = []
    for i in order:
        r, g, b = (int(c) for c in model.colors[i])
        share = f"<td style='text-align:right'>{shares[i]:.1%}</td>" if shares is not None else ""
        rows.append(
            f"<tr><td><span class='swatch' style='background:rgb({r},{g},{b})'></span></td>"
            f"<td>{i}</td><td>{html.escape(model.class_names[i])}</td><td><code>#{r:02x}{g:02x}{b:02x}</code></td>{share}</tr>"
        )
    if model.ignore_index is not None:
        r, g, b = (int(c) for c in model.ignore_color)
        rows.append(
            f"<tr class='void'><td><span class='swatch' style='background:rgb({r},{g},{b})'></span></td>"
            f"<td>{model.ignore_index}</td><td>void (not a class; never predicted)</td>"
            f"<td><code>#{r:02x}{g:02x}{b:02x}</code></td>{'<td></td>' if shares is not None else ''}</tr>"
        )
    head = "<tr><th></th><th>id</th><th>class</th><th>colour</th>" + ("<th>share</th>" if shares is not None else "") + "</tr>"
    return f"<div class='legend'><table>{head}{''.join(rows)}</table></div>"


def brush_legend_html(model: SpaceModel) -> str:
    """A compact strip of brush colours with their class names, for right under a canvas."""
    items = "".join(
        f"<span class='item'><span class='swatch' style='background:rgb({r},{g},{b})'></span> {i} "
        f"{html.escape(n)}</span>"
        for i, (n, (r, g, b)) in enumerate(zip(model.class_names, model.colors.tolist()))
    )
    return f"<div class='brush-legend' title='brush colours'>{items}</div>"


def _is_jpeg(path: str) -> bool:
    """Whether a file is a JPEG (lossy: a colour mask saved so has colours off the legend's)."""
    try:
        with Image.open(path) as im:
            return im.format in ("JPEG", "MPO")
    except Exception:  # noqa: BLE001 - reading the mask reports the problem
        return False


def _note_html(warning: Optional[str]) -> str:
    return f"<div class='ood-warning'>⚠ {html.escape(warning)}</div>" if warning else ""


def _blend(photo: np.ndarray, colors: np.ndarray, opacity: float) -> np.ndarray:
    a = float(np.clip(opacity, 0.0, 1.0))
    out = photo.astype(np.float32) * (1 - a)
    out += colors.astype(np.float32) * a
    return np.rint(out, out=out).astype(np.uint8)


def _confidence_image(conf: np.ndarray) -> np.ndarray:
    """Confidence in [0, 1] as a dark-to-bright heat map (low confidence = dark red, high = pale yellow)."""
    c = np.clip(conf, 0, 1).astype(np.float32)
    rgb = np.empty(c.shape + (3,), np.uint8)
    rgb[..., 0] = np.clip(c * 510.0, 0, 255)
    rgb[..., 1] = np.clip(c * 510.0 - 153.0, 0, 255)
    rgb[..., 2] = np.clip(c * 765.0 - 561.0, 0, 255)
    return rgb


class _Overlays:
    """The last few segmentations' photo and colour map, for re-blending the overlay (bounded memory)."""

    def __init__(self, capacity: int = 32):
        self.capacity = capacity
        self._items: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, photo: np.ndarray, colors: np.ndarray) -> str:
        key = secrets.token_hex(8)
        with self._lock:
            self._items[key] = (photo, colors)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key) -> Optional[tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            return self._items.get(key) if isinstance(key, str) else None


def build_demo(model: SpaceModel | str, concurrency_limit: int = 2, max_queue: int = 64, warmup: bool = True,
               ood_file: Optional[os.PathLike | str] = None, max_sessions: int = MAX_SESSIONS,
               max_disk_bytes: int = MAX_DISK_BYTES) -> gr.Blocks:
    """The whole app. ``model`` is a SpaceModel, a pipeline, or a path / Hub repo id. ``max_sessions`` and
    ``max_disk_bytes`` bound its memory and its files on disk (applied by ``launch_kwargs(demo)``)."""
    if not isinstance(model, SpaceModel):
        model = SpaceModel(model)
    if warmup:
        t0 = time.perf_counter()
        model.warmup()
        logger.info("model warmed up in %.1f s", time.perf_counter() - t0)
    k = model.num_classes
    hex_colors = model.hex_colors()
    beta_max = model.beta_max
    class_choices = [(f"{i}: {n}", i) for i, n in enumerate(model.class_names)]
    work_side = max(WORK_MAX_SIDE, model.processing_resolution)
    display_colors = np.concatenate([model.colors, model.ignore_color[None]])
    # Label ids fit a palette PNG (index = id, palette = legend colours) unless the model has over 256 ids.
    palette_ids = k <= 256 and (model.ignore_index is None or model.ignore_index < 256)
    label_palette = np.zeros((256, 3), np.uint8)
    label_palette[:k] = model.colors[:256]
    if palette_ids and model.ignore_index is not None:
        label_palette[model.ignore_index] = model.ignore_color
    ood = OODCheck.load(model.fingerprint(), **({"path": ood_file} if ood_file else {}))
    overlays = _Overlays()
    demo_ref: list[gr.Blocks] = []
    # The app's files (uploads, outputs, pasted images) within one disk budget; removed at shutdown (launch_kwargs).
    files = AppFiles(get_upload_folder(), max_disk_bytes, min(MAX_CLIENT_UPLOAD_BYTES, max_disk_bytes))
    gate = UploadGate(lambda: demo_ref[0].upload_file_set, get_upload_folder(), example_files(EXAMPLES_DIR),
                      MAX_UPLOAD_BYTES, files)
    out = functools.partial(_file, files)

    # ------------------------------------------------------------------------------------------- handlers
    def _photo(payload, what="photo"):
        with gate.reading(payload, what) as path:
            if path is None:
                raise InputError(f"Upload a {what} first.")
            img, full_size = load_photo_fitted(path, work_side)
        if full_size[0] * full_size[1] > 4 * img.size[0] * img.size[1]:
            release_memory()  # the full-size decode is gone: return its memory
        return img, full_size

    def _steps(value, name="Steps", hi=MAX_STEPS):
        return _int(value, name, 1, hi)

    @user_errors
    def segment(photo, steps, opacity, progress=gr.Progress()):
        steps = _steps(steps)
        opacity = _float(opacity, "Overlay opacity", 0.0, 1.0)
        img, full_size = _photo(photo)
        seg = model.segment(img, steps, _progress_fn(progress, "Segmenting"))
        labels = seg.labels.astype(np.uint8) if palette_ids else seg.labels
        colors = model.colorize(labels)
        arr = np.asarray(img)
        key = overlays.put(arr, colors)
        warning = ood.check(seg.confidence, steps, seg.labels)
        overlay = out(_blend(arr, colors, opacity), "overlay", jpeg=True)
        confidence = out(_confidence_image(seg.confidence), "confidence", jpeg=True)
        if palette_ids:  # one file: the colour label map *is* the label-id PNG, at the upload's size
            return (_label_map_png(files, labels, full_size, _stem(photo), label_palette), overlay, confidence,
                    legend_html(model, labels), _note_html(warning), key)
        return (out(colors, "labelmap"), overlay, confidence, legend_html(model, labels), _note_html(warning),
                key, _label_png16(files, labels, full_size, _stem(photo)))

    def reblend(key, opacity):
        item = overlays.get(key)
        try:
            a = _float(opacity, "Overlay opacity", 0.0, 1.0)
        except InputError:
            return gr.skip()
        if item is None:
            return gr.skip()
        return out(_blend(item[0], item[1], a), "overlay", jpeg=True)

    def _synth_args(steps, beta, n, seed) -> tuple[int, float, int, int]:
        """Checked before any file is read: a request over the limits costs nothing."""
        steps = _steps(steps)
        beta = _float(beta, "Perturbation β", 0.0, beta_max)
        n = _int(n, "Number of samples", 1, MAX_SAMPLES)
        seed = _int(seed if seed not in (None, "") else 0, "Seed", 0, SEED_MAX)
        calls = n * model.num_calls(steps)
        if calls > MAX_SYNTHESIS_CALLS:
            raise InputError(f"That is {n} samples x {model.num_calls(steps)} network calls = {calls}; the limit is "
                             f"{MAX_SYNTHESIS_CALLS} per request. Use fewer samples or steps.")
        return steps, beta, n, seed

    def _synth(ids, args, progress, what="Synthesizing"):
        steps, beta, n, seed = args
        images = model.synthesize(ids, steps, beta, n, seed, _progress_fn(progress, what))
        gallery = [(out(im, "sample"), f"seed {seed}, sample {i + 1}") for i, im in enumerate(images)]
        return gallery, out(model.colorize(ids), "mask")

    def _read_mask(payload) -> tuple[np.ndarray, str]:
        """Label ids of an uploaded mask and a note on how the app read it (shown under the mask input)."""
        with gate.reading(payload, "mask") as path:
            if path is None:
                raise InputError("Upload a mask first: a label-id PNG or a colour-coded mask in the legend's "
                                 "colours.")
            kind, mask = load_mask_file(path, MASK_MAX_SIDE, label_colors=display_colors)
            lossy = _is_jpeg(path)
        release_memory()
        ids, note = model.read_mask(kind, mask, lossy=lossy)
        if note is None and kind == "ids":
            present = np.unique(ids)
            names = ", ".join(model.class_names[i] for i in present if 0 <= i < k)
            note = (f"Read as a label-id mask (pixel value = class id; a plain label-id PNG looks black in most "
                    f"viewers): {names}. Shown in the legend's colours below.")
        elif note is None:
            note = "Read as a colour-coded mask in the legend's colours."
        return ids, note

    def _mask_ids(payload):
        return _read_mask(payload)[0]

    @user_errors
    def synthesize(mask, steps, perturbation, seed, num_samples, progress=gr.Progress()):
        args = _synth_args(steps, perturbation, num_samples, seed)
        return _synth(_mask_ids(mask), args, progress)

    def preview_mask(mask):
        """The uploaded mask as the app reads it, in the legend's colours (a label-id PNG looks black as is), and
        a note saying how it was read; a file that is no mask gets its message at once, under the input."""
        if mask is None:
            return None, ""
        try:
            ids, note = _read_mask(mask)
            return out(model.colorize(ids), "mask"), f"<div class='mask-note'>{html.escape(note)}</div>"
        except InputError as e:
            return None, _note_html(str(e))
        except Exception:  # noqa: BLE001 - Synthesize reports it with the full message
            logger.exception("mask preview failed")
            return None, _note_html("This file could not be read as a mask.")

    def _editor_arrays(payload) -> dict:
        arrays, target = {"background": None, "layers": [], "composite": None}, None

        def load(path):
            nonlocal target
            arr = load_rgba(path)
            if target is None:
                target = fit_size(arr.shape[1::-1], MASK_MAX_SIDE)
            return resize_nearest(arr, target)

        with gate.reading_editor(payload) as paths:
            if paths["background"] is not None:
                arrays["background"] = load(paths["background"])
            arrays["layers"] = [load(p) for p in paths["layers"]]
            if paths["composite"] is not None:
                arrays["composite"] = load(paths["composite"])
        release_memory()
        return arrays

    def _canvas_ids(editor, background_class) -> np.ndarray:
        bg = _int(background_class, "Background class", 0, k - 1)
        return editor_to_ids(_editor_arrays(editor), model.colors, bg)

    @user_errors
    def synthesize_canvas(editor, background_class, steps, perturbation, seed, num_samples, progress=gr.Progress()):
        _int(background_class, "Background class", 0, k - 1)
        args = _synth_args(steps, perturbation, num_samples, seed)
        ids = _canvas_ids(editor, background_class)
        return (*_synth(ids, args, progress), _fingerprint(ids))

    def _edit_ids(editor) -> np.ndarray:
        value = _editor_arrays(editor)
        if value["background"] is None:
            raise InputError("Predict a mask from a photo first (step 1), then repaint it.")
        return editor_to_ids(value, model.colors, 0)

    def stale_note(ids_of, *inputs_and_fingerprint):
        """The stale note when the canvas no longer shows the mask behind the results on screen (fingerprint None:
        no results from a canvas). It compares contents, not the order of events, so a change event that lands
        after a run, carrying the canvas the run used, leaves the results as they are."""
        *inputs, fingerprint = inputs_and_fingerprint
        if fingerprint is None:
            return ""
        try:
            same = _fingerprint(ids_of(*inputs)) == fingerprint
        except Exception:  # noqa: BLE001 - an emptied or unreadable canvas no longer shows that mask
            same = False
        return "" if same else STALE_NOTE

    @user_errors
    def edit_predict(photo, steps, progress=gr.Progress()):
        steps = _steps(steps, "Segmentation steps")
        img, _ = _photo(photo)
        seg = model.segment(img, steps, _progress_fn(progress, "Predicting the mask"))
        warning = ood.check(seg.confidence, steps, seg.labels)
        mask = out(model.colorize(seg.labels), "mask")
        return {"background": mask, "layers": [], "composite": mask}, out(img, "photo"), _note_html(warning)

    @user_errors
    def edit_synthesize(editor, steps, perturbation, seed, num_samples, progress=gr.Progress()):
        args = _synth_args(steps, perturbation, num_samples, seed)
        ids = _edit_ids(editor)
        return (*_synth(ids, args, progress), _fingerprint(ids))

    @user_errors
    def flow(photo, steps, progress=gr.Progress()):
        steps = _steps(steps, "Steps", MAX_FLOW_STEPS)
        img, _ = _photo(photo)
        forward, backward = model.flow(img, steps, _progress_fn(progress, "Integrating the ODE"))
        return ([(out(im, "flow"), c) for im, c in forward], [(out(im, "flow"), c) for im, c in backward])

    # ---------------------------------------------------------------------------------------------- layout
    def synthesis_settings(prefix: str):
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=min(model.synthesis_steps, MAX_STEPS), step=1,
                              label="Steps (Euler)", elem_id=f"{prefix}-steps")
            beta = gr.Slider(0.0, beta_max, value=model.synthesis_perturbation, step=0.001,
                             label="Perturbation β (variety)",
                             info=f"U(-β, β) added to the mask; at most {beta_max:.3f} so no pixel changes class",
                             elem_id=f"{prefix}-beta")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id=f"{prefix}-seed")
            n = gr.Slider(1, MAX_SAMPLES, value=2, step=1, label="Samples", elem_id=f"{prefix}-n",
                          info=f"samples x steps at most {MAX_SYNTHESIS_CALLS}")
        return steps, beta, seed, n

    id_examples = [str(p) for p in sorted(EXAMPLES_DIR.glob("street_[0-9].png"))]
    color_examples = [str(p) for p in sorted(EXAMPLES_DIR.glob("street_[0-9]_color.png"))]
    photo_examples = [str(p) for p in sorted(EXAMPLES_DIR.glob("photo_[0-9].png"))]
    legend = legend_html(model)
    domain = ood.calibration.get("domain") if ood.calibrated else None
    domain = f"**Domain:** {html.escape(domain)}; " if domain else "**Domain:** "
    limits = (f"Limits: uploads up to {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_PIXELS // 10**6} megapixels; photos are "
              f"processed and shown at up to {work_side} px (the model itself works at "
              f"{model.processing_resolution} px; the label-id PNG comes back at the upload's size); masks and "
              f"synthesized images up to {MASK_MAX_SIDE} px; at most {MAX_STEPS} steps, {MAX_SAMPLES} samples and "
              f"{MAX_SYNTHESIS_CALLS} network calls (samples x steps) per request; Flow shows at most "
              f"{MAX_FLOW_FRAMES} frames per direction.")

    with gr.Blocks(title="SemFlow: segmentation and synthesis with one flow", delete_cache=(1800, 3600)) as demo:
        demo_ref.append(demo)
        gr.Markdown(
            "# SemFlow\nOne rectified-flow ODE between photos (t = 0) and semantic masks (t = 1): integrate "
            "forward to **segment**, backward from a slightly perturbed mask to **synthesize**.\n\n"
            f"**Model:** `{html.escape(model.name)}`, {k} classes: {html.escape(', '.join(model.class_names))}. "
            f"{domain}the model only knows these classes in scenes like its training data; "
            f"{ood.describe()}.",
            elem_id="header",
        )
        gr.Markdown(limits, elem_classes=["limits"], elem_id="limits")
        with gr.Tabs():
            # ------------------------------------------------------------------------------------ Segment
            with gr.Tab("Segment", id="segment"):
                with gr.Row():
                    with gr.Column(scale=1):
                        seg_in = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                          label="Photo", elem_id="seg-input")
                        seg_steps = gr.Slider(1, MAX_STEPS, value=model.default_steps, step=1, label="Steps",
                                              info="1 step is one network call; more steps follow the ODE's curve",
                                              elem_id="seg-steps")
                        seg_btn = gr.Button("Segment", variant="primary", elem_id="seg-run")
                        if photo_examples:
                            gr.Examples(photo_examples, inputs=[seg_in], label="Photos synthesized by the model",
                                        elem_id="seg-examples")
                        seg_legend = gr.HTML(legend, label="Legend with class shares", elem_id="seg-legend")
                    with gr.Column(scale=2, elem_id="seg-results"):
                        seg_note = gr.HTML("", label="Out-of-domain warning", elem_id="seg-note")
                        with gr.Row():
                            seg_map = gr.Image(label="Label map (class-id PNG)" if palette_ids else "Label map",
                                               format="png", interactive=False, elem_id="seg-map")
                            seg_overlay = gr.Image(label="Overlay", interactive=False,
                                                   elem_id="seg-overlay")
                        if palette_ids:
                            gr.Markdown("The label map's pixel values are the class ids (its palette is the legend's "
                                        "colours), at the photo's full size: download it with ⇣ for the label ids.",
                                        elem_classes=["limits"], elem_id="seg-map-note")
                        seg_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity",
                                                elem_id="seg-opacity")
                        with gr.Row():
                            seg_conf = gr.Image(label="Confidence (dark = unsure)", interactive=False,
                                                elem_id="seg-conf")
                            seg_file = None if palette_ids else gr.File(
                                label="Label-id PNG (16-bit class id per pixel, input size)", interactive=False,
                                elem_id="seg-file")
                seg_state = gr.State()

            # --------------------------------------------------------------------------------- Synthesize
            with gr.Tab("Synthesize", id="synthesize"):
                with gr.Row():
                    with gr.Column(scale=1):
                        with gr.Tabs():
                            with gr.Tab("Upload a mask", id="upload"):
                                syn_in = gr.Image(
                                    type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                    label="Mask: label-id PNG, or colours from the legend", elem_id="syn-input",
                                )
                                syn_note = gr.HTML("", label="How the mask was read", elem_id="syn-note")
                                syn_preview = gr.Image(label="The mask as the app reads it (legend colours)",
                                                       format="png", interactive=False, height=200,
                                                       elem_id="syn-preview")
                                syn_btn = gr.Button("Synthesize", variant="primary", elem_id="syn-run")
                                gr.Examples(id_examples + color_examples, inputs=[syn_in], elem_id="syn-examples",
                                            label="Drawn street layouts (label-id palette PNGs, then RGB colour masks)")
                            with gr.Tab("Paint a mask", id="paint"):
                                canvas = gr.ImageEditor(
                                    label="Paint a mask (one brush per class)",
                                    type="numpy", image_mode="RGBA", sources=["upload"], format="png",
                                    canvas_size=CANVAS_SIZE, transforms=[], layers=False,
                                    brush=gr.Brush(colors=hex_colors, default_color=hex_colors[0],
                                                   color_mode="fixed", default_size=12),
                                    elem_id="syn-canvas", elem_classes=["semflow-canvas"],
                                )
                                gr.HTML(brush_legend_html(model), elem_id="syn-brush-legend")
                                gr.Markdown("Unpainted pixels get the background class below.", elem_classes=["limits"])
                                canvas_bg = gr.Dropdown(class_choices, value=0, label="Background class (unpainted)",
                                                        elem_id="syn-bg")
                                canvas_btn = gr.Button("Synthesize from canvas", variant="primary",
                                                       elem_id="syn-canvas-run")
                        syn_steps, syn_beta, syn_seed, syn_n = synthesis_settings("syn")
                        gr.HTML(legend, elem_id="syn-legend")
                    with gr.Column(scale=1, elem_id="syn-results", elem_classes=["semflow-results"]):
                        syn_stale = gr.HTML("", label="Stale results", elem_id="syn-stale",
                                            elem_classes=["stale-slot"])
                        syn_gallery = gr.Gallery(label="Samples", columns=2, height="auto", object_fit="contain",
                                                 format="png", elem_id="syn-gallery",
                                                 elem_classes=["semflow-gallery", "samples"])
                        syn_mask = gr.Image(label="Mask used (colour-coded)", format="png", interactive=False,
                                            elem_id="syn-mask", elem_classes=["semflow-stale-dim"])
                # The canvas mask behind the samples on screen (None when they are not from the canvas).
                syn_fp = gr.State()

            # --------------------------------------------------------------------------------------- Edit
            with gr.Tab("Edit", id="edit"):
                gr.Markdown("**1.** Upload a photo and predict its mask. **2.** Repaint regions on the mask with the "
                            "class brushes (e.g. turn road into pavement, add a car). **3.** Synthesize new photos "
                            "with that layout.")
                with gr.Row():
                    with gr.Column(scale=1):
                        edit_in = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                           label="Photo", elem_id="edit-input")
                        edit_seg_steps = gr.Slider(1, MAX_STEPS, value=model.default_steps, step=1,
                                                   label="Segmentation steps")
                        edit_predict_btn = gr.Button("1. Predict mask", variant="primary", elem_id="edit-predict")
                        if photo_examples:
                            gr.Examples(photo_examples, inputs=[edit_in], elem_id="edit-examples")
                        edit_photo = gr.Image(label="Photo (as segmented)", interactive=False, elem_id="edit-photo")
                    with gr.Column(scale=2, elem_id="edit-work"):
                        edit_note = gr.HTML("", label="Out-of-domain warning", elem_id="edit-note")
                        edit_canvas = gr.ImageEditor(
                            label="2. Repaint the predicted mask", type="numpy", image_mode="RGBA", sources=[],
                            format="png", transforms=[], layers=False,
                            brush=gr.Brush(colors=hex_colors, default_color=hex_colors[0], color_mode="fixed",
                                           default_size=12),
                            elem_id="edit-canvas", elem_classes=["semflow-canvas"],
                        )
                        gr.HTML(brush_legend_html(model), elem_id="edit-brush-legend")
                        edit_steps, edit_beta, edit_seed, edit_n = synthesis_settings("edit")
                        edit_btn = gr.Button("3. Synthesize", variant="primary", elem_id="edit-run")
                        with gr.Column(elem_id="edit-results", elem_classes=["semflow-results"]):
                            edit_stale = gr.HTML("", label="Stale results", elem_id="edit-stale",
                                                 elem_classes=["stale-slot"])
                            edit_gallery = gr.Gallery(label="New photos with your layout", columns=2, height="auto",
                                                      object_fit="contain", format="png", elem_id="edit-gallery",
                                                      elem_classes=["semflow-gallery", "samples"])
                            edit_mask = gr.Image(label="Mask used", format="png", interactive=False,
                                                 elem_id="edit-mask", elem_classes=["semflow-stale-dim"])
                edit_fp = gr.State()

            # --------------------------------------------------------------------------------------- Flow
            with gr.Tab("Flow", id="flow"):
                gr.Markdown("The ODE's intermediate states: the photo flows into its mask (segmentation, "
                            "t: 0 → 1), then the predicted mask flows back into a photo (synthesis, t: 1 → 0). "
                            f"At most {MAX_FLOW_FRAMES} evenly spaced frames are shown per direction, always with "
                            "both ends.")
                with gr.Row():
                    with gr.Column(scale=1):
                        flow_in = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                           label="Photo", elem_id="flow-input")
                        flow_steps = gr.Slider(1, MAX_FLOW_STEPS, value=8, step=1, label="Steps",
                                               elem_id="flow-steps")
                        flow_btn = gr.Button("Show the flow", variant="primary", elem_id="flow-run")
                        if photo_examples:
                            gr.Examples(photo_examples, inputs=[flow_in], elem_id="flow-examples")
                    with gr.Column(scale=3, elem_id="flow-results"):
                        gr.Markdown("**Segmentation:** photo (t = 0) → mask (t = 1)")
                        flow_fwd = gr.Gallery(show_label=False, label="Segmentation", columns=6, height="auto",
                                              format="png", object_fit="contain", allow_preview=True,
                                              elem_id="flow-forward", elem_classes=["semflow-gallery"])
                        gr.Markdown("**Synthesis:** mask (t = 1) → photo (t = 0)")
                        flow_bwd = gr.Gallery(show_label=False, label="Synthesis", columns=6, height="auto",
                                              format="png", object_fit="contain", allow_preview=True,
                                              elem_id="flow-backward", elem_classes=["semflow-gallery"])

        # -------------------------------------------------------------------------------------------- events
        # Model events get the raw payloads (preprocess=False): the handlers check files and numbers themselves.
        run = dict(concurrency_id="model", concurrency_limit=concurrency_limit, preprocess=False)
        quick = dict(queue=False, api_visibility="private", show_progress="hidden")
        # Whether the results still match the canvas: a light check, the latest canvas only.
        stale = dict(api_visibility="private", preprocess=False, concurrency_id="stale",
                     concurrency_limit=concurrency_limit, trigger_mode="always_last", show_progress="hidden")

        def clear(*values):  # the previous run's outputs go before a new run: no stale results next to an error
            return lambda: list(values) if len(values) > 1 else values[0]

        def syn_stale_note(editor, background_class, fingerprint):
            return stale_note(_canvas_ids, editor, background_class, fingerprint)

        def edit_stale_note(editor, fingerprint):
            return stale_note(_edit_ids, editor, fingerprint)

        # A run button first brings its results into view (in the browser, no server round trip), so the progress
        # and then the results show where the user looks, also on a phone, where they sit below the inputs.
        for button, results in ((seg_btn, "seg-results"), (syn_btn, "syn-results"), (canvas_btn, "syn-results"),
                                (edit_predict_btn, "edit-work"), (edit_btn, "edit-results"),
                                (flow_btn, "flow-results")):
            button.click(None, None, None, js=scroll_js(results), queue=False)

        seg_outputs = [seg_map, seg_overlay, seg_conf, seg_legend, seg_note, seg_state]
        seg_outputs += [seg_file] if seg_file else []
        seg_btn.click(clear(None, None, None, legend, "", None, *([None] if seg_file else [])), None, seg_outputs,
                      **quick).then(
            segment, [seg_in, seg_steps, seg_opacity], seg_outputs, api_name="segment",
            show_progress_on=[seg_map, seg_overlay, seg_conf], **run)
        for listener in (seg_opacity.input, seg_opacity.release):
            listener(reblend, [seg_state, seg_opacity], [seg_overlay], api_visibility="private",
                     concurrency_limit=None, trigger_mode="always_last", show_progress="hidden")
        # Stale results go as soon as their input changes (issue 17 item 4): a new photo or mask clears the outputs
        # (and any error badge) that belong to the previous one.
        seg_in.change(clear(None, None, None, legend, "", None, *([None] if seg_file else [])), None, seg_outputs,
                      **quick)
        syn_in.change(clear(None, None, "", None, None, ""), None,
                      [syn_gallery, syn_mask, syn_stale, syn_fp, syn_preview, syn_note], **quick).then(
            preview_mask, [syn_in], [syn_preview, syn_note], api_visibility="private", preprocess=False,
            concurrency_id="preview", concurrency_limit=concurrency_limit, show_progress="minimal")
        edit_in.change(clear(None, None, None, None, "", "", None), None,
                       [edit_canvas, edit_photo, edit_gallery, edit_mask, edit_note, edit_stale, edit_fp], **quick)
        flow_in.change(clear(None, None), None, [flow_fwd, flow_bwd], **quick)
        # A canvas edit marks the results made from the canvas as stale (a note, the images dimmed) rather than
        # clearing them: the editor sends its change event only after uploading the strokes, which under load can
        # be after a run that already used them. The note compares the canvas with the mask the results came
        # from, so such a late event leaves them unmarked; a check after each run catches strokes made during it.
        for listener in (canvas.change, canvas_bg.change):
            listener(syn_stale_note, [canvas, canvas_bg, syn_fp], [syn_stale], **stale)
        edit_canvas.change(edit_stale_note, [edit_canvas, edit_fp], [edit_stale], **stale)
        syn_btn.click(clear(None, "", None), None, [syn_gallery, syn_stale, syn_fp], **quick).then(
            synthesize, [syn_in, syn_steps, syn_beta, syn_seed, syn_n], [syn_gallery, syn_mask],
            api_name="synthesize", **run)
        canvas_btn.click(clear(None, None, "", None), None, [syn_gallery, syn_mask, syn_stale, syn_fp], **quick).then(
            synthesize_canvas, [canvas, canvas_bg, syn_steps, syn_beta, syn_seed, syn_n], [syn_gallery, syn_mask,
                                                                                            syn_fp],
            api_name="synthesize_canvas", **run).then(
            syn_stale_note, [canvas, canvas_bg, syn_fp], [syn_stale], **stale)
        edit_predict_btn.click(clear(None, None, "", "", None), None, [edit_gallery, edit_mask, edit_note, edit_stale,
                                                                       edit_fp], **quick).then(
            edit_predict, [edit_in, edit_seg_steps], [edit_canvas, edit_photo, edit_note], api_name="edit_predict",
            **run)
        edit_btn.click(clear(None, None, "", None), None, [edit_gallery, edit_mask, edit_stale, edit_fp], **quick).then(
            edit_synthesize, [edit_canvas, edit_steps, edit_beta, edit_seed, edit_n], [edit_gallery, edit_mask,
                                                                                       edit_fp],
            api_name="edit_synthesize", **run).then(
            edit_stale_note, [edit_canvas, edit_fp], [edit_stale], **stale)
        flow_btn.click(clear(None, None), None, [flow_fwd, flow_bwd], **quick).then(
            flow, [flow_in, flow_steps], [flow_fwd, flow_bwd], api_name="flow", **run)

    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    demo.semflow_css = CSS + "\n" + palette_css(model.class_names)
    demo.semflow_files, demo.semflow_max_sessions = files, int(max_sessions)
    return demo


def launch(model: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **kwargs):
    demo = build_demo(model)
    return demo.launch(server_name=host, server_port=port, share=share, **{**launch_kwargs(demo), **kwargs})
