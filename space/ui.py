"""The Gradio Blocks app: Segment, Synthesize, Edit and Flow tabs around one SemFlowPipeline.

Named API endpoints (``gradio_client``): ``/segment``, ``/synthesize`` (uploaded mask), ``/synthesize_canvas``
(an ImageEditor value), ``/flow``. Every handler turns bad input into ``gr.Error`` with a readable message.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import tempfile
import time
import types
from pathlib import Path
from typing import Optional

import gradio as gr
import numpy as np
from PIL import Image

from .inputs import InputError, editor_to_ids, load_mask_file, load_photo
from .model import SpaceModel

logger = logging.getLogger("semflow.space")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
DISPLAY_MAX_SIDE = 2048  # result images shown in the page; the label-id PNG download keeps the input's size
EDIT_MAX_SIDE = 1024  # the Edit canvas: big enough to paint on, small enough for the browser
MAX_SAMPLES = 8
MAX_STEPS = 25
CANVAS_SIZE = (480, 360)  # CamVid's frame (W, H)

CSS = """
.legend table { border-collapse: collapse; font-size: 0.9em; }
.legend td { padding: 2px 8px; }
.legend .swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #8888; vertical-align: middle; }
"""


def _raw_path_preprocess(self, payload):
    """Hands the raw uploaded file path to the handler, which validates the file itself.

    ``gr.Image`` opens the file with PIL while preprocessing, so a non-image or corrupt upload would fail before
    our code runs, with a message the user cannot act on.
    """
    if payload is None:
        return None
    if payload.path:
        return str(payload.path)
    try:  # base64 data URL (clipboard paste): let gradio decode it, but never with a traceback
        return gr.Image.preprocess(self, payload)
    except Exception as e:  # noqa: BLE001
        raise gr.Error(f"Could not read the pasted image ({e}).")


def _upload(**kwargs) -> gr.Image:
    """An image upload whose handler receives the file path unopened (see _raw_path_preprocess).

    Patched on the instance rather than subclassed: gradio writes a .pyi stub next to the module of every
    Component subclass, and the browser side stays the stock Image component either way.
    """
    image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs)
    image.preprocess = types.MethodType(_raw_path_preprocess, image)
    return image


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
            raise gr.Error(f"Internal error ({type(e).__name__}: {e}). The app keeps running; try again.") from None

    return wrapper


def _progress_fn(progress: Optional[gr.Progress], desc: str):
    if progress is None:
        return None
    return lambda i, n: progress((i, n), desc=desc, unit="network calls")


def _display(im: Image.Image) -> Image.Image:
    """Results for the page: at most DISPLAY_MAX_SIDE on the long edge (huge inputs stay responsive)."""
    w, h = im.size
    s = DISPLAY_MAX_SIDE / max(w, h)
    if s >= 1:
        return im
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST if im.mode == "P" else Image.BILINEAR)


_TMP = Path(tempfile.gettempdir()) / "semflow-space"
_last_cleanup = [0.0]


def _tmp_png(stem: str) -> str:
    _TMP.mkdir(parents=True, exist_ok=True)
    now = time.time()
    if now - _last_cleanup[0] > 300:  # gradio copies outputs into its own cache, so ours can go after a while
        _last_cleanup[0] = now
        for old in _TMP.glob("*.png"):
            try:
                if now - old.stat().st_mtime > 3600:
                    old.unlink()
            except OSError:
                pass
    fd, path = tempfile.mkstemp(prefix=f"{stem}_", suffix=".png", dir=_TMP)
    os.close(fd)
    return path


def _file(im: Image.Image, stem: str = "image") -> str:
    """An output image as a PNG file of our own.

    Returning paths rather than PIL images matters under concurrency: gradio caches PIL outputs by content
    hash and rewrites the cached file in place, so two requests with identical outputs (the same photo
    segmented twice at once) can serve each other a half-written file. File outputs are copied into the cache
    atomically.
    """
    path = _tmp_png(stem)
    im.save(path, compress_level=1)  # fast; these are served once
    return path


def _label_png(labels: np.ndarray, stem: str) -> str:
    """The raw label ids as a single-channel PNG (8-bit, 16-bit if K > 256) at the input's size."""
    path = _tmp_png(f"{stem}_labels")
    arr = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels.astype(np.uint16)
    Image.fromarray(arr).save(path)
    return path


def legend_html(model: SpaceModel, labels: Optional[np.ndarray] = None) -> str:
    """Class names and colours; with ``labels``, each class's share of the image, largest first."""
    k = model.num_classes
    shares = None
    if labels is not None:
        counts = np.bincount(labels.ravel().clip(0, k), minlength=k + 1)[:k]
        shares = counts / max(1, labels.size)
    order = np.argsort(-shares, kind="stable") if shares is not None else range(k)
    rows = []
    for i in order:
        r, g, b = (int(c) for c in model.colors[i])
        share = f"<td style='text-align:right'>{shares[i]:.1%}</td>" if shares is not None else ""
        rows.append(
            f"<tr><td><span class='swatch' style='background:rgb({r},{g},{b})'></span></td>"
            f"<td>{i}</td><td>{html.escape(model.class_names[i])}</td><td><code>#{r:02x}{g:02x}{b:02x}</code></td>{share}</tr>"
        )
    head = "<tr><th></th><th>id</th><th>class</th><th>colour</th>" + ("<th>share</th>" if shares is not None else "") + "</tr>"
    return f"<div class='legend'><table>{head}{''.join(rows)}</table></div>"


def _blend(photo: np.ndarray, colors: np.ndarray, opacity: float) -> Image.Image:
    a = float(np.clip(opacity, 0.0, 1.0))
    return Image.fromarray(((1 - a) * photo.astype(np.float32) + a * colors.astype(np.float32)).round().astype(np.uint8))


def _confidence_image(conf: np.ndarray) -> Image.Image:
    """Confidence in [0, 1] as a dark-to-bright heat map (low confidence = dark red, high = pale yellow)."""
    c = np.clip(conf, 0, 1)
    rgb = np.stack([np.clip(c * 2.0, 0, 1), np.clip(c * 2.0 - 0.6, 0, 1), np.clip(c * 3.0 - 2.2, 0, 1)], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def build_demo(model: SpaceModel | str, concurrency_limit: int = 2, max_queue: int = 64) -> gr.Blocks:
    """The whole app. ``model`` is a SpaceModel, a pipeline, or a path / Hub repo id."""
    if not isinstance(model, SpaceModel):
        model = SpaceModel(model)
    k = model.num_classes
    hex_colors = model.hex_colors()
    beta_max = round(model.max_perturbation, 4)
    beta_default = min(0.05, beta_max)
    class_choices = [(f"{i}: {n}", i) for i, n in enumerate(model.class_names)]

    # ------------------------------------------------------------------------------------------- handlers
    @user_errors
    def segment(photo_path, steps, opacity, progress=gr.Progress()):
        if photo_path is None:
            raise InputError("Upload a photo first.")
        photo = load_photo(photo_path)
        seg = model.segment(photo, int(steps), _progress_fn(progress, "Segmenting"))
        shown = _display(photo)
        colors_full = model.colorize(seg.labels)
        color_map = _display(Image.fromarray(colors_full))
        colors = np.asarray(color_map.resize(shown.size, Image.NEAREST))
        overlay = _blend(np.asarray(shown), colors, opacity)
        conf = _display(_confidence_image(seg.confidence))
        stem = Path(photo_path).stem[:40] or "image"
        state = {"photo": np.asarray(shown), "colors": colors}
        return (_file(color_map, "labelmap"), _file(overlay, "overlay"), _file(conf, "confidence"),
                legend_html(model, seg.labels), _label_png(seg.labels, stem), state)

    def reblend(state, opacity):
        if not state:
            return gr.skip()
        return _file(_blend(state["photo"], state["colors"], opacity), "overlay")

    def _synth(ids_or_colors, steps, beta, n, seed, progress, what="Synthesizing"):
        n = int(n)
        if not 1 <= n <= MAX_SAMPLES:
            raise InputError(f"Number of samples must be between 1 and {MAX_SAMPLES}; got {n}.")
        ids = model.labels_from_mask(ids_or_colors)
        images = model.synthesize(ids, int(steps), float(beta), n, int(seed or 0), _progress_fn(progress, what))
        gallery = [(_file(im, "sample"), f"seed {int(seed or 0)}, sample {i + 1}") for i, im in enumerate(images)]
        return gallery, _file(Image.fromarray(model.colorize(ids)), "mask")

    @user_errors
    def synthesize(mask_path, steps, perturbation, seed, num_samples, progress=gr.Progress()):
        if mask_path is None:
            raise InputError("Upload a mask first: a label-id PNG or a colour-coded mask in the legend's colours.")
        kind, mask = load_mask_file(mask_path)
        return _synth(mask, steps, perturbation, num_samples, seed, progress)

    @user_errors
    def synthesize_canvas(editor, background_class, steps, perturbation, seed, num_samples, progress=gr.Progress()):
        ids = editor_to_ids(editor, model.colors, int(background_class))
        return _synth(ids, steps, perturbation, num_samples, seed, progress)

    @user_errors
    def edit_predict(photo_path, steps, progress=gr.Progress()):
        if photo_path is None:
            raise InputError("Upload a photo first.")
        photo = load_photo(photo_path)
        w, h = photo.size
        s = min(1.0, EDIT_MAX_SIDE / max(w, h))
        if s < 1:
            photo = photo.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
        seg = model.segment(photo, int(steps), _progress_fn(progress, "Predicting the mask"))
        mask = _file(Image.fromarray(model.colorize(seg.labels)), "mask")
        return {"background": mask, "layers": [], "composite": mask}, _file(photo, "photo")

    @user_errors
    def edit_synthesize(editor, steps, perturbation, seed, num_samples, progress=gr.Progress()):
        if not editor or editor.get("background") is None:
            raise InputError("Predict a mask from a photo first (step 1), then repaint it.")
        ids = editor_to_ids(editor, model.colors, 0)
        return _synth(ids, steps, perturbation, num_samples, seed, progress)

    @user_errors
    def flow(photo_path, steps, progress=gr.Progress()):
        if photo_path is None:
            raise InputError("Upload a photo first.")
        photo = load_photo(photo_path)
        forward, backward = model.flow(photo, int(steps), _progress_fn(progress, "Integrating the ODE"))
        return ([(_file(im, "flow"), c) for im, c in forward], [(_file(im, "flow"), c) for im, c in backward])

    # ---------------------------------------------------------------------------------------------- layout
    def synthesis_settings(prefix: str):
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=model.default_steps, step=1, label="Steps (Euler)",
                              elem_id=f"{prefix}-steps")
            beta = gr.Slider(0.0, beta_max, value=beta_default, step=0.005, label="Perturbation β (variety)",
                             info=f"U(-β, β) added to the mask; at most {beta_max} so no pixel changes class",
                             elem_id=f"{prefix}-beta")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id=f"{prefix}-seed")
            n = gr.Slider(1, MAX_SAMPLES, value=2, step=1, label="Samples", elem_id=f"{prefix}-n")
        return steps, beta, seed, n

    def mask_examples(kind: str) -> list[str]:
        pattern = "street_[0-9]_color.png" if kind == "color" else "street_[0-9].png"
        return [str(p) for p in sorted(EXAMPLES_DIR.glob(pattern))]

    photo_examples = [str(p) for p in sorted(EXAMPLES_DIR.glob("photo_*.png"))]
    legend = legend_html(model)

    with gr.Blocks(title="SemFlow: segmentation and synthesis with one flow", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# SemFlow\nOne rectified-flow ODE between photos (t = 0) and semantic masks (t = 1): integrate "
            "forward to **segment**, backward from a slightly perturbed mask to **synthesize**. "
            f"Model: `{html.escape(model.source)}` ({k} classes)."
        )
        with gr.Tabs():
            # ------------------------------------------------------------------------------------ Segment
            with gr.Tab("Segment", id="segment"):
                with gr.Row():
                    with gr.Column(scale=1):
                        seg_in = _upload(label="Photo", elem_id="seg-input")
                        seg_steps = gr.Slider(1, MAX_STEPS, value=model.default_steps, step=1, label="Steps",
                                              info="1 step is one network call; more steps follow the ODE's curve",
                                              elem_id="seg-steps")
                        seg_btn = gr.Button("Segment", variant="primary", elem_id="seg-run")
                        if photo_examples:
                            gr.Examples(photo_examples, inputs=[seg_in], label="Photos synthesized by the model")
                        seg_legend = gr.HTML(legend, label="Legend", elem_id="seg-legend")
                    with gr.Column(scale=2):
                        with gr.Row():
                            seg_map = gr.Image(label="Label map", format="png", interactive=False, elem_id="seg-map")
                            seg_overlay = gr.Image(label="Overlay", interactive=False, elem_id="seg-overlay")
                        seg_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity",
                                                elem_id="seg-opacity")
                        with gr.Row():
                            seg_conf = gr.Image(label="Confidence (dark = unsure)", interactive=False,
                                                elem_id="seg-conf")
                            seg_file = gr.File(label="Label-id PNG (class id per pixel, input size)",
                                               interactive=False, elem_id="seg-file")
                seg_state = gr.State()

            # --------------------------------------------------------------------------------- Synthesize
            with gr.Tab("Synthesize", id="synthesize"):
                with gr.Row():
                    with gr.Column(scale=1):
                        with gr.Tabs():
                            with gr.Tab("Upload a mask", id="upload"):
                                syn_in = _upload(
                                    label="Mask: single-channel label-id PNG, or colours from the legend",
                                    elem_id="syn-input",
                                )
                                syn_btn = gr.Button("Synthesize", variant="primary", elem_id="syn-run")
                                gr.Examples(mask_examples("ids") + mask_examples("color"), inputs=[syn_in],
                                            label="Drawn street layouts (label ids, then colour-coded)")
                            with gr.Tab("Paint a mask", id="paint"):
                                canvas = gr.ImageEditor(
                                    label="Paint with one brush per class; unpainted = background class",
                                    type="numpy", image_mode="RGBA", sources=["upload"], format="png",
                                    canvas_size=CANVAS_SIZE, transforms=[], layers=False,
                                    brush=gr.Brush(colors=hex_colors, default_color=hex_colors[0],
                                                   color_mode="fixed", default_size=12),
                                    elem_id="syn-canvas",
                                )
                                canvas_bg = gr.Dropdown(class_choices, value=0, label="Background class (unpainted)",
                                                        elem_id="syn-bg")
                                canvas_btn = gr.Button("Synthesize from canvas", variant="primary",
                                                       elem_id="syn-canvas-run")
                        syn_steps, syn_beta, syn_seed, syn_n = synthesis_settings("syn")
                        gr.HTML(legend)
                    with gr.Column(scale=1):
                        syn_gallery = gr.Gallery(label="Samples", columns=2, format="png", elem_id="syn-gallery")
                        syn_mask = gr.Image(label="Mask used", format="png", interactive=False, elem_id="syn-mask")

            # --------------------------------------------------------------------------------------- Edit
            with gr.Tab("Edit", id="edit"):
                gr.Markdown("1. Upload a photo and predict its mask. 2. Repaint regions with the class brushes "
                            "(e.g. turn road into pavement, add a car). 3. Synthesize a new photo with that layout.")
                with gr.Row():
                    with gr.Column(scale=1):
                        edit_in = _upload(label="Photo", elem_id="edit-input")
                        edit_seg_steps = gr.Slider(1, MAX_STEPS, value=model.default_steps, step=1,
                                                   label="Segmentation steps")
                        edit_predict_btn = gr.Button("1. Predict mask", elem_id="edit-predict")
                        if photo_examples:
                            gr.Examples(photo_examples, inputs=[edit_in])
                        edit_photo = gr.Image(label="Photo (as segmented)", interactive=False, elem_id="edit-photo")
                    with gr.Column(scale=2):
                        edit_canvas = gr.ImageEditor(
                            label="Predicted mask: repaint it", type="numpy", image_mode="RGBA", sources=[], format="png",
                            transforms=[], layers=False,
                            brush=gr.Brush(colors=hex_colors, default_color=hex_colors[0], color_mode="fixed",
                                           default_size=12),
                            elem_id="edit-canvas",
                        )
                        edit_steps, edit_beta, edit_seed, edit_n = synthesis_settings("edit")
                        edit_btn = gr.Button("2. Synthesize", variant="primary", elem_id="edit-run")
                        edit_gallery = gr.Gallery(label="New photos with your layout", columns=2, format="png",
                                                  elem_id="edit-gallery")
                        edit_mask = gr.Image(label="Mask used", format="png", interactive=False, elem_id="edit-mask")

            # --------------------------------------------------------------------------------------- Flow
            with gr.Tab("Flow", id="flow"):
                gr.Markdown("The ODE's intermediate states: the photo flows into its mask (segmentation, "
                            "t: 0 → 1), then the predicted mask flows back into a photo (synthesis, t: 1 → 0).")
                with gr.Row():
                    with gr.Column(scale=1):
                        flow_in = _upload(label="Photo", elem_id="flow-input")
                        flow_steps = gr.Slider(1, MAX_STEPS, value=8, step=1, label="Steps", elem_id="flow-steps")
                        flow_btn = gr.Button("Show the flow", variant="primary", elem_id="flow-run")
                        if photo_examples:
                            gr.Examples(photo_examples, inputs=[flow_in])
                    with gr.Column(scale=3):
                        flow_fwd = gr.Gallery(label="Segmentation: photo (t=0) → mask (t=1)", columns=5,
                                              height="auto", format="png", object_fit="contain", elem_id="flow-forward")
                        flow_bwd = gr.Gallery(label="Synthesis: mask (t=1) → photo (t=0)", columns=5,
                                              height="auto", format="png", object_fit="contain", elem_id="flow-backward")

        # -------------------------------------------------------------------------------------------- events
        run = dict(concurrency_id="model", concurrency_limit=concurrency_limit)
        seg_btn.click(segment, [seg_in, seg_steps, seg_opacity],
                      [seg_map, seg_overlay, seg_conf, seg_legend, seg_file, seg_state], api_name="segment", **run)
        seg_opacity.release(reblend, [seg_state, seg_opacity], [seg_overlay], api_visibility="private",
                            concurrency_limit=None)
        syn_btn.click(synthesize, [syn_in, syn_steps, syn_beta, syn_seed, syn_n], [syn_gallery, syn_mask],
                      api_name="synthesize", **run)
        canvas_btn.click(synthesize_canvas, [canvas, canvas_bg, syn_steps, syn_beta, syn_seed, syn_n],
                         [syn_gallery, syn_mask], api_name="synthesize_canvas", **run)
        edit_predict_btn.click(edit_predict, [edit_in, edit_seg_steps], [edit_canvas, edit_photo],
                               api_name="edit_predict", **run)
        edit_btn.click(edit_synthesize, [edit_canvas, edit_steps, edit_beta, edit_seed, edit_n],
                       [edit_gallery, edit_mask], api_name="edit_synthesize", **run)
        flow_btn.click(flow, [flow_in, flow_steps], [flow_fwd, flow_bwd], api_name="flow", **run)

    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency_limit)
    return demo


def launch(model: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **kwargs):
    demo = build_demo(model)
    return demo.launch(server_name=host, server_port=port, share=share, css=CSS, **kwargs)
