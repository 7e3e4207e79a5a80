"""Which files a request may make the app read: only what gradio uploaded for this app, and the app's examples.

Every model event runs with ``preprocess=False``, so gradio hands the handlers the raw file payloads (dicts with
``path``, ``url``, ``meta``, ...) instead of opening them itself; :class:`UploadGate` then decides, in the handler,
whether a payload names a file this app may open:

- a file gradio's ``/upload`` route wrote for this app (``Blocks.upload_file_set``), at exactly the path gradio
  recorded (normalised, absolute, no ``..``), inside gradio's cache folder, a regular file reached through no
  symlink; or
- a copy of one of the app's own example files in gradio's cache (what the page sends when an example is
  clicked), recognised by its content (size + SHA-256), with the same path rules; or
- a ``data:image/...;base64`` URL (a pasted image), decoded into a private temporary file, within the size limit;
  the file counts against the app's disk budget (``space.disk.AppFiles``) and is deleted as soon as the handler has
  read it (:meth:`UploadGate.reading`).

Everything else (absolute paths elsewhere, ``..`` tricks, symlinks, URL-encoded or ``file:``/``http:`` paths,
files of other apps in a shared cache) gets the one message :data:`REFUSED`, which is the same whether or not the
named file exists; the gate looks at the file system only for paths that already passed the path checks.
Payloads that carry ``"meta"`` and name a file outside gradio's cache are refused by gradio itself before the
handler runs (with no message): that answer does not depend on the file's existence either.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from .disk import AppFiles
from .inputs import InputError

REFUSED = (
    "Refused: this app only reads images uploaded to it (or its own examples). Upload the file first "
    "(in Python: gradio_client.handle_file(path))."
)


MAX_EDITOR_LAYERS = 8  # the app's editors send a background, at most one layer and a composite
MAX_EDITOR_PIXELS = 6 * 2048 * 2048  # all images of one editor value together, read from their headers


def _header_pixels(path: str) -> int:
    """Width x height from the image header (PIL opens lazily: no pixel data is decoded); 0 if unreadable (the
    decoder then reports the file)."""
    try:
        import PIL.Image

        with PIL.Image.open(path) as im:
            w, h = im.size
            return int(w) * int(h) * max(1, int(getattr(im, "n_frames", 1) or 1))
    except Exception:  # noqa: BLE001
        return 0


class RefusedFile(InputError):
    """A payload that names a file this app may not read (always with the message REFUSED)."""

    def __init__(self):
        super().__init__(REFUSED)


def _sha256(path: str, limit: int) -> Optional[str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
            if n > limit:
                return None
            h.update(chunk)
    return h.hexdigest()


def _normal_abs(path: str) -> bool:
    """An absolute path already in normal form: no '..', '.', '//' or trailing separator tricks."""
    return os.path.isabs(path) and os.path.normpath(path) == path and "\x00" not in path


class UploadGate:
    """Decides which file payloads a handler may open.

    Args:
        upload_files: returns the set of paths gradio's upload route wrote for this app (``demo.upload_file_set``).
        cache_dir: gradio's cache/upload folder (``gradio.utils.get_upload_folder()``).
        example_files: the app's own example files; copies of them in the cache are accepted.
        max_bytes: the largest file accepted (the same as the app's ``max_file_size``).
        files: the app's files and their disk budget (pasted images are written there); by default a private one.
    """

    def __init__(
        self,
        upload_files: Callable[[], Iterable[str]],
        cache_dir: str,
        example_files: Iterable[os.PathLike | str] = (),
        max_bytes: int = 50 * 2**20,
        files: Optional[AppFiles] = None,
    ):
        self._upload_files = upload_files
        self.cache_dir = os.path.realpath(cache_dir)
        self._cache_roots = {os.path.normpath(os.path.abspath(cache_dir)), self.cache_dir}
        self.max_bytes = int(max_bytes)
        self._examples: dict[int, set[str]] = {}  # size -> sha256 digests
        for p in example_files:
            p = str(p)
            digest = _sha256(p, 1 << 62)
            self._examples.setdefault(os.path.getsize(p), set()).add(digest)
        self.files = files if files is not None else AppFiles(None, 1 << 62, 1 << 62)

    # ------------------------------------------------------------------------------------------------ checks
    def _relative_to_cache(self, path: str) -> Optional[str]:
        """``path`` below the cache folder (as configured or as resolved), lexically; else None."""
        for root in self._cache_roots:
            if path.startswith(root + os.sep) and len(path) > len(root) + 1:
                return path[len(root) + 1:]
        return None

    def _regular_file_no_links(self, path: str, rel: str) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        # No symlink anywhere below the cache folder: the resolved path is the cache's resolved path + rel.
        return stat.S_ISREG(st.st_mode) and os.path.realpath(path) == os.path.join(self.cache_dir, rel)

    def _is_upload(self, path: str) -> bool:
        files = self._upload_files()
        return path in files

    def _is_example_copy(self, path: str) -> bool:
        try:
            size = os.path.getsize(path)
        except OSError:
            return False
        digests = self._examples.get(size)
        return bool(digests) and _sha256(path, size) in digests

    def check_path(self, path) -> str:
        """``path`` if this app may read it, else RefusedFile."""
        rel = self._relative_to_cache(path) if isinstance(path, str) and _normal_abs(path) else None
        if rel is None:
            raise RefusedFile()
        # Only now, for a path inside gradio's cache that gradio could have written, look at the file system.
        if not self._regular_file_no_links(path, rel):
            raise RefusedFile()
        if not (self._is_upload(path) or self._is_example_copy(path)):
            raise RefusedFile()
        return path

    # ----------------------------------------------------------------------------------------------- payloads
    def file(self, payload, what: str = "image") -> Optional[str]:
        """A raw file payload (dict, FileData, or None) -> a path the handler may open, or None for no file."""
        if payload is None:
            return None
        if hasattr(payload, "model_dump"):  # a FileData / ImageData model
            payload = payload.model_dump()
        if isinstance(payload, str):  # a bare string is a path the client chose: never trusted
            raise RefusedFile()
        if not isinstance(payload, dict):
            raise InputError(f"The {what} must be an uploaded image file.")
        path = payload.get("path")
        if path:
            return self.check_path(path)
        url = payload.get("url")
        if isinstance(url, str) and url.startswith("data:"):
            return self._data_url(url, what)
        if url:  # an http(s) or other URL: the app fetches nothing on a client's behalf
            raise RefusedFile()
        return None

    def _data_url(self, url: str, what: str) -> str:
        head, _, data = url.partition(",")
        if not head.startswith("data:image/") or not head.endswith(";base64"):
            raise InputError(f"The pasted {what} is not a base64-encoded image.")
        if len(data) > self.max_bytes * 4 // 3 + 4:
            raise InputError(f"The pasted {what} is larger than {self.max_bytes // 2**20} MB.")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"The pasted {what} is not valid base64 data.") from None
        path = self.files.new_paste(len(raw))  # room is made first: the app's files stay within their budget
        with open(path, "wb") as f:
            f.write(raw)
        self.files.add(path)
        return path

    @contextlib.contextmanager
    def reading(self, payload, what: str = "image") -> Iterator[Optional[str]]:
        """:meth:`file` for the duration of a ``with`` block that reads it; a pasted image's file is deleted at the
        block's end (it is read once, right away)."""
        path = self.file(payload, what)
        try:
            yield path
        finally:
            self.files.discard(path)

    @contextlib.contextmanager
    def reading_editor(self, payload, what: str = "canvas") -> Iterator[dict]:
        """:meth:`editor` for the duration of a ``with`` block; pasted images' files are deleted at its end."""
        out: dict = {}
        try:
            out = self.editor(payload, what)
            yield out
        finally:
            for p in (out.get("background"), *out.get("layers", ()), out.get("composite")):
                self.files.discard(p)

    def editor(self, payload, what: str = "canvas") -> dict:
        """A raw ImageEditor payload -> {"background": path|None, "layers": [path...], "composite": path|None}."""
        if payload is None:
            return {"background": None, "layers": [], "composite": None}
        if hasattr(payload, "model_dump"):
            payload = payload.model_dump()
        if not isinstance(payload, dict):
            raise InputError(f"The {what} value must be an ImageEditor value (background, layers, composite).")
        layers = payload.get("layers") or []
        if not isinstance(layers, list):
            raise InputError(f"The {what}'s layers must be a list of images.")
        # Bounded before any file is opened or decoded: a 72 KB request naming one small PNG 400 times used to
        # decode 400 full-size layers (~8 MB each) at once.
        if len(layers) > MAX_EDITOR_LAYERS:
            raise InputError(f"The {what} has {len(layers)} layers; the limit is {MAX_EDITOR_LAYERS}.")
        paths: list[str] = []  # in order; pasted ones are deleted again if a later part is refused

        def one(x):
            p = self.file(x, what)
            if p is not None:
                paths.append(p)
            return p

        try:
            out = {"background": one(payload.get("background")), "layers": [], "composite": None}
            out["layers"] = [p for p in (one(x) for x in layers) if p is not None]
            out["composite"] = one(payload.get("composite"))
            total = sum(os.path.getsize(p) for p in paths)
            if total > self.max_bytes:
                raise InputError(f"The {what}'s images hold {total / 2**20:.0f} MB together; the limit is "
                                 f"{self.max_bytes // 2**20} MB.")
            pixels = sum(_header_pixels(p) for p in paths)  # from the image headers: nothing decoded yet
            if pixels > MAX_EDITOR_PIXELS:
                raise InputError(f"The {what}'s images hold {pixels / 1e6:.0f} megapixels together; the limit is "
                                 f"{MAX_EDITOR_PIXELS / 1e6:.0f}.")
        except BaseException:
            for p in paths:
                self.files.discard(p)
            raise
        return out


def example_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.png") if p.is_file())
