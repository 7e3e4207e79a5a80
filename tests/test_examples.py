"""Issue 17 item 2: the shipped example photos are the model's best round-trips.

Every ``space/examples/photo_<i>.png`` is segmented by the shipped default model as the Segment tab does it (the
app's photo reading, the model's default step count); its labels must agree with the layout it was synthesized
from (``street_<i>.png``, class ids) on at least ``space.examples.MIN_AGREEMENT`` of the pixels, and the committed
out-of-domain check must not flag it. The test reads whatever examples and calibration are committed: after a new
model, re-run ``python -m space.ood`` and ``python -m space.examples``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "space" / "examples"
SHIPPED = ROOT / "checkpoints" / "semflow-camvid"

pytestmark = pytest.mark.skipif(not (SHIPPED / "unet").is_dir(), reason="no shipped checkpoint")


@pytest.fixture(scope="module")
def model():
    from space.model import SpaceModel

    return SpaceModel(str(SHIPPED))


def test_examples_are_for_the_shipped_model(model):
    from space.examples import MANIFEST

    manifest = json.loads((EXAMPLES / MANIFEST).read_text())
    assert manifest["model_fingerprint"] == model.fingerprint(), (
        "space/examples/ were made with another model: re-run python -m space.ood, then python -m space.examples")


@pytest.mark.parametrize("i", range(4))
def test_every_example_photo_segments_back_to_its_layout_without_a_warning(model, i):
    from space.examples import MIN_AGREEMENT, agreement
    from space.inputs import load_photo
    from space.ood import OODCheck

    check = OODCheck.load(model.fingerprint())
    assert check.calibrated, "space/ood_calibration.json is not for the shipped model: re-run python -m space.ood"
    photo = load_photo(str(EXAMPLES / f"photo_{i}.png"), 1024)
    layout = np.asarray(Image.open(EXAMPLES / f"street_{i}.png")).astype(np.int64)  # palette PNG: index = class id
    steps = model.default_steps
    seg = model.segment(photo, steps)
    agree = agreement(seg.labels, layout, model.num_classes)
    assert agree >= MIN_AGREEMENT, f"photo_{i}.png agrees with its layout on {agree:.1%} < {MIN_AGREEMENT:.0%}"
    warning = check.check(seg.confidence, steps, seg.labels)
    assert warning is None, f"photo_{i}.png: {warning}"
