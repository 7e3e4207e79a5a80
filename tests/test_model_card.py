"""The model card written by training/model_card.py (and at the end of train_semflow.py): Hub metadata with a
model-index that huggingface_hub reads back, Apache-2.0 everywhere, the paper and the data named, intended use
and limitations, full class names, and a first code block that runs as written against a saved pipeline."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from semflow_tiny import CAMVID_CLASSES, CAMVID_COLORS, tiny_pixel_pipeline  # noqa: E402
from training.baseline import BaselineSegmenter, build_unet  # noqa: E402
from training.model_card import ship, write_model_card  # noqa: E402
from training.train_semflow import DEFAULTS  # noqa: E402

IOU = [0.935, 0.813, 0.004, 0.953, 0.783, 0.889, 0.086, 0.492, 0.613, 0.304, 0.541]
SYNTHESIS = [  # keys as evaluate.py writes them, and the newer names: the card reads whatever is there
    {"steps": 1, "perturbation": 0.05, "num_seeds": 3, "synth_miou": 0.333, "real_miou": 0.53, "ratio": 0.63,
     "diversity_std": 0.0027, "sec_per_image": 0.12, "iou": IOU},
    {"steps": 5, "perturbation": 0.2, "layout_fidelity": 0.81, "diversity": 0.013, "sharpness": 12.5,
     "frechet_distance": 88.1},
    {"steps": 10, "frechet_distance": 70.5},
]


def _seg_rows(steps):
    return [{"name": f"SemFlow {s} step{'s' if s > 1 else ''}", "iou": IOU, "miou": 0.583 - 0.01 * s,
             "pixel_acc": 0.908, "sec_per_image": 0.025 * s} for s in steps]


def make_run(tmp_path: Path, objective: str = "semflow", synthesis=None) -> Path:
    """A finished run folder as train_semflow.py leaves it: config.yaml, result.json, eval.json, log.csv,
    training_curves.png, final/. Recorded by an older version: licence "mit", data at a local path."""
    run = tmp_path / f"run-{objective}"
    final = run / "final"
    if objective == "semflow":
        tiny_pixel_pipeline().save_pretrained(final)
    else:
        unet = build_unet(3, len(CAMVID_CLASSES), (32, 32), (8, 16), norm_num_groups=4)
        BaselineSegmenter(unet, CAMVID_CLASSES, 11, (32, 32), 1, CAMVID_COLORS[:11], objective).save_pretrained(final)
    cfg = dict(DEFAULTS, objective=objective, license="mit", data_root="/home/someone/private/camvid",
               command=f"python training/train_semflow.py --config training/configs/camvid.yaml --output_dir {run}")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "result.json").write_text(json.dumps({
        "steps": 2400, "wall_time_s": 834.0, "params": 4_180_000, "final_val_miou": 0.58,
        "hardware": "1 process(es), CPU (x86_64, 2 cores, torch threads 2), torch 2.13.0+cpu, mixed_precision=bf16"}))
    res = {"model": str(final), "kind": objective, "class_names": CAMVID_CLASSES, "num_images": 101,
           "segmentation": _seg_rows([1, 2, 5]) if objective == "semflow" else
           [{"name": "baseline (CE)", "iou": IOU, "miou": 0.601, "pixel_acc": 0.919, "sec_per_image": 0.03}]}
    if synthesis:
        res["synthesis"] = synthesis
    (run / "eval.json").write_text(json.dumps(res))
    (run / "log.csv").write_text("step,loss,lr\n1,1.0,0.001\n")
    Image.new("RGB", (64, 48), (200, 200, 200)).save(run / "training_curves.png")
    return run


@pytest.fixture(scope="module")
def semflow_card(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card")
    run = make_run(tmp, synthesis=SYNTHESIS)
    dest = tmp / "dest"
    ship(str(run), str(dest))  # repo id: the folder itself, so the usage code runs as written here
    return dest, (dest / "README.md").read_text()


def _first_code_block(text):
    blocks = re.findall(r"```(\w*)\n(.*?)```", text, re.S)
    assert blocks, "the card has no code block"
    return blocks[0]


def test_card_validates_and_its_eval_results_round_trip(semflow_card):
    dest, text = semflow_card
    card = ModelCard.load(dest / "README.md")  # parses the metadata, model-index included
    meta = card.data.to_dict()
    assert meta["license"] == "apache-2.0"  # the run recorded "mit": the shipped card follows the repository
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "image-segmentation"
    assert {"semflow", "semantic-segmentation", "semantic-image-synthesis", "arxiv:2405.20282"} <= set(meta["tags"])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "dest" and results == card.data.eval_results
    seg = {(r.metric_type, r.metric_args["num_inference_steps"]): r for r in results
           if r.task_type == "image-segmentation"}
    for row, s in zip(_seg_rows([1, 2, 5]), (1, 2, 5)):
        r = seg[("mean_iou", s)]
        assert r.metric_value == pytest.approx(row["miou"], abs=1e-4)
        assert (r.dataset_type, r.dataset_name, r.dataset_split) == ("camvid", "CamVid (SegNet split)", "val")
        assert seg[("accuracy", s)].metric_value == pytest.approx(0.908)
    syn = [(r.metric_type, r.metric_value, r.metric_args) for r in results if r.task_type == "image-to-image"]
    assert ("mean_iou", 0.333, {"steps": 1, "perturbation": 0.05, "num_seeds": 3}) in syn
    assert ("layout_fidelity", 0.63, {"steps": 1, "perturbation": 0.05, "num_seeds": 3}) in syn
    assert ("layout_fidelity", 0.81, {"steps": 5, "perturbation": 0.2}) in syn
    assert ("sharpness", 12.5, {"steps": 5, "perturbation": 0.2}) in syn
    assert ("frechet_distance", 70.5, {"steps": 10}) in syn
    assert not [t for t, *_ in syn if t in ("real_miou", "sec_per_image")]  # reference numbers, not results
    # The text is a card huggingface_hub can rebuild and save unchanged.
    assert ModelCard(str(card)).data.to_dict() == meta


def test_card_names_the_paper_the_data_the_uses_and_the_limits(semflow_card):
    dest, text = semflow_card
    body = text.split("\n---\n", 1)[1]
    assert "arxiv.org/abs/2405.20282" in body and "@inproceedings{wang2024semflow" in body and "```bibtex" in body
    assert "## Intended use" in body and "## Limitations" in body and "Out of scope" in body
    assert "4.2M parameters" in body and "367 CamVid frames" in body and "on a CPU" in body
    assert "11 classes" in body and "Street scenes only" in body
    assert "Brostow" in body and "SegNet" in body and "/home/someone" not in body  # the data, not a local path
    assert "![Training curves" in body and "(training_curves.png)" in body and (dest / "training_curves.png").is_file()
    header = next(line for line in body.splitlines() if line.startswith("| model |"))
    assert [c.strip() for c in header.split("|")[2:13]] == CAMVID_CLASSES  # full names, e.g. "sign_symbol"
    # What the card always recorded: command, data, steps, wall time, val metrics.
    assert "--config training/configs/camvid.yaml" in body and "2400 steps" in body and "13.9 min" in body
    assert "**0.573**" in body and "| frechet_distance" not in body and "| frechet distance |" in body
    assert "Apache-2.0" in body.split("## License", 1)[1]


def test_card_first_code_block_runs_as_written(semflow_card, tmp_path, monkeypatch):
    dest, text = semflow_card
    lang, code = _first_code_block(text.split("\n---\n", 1)[1])
    assert lang == "python"
    assert f'DiffusionPipeline.from_pretrained("{dest}", trust_remote_code=True)' in code
    assert "pipe(" not in code.replace("pipe.", "")  # no text-prompt call
    assert "no text prompt" in text
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__card__"})
    street = Image.open(tmp_path / "street.png")
    labels = Image.open(tmp_path / "street_labels.png")
    assert street.size == (480, 360) and labels.size == (480, 360)


def test_repo_id_is_what_the_usage_code_loads(tmp_path):
    run = make_run(tmp_path)
    text = ship(str(run), str(tmp_path / "dest"), repo_id="someone/semflow-camvid")
    assert 'DiffusionPipeline.from_pretrained("someone/semflow-camvid", trust_remote_code=True)' in text
    assert "- name: semflow-camvid" in text


def test_card_without_synthesis_or_eval(tmp_path):
    run = make_run(tmp_path)
    card = ModelCard(ship(str(run), str(tmp_path / "a")))
    assert {r.task_type for r in card.data.eval_results} == {"image-segmentation"}
    # The end of training without a final evaluation: a valid card without a model-index.
    cfg = dict(DEFAULTS, command="python training/train_semflow.py")
    result = {"steps": 4, "wall_time_s": 3.0, "params": 1000}
    folder = tmp_path / "b"
    folder.mkdir()
    text = write_model_card(str(folder), cfg, {"class_names": CAMVID_CLASSES, "ignore_index": 11}, result, None, "CPU")
    card = ModelCard(text)
    assert card.data.eval_results is None and "(not evaluated)" in text and card.data.license == "apache-2.0"
    assert "trained from scratch" in text
    # A warm-started run (init_from) says so: its steps and wall time are only this run's.
    text = write_model_card(str(folder), dict(cfg, init_from="runs/v2/final"),
                            {"class_names": CAMVID_CLASSES, "ignore_index": 11}, result, None, "CPU")
    assert "warm-started from the weights of `runs/v2/final`" in text and "trained from scratch" not in text


def test_baseline_card_and_its_usage_code(tmp_path, monkeypatch):
    run = make_run(tmp_path, objective="ce")
    dest = tmp_path / "baseline"
    card = ModelCard(ship(str(run), str(dest)))
    assert card.data.library_name == "semflow" and card.data.license == "apache-2.0"
    assert [r.metric_value for r in card.data.eval_results if r.metric_type == "mean_iou"] == [0.601]
    lang, code = _first_code_block(card.text)
    assert lang == "python" and "BaselineSegmenter.from_pretrained" in code
    monkeypatch.chdir(ROOT)  # "run from a clone of the SemFlow repository"
    exec(compile(code, "README.md", "exec"), {"__name__": "__card__"})


def test_model_card_script_on_a_run_folder(tmp_path):
    run = make_run(tmp_path, synthesis=SYNTHESIS[1:])
    dest = tmp_path / "checkpoints" / "semflow-camvid"
    done = subprocess.run([sys.executable, str(ROOT / "training" / "model_card.py"), str(run), str(dest),
                           "--repo-id", "user/semflow-camvid"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("README.md", "model_index.json", "pipeline_semflow.py", "training_curves.png",
                 "unet/diffusion_pytorch_model.safetensors"):
        assert (dest / name).is_file(), name
    card = ModelCard.load(dest / "README.md")
    assert card.data.license == "apache-2.0" and len(card.data.eval_results) == 6 + 4 + 1


def test_the_licence_is_apache_2_everywhere():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence and "APPENDIX: How to apply the Apache License" in licence
    assert len(licence) > 11000  # the full text, not a pointer to it
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    assert DEFAULTS["license"] == "apache-2.0"
    assert "license: apache-2.0" in (ROOT / "README.md").read_text().split("---")[1]


# Shipped cards written by this script (semflow-camvid-v1's card predates it).
@pytest.mark.parametrize("name", ["baseline-camvid", "semflow-camvid"])
def test_shipped_card_has_eval_results_and_the_licence(name):
    card = ModelCard.load(ROOT / "checkpoints" / name / "README.md")
    assert card.data.license == "apache-2.0" and card.data.eval_results
    assert model_index_to_eval_results(card.data.to_dict()["model-index"])[1] == card.data.eval_results
    assert "sign_symbol |" in card.text and "sign_symbo |" not in card.text and "../shared" not in card.text


# ------------------------------------------------ issue 17 items 12 and 19: the card from a checkpoint folder alone
def test_card_has_a_top_level_datasets_field(semflow_card):
    _, text = semflow_card
    assert yaml.safe_load(text.split("---")[1])["datasets"] == ["camvid"]


def test_card_rewritten_from_a_checkpoint_folder_alone(tmp_path):
    import shutil

    from training.model_card import main as card_main

    folder = tmp_path / "semflow-camvid"
    folder.mkdir()
    for name in ("README.md", "model_index.json"):  # no run folder: what a clone of the repository has
        shutil.copyfile(ROOT / "checkpoints" / "semflow-camvid" / name, folder / name)
    before = ModelCard.load(folder / "README.md")
    card_main([str(folder), "--repo-id", "someone/semflow-camvid"])
    card = ModelCard.load(folder / "README.md")
    code = _first_code_block(card.text)[1]
    assert 'DiffusionPipeline.from_pretrained("someone/semflow-camvid", trust_remote_code=True)' in code
    assert '"checkpoints/semflow-camvid"' not in card.text
    assert "--model someone/semflow-camvid " in card.text
    assert card.data.datasets == ["camvid"]
    assert card.data.eval_results == before.data.eval_results and card.data.license == "apache-2.0"
    assert model_index_to_eval_results(card.data.to_dict()["model-index"])[0] == "semflow-camvid"
    card_main([str(folder), "--repo-id", "other/name", "--dataset-id", "someone/camvid"])  # again: from the new id
    card = ModelCard.load(folder / "README.md")
    assert 'from_pretrained("other/name"' in card.text and card.data.datasets == ["someone/camvid"]


def test_model_card_help_shows_each_default_once():
    done = subprocess.run([sys.executable, str(ROOT / "training" / "model_card.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0 and "(default: None)" not in text
    assert "(default: hub_model_id of the config, else DEST)" in text and "(default: apache-2.0)" in text


def test_push_advice_names_a_command_that_works_without_a_run_folder(tmp_path, capsys):
    from semflow_pipeline.cli import validate_push_folder

    tiny_pixel_pipeline().save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text('---\nlibrary_name: diffusers\n---\nfrom_pretrained("x/y")\n')
    validate_push_folder(tmp_path, "someone/semflow-camvid")
    err = " ".join(capsys.readouterr().err.split())
    assert f"python training/model_card.py {tmp_path} --repo-id someone/semflow-camvid" in err and "RUN_DIR" not in err
