"""Input handling of ``SemFlowPipeline``: images and masks in, checked arguments (like diffusers' Marigold keeps its
own in ``marigold_image_processing.py``), so that ``pipeline_semflow.py`` reads as the ODE and its two directions.

Everything here is plain functions of the input and of explicit settings (class colours, class count, limits), so it
is tested on its own (``tests/test_image_processing.py``). The pipeline calls them through thin methods
(``_to_image_tensor``, ``_to_label_map``, ``mask_from_colors``, ``check_inputs``). A saved pipeline folder carries a
copy of this file next to ``pipeline_semflow.py`` (``write_remote_code``), so the relative import below works both in
the package and as diffusers remote code (``trust_remote_code=True``).

Image values: the rules (also in the README)
-------------------------------------------
An image becomes float ``(3, H, W)`` in [0, 1]. Every input type has one documented scale:

- ``uint8`` (arrays, tensors, PIL ``L``/``RGB``/``RGBA``/``P``...): 0..255.
- ``uint16`` (arrays, PIL ``I;16``): 0..65535, **except** when no value exceeds 255: that is 8-bit data in a 16-bit
  container (a 16-bit photo whose brightest pixel is 0.4% of full scale is black), so it is read as 0..255 and a
  ``UserWarning`` says so (pass ``uint8`` to silence it, or floats ``image / 65535`` to force 16-bit).
- float (arrays, tensors): [0, 1]. Non-finite values raise. Values beyond ``float_range_margin`` (0.5) outside
  [0, 1] raise (0..255, 0..65535 or [-1, 1] data) with the fix. Values outside [0, 1] within that margin are
  accepted only as resampling overshoot: on at most ``max_out_of_range_fraction`` (10%) of the values on each side;
  more is data on another scale (e.g. a dark 0..255 photo whose values stay below 1.5) and raises.
- PIL mode ``F`` (32-bit float, e.g. a float TIFF): [0, 1] like float arrays (same checks) when no value exceeds
  ``1 + float_range_margin``; otherwise 0..255 (PIL's own scale for ``F``, as ``convert("L")`` reads it) up to 255,
  and 0..65535 above that. Mode ``I`` (32-bit int): 0..255, or 0..65535 when a value exceeds 255.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Optional, Union

import numpy as np
import PIL.Image
import torch

from .anchors import check_generator
from .scheduling_semflow import as_positive_int

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, list]
OUTPUT_TYPES = ("np", "pt", "pil", "latent")

# Float images must be in [0, 1]. Slight excursions (resampling overshoot) pass unchanged; beyond this margin the
# data is on another scale (0..255, or [-1, 1]) and would be segmented silently wrong, so it raises.
FLOAT_RANGE_MARGIN = 0.5
# Overshoot touches edges, not the bulk of an image: more than this share of values above 1 (or below 0) is data on
# another scale, even when it stays within the margin.
MAX_OUT_OF_RANGE_FRACTION = 0.1
_OUT_OF_RANGE_TOLERANCE = 1e-3  # float rounding of a [0, 1] image (e.g. 255 / 255 computed in float16)
_PIL_INT_MODES = ("I;16", "I;16B", "I;16L", "I")


# `segment` reduces larger inputs to this many pixels first (SemFlowPipeline.max_full_resolution_pixels).
MAX_FULL_RESOLUTION_PIXELS = 2_000_000


class EightBitDataWarning(UserWarning):
    """A 16-bit image that holds only 0..255 values was read as 8-bit data."""


# --------------------------------------------------------------------------------------------------------- images
def to_image_tensor(image: Any, name: str = "image", float_range_margin: float = FLOAT_RANGE_MARGIN,
                    max_out_of_range_fraction: float = MAX_OUT_OF_RANGE_FRACTION) -> torch.Tensor:
    """One image (PIL, ``(H, W[, C])`` array, ``([C,] H, W)`` tensor) -> float ``(3, H, W)`` in [0, 1].

    The scale of every input type is in this module's docstring; an input that does not fit its rule raises a
    ValueError that names the fix (or, for 8-bit data in ``uint16``, is read as 8-bit with a warning).
    """
    is_float = False
    if isinstance(image, PIL.Image.Image):
        if image.mode == "F":
            arr = np.array(image, dtype=np.float32)  # a writable copy
            check_finite(torch.from_numpy(arr), name)
            hi = float(arr.max()) if arr.size else 0.0
            if hi > 1 + float_range_margin:  # PIL's own scale for mode F (convert("L") reads it as 0..255)
                arr = np.clip(arr / (255.0 if hi <= 255 else 65535.0), 0, 1)
                return torch.from_numpy(arr)[None].expand(3, -1, -1).contiguous()
            image, is_float = arr, True  # [0, 1], with the float checks below
        elif image.mode in _PIL_INT_MODES:  # 16-bit / 32-bit integer grayscale
            arr = np.asarray(image).astype(np.float32)
            hi = float(arr.max()) if arr.size else 0.0
            if image.mode.startswith("I;16") and 0 < hi <= 255:
                _warn_eight_bit(name, f"a mode-{image.mode} PIL image")
            arr = np.clip(arr / (65535.0 if hi > 255 else 255.0), 0, 1)
            return torch.from_numpy(arr)[None].expand(3, -1, -1).contiguous()
        else:
            image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            t = torch.from_numpy(image.astype(np.float32) / 255.0)
        elif image.dtype == np.uint16:
            hi = int(image.max()) if image.size else 0
            if 0 < hi <= 255:
                _warn_eight_bit(name, "a uint16 array")
            t = torch.from_numpy(image.astype(np.float32) / (255.0 if hi <= 255 else 65535.0))
        elif np.issubdtype(image.dtype, np.floating):
            t = torch.from_numpy(image.astype(np.float32))
            is_float = True
        else:
            raise ValueError(f"`{name}` arrays must be uint8, uint16 or float in [0, 1]; got dtype {image.dtype}.")
        if t.ndim == 2:
            t = t[..., None]
        if t.ndim != 3:
            raise ValueError(f"`{name}` arrays must be (H, W) or (H, W, C); got shape {tuple(image.shape)}.")
        t = t.permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        t = image
        if t.dtype == torch.uint8:
            t = t.float() / 255.0
        elif not t.is_floating_point():
            raise ValueError(f"`{name}` tensors must be uint8 or float in [0, 1]; got dtype {t.dtype}.")
        else:
            is_float = True
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ValueError(f"`{name}` tensors must be (C, H, W) or (H, W); got shape {tuple(image.shape)}.")
        t = t.detach().float().cpu()
    else:
        raise ValueError(f"`{name}` must be a PIL image, numpy array or torch tensor; got {type(image).__name__}.")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:  # RGBA: drop alpha
        t = t[:3]
    elif t.shape[0] != 3:
        raise ValueError(f"`{name}` must have 1, 3 or 4 channels; got {t.shape[0]}.")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"`{name}` is empty (size {tuple(t.shape[1:])}).")
    if is_float:
        check_float_range(t, name, float_range_margin, max_out_of_range_fraction)
    return t.contiguous()


def reduce_large_image(image: Any, max_pixels: Optional[int]) -> tuple:
    """``(image, None)`` for an image of at most ``max_pixels`` pixels (or any input that is not a PIL image or a
    uint8 array); else ``(reduced, (H, W))``: the image resized (bilinear, PIL) to at most ``max_pixels`` pixels,
    aspect kept, before any float copy is made, with its original size. Palette, bilevel and CMYK images become RGB
    first, so that they are resized smoothly rather than by nearest index."""
    if max_pixels is None:
        return image, None
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
            image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 3, 4))):
        h, w = image.shape[:2]
        if h * w <= max_pixels:
            return image, None
        image = PIL.Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    if not isinstance(image, PIL.Image.Image):
        return image, None
    w, h = image.size
    if w * h <= max_pixels:
        return image, None
    if image.mode in ("P", "1", "PA", "CMYK", "YCbCr", "LA"):
        image = image.convert("RGBA" if image.mode in ("PA", "LA") or "transparency" in image.info else "RGB")
    elif image.mode.startswith("I;16"):
        image = image.convert("I")  # PIL resizes 32-bit, not 16-bit, grayscale smoothly
    s = (max_pixels / (w * h)) ** 0.5
    return image.resize((max(1, int(w * s)), max(1, int(h * s))), PIL.Image.BILINEAR), (h, w)


def upscale_labels(labels: torch.Tensor, confidence: torch.Tensor, size: tuple) -> tuple:
    """Labels ``(h, w)`` (nearest) and confidence ``(h, w)`` (bilinear) brought to ``size`` ``(H, W)``, with no
    intermediate at the full size beyond the two outputs."""
    h, w = labels.shape
    rows = (torch.arange(size[0]) * h // size[0]).clamp_(max=h - 1)
    cols = (torch.arange(size[1]) * w // size[1]).clamp_(max=w - 1)
    out = torch.empty(tuple(size), dtype=labels.dtype)
    for r in range(0, size[0], 256):  # bands of rows: no (H, w) intermediate
        out[r : r + 256] = labels[rows[r : r + 256]][:, cols]
    labels = out
    confidence = torch.nn.functional.interpolate(confidence[None, None].float(), size=tuple(size), mode="bilinear",
                                                 align_corners=False)[0, 0]
    return labels, confidence


def _warn_eight_bit(name: str, what: str) -> None:
    warnings.warn(f"`{name}` is {what} whose values are all in 0..255: read as 8-bit data (0..255), not as a "
                  "near-black 16-bit photo. Pass uint8 to silence this, or floats `image / 65535` if it really is "
                  "16-bit.", EightBitDataWarning, stacklevel=4)


def check_finite(t: torch.Tensor, name: str) -> None:
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        n = int((~finite).sum())
        raise ValueError(f"`{name}` has {n} non-finite value(s) (NaN or inf), which would make the whole result "
                         "meaningless; replace them first (e.g. `np.nan_to_num(image)`).")


def check_float_range(t: torch.Tensor, name: str, margin: float = FLOAT_RANGE_MARGIN,
                      max_out_of_range_fraction: float = MAX_OUT_OF_RANGE_FRACTION) -> None:
    """Float images: finite, in [0, 1] up to ``margin``, and outside [0, 1] only on a small share of values
    (resampling overshoot); else the scale is wrong and this raises with the fix."""
    check_finite(t, name)
    lo, hi, margin = float(t.min()), float(t.max()), float(margin)
    dark_255 = "0..255 data: divide by 255 or pass a uint8 array"
    if hi > 1 + margin:
        scale = "0..65535 (16-bit) data: divide by 65535" if hi > 255 * (1 + margin) else dark_255
        raise ValueError(f"`{name}` is a float image with values up to {hi:g}, but float images must be in [0, 1]; "
                         f"this looks like {scale}.")
    if lo < -margin:
        raise ValueError(f"`{name}` is a float image with values down to {lo:g}, but float images must be in "
                         "[0, 1]; if it is in [-1, 1], pass `(image + 1) / 2`.")
    if max_out_of_range_fraction is None or (hi <= 1 + _OUT_OF_RANGE_TOLERANCE and lo >= -_OUT_OF_RANGE_TOLERANCE):
        return
    above = float((t > 1 + _OUT_OF_RANGE_TOLERANCE).float().mean())
    below = float((t < -_OUT_OF_RANGE_TOLERANCE).float().mean())
    if above > max_out_of_range_fraction:
        raise ValueError(
            f"`{name}` is a float image with {above:.0%} of its values above 1 (up to {hi:g}), but float images must "
            f"be in [0, 1]: resampling overshoot touches a few edge pixels, not {above:.0%} of them. This looks like "
            f"a dark photo in {dark_255}. (If it really is a [0, 1] image, clip it: `image.clip(0, 1)`.)")
    if below > max_out_of_range_fraction:
        raise ValueError(
            f"`{name}` is a float image with {below:.0%} of its values below 0 (down to {lo:g}), but float images "
            "must be in [0, 1]; if it is in [-1, 1], pass `(image + 1) / 2`. (If it really is a [0, 1] image, clip "
            "it: `image.clip(0, 1)`.)")


def as_list(x: Any, name: str) -> list:
    """``x`` as a list of single items: a list/tuple (4-D batches inside it unpacked, as diffusers' image pipelines
    accept), a 4-D array/tensor (one item per image), or one item."""
    if x is None:
        raise ValueError(f"`{name}` must be given.")
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise ValueError(f"`{name}` is an empty list.")
        items = []
        for item in x:
            if isinstance(item, (torch.Tensor, np.ndarray)) and item.ndim == 4:
                items.extend(list(item))
            else:
                items.append(item)
        return items
    if isinstance(x, (torch.Tensor, np.ndarray)) and x.ndim == 4:
        return list(x)
    return [x]


# ---------------------------------------------------------------------------------------------------------- masks
def _key(c) -> int:
    return int(c[0]) << 16 | int(c[1]) << 8 | int(c[2])


def color_table(label_colors: np.ndarray, ignore_color: Optional[np.ndarray] = None,
                ignore_index: Optional[int] = None) -> dict:
    """Display colour as ``r << 16 | g << 8 | b`` -> class id (the ignore colour -> ``ignore_index``)."""
    table = {_key(c): i for i, c in enumerate(label_colors)}
    if ignore_index is not None and ignore_color is not None:
        table.setdefault(_key(ignore_color), ignore_index)
    return table


def mask_from_colors(mask: Union[PIL.Image.Image, np.ndarray], table: dict) -> np.ndarray:
    """Colour-coded mask ``(H, W, 3)`` -> label map ``(H, W)`` int64 through ``table`` (see :func:`color_table`).

    Raises a ValueError naming the colours that are not in the legend.
    """
    rgb = np.asarray(mask.convert("RGB") if isinstance(mask, PIL.Image.Image) else mask)[..., :3].astype(np.int64)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    uniq, inverse, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
    unknown = [(int(k), int(n)) for k, n in zip(uniq, counts) if int(k) not in table]
    if unknown:
        unknown.sort(key=lambda kn: -kn[1])
        shown = ", ".join(f"#{k:06x} rgb({k >> 16}, {(k >> 8) & 255}, {k & 255}) ({n} px)" for k, n in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise ValueError(
            f"`mask` has {len(unknown)} colour(s) that are not class colours: {shown}{more}. "
            "Use the legend's colours exactly (no anti-aliasing), or upload a single-channel label-id PNG."
        )
    ids = np.array([table[int(k)] for k in uniq], dtype=np.int64)
    return ids[inverse].reshape(keys.shape)


def palette_is_label_colors(mask: PIL.Image.Image, table: dict, ignore_index: Optional[int] = None) -> bool:
    """Whether a palette (mode P) mask is a colour mask: read it as colours, not as class-id indices.

    True when every palette entry the image uses is a display colour and reading the colours gives other ids than
    the indices (where they agree, both readings are the same). A label-id PNG saved with some other colormap (grey
    ramp, Pascal VOC, ...) uses entries that are not display colours, so it stays ids; so does one whose used entries
    are all the ignore colour (black in most legends: no evidence either way). To force ids, pass
    ``np.asarray(mask)``; to force colours, ``mask.convert("RGB")``.
    """
    palette = mask.getpalette("RGB")
    if not palette:
        return False
    palette = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    used = np.unique(np.asarray(mask))
    if used.size == 0 or int(used.max()) >= len(palette):
        return False
    ids = [table.get(_key(c)) for c in palette[used]]
    if any(i is None for i in ids):
        return False
    if all(i == int(u) for i, u in zip(ids, used)):
        return False
    return not all(i == ignore_index for i in ids)


def to_label_map(mask: Any, table: dict, num_classes: int, ignore_index: Optional[int] = None) -> torch.Tensor:
    """One mask (label-id PIL/array/tensor, or colour-coded RGB PIL/array in the colours of ``table``) ->
    ``(H, W)`` int64 tensor of ids in ``0..num_classes - 1`` (or ``ignore_index``).

    A palette (mode P) PNG is read as colours when the palette entries it uses are the display colours (a colour
    mask saved as an indexed PNG), else as class ids (see :func:`palette_is_label_colors`).
    """
    if isinstance(mask, PIL.Image.Image):
        if mask.mode in ("RGB", "RGBA") or (mask.mode == "P" and palette_is_label_colors(mask, table, ignore_index)):
            mask = mask_from_colors(mask, table)
        elif mask.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            mask = np.asarray(mask).astype(np.int64)
        else:
            raise ValueError(f"`mask` PIL images must be label ids (mode L, P, I, I;16) or RGB; got {mask.mode}.")
    if isinstance(mask, np.ndarray):
        if mask.ndim == 3 and mask.shape[-1] in (3, 4) and mask.dtype == np.uint8:
            mask = mask_from_colors(mask, table)
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
            raise ValueError(f"`mask` must be an integer label map; got dtype {mask.dtype}.")
        mask = torch.from_numpy(mask.astype(np.int64))
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"`mask` must be a PIL image, numpy array or torch tensor; got {type(mask).__name__}.")
    if mask.is_floating_point():
        raise ValueError(f"`mask` must be an integer label map; got dtype {mask.dtype}.")
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2 or mask.numel() == 0:
        raise ValueError(f"`mask` must be a non-empty (H, W) label map; got shape {tuple(mask.shape)}.")
    mask = mask.long().cpu()
    valid = (mask >= 0) & (mask < num_classes)
    if ignore_index is not None:
        valid |= mask == ignore_index
    if not bool(valid.all()):
        bad = mask[~valid].unique().tolist()[:10]
        raise ValueError(
            f"`mask` has unknown class ids {bad}: expected 0..{num_classes - 1}"
            + (f" or the ignore index {ignore_index}." if ignore_index is not None else ".")
        )
    return mask


# ------------------------------------------------------------------------------------------------------ arguments
def check_inputs(
    num_inference_steps: int,
    processing_resolution: Optional[int],
    batch_size: int,
    output_type: str,
    perturbation: Optional[float] = None,
    num_images_per_mask: int = 1,
    generator: Any = None,
    callback_on_step_end_tensor_inputs: Optional[list] = None,
    *,
    allowed_tensor_inputs: tuple = ("latents",),
    check_perturbation=None,
    bounds: Optional[dict] = None,
) -> None:
    """Raises a ValueError that names the argument. Integers may be any integer type (NumPy ints too) and
    ``perturbation`` any real number type (e.g. ``np.float32``).

    ``check_perturbation(beta)`` is the codec's own bound on β; ``bounds`` maps ``max_num_inference_steps``,
    ``max_processing_resolution`` and ``max_num_images_per_mask`` to their limits (``None``: unbounded).
    """
    as_positive_int(num_inference_steps, "num_inference_steps")
    if processing_resolution is not None and (
        isinstance(processing_resolution, bool) or not isinstance(processing_resolution, numbers.Integral)
        or processing_resolution < 0
    ):
        raise ValueError(f"`processing_resolution` must be a non-negative integer (0 = native); "
                         f"got {processing_resolution!r}.")
    as_positive_int(batch_size, "batch_size")
    if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}; got {output_type!r}.")
    as_positive_int(num_images_per_mask, "num_images_per_mask")
    if perturbation is not None:
        if isinstance(perturbation, bool) or not isinstance(perturbation, numbers.Real) or not math.isfinite(
            perturbation
        ) or perturbation < 0:
            raise ValueError(f"`perturbation` must be a non-negative number; got {perturbation!r}.")
        if check_perturbation is not None:
            check_perturbation(float(perturbation))
    check_generator(generator)
    if callback_on_step_end_tensor_inputs is not None:
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in allowed_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {list(allowed_tensor_inputs)}; "
                             f"got {unknown}.")
    bounds = bounds or {}
    check_bound("num_inference_steps", num_inference_steps, bounds.get("max_num_inference_steps"),
                "the run time grows linearly with the steps (1-25 is the useful range);")
    if processing_resolution:
        check_bound("processing_resolution", processing_resolution, bounds.get("max_processing_resolution"),
                    "memory grows with its square (~2.4 GB per image at 2048 on the shipped model);")
    check_bound("num_images_per_mask", num_images_per_mask, bounds.get("max_num_images_per_mask"),
                "memory grows linearly with it; call again with another generator seed for more, or")


def resolve_num_images_per_mask(num_images_per_mask: Any = None, num_images_per_prompt: Any = None) -> Any:
    """``num_images_per_mask``, or its alias ``num_images_per_prompt`` (diffusers' usual name), default 1.

    Both given and different raises a ValueError; so does an alias that is not a positive integer (the name the
    caller used is the one the message gives).
    """
    if num_images_per_prompt is None:
        return 1 if num_images_per_mask is None else num_images_per_mask
    as_positive_int(num_images_per_prompt, "num_images_per_prompt")
    if num_images_per_mask is not None and num_images_per_mask != num_images_per_prompt:
        raise ValueError(f"`num_images_per_prompt` is an alias of `num_images_per_mask`; pass one of them, not "
                         f"both with different values ({num_images_per_prompt!r} and {num_images_per_mask!r}).")
    return num_images_per_prompt


def check_bound(name: str, value, limit: Optional[int], why: str) -> None:
    """Raises a ValueError when ``value`` exceeds ``limit`` (None: unbounded), saying how to raise the bound."""
    if limit is None or int(value) <= limit:
        return
    attr = f"max_{name}"
    raise ValueError(
        f"`{name}`={int(value)} is above this pipeline's limit of {limit}: {why} "
        f"set `pipe.{attr} = {int(value)}` (or `SemFlowPipeline.{attr}` for every pipeline) to allow it deliberately."
    )
