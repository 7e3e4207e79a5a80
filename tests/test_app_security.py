"""The file-read hole (issue 10, item 1): the app reads only files gradio uploaded for it, and its own examples.

Every endpoint that takes a file is called with raw JSON (as an attacker would, with ``requests``), with and
without gradio's ``"meta"`` marker, naming a real image on the server outside gradio's cache and a missing file
through absolute paths, ``..`` tricks, symlinks, URL-encoded and URL forms, and a file inside gradio's cache that
was not uploaded. Each must be refused, never answered with the file's content, and the answer for the existing
file must be the same as for the missing one (no existence oracle).
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file
from PIL import Image

from app_fixtures import app_server, app_url, tiny_model_dir  # noqa: F401
from space.uploads import REFUSED

EXAMPLES = Path(__file__).resolve().parents[1] / "space" / "examples"
META = {"meta": {"_type": "gradio.FileData"}}


def _call(base: str, endpoint: str, data: list) -> tuple[str, object]:
    """POST + read the SSE answer: ("complete", data) or ("error", message-or-None) or ("http", status)."""
    r = requests.post(f"{base}gradio_api/call/{endpoint}", json={"data": data}, timeout=30)
    if r.status_code != 200:
        return "http", r.status_code
    event_id = r.json()["event_id"]
    text = requests.get(f"{base}gradio_api/call/{endpoint}/{event_id}", timeout=60).text
    event = data_line = None
    for line in text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data_line = line.split(":", 1)[1].strip()
    if event == "complete":
        return "complete", data_line
    import json

    try:
        message = json.loads(data_line).get("error") if data_line and data_line != "null" else None
    except ValueError:
        message = data_line
    return event, message


def _image(path: Path) -> Path:
    Image.fromarray(np.full((30, 40, 3), (200, 30, 30), np.uint8)).save(path)
    return path


# endpoint -> (how its file inputs are placed into the data list)
def _image_endpoints(f):
    return {
        "segment": [f, 1, 0.5],
        "synthesize": [f, 1, 0.05, 0, 1],
        "edit_predict": [f, 1],
        "flow": [f, 2],
    }


def _editor_endpoints(f):
    editor = {"background": f, "layers": [], "composite": None}
    layer_editor = {"background": None, "layers": [f], "composite": f}
    return {
        "synthesize_canvas": [layer_editor, 0, 1, 0.05, 0, 1],
        "synthesize_canvas ": [editor, 0, 1, 0.05, 0, 1],  # same endpoint, the file as background
        "edit_synthesize": [editor, 1, 0.05, 0, 1],
    }


@pytest.fixture
def cache_dir():
    """A fresh folder inside gradio's cache, removed afterwards."""
    d = Path(get_upload_folder()) / f"semflow-test-{uuid.uuid4().hex}"
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _variants(target: str, cache: str, link_dir: Path) -> dict[str, dict]:
    """Ways to name ``target`` (a path outside gradio's cache) in a file payload."""
    name = Path(target).name
    link_dir = link_dir / uuid.uuid4().hex[:8]
    link_dir.mkdir()
    link = link_dir / f"link-{name}"
    if not link.is_symlink():
        os.symlink(target, link)  # a symlink inside gradio's cache pointing out
    dir_link = link_dir / "dirlink"
    if not dir_link.is_symlink():
        os.symlink(str(Path(target).parent), dir_link)  # a symlinked folder inside the cache
    return {
        "absolute": {"path": target},
        "dotdot_from_cache": {"path": f"{cache}/../../..{target}"},
        "relative_dotdot": {"path": "../../../../../../../.." + target},
        "double_slash": {"path": "/" + target},
        "symlink_in_cache": {"path": str(link)},
        "symlinked_dir_in_cache": {"path": str(dir_link / name)},
        "url_encoded": {"path": urllib.parse.quote(target, safe="")},
        "url_encoded_partial": {"path": target.replace("/", "%2F", 2)},
        "file_url": {"path": "file://" + target},
        "url_only": {"url": f"http://127.0.0.1:1/gradio_api/file={target}"},
        "file_route_url_as_path": {"path": f"/gradio_api/file={target}"},
        "bare_string": target,
    }


def test_file_read_hole_is_closed_on_every_endpoint(app_url, tmp_path, cache_dir):  # noqa: F811
    secret = str(_image(tmp_path / "secret.png"))
    missing = str(tmp_path / "missing.png")
    cache = get_upload_folder()
    answers_secret = {}
    answers_missing = {}
    for label, target, answers in (("secret", secret, answers_secret), ("missing", missing, answers_missing)):
        for vname, payload in _variants(target, cache, cache_dir).items():
            for meta in (False, True):
                f = payload if (not meta or not isinstance(payload, dict)) else {**payload, **META}
                for ep, data in {**_image_endpoints(f), **_editor_endpoints(f)}.items():
                    event, message = _call(app_url, ep.strip(), data)
                    answers[(vname, meta, ep)] = (event, message)
                    assert event != "complete", f"{label} {vname} meta={meta} {ep}: answered {message!r:.200}"
                    assert message in (None, REFUSED), f"{label} {vname} meta={meta} {ep}: {message!r}"
    # No existence oracle: a real image and a missing file get exactly the same answer, variant by variant.
    assert answers_secret.keys() == answers_missing.keys()
    differ = {k: (answers_secret[k], answers_missing[k]) for k in answers_secret if answers_secret[k] != answers_missing[k]}
    assert not differ, differ
    # The app's own refusal is the one uniform message (None = refused by gradio itself, before the app).
    assert {m for _, m in answers_secret.values()} <= {None, REFUSED}
    assert answers_secret[("absolute", False, "edit_predict")] == ("error", REFUSED)  # the repro


def test_files_in_gradio_cache_that_were_not_uploaded_are_refused(app_url, cache_dir):  # noqa: F811
    # e.g. another app's upload in a shared /tmp/gradio, or a file the server wrote there
    other = _image(cache_dir / "other-app-upload.png")
    for meta in (False, True):
        f = {"path": str(other), **(META if meta else {})}
        for ep, data in _image_endpoints(f).items():
            assert _call(app_url, ep, data) == ("error", REFUSED), (ep, meta)
        for ep, data in _editor_endpoints(f).items():
            # ImageEditor payloads without "meta" fail gradio's own validation before the app (no message)
            assert _call(app_url, ep.strip(), data) == ("error", REFUSED if meta else None), (ep, meta)


def test_uploads_and_example_copies_are_accepted(app_url, tmp_path, cache_dir):  # noqa: F811
    client = Client(app_url, verbose=False)
    photo = _image(tmp_path / "mine.png")
    out = client.predict(handle_file(str(photo)), 1, 0.5, api_name="/segment")
    assert Image.open(out[0]).size == (40, 30)
    # A copy of an example in gradio's cache (what the page sends when an example is clicked) is accepted...
    d = cache_dir
    shutil.copyfile(EXAMPLES / "photo_0.png", d / "photo_0.png")
    for meta in (False, True):
        f = {"path": str(d / "photo_0.png"), "orig_name": "photo_0.png", **(META if meta else {})}
        event, data = _call(app_url, "segment", [f, 1, 0.5])
        assert event == "complete", (meta, data)
    # ... but not a look-alike: same name, other content.
    _image(d / "photo_0.png")
    assert _call(app_url, "segment", [{"path": str(d / "photo_0.png")}, 1, 0.5]) == ("error", REFUSED)
    # The example files themselves, named by their path in the repository, are not uploads either.
    assert _call(app_url, "segment", [{"path": str(EXAMPLES / "photo_0.png")}, 1, 0.5]) == ("error", REFUSED)


def test_pasted_data_url_is_decoded_not_read_from_disk(app_url, tmp_path):  # noqa: F811
    import base64

    data = base64.b64encode(_image(tmp_path / "p.png").read_bytes()).decode()
    event, _ = _call(app_url, "edit_predict", [{"url": f"data:image/png;base64,{data}"}, 1])
    assert event == "complete"
    event, message = _call(app_url, "edit_predict", [{"url": "data:image/png;base64,@@@"}, 1])
    assert event == "error" and "base64" in message


def test_upload_over_max_file_size_is_refused_by_the_upload_route(app_url, tmp_path):  # noqa: F811
    from space.ui import MAX_UPLOAD_BYTES

    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_UPLOAD_BYTES + 1024)  # sparse: no disk cost
    with open(big, "rb") as f:
        r = requests.post(f"{app_url}gradio_api/upload", files={"files": ("big.png", f, "image/png")}, timeout=60)
    assert r.status_code == 413, r.text[:200]
