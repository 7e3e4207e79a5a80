"""Issue 17 items 4, 6 and 7 without a browser: stale outputs, uploaded masks, named outputs, the Edit warning and
the console's share hint (the browser checks of the same items are in ``test_app_browser.py``)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_fixtures import app_server, app_url, free_port, tiny_model_dir  # noqa: F401
from semflow_tiny import CAMVID_COLORS
from space.examples import SEEDS, draw_street

EXAMPLES = Path(__file__).resolve().parents[1] / "space" / "examples"
PALETTE = np.asarray(CAMVID_COLORS, np.uint8)


@pytest.fixture(scope="module")
def client(app_url):  # noqa: F811
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def config(app_url):  # noqa: F811
    return requests.get(f"{app_url}config", timeout=30).json()


def _ids_by_elem(config) -> dict[str, int]:
    return {c["props"]["elem_id"]: c["id"] for c in config["components"] if c.get("props", {}).get("elem_id")}


def _jpeg(arr: np.ndarray, path: Path, quality: int = 75) -> Path:
    Image.fromarray(arr).save(path, "JPEG", quality=quality)
    return path


# ------------------------------------------------------------------------------------------ item 7: details
def test_every_output_of_every_endpoint_is_named(client):
    """view_api() names each output by its label; none is a generated `value_<n>` (/segment's fifth was)."""
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/segment", "/synthesize", "/synthesize_canvas", "/edit_predict", "/edit_synthesize", "/flow"} <= set(api)
    unnamed = {name: [r.get("label") for r in info["returns"] if not r.get("label") or re.fullmatch(
        r"value_\d+", str(r.get("label")))] for name, info in api.items()}
    assert not any(unnamed.values()), unnamed


def test_edit_predict_button_is_a_primary_button(config):
    ids = _ids_by_elem(config)
    props = next(c["props"] for c in config["components"] if c["id"] == ids["edit-predict"])
    assert props["variant"] == "primary", props["variant"]  # was the grey secondary look of a disabled button


def _calibration_flagging_everything(fingerprint: str) -> dict:
    from space.ood import GRID, STATISTIC

    rule = {"score": "mean_confidence", "weights": {"mean_confidence": 1.0}, "mean": {"mean_confidence": 0.0},
            "std": {"mean_confidence": 1.0}, "threshold": 2.0, "false_alarm_rate": 0.03}
    return {"statistic": STATISTIC, "model_fingerprint": fingerprint, "dataset": "test frames", "domain": "streets",
            "layout_log_prior": np.zeros((len(CAMVID_COLORS), GRID[0] * GRID[1])).tolist(), "steps": {"1": rule}}


def test_edit_shows_the_out_of_domain_warning_inline(tiny_model_dir, tmp_path):  # noqa: F811
    """Edit's predict step returns the warning as an output shown next to the mask (it was only a toast)."""
    from space import SpaceModel, build_demo, launch_kwargs

    model = SpaceModel(tiny_model_dir)
    (tmp_path / "calib.json").write_text(json.dumps(_calibration_flagging_everything(model.fingerprint())))
    demo = build_demo(model, ood_file=tmp_path / "calib.json", warmup=False)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(demo))
    try:
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        photo = tmp_path / "p.png"
        Image.open(EXAMPLES / "street_4_color.png").convert("RGB").resize((64, 48)).save(photo)
        out = c.predict(handle_file(str(photo)), 1, api_name="/edit_predict")
        assert len(out) == 3, out
        assert "ood-warning" in out[2] and "looks unlike the street scenes" in out[2]
        note = c.predict(handle_file(str(photo)), 1, 0.5, api_name="/segment")[4]
        assert "ood-warning" in note  # the same warning, the same way, on both tabs
    finally:
        demo.close()


def test_console_share_hint_names_the_apps_option(tiny_model_dir, monkeypatch, capsys):  # noqa: F811
    """The start message advises `--share` (gradio's own says `share=True` in `launch()`)."""
    import app
    import space

    calls = {}

    class FakeDemo:
        local_url, share_url = "http://127.0.0.1:7860/", None

        def launch(self, **kwargs):
            calls.update(kwargs)

        def block_thread(self):
            calls["blocked"] = True

    monkeypatch.setattr(space, "build_demo", lambda *a, **k: FakeDemo())
    monkeypatch.delenv("SPACE_ID", raising=False)
    app.main(["--model", tiny_model_dir])
    out = capsys.readouterr().out
    assert "--share" in out and "share=True" not in out and "http://127.0.0.1:7860/" in out
    assert calls["quiet"] is True and calls["blocked"]  # gradio's message is silenced, the server still blocks


# ------------------------------------------------------------------------------------------ item 4: stale state
@pytest.mark.parametrize("source, results", [
    ("seg-input", ["seg-map", "seg-overlay", "seg-conf", "seg-legend", "seg-note"]),
    ("syn-input", ["syn-gallery", "syn-mask"]),
    ("edit-input", ["edit-canvas", "edit-photo", "edit-gallery", "edit-mask", "edit-note"]),
    ("flow-input", ["flow-forward", "flow-backward"]),
])
def test_a_new_input_clears_the_results_of_the_old_one(config, source, results):
    """Each input's change event resets the outputs computed from the previous input (and their error badges)."""
    ids = _ids_by_elem(config)
    cleared = set()
    for dep in config["dependencies"]:
        if any(t[0] == ids[source] and t[1] == "change" for t in dep["targets"]):
            cleared |= set(dep["outputs"])
    missing = [r for r in results if ids[r] not in cleared]
    assert not missing, f"a change of {source} leaves {missing} showing the previous results"


@pytest.mark.parametrize("canvas, run, results, note", [
    ("syn-canvas", "syn-canvas-run", ["syn-gallery", "syn-mask"], "syn-stale"),
    ("edit-canvas", "edit-run", ["edit-gallery", "edit-mask"], "edit-stale"),
])
def test_a_canvas_edit_marks_the_results_stale_instead_of_clearing_them(config, canvas, run, results, note):
    """A canvas's change event can land after a run that already used the stroke (the editor uploads the stroke
    first): it updates the stale note only, never the results; each run clears the note and checks the canvas
    again once it is done (strokes made during the run)."""
    ids = _ids_by_elem(config)
    deps = config["dependencies"]
    on_change = [d for d in deps if any(t[0] == ids[canvas] and t[1] == "change" for t in d["targets"])]
    assert on_change, f"nothing marks the results of {canvas} stale"
    outputs = set().union(*(d["outputs"] for d in on_change))
    assert outputs == {ids[note]}, f"a change of {canvas} writes {outputs}, not only the note"
    first = [d for d in deps if any(t[0] == ids[run] and t[1] == "click" for t in d["targets"]) and d["backend_fn"]]
    assert len(first) == 1 and {ids[note], *(ids[r] for r in results)} <= set(first[0]["outputs"])
    chain, step = [], first[0]
    while step is not None:  # the steps that follow the click (.then)
        chain.append(step)
        step = next((d for d in deps if d.get("trigger_after") == step["id"]), None)
    assert len(chain) == 3 and chain[-1]["outputs"] == [ids[note]] and ids[canvas] in chain[-1]["inputs"]


# ------------------------------------------------------------------------------------------ item 6: uploaded masks
def test_jpeg_colour_mask_is_snapped_to_the_legend(tiny_model_dir, tmp_path):  # noqa: F811
    from space import SpaceModel
    from space.inputs import load_mask_file

    model = SpaceModel(tiny_model_dir)
    ids = draw_street(SEEDS[4])
    for q in (50, 90):
        path = _jpeg(PALETTE[ids], tmp_path / f"mask{q}.jpg", q)
        kind, mask = load_mask_file(str(path))
        got, note = model.read_mask(kind, mask, lossy=True)
        assert (got == ids).mean() > 0.97 and "JPEG" in note and "PNG" in note


def test_jpeg_photo_in_the_mask_slot_names_jpeg_and_png(tiny_model_dir, tmp_path):  # noqa: F811
    from space import SpaceModel
    from space.inputs import InputError, load_mask_file

    model = SpaceModel(tiny_model_dir)
    rng = np.random.default_rng(0)
    photo = (np.asarray(Image.open(EXAMPLES / "photo_0.png").convert("RGB")).astype(int)
             + rng.integers(-20, 20, (360, 480, 3))).clip(0, 255).astype(np.uint8)
    kind, mask = load_mask_file(str(_jpeg(photo, tmp_path / "photo.jpg")))
    with pytest.raises(InputError, match="JPEG.*PNG"):
        model.read_mask(kind, mask, lossy=True)


def test_synthesize_accepts_a_jpeg_colour_mask(client, tmp_path):
    """Through the API: a colour mask saved as JPEG synthesizes (it was refused as 'a photo')."""
    ids = draw_street(SEEDS[5])
    path = _jpeg(PALETTE[ids], tmp_path / "mask.jpg")
    gallery, mask_used = client.predict(handle_file(str(path)), 1, 0.05, 0, 1, api_name="/synthesize")
    used = np.asarray(Image.open(mask_used).convert("RGB"))
    assert len(gallery) == 1 and (used == PALETTE[ids]).all(-1).mean() > 0.97


def test_jpeg_photo_as_mask_is_refused_with_the_jpeg_advice(client, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.open(EXAMPLES / "photo_1.png").convert("RGB").save(path, "JPEG", quality=85)
    with pytest.raises(AppError, match="JPEG"):
        client.predict(handle_file(str(path)), 1, 0.05, 0, 1, api_name="/synthesize")


def test_label_id_png_is_read_as_ids_exactly(tiny_model_dir, tmp_path):  # noqa: F811
    """A CamVid-style label-id PNG (grey levels 0..11) reads as those ids, and the note says so."""
    from space import SpaceModel
    from space.inputs import load_mask_file

    model = SpaceModel(tiny_model_dir)
    ids = draw_street(SEEDS[0])
    path = tmp_path / "ids.png"
    Image.fromarray(ids.astype(np.uint8), mode="L").save(path)
    kind, mask = load_mask_file(str(path))
    got, note = model.read_mask(kind, mask)
    assert kind == "ids" and np.array_equal(got, ids) and note is None
    buf = io.BytesIO()
    Image.fromarray(model.colorize(got)).save(buf, "PNG")
    assert np.asarray(Image.open(buf)).mean() > 40  # the preview in colours, not black
