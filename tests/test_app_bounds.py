"""Issue 18, the app's memory and disk bounds: an editor value's layers are bounded in number, bytes and pixels
before any is decoded (item 1); request bodies above the limit are refused (413) before they are read or parsed
(item 2); gradio keeps a bounded number of sessions (item 3); the app's files stay within a disk budget, pasted
images are deleted once read, and everything goes at shutdown (item 4)."""


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


# ------------------------------------------------------------------------------------ item 3: sessions
def _refused_calls(url, n):
    """``n`` cheap API calls (no photo: refused at once); each ``/call`` is a new gradio session."""
    for _ in range(n):
        kind, message = _call(url, "segment", [None, 1, 0.5])
        assert kind == "error" and "Upload a photo first" in (message or ""), (kind, message)


def test_launch_kwargs_cap_the_sessions_gradio_keeps():
    from space.limits import MAX_SESSIONS
    from space.ui import launch_kwargs

    assert launch_kwargs()["state_session_capacity"] == MAX_SESSIONS <= 1000  # gradio's default: 10,000


@pytest.fixture(scope="module")
def bounded_app(tiny_model_dir):  # noqa: F811
    """The app with a small session cap and a 2 MB disk budget, launched as app.py launches it."""
    from app_fixtures import free_port
    from space import build_demo, launch_kwargs

    demo = build_demo(tiny_model_dir, warmup=False, max_sessions=15, max_disk_bytes=2 * 2**20)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(demo))
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


def test_sessions_beyond_the_cap_are_dropped(bounded_app, app_server):  # noqa: F811
    """Issue 18 item 3: every API call left ~170 KB of session state, up to gradio's 10,000 sessions (1.7 GB)."""
    url, demo = bounded_app
    _refused_calls(url, 40)
    assert demo.state_session_capacity == 15
    assert len(demo.server_app.state_holder.session_data) <= 15
    assert app_server[1].server_app.state_holder.capacity == 256  # the app as launched by app.py and the tests


# ---------------------------------------------------------------------------------------- item 4: disk
def _upload(url, files):
    r = requests.post(f"{url}gradio_api/upload", files=[("files", f) for f in files], timeout=60)
    return r.status_code, (r.json() if r.status_code == 200 else r.text)


def _on_disk(paths):
    import os
    return sum(os.path.getsize(p) for p in paths if os.path.exists(p))


def test_app_files_stay_within_their_budget_oldest_first(tmp_path):
    import os

    from space.disk import AppFiles

    files = AppFiles(str(tmp_path), max_bytes=1 << 20, per_client_bytes=1 << 20)
    written = []
    for i in range(10):
        path = files.new_path(f"out{i}")
        with open(path, "wb") as f:
            f.write(b"x" * 300_000)
        files.add(path)
        written.append(path)
    assert files.usage() <= 1 << 20 and _on_disk(written) <= 1 << 20
    assert [p for p in written if os.path.exists(p)] == written[-3:]  # the newest stay
    files.close()
    assert not os.path.exists(files.out_dir) and not os.path.exists(files.paste_dir)


def test_a_pasted_image_is_deleted_once_read_and_counts_against_the_budget(tmp_path):
    import base64
    import os

    from space.disk import AppFiles

    files = AppFiles(str(tmp_path), max_bytes=1 << 20, per_client_bytes=1 << 20)
    gate = UploadGate(lambda: set(), str(tmp_path), max_bytes=25 * 2**20, files=files)
    data = "data:image/png;base64," + base64.b64encode(_png(tmp_path / "p.png", (64, 64)).read_bytes()).decode()
    with gate.reading({"url": data}) as path:
        assert os.path.dirname(path) == files.paste_dir and Image.open(path).size == (64, 64)
        assert files.usage() > 0
    assert not os.path.exists(path) and not os.listdir(files.paste_dir) and files.usage() == 0
    # A refused editor value: the pasted background it had already decoded goes too.
    with pytest.raises(InputError):
        with gate.reading_editor({"background": {"url": data}, "layers": [{"path": "/etc/passwd"}]}):
            pass
    assert not os.listdir(files.paste_dir)


def test_uploads_are_bounded_per_request_per_client_and_in_total(bounded_app):
    """Issue 18 item 4: uploads stayed an hour, whatever their number; the app's files now stay under its budget
    (2 MB here): a client's own oldest uploads go first, and a request over the budget is refused."""
    import os

    url, demo = bounded_app
    files = demo.semflow_files
    paths = []
    for i in range(8):
        status, answer = _upload(url, [(f"u{i}.png", os.urandom(400_000), "image/png")])
        assert status == 200, answer
        paths += answer
    assert _on_disk(paths) <= 2 * 2**20 and files.usage() <= 2 * 2**20
    assert os.path.exists(paths[-1]) and not os.path.exists(paths[0])
    # One request of many small files: bounded by the same budget once written.
    status, answer = _upload(url, [(f"s{i}.png", os.urandom(1000), "image/png") for i in range(300)])
    assert status == 200 and len(answer) == 300
    assert _on_disk(paths + answer) <= 2 * 2**20 and files.usage() <= 2 * 2**20
    status, answer = _upload(url, [("big.png", os.urandom(3 * 2**20), "image/png")])
    assert status == 413 and "Upload too large" in answer


def test_pasted_images_are_deleted_after_the_request_and_outputs_stay_in_budget(bounded_app, tmp_path):
    import base64
    import os

    url, demo = bounded_app
    files = demo.semflow_files
    data = "data:image/png;base64," + base64.b64encode(_png(tmp_path / "p.png", (640, 480)).read_bytes()).decode()
    for _ in range(4):
        kind, _ = _call(url, "edit_predict", [{"url": data}, 1])
        assert kind == "complete"
    assert os.listdir(files.paste_dir) == []
    du = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(files.out_dir) for f in fs)
    assert 0 < du <= 2 * 2**20 and files.usage() <= 2 * 2**20


def test_the_apps_files_are_removed_when_the_server_closes(tiny_model_dir, tmp_path):  # noqa: F811
    import base64
    import os

    from app_fixtures import free_port
    from space import build_demo, launch_kwargs

    demo = build_demo(tiny_model_dir, warmup=False)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(demo))
    url = f"http://127.0.0.1:{port}/"
    files = demo.semflow_files
    data = "data:image/png;base64," + base64.b64encode(_png(tmp_path / "p.png", (64, 48)).read_bytes()).decode()
    assert _call(url, "edit_predict", [{"url": data}, 1])[0] == "complete"
    status, uploaded = _upload(url, [("u.png", _png(tmp_path / "u.png", (32, 32)).read_bytes(), "image/png")])
    assert status == 200 and os.listdir(files.out_dir)
    demo.close()
    assert not os.path.exists(files.out_dir) and not os.path.exists(files.paste_dir)
    assert not os.path.exists(uploaded[0])  # gradio's delete_cache, at shutdown
