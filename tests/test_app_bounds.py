"""Issue 18, the app's memory bounds: an editor value's layers are bounded in number, bytes and pixels before any
is decoded (item 1); request bodies above the limit are refused (413) before they are read or parsed (item 2)."""


import socket

import numpy as np
import pytest
import requests
from PIL import Image

from app_fixtures import app_server, app_url, tiny_model_dir  # noqa: F401
from space.inputs import InputError
from space.body_limit import BodySizeLimit
from space.uploads import MAX_EDITOR_LAYERS, UploadGate
from test_app_security import _call


def _gate(tmp_path, files):
    return UploadGate(lambda: {str(f) for f in files}, str(tmp_path), max_bytes=25 * 2**20)


def _png(path, size=(1024, 1024)):
    Image.fromarray(np.zeros((size[1], size[0], 4), np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------- item 1: layers
def test_too_many_layers_are_refused_before_any_file_is_read(tmp_path, monkeypatch):
    f = _png(tmp_path / "layer.png")
    gate = _gate(tmp_path, [f])
    opened = []
    monkeypatch.setattr(gate, "file", lambda *a, **k: opened.append(a) or str(f))
    layer = {"path": str(f), "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(InputError, match=f"400 layers; the limit is {MAX_EDITOR_LAYERS}"):
        gate.editor({"background": None, "layers": [layer] * 400, "composite": None})
    assert not opened


def test_layers_are_bounded_in_pixels_from_their_headers(tmp_path, monkeypatch):
    f = _png(tmp_path / "huge.png", (4096, 4096))  # 16.8 MP, a few kB
    gate = _gate(tmp_path, [f])
    import PIL.Image
    loads = []
    real_load = PIL.Image.Image.load
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: loads.append(1) or real_load(self))
    layer = {"path": str(f), "meta": {"_type": "gradio.FileData"}}
    with pytest.raises(InputError, match="megapixels together"):
        gate.editor({"background": layer, "layers": [layer] * 6, "composite": layer})
    assert not loads  # nothing was decoded
    small = _png(tmp_path / "small.png", (64, 64))
    gate = _gate(tmp_path, [small])
    s = {"path": str(small), "meta": {"_type": "gradio.FileData"}}
    assert len(gate.editor({"background": s, "layers": [s], "composite": s})["layers"]) == 1


def test_the_400_layer_request_of_the_issue_is_refused_by_the_app(app_url, tmp_path):  # noqa: F811
    """The issue's attack: one small transparent 1024x1024 PNG named 400 times (RSS went 574 -> 3,743 MB)."""
    f = _png(tmp_path / "t.png")
    with open(f, "rb") as fh:
        path = requests.post(f"{app_url}gradio_api/upload", files={"files": ("t.png", fh, "image/png")},
                             timeout=60).json()[0]
    layer = {"path": path, "meta": {"_type": "gradio.FileData"}}
    editor = {"background": None, "layers": [layer] * 400, "composite": layer}
    for endpoint, data in (("synthesize_canvas", [editor, 0, 1, 0.05, 0, 1]), ("edit_synthesize", [editor, 1, 0.05, 0, 1])):
        kind, message = _call(app_url, endpoint, data)
        assert kind == "error" and f"the limit is {MAX_EDITOR_LAYERS}" in (message or ""), (endpoint, kind, message)


# ---------------------------------------------------------------------------------------- item 2: body cap
def _client():
    from fastapi import FastAPI, Request
    from starlette.middleware import Middleware
    from starlette.testclient import TestClient

    app = FastAPI(middleware=[Middleware(BodySizeLimit, max_json_bytes=1000, max_upload_bytes=5000)])
    read = []

    @app.post("/json")
    async def j(request: Request):
        body = await request.json()
        read.append(len(body["x"]))
        return {"ok": True}

    @app.post("/upload")
    async def u(request: Request):
        read.append(len(await request.body()))
        return {"ok": True}

    return TestClient(app), read


def test_body_limit_by_content_length_and_by_stream():
    client, read = _client()
    assert client.post("/json", json={"x": "a" * 500}).status_code == 200
    r = client.post("/json", json={"x": "a" * 5000})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    r = client.post("/json", content=iter([b'{"x": "' + b"a" * 600, b"a" * 600 + b'"}']),
                    headers={"content-type": "application/json"})  # chunked: no Content-Length
    assert r.status_code == 413
    files = {"files": ("a.bin", b"x" * 3000, "application/octet-stream")}
    assert client.post("/upload", files=files).status_code == 200  # multipart has its own, larger limit
    files = {"files": ("a.bin", b"x" * 6000, "application/octet-stream")}
    assert client.post("/upload", files=files).status_code == 413
    assert read == [500, read[1]] and read[1] > 3000  # only the accepted bodies reached a handler


def test_launch_kwargs_install_the_body_limit():
    from space.ui import MAX_JSON_BODY_BYTES, launch_kwargs
    (mw,) = launch_kwargs()["app_kwargs"]["middleware"]
    assert mw.cls is BodySizeLimit and mw.kwargs["max_json_bytes"] == MAX_JSON_BODY_BYTES < 40 * 2**20


def test_an_oversized_body_is_refused_by_the_app_before_it_is_sent(app_url):  # noqa: F811
    """The issue's 300 MB data: URL: the server answers 413 from the headers; the body is never sent."""
    host, port = app_url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /gradio_api/call/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 314572800\r\n\r\n" + b'{"data": [{"url": "data:image/png;base64,AAAA')
        answer = s.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
