"""The checkpoints the repo ships: complete Hub layout, current code, safetensors only, small, with a model card."""

import filecmp
import json
from pathlib import Path

import pytest
import yaml

import semflow_pipeline
from semflow_pipeline.pipeline_semflow import REMOTE_CODE_FILES

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted(p.parent for p in (ROOT / "checkpoints").glob("*/model_index.json"))
PACKAGE = Path(semflow_pipeline.__file__).parent


def test_the_default_checkpoint_is_shipped():
    assert (ROOT / "checkpoints" / "semflow-camvid" / "model_index.json").is_file()


@pytest.mark.parametrize("folder", PIPELINES, ids=[p.name for p in PIPELINES])
def test_checkpoint_code_is_the_package_code(folder):
    # A stale copy would make trust_remote_code users run old code: refresh with
    # `python -c "from semflow_pipeline.pipeline_semflow import write_remote_code as w; w('checkpoints/NAME')"`.
    for name, targets in REMOTE_CODE_FILES.items():
        for target in targets:
            assert filecmp.cmp(PACKAGE / name, folder / target, shallow=False), f"{folder.name}/{target} is stale"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_semflow", "SemFlowPipeline"]


@pytest.mark.parametrize("folder", sorted(p for p in (ROOT / "checkpoints").iterdir() if p.is_dir()),
                         ids=lambda p: p.name)
def test_checkpoint_weights_are_small_safetensors_with_a_model_card(folder):
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert any(p.suffix == ".safetensors" for p in files)
    assert sum(p.stat().st_size for p in files) < 40 * 2**20
    card = (folder / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] in ("diffusers", "semflow") and meta["pipeline_tag"] == "image-segmentation"
    assert "mIoU" in card


@pytest.mark.parametrize("folder", sorted(p for p in (ROOT / "checkpoints").iterdir() if p.is_dir()),
                         ids=lambda p: p.name)
def test_checkpoint_cards_link_the_dataset(folder):
    # Issue 17 item 19: a top-level `datasets:` field, so that the Hub links the model to its training data.
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert meta.get("datasets") == ["camvid"]
