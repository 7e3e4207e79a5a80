"""The app's own files on disk, kept under a byte budget (issue 18 item 4).

Three kinds of files are the app's: the uploads gradio's ``/upload`` route writes for it, the output images the
handlers write (served from gradio's cache), and pasted ``data:`` images decoded for a handler. :class:`AppFiles`
keeps an index of them, oldest first, with their sizes on disk, and keeps the total under ``max_bytes``:

- before an upload is written (:class:`UploadBudget`, an ASGI middleware around gradio's ``/upload``), room for
  its body is reserved; one client's uploads together stay under ``per_client_bytes`` (its own oldest go first),
  and all files together under ``max_bytes`` (the oldest go first);
- every output or pasted file is indexed as it is written, and the oldest files go when the total passes the budget
  or when they are older than ``max_age`` seconds;
- a pasted image is deleted as soon as the handler has read it (``UploadGate.reading``);
- at shutdown (a FastAPI lifespan, passed through gradio's ``app_kwargs``) the output and paste folders are removed;
  gradio's own ``delete_cache`` removes the uploads then.

A file that was removed to make room is answered like any other unknown file ("upload the file first").
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import threading
import time
from typing import Iterable, Optional

BLOCK = 4096  # sizes are counted in whole blocks, plus one block for the file's folder entry


def _disk_size(path: str) -> int:
    try:
        size = os.stat(path).st_size
    except OSError:
        return 0
    return -(-size // BLOCK) * BLOCK + BLOCK


class AppFiles:
    """An index of the app's files with a byte budget (see the module docstring).

    Args:
        cache_dir: gradio's cache folder; the output folder is created in it (gradio serves files there as they are).
        max_bytes: all the app's files together.
        per_client_bytes: one client's uploads together.
        max_age: seconds a file is kept at most.
    """

    def __init__(self, cache_dir: Optional[str], max_bytes: int, per_client_bytes: int, max_age: float = 3600):
        self.max_bytes, self.per_client_bytes, self.max_age = int(max_bytes), int(per_client_bytes), float(max_age)
        # TemporaryDirectory: removed by close(), and by its finalizer at interpreter exit if close() never ran.
        self._out = None
        if cache_dir is not None:
            os.makedirs(cache_dir, exist_ok=True)
            self._out = tempfile.TemporaryDirectory(prefix="semflow-outputs-", dir=cache_dir,
                                                    ignore_cleanup_errors=True)
        self._paste = tempfile.TemporaryDirectory(prefix="semflow-paste-", ignore_cleanup_errors=True)
        self.out_dir, self.paste_dir = self._out.name if self._out else None, self._paste.name
        # path -> (bytes, client or None, time written); oldest first
        self._index: collections.OrderedDict[str, tuple[int, Optional[str], float]] = collections.OrderedDict()
        self._reserved: dict[int, int] = {}
        self._keys = itertools.count()
        self._total = 0
        self._lock = threading.Lock()
        self._evicted = 0

    # ------------------------------------------------------------------------------------------------- state
    def usage(self) -> int:
        """Bytes of the indexed files and of the uploads being written."""
        with self._lock:
            return self._total + sum(self._reserved.values())

    def client_usage(self, client: str) -> int:
        with self._lock:
            return sum(size for size, c, _ in self._index.values() if c == client)

    @property
    def evicted(self) -> int:
        """Files removed to keep the budget (for the benchmark and logs)."""
        return self._evicted

    # ------------------------------------------------------------------------------------------------ writes
    def new_path(self, stem: str, suffix: str = ".png") -> str:
        os.makedirs(self.out_dir, exist_ok=True)  # again after close(), should the server be launched again
        fd, path = tempfile.mkstemp(prefix=f"{stem}_", suffix=suffix, dir=self.out_dir)
        os.close(fd)
        return path

    def new_folder(self, prefix: str) -> str:
        os.makedirs(self.out_dir, exist_ok=True)
        return tempfile.mkdtemp(prefix=prefix, dir=self.out_dir)

    def new_paste(self, nbytes: int) -> str:
        """A path for a pasted image of ``nbytes``, with room made for it first."""
        with self._lock:
            self._make_room(nbytes + 2 * BLOCK, None, ())
        os.makedirs(self.paste_dir, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="pasted_", suffix=".img", dir=self.paste_dir)
        os.close(fd)
        return path

    def add(self, path: str, client: Optional[str] = None) -> None:
        """Index a file just written (an output, a paste, an upload) and keep the budget, never removing it."""
        size = _disk_size(path)
        with self._lock:
            old = self._index.pop(path, None)  # gradio stores equal uploads at one path: the newest record counts
            if old:
                self._total -= old[0]
            self._index[path] = (size, client, time.time())
            self._total += size
            self._make_room(0, client, (path,))

    def discard(self, path: Optional[str]) -> None:
        """Delete a pasted image's file now that it is read; any other path (an upload, which the page may send
        again, or an example) is left alone."""
        if path is None or os.path.dirname(path) != self.paste_dir:
            return
        with self._lock:
            item = self._index.pop(path, None)
            if item:
                self._total -= item[0]
        with contextlib.suppress(OSError):
            os.unlink(path)

    # --------------------------------------------------------------------------------------------- uploads
    @contextlib.contextmanager
    def upload(self, client: Optional[str], nbytes: int):
        """Reserve room for an upload body of ``nbytes`` while it is written; yields a function that indexes the
        paths gradio wrote."""
        key = next(self._keys)
        with self._lock:
            self._make_room(nbytes, client, (), client_incoming=nbytes)
            self._reserved[key] = nbytes
        written: list[str] = []
        try:
            yield written.extend
        finally:
            with self._lock:
                self._reserved.pop(key, None)
            for p in written:
                self.add(p, client)

    # ------------------------------------------------------------------------------------------------ budget
    def _remove(self, path: str) -> None:
        size, _, _ = self._index.pop(path)
        self._total -= size
        self._evicted += 1
        try:
            os.unlink(path)
            parent = os.path.dirname(path)
            if parent != self.out_dir and parent != self.paste_dir:
                os.rmdir(parent)  # gradio's per-upload folder, or a label file's folder: only if now empty
        except OSError:
            pass

    def _make_room(self, incoming: int, client: Optional[str], keep: Iterable[str], client_incoming: int = 0):
        """Remove the oldest files (never those in ``keep``) until everything fits. Called with the lock held."""
        keep = set(keep)
        now = time.time()
        for path, (_, _, t) in list(self._index.items()):
            if now - t <= self.max_age:
                break
            if path not in keep:
                self._remove(path)
        if client is not None and client_incoming:
            mine = [(p, s) for p, (s, c, _) in self._index.items() if c == client and p not in keep]
            used = sum(s for _, s in mine)
            for path, size in mine:
                if used + client_incoming <= self.per_client_bytes:
                    break
                self._remove(path)
                used -= size
        reserved = sum(self._reserved.values())
        for path in list(self._index):
            if self._total + reserved + incoming <= self.max_bytes:
                break
            if path not in keep:
                self._remove(path)

    def close(self) -> None:
        """Remove the output and paste folders (at shutdown)."""
        with self._lock:
            self._index.clear()
            self._total = 0
        if self._out is not None:
            self._out.cleanup()
        self._paste.cleanup()

    def lifespan(self):
        """A FastAPI lifespan (gradio's ``app_kwargs={"lifespan": ...}``) that calls :meth:`close` at shutdown."""

        @contextlib.asynccontextmanager
        async def _lifespan(app):
            try:
                yield
            finally:
                self.close()

        return _lifespan


def _header(scope, name: bytes) -> Optional[bytes]:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v
    return None


class UploadBudget:
    """ASGI middleware around gradio's upload route: room is made in :class:`AppFiles` before a body is written
    (the body's ``Content-Length``, else the largest allowed body), and the paths gradio answers with are indexed
    under the client's address."""

    def __init__(self, app, files: AppFiles, max_body_bytes: int):
        self.app, self.files, self.max_body_bytes = app, files, int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith("/upload"):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        try:
            nbytes = min(int(_header(scope, b"content-length") or self.max_body_bytes), self.max_body_bytes)
        except ValueError:
            nbytes = self.max_body_bytes
        if nbytes > min(self.files.per_client_bytes, self.files.max_bytes):  # one request over the whole allowance
            detail = json.dumps({"detail": f"Upload too large: the limit is "
                                           f"{self.files.per_client_bytes / 2**20:.0f} MB."}).encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(detail)).encode()), (b"connection", b"close")]})
            return await send({"type": "http.response.body", "body": detail})
        body = bytearray()
        status = [0]

        async def capture(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200 and len(body) < 1 << 20:
                body.extend(message.get("body", b""))
            await send(message)

        with self.files.upload(client, nbytes) as record:
            await self.app(scope, receive, capture)
            if status[0] == 200:
                try:
                    paths = json.loads(bytes(body))
                except ValueError:
                    paths = []
                record([p for p in paths if isinstance(p, str) and os.path.isabs(p)] if isinstance(paths, list)
                       else [])
