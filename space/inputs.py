"""Reading user uploads safely: every failure becomes a readable message, never a traceback.

The functions here raise :class:`InputError` (a ``ValueError``); the UI layer turns it into ``gr.Error``.
They do not import gradio, so they are testable on their own.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

# Above this the decode alone would need several GB; the model works at a few hundred pixels anyway.
MAX_PIXELS = 40_000_000
MAX_FILE_BYTES = 25 * 1024 * 1024

_ORIENTATION = {  # EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class InputError(ValueError):
    """A user-facing problem with an uploaded file or a drawn mask."""


def _open(path: str, what: str, draft_side: Optional[int] = None) -> Image.Image:
    """Open and fully decode an image file, or raise InputError saying what is wrong with it.

    ``draft_side``: JPEGs may be decoded at a reduced scale (1/2, 1/4, 1/8) that still has this long side.
    """
    if path is None:
        raise InputError(f"No {what} given: upload an image first.")
    if not os.path.exists(path):
        raise InputError(f"The uploaded {what} could not be found on the server; upload it again.")
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"The uploaded {what} is an empty file.")
    if size > MAX_FILE_BYTES:
        raise InputError(f"The uploaded {what} is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB.")
    name = os.path.basename(path)
    try:
        with warnings.catch_warnings():
            # PIL warns (and above 2x errors) on decompression bombs; we apply our own, lower limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise InputError(
                    f"The {what} is {w}x{h} = {w * h / 1e6:.0f} megapixels; the limit is {MAX_PIXELS / 1e6:.0f} "
                    "megapixels. Downscale it first."
                )
            if w == 0 or h == 0:
                raise InputError(f"The {what} has zero size ({w}x{h}).")
            if draft_side and im.format == "JPEG" and max(w, h) > draft_side:
                s = draft_side / max(w, h)
                im.draft("RGB" if im.mode not in ("L", "CMYK") else im.mode, (max(1, int(w * s)), max(1, int(h * s))))
            im.load()  # decode now: a truncated or corrupt file fails here, not later inside the model
            im.info["semflow_file_size"] = (w, h)  # before any draft reduction
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"The {what} is too large to decode safely (limit {MAX_PIXELS / 1e6:.0f} megapixels).")
    except UnidentifiedImageError:
        raise InputError(
            f"'{name}' is not an image file PIL can read. Upload a PNG, JPEG, WebP or BMP image."
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data, bad chunks, broken headers
        raise InputError(f"'{name}' is a damaged or truncated image file and could not be decoded ({e}).") from None
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated GIF/WebP/APNG: use the first frame
    return im


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixel data of any depth -> uint8 on the 0..255 scale."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        finite = arr[np.isfinite(arr)]
        hi = float(finite.max()) if finite.size else 1.0
        scale = 255.0 if hi <= 1.0 else 1.0  # PIL "F" images: [0,1] floats or already 0..255
        return np.clip(np.nan_to_num(arr, nan=0.0, posinf=255.0 / scale, neginf=0.0) * scale, 0, 255).astype(np.uint8)
    # 16/32-bit integers: a 16-bit photo spans 0..65535; scale by the type's range, not by the data's max,
    # so a dark photo stays dark.
    hi = 65535 if arr.max(initial=0) <= 65535 else np.iinfo(arr.dtype).max
    return (arr.astype(np.float64) * (255.0 / hi)).round().astype(np.uint8)


def release_memory() -> None:
    """Give freed memory back to the system after a large decode (glibc keeps it otherwise, and the server's
    resident size would stay at its largest request's peak)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def fit_size(size: tuple[int, int], max_side: Optional[int]) -> tuple[int, int]:
    """(W, H) scaled down (never up) so that the long side is at most ``max_side``."""
    w, h = size
    if not max_side or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    t = _ORIENTATION.get(orientation)
    return im.transpose(t) if t is not None else im


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not lose the picture
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(im))).convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def load_photo_fitted(path: str, max_side: Optional[int] = None) -> tuple[Image.Image, tuple[int, int]]:
    """An uploaded photo as 8-bit RGB, reduced to at most ``max_side`` on its long edge, and its upright size.

    Large photos are reduced as early as possible (JPEG draft decoding, then an integer ``reduce`` before any
    mode conversion), so a 40-megapixel upload never exists as several full-size copies.
    Handles RGBA/LA (composited on white, as a viewer shows it), grayscale, palette, CMYK, 16-bit and float
    images, and EXIF rotation.
    """
    im = _open(path, "image", draft_side=max_side)
    orientation = _exif_orientation(im)
    w, h = im.info.get("semflow_file_size", im.size)  # the file's full-resolution size, upright
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    if max_side and max(im.size) > max_side:
        factor = max(im.size) // max_side
        if factor >= 2 and im.mode in ("L", "RGB", "RGBA", "LA", "PA", "I", "F", "CMYK", "RGBX", "YCbCr"):
            im = im.reduce(factor)  # box filter, integer factor: fast and memory-light
        elif factor >= 2 and im.mode.startswith("I;16"):  # (no reducing_gap: reduce() has no 16-bit mode)
            im = im.resize(fit_size(im.size, max_side), Image.BILINEAR)
        elif factor >= 3:  # palette / bilevel: thin out to twice the target first, so no full-size RGB(A) copy
            info = im.info
            im = im.resize(fit_size(im.size, 2 * max_side), Image.NEAREST)
            im.info.update({k: v for k, v in info.items() if k == "transparency"})
        im = _to_rgb(im)
        if max(im.size) > max_side:
            im = im.resize(fit_size(im.size, max_side), Image.BILINEAR, reducing_gap=2.0)
    else:
        im = _to_rgb(im)
    return _orient(im, orientation), (w, h)


def load_photo(path: str, max_side: Optional[int] = None) -> Image.Image:
    """An uploaded photo as an 8-bit RGB PIL image (see :func:`load_photo_fitted`)."""
    return load_photo_fitted(path, max_side)[0]


def _palette_rgb(im: Image.Image) -> np.ndarray:
    pal = np.asarray(im.getpalette() or [], dtype=np.uint8)
    pal = pal[: len(pal) // 3 * 3].reshape(-1, 3)
    return np.concatenate([pal, np.zeros((max(0, 256 - len(pal)), 3), np.uint8)])


def load_mask_file(path: str, max_side: Optional[int] = None,
                   label_colors: Optional[np.ndarray] = None) -> tuple[str, np.ndarray]:
    """An uploaded mask, classified by its pixel format, reduced (nearest neighbour) to at most ``max_side``.

    Returns:
        ``("ids", array (H, W) int64)`` for single-channel files (class id per pixel: 8- or 16-bit grayscale,
        or a palette PNG whose indices are the ids), or ``("colors", array (H, W, 3) uint8)`` for colour-coded
        masks (RGB/RGBA; alpha is ignored). A palette PNG whose used palette entries are all ``label_colors``
        is a colour-coded mask saved as a palette image, and is read by its colours.
    """
    im = _open(path, "mask")
    if im.mode in ("LA", "La"):
        im = im.getchannel(0)  # label ids with an alpha channel: the ids
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if max_side and max(im.size) > max_side:
        im = im.resize(fit_size(im.size, max_side), Image.NEAREST)  # nearest: ids and colours stay exact
    mode = im.mode
    if mode in ("L", "I;16", "I;16B", "I;16L", "I;16N", "I", "1"):
        return "ids", np.asarray(im).astype(np.int64)
    if mode == "P":
        idx = np.asarray(im)
        if label_colors is not None:
            used = np.unique(idx)
            pal = _palette_rgb(im)[used]
            known = np.asarray(label_colors, np.uint8)
            if (pal[:, None, :] == known[None, :, :]).all(-1).any(1).all():
                return "colors", _palette_rgb(im)[idx]
        return "ids", idx.astype(np.int64)
    if mode == "F":
        arr = np.asarray(im)
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InputError("The mask holds fractional values; a label-id mask must hold whole class ids.")
        return "ids", arr.astype(np.int64)
    return "colors", np.asarray(im.convert("RGB"))


def load_rgba(path: str, what: str = "canvas") -> np.ndarray:
    """An uploaded canvas layer as an (H, W, 4) uint8 array (the ImageEditor's RGBA)."""
    return np.asarray(_open(path, what).convert("RGBA"))


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W[, C]) uint8 -> (size[1], size[0][, C]) by nearest neighbour (exact colours and ids)."""
    if arr.shape[1::-1] == tuple(size):
        return arr
    return np.asarray(Image.fromarray(arr).resize(size, Image.NEAREST))


def describe_colors(colors: np.ndarray, limit: int = 6) -> str:
    """``[(r,g,b), ...]`` -> ``"#ff0000 (255, 0, 0), ..."`` for error messages."""
    parts = [f"#{r:02x}{g:02x}{b:02x} ({r}, {g}, {b})" for r, g, b in np.asarray(colors, dtype=int)[:limit]]
    more = len(colors) - limit
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def snap_to_palette(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Nearest palette entry per pixel (for painted canvases, where the browser anti-aliases stroke edges)."""
    pal = np.asarray(palette, dtype=np.int32)
    flat = rgb.reshape(-1, 3).astype(np.int32)
    # Work on the distinct colours only: a painted canvas has few, so this is cheap even at full size.
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    d = ((uniq[:, None, :] - pal[None, :, :]) ** 2).sum(-1)
    return d.argmin(1)[inverse.ravel()].reshape(rgb.shape[:2]).astype(np.int64)


def _rgba(arr) -> Optional[np.ndarray]:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.shape[-1] == 3:
        arr = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, arr.dtype)], axis=-1)
    return arr.astype(np.uint8)


def editor_to_ids(value: Optional[dict], palette: np.ndarray, background_class: int, alpha_threshold: int = 128) -> np.ndarray:
    """A ``gr.ImageEditor`` value (numpy, RGBA) -> label ids ``(H, W)``.

    The background, when there is an opaque one (the predicted mask in the Edit tab, or an uploaded colour
    mask), snaps to the nearest class colour; transparent canvas is ``background_class``. Painted layer pixels
    (alpha >= threshold: strokes are anti-aliased at their edges) snap to the nearest brush colour on top.
    Raises InputError for an empty canvas.
    """
    empty = InputError("The canvas is empty: pick a class colour with the brush and paint a layout first.")
    if not value:
        raise empty
    background = _rgba(value.get("background"))
    layers = [_rgba(x) for x in (value.get("layers") or []) if x is not None]
    composite = _rgba(value.get("composite"))
    shape = next((a.shape[:2] for a in [background, *layers, composite] if a is not None), None)
    if shape is None:
        raise empty
    ids = np.full(shape, int(background_class), dtype=np.int64)
    has_background = background is not None and (background[..., 3] >= alpha_threshold).any()
    if has_background:
        # The editor's blank canvas arrives as an opaque plain white background: a uniform background that is
        # not a class colour is unpainted canvas, not a mask.
        first = background[0, 0]
        uniform = bool((background == first).all())
        if uniform and not (np.asarray(palette, np.uint8) == first[:3]).all(axis=1).any():
            has_background = False
    if has_background:
        if background.shape[:2] != shape:
            raise InputError(f"The canvas background ({background.shape[1]}x{background.shape[0]}) and its layers "
                             f"({shape[1]}x{shape[0]}) differ in size; clear the canvas and start again.")
        opaque = background[..., 3] >= alpha_threshold
        ids[opaque] = snap_to_palette(background[..., :3], palette)[opaque]
    painted_any = False
    for layer in layers:
        if layer.shape[:2] != shape:
            continue  # a layer the user never drew on can come back at another size; it holds nothing
        painted = layer[..., 3] >= alpha_threshold
        if painted.any():
            painted_any = True
            ids[painted] = snap_to_palette(layer[..., :3], palette)[painted]
    if not layers and composite is not None and not has_background:
        # No layer data (e.g. an API caller sending only a composite): read the composite instead.
        painted = composite[..., 3] >= alpha_threshold
        if painted.any():
            painted_any = True
            ids[painted] = snap_to_palette(composite[..., :3], palette)[painted]
    if not painted_any and not has_background:
        raise empty
    return ids
