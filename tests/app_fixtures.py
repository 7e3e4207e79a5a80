"""Fixtures for the app tests: a tiny random CamVid-class SemFlow pipeline saved to disk, and the app served
in-process on a free port.

Import them into a test module with ``from app_fixtures import app_server, app_url, tiny_model_dir  # noqa: F401``.
The tiny model has the shipped checkpoint's classes and colours, so the UI is the real one; set
``SEMFLOW_TEST_MODEL=checkpoints/semflow-camvid`` to run the app tests against a real model instead.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

# `space/` and `app.py` live at the repository root, which plain `pytest` does not put on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from semflow_tiny import tiny_pixel_pipeline  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random pipeline (CamVid classes, simplex anchors, endpoint prediction) in Hub layout."""
    override = os.environ.get("SEMFLOW_TEST_MODEL")
    if override:
        return override
    path = tmp_path_factory.mktemp("models") / "tiny-semflow-camvid"
    tiny_pixel_pipeline(prediction_type="endpoints", palette="simplex", resolution=32).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def app_server(tiny_model_dir):
    """The full app (loaded from the saved folder, as ``python app.py --model`` does) on a free local port.

    Yields ``(url, demo)``; most tests only need the URL (``app_url``)."""
    from space import build_demo, launch_kwargs

    demo = build_demo(tiny_model_dir, concurrency_limit=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(demo))
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()
    time.sleep(0.2)


@pytest.fixture(scope="session")
def app_url(app_server):
    return app_server[0]
