"""Shared fixtures: tiny SemFlow pipelines built in-process (no downloads)."""

import os

# Before any Hub client is imported: a failed Hub look-up otherwise retries for ~20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from semflow_tiny import CAMVID_CLASSES, make_toy_camvid, tiny_latent_pipeline, tiny_pixel_pipeline  # noqa: E402,F401

# Browser tests: skipped with the reason when Chromium is missing, failed instead under SEMFLOW_REQUIRE_BROWSER=1.
from browser_gate import pytest_configure, pytest_runtest_setup, pytest_terminal_summary  # noqa: E402,F401


@pytest.fixture
def pixel_pipe():
    return tiny_pixel_pipeline(prediction_type="endpoints", palette="simplex")


@pytest.fixture
def latent_pipe():
    return tiny_latent_pipeline()


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A tiny CamVid-layout dataset (6 train + 6 val frames, 24x32), shared read-only by the training tests."""
    root = tmp_path_factory.mktemp("toy_camvid")
    make_toy_camvid(root)
    return root
