"""End-to-end training: a few steps on generated data and on real CamVid pairs, save, reload, evaluate;
the 2-process CPU launch; kill-and-resume. Tiny models (block_out_channels (8, 16)), tiny images."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.baseline import BaselineSegmenter  # noqa: E402
from training.data import SplitFileDataset  # noqa: E402
from training.evaluate import evaluate_model, format_results, load_model  # noqa: E402
from training.evaluate import main as evaluate_main  # noqa: E402
from training.train_semflow import main as train_main  # noqa: E402

CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"
TRAIN = str(ROOT / "training" / "train_semflow.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
TINY = ["block_out_channels=[8,16]", "norm_num_groups=4", "batch_size=2", "log_every=1", "tensorboard=false"]


def _args(root, out, *sets, steps=4):
    return ["--data_root", str(root), "--output_dir", str(out), "--train_steps", str(steps),
            "--set", "resolution=[16,24]", "checkpointing_steps=2", "val_every=2", *TINY, *sets]


@pytest.mark.parametrize("objective,extra", [
    ("semflow", ["prediction_type=endpoints", "palette=simplex", "t_sampling=ends", "t_zero_prob=0.5",
                 "eval_num_inference_steps=[1,2]", "ema=true", "mask_ce_weight=0.2"]),
    ("semflow", ["prediction_type=velocity", "palette=max_spread", "space_to_depth=2",
                 "eval_num_inference_steps=[1]"]),
    ("ce", []),
    ("mse", []),
])
def test_train_save_reload_evaluate_on_generated_data(toy_root, tmp_path, objective, extra):
    out = tmp_path / "run"
    res = train_main(_args(toy_root, out, f"objective={objective}", *extra))
    final = out / "final"
    assert res["steps"] == 4 and (out / "training_curves.png").is_file()
    rows = list((out / "log.csv").read_text().splitlines())
    assert rows[0].startswith("step,loss") and rows[-1].startswith("4,")
    card = (final / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "mIoU" in card and "train_semflow.py" in card
    assert list(final.rglob("*.safetensors")) and not list(final.rglob("*.bin"))
    kind, model = load_model(str(final))
    assert kind == ("semflow" if objective == "semflow" else "baseline")
    ds = SplitFileDataset(str(toy_root), "val", num_classes=11, ignore_index=11)
    ev = evaluate_model(str(final), ds, [1])
    assert 0.0 <= ev["segmentation"][0]["miou"] <= 1.0 and len(ev["segmentation"][0]["iou"]) == 11
    # The reloaded model reproduces the training run's final evaluation exactly.
    saved = json.loads((out / "eval.json").read_text())
    assert saved["segmentation"][0]["miou"] == pytest.approx(ev["segmentation"][0]["miou"], abs=1e-6)


def test_evaluate_cli_with_synthesis(toy_root, tmp_path, capsys):
    sf, ce = tmp_path / "sf", tmp_path / "ce"
    train_main(_args(toy_root, sf, "t_sampling=ends", "t_one_prob=0.3", "final_eval=false", steps=2))
    train_main(_args(toy_root, ce, "objective=ce", "final_eval=false", steps=2))
    out_json = tmp_path / "eval.json"
    evaluate_main(["--model", str(sf / "final"), "--data-root", str(toy_root), "--split", "val",
                   "--num-inference-steps", "1", "2", "--synthesis", "--baseline", str(ce / "final"),
                   "--perturbations", "0.05", "0.2", "--num-seeds", "2", "--sampler", "stochastic",
                   "--c2st-fits", "2",
                   "--json", str(out_json)])
    text = capsys.readouterr().out
    assert "SemFlow 1 step" in text and "SemFlow 2 steps" in text and "two-sample mean abs diff" in text
    res = json.loads(out_json.read_text())
    syn = res["synthesis"]
    assert [r["perturbation"] for r in syn] == [0.05, 0.2]
    assert all(0 <= r["synth_miou"] <= 1 and r["diversity_std"] > 0 and r["diversity_abs_diff"] > 0 for r in syn)
    assert all(r["sharpness_ratio"] > 0 and np.isfinite(r["frechet_distance"]) for r in syn)
    # Patch C2ST: the mean of the fits on other halves, each an accuracy.
    assert all(len(r["c2st_runs"]) == 2 and r["c2st"] == pytest.approx(np.mean(r["c2st_runs"])) for r in syn)
    assert all(0 <= a <= 1 for r in syn for a in r["c2st_runs"]) and len({a for r in syn for a in r["c2st_runs"]}) > 1
    assert res["sampler"] == "stochastic"
    # Baseline folders evaluate through the same command.
    evaluate_main(["--model", str(ce / "final"), "--data-root", str(toy_root), "--split", "val"])
    assert "baseline (CE)" in capsys.readouterr().out
    seg = BaselineSegmenter.from_pretrained(str(ce / "final"))
    assert seg.segment([np.zeros((24, 32, 3), np.uint8)]).shape == (1, 24, 32)


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/datasets/camvid not present")
def test_train_and_evaluate_on_real_camvid_pairs(tmp_path):
    out = tmp_path / "camvid"
    res = train_main(["--data_root", str(CAMVID), "--output_dir", str(out), "--train_steps", "3",
                      "--set", "resolution=[32,48]", "max_train_samples=4", "max_val_samples=2",
                      "checkpointing_steps=0", "val_every=3", "eval_num_inference_steps=[1]", *TINY])
    ev = json.loads((out / "eval.json").read_text())
    assert ev["num_images"] == 2 and res["final_val_miou"] is not None
    assert ev["segmentation"][0]["miou"] == pytest.approx(res["final_val_miou"], abs=0.01)  # same scoring (val in training runs under bf16)
    pipe = load_model(str(out / "final"))[1]
    img = np.asarray(Image.open(CAMVID / "val" / sorted(os.listdir(CAMVID / "val"))[0]).convert("RGB"))
    assert pipe.segment(img, output_type="np").labels.shape == (1, 360, 480)


def test_two_process_cpu_launch(toy_root, tmp_path):
    out = tmp_path / "ddp"
    # accelerate's `--cpu` with --num_processes > 1 means mpirun; without MPI, torchrun (`--multi_gpu`) on a
    # machine with no visible GPU gives 2 CPU processes with the gloo backend.
    # Through sys.executable, not PATH: the tests also run with the venv not activated (`venv/bin/pytest`).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", TRAIN,
           *_args(toy_root, out, "final_eval=false", "num_threads=1", steps=3)]
    r = subprocess.run(cmd, cwd=ROOT, env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert (out / "final" / "model_index.json").is_file()
    assert "2 process(es)" in (out / "final" / "README.md").read_text()
    assert (out / "log.csv").read_text().splitlines()[-1].startswith("3,")


def test_kill_and_resume_continues_the_same_schedule(toy_root, tmp_path):
    out = tmp_path / "resume"
    total, every = 60, 3
    args = [sys.executable, TRAIN, *_args(toy_root, out, f"checkpointing_steps={every}", "val_every=0",
                                           "final_eval=false", "checkpoints_total_limit=null",
                                           "mixed_precision=no", steps=total)]
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = out / "checkpoints"
    deadline = time.time() + 400  # generous: imports alone take minutes on a loaded 2-core machine
    while time.time() < deadline and proc.poll() is None:
        if ck.is_dir() and any(p.name == f"checkpoint-{2 * every}" for p in ck.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.name.split("-")[1]) for p in ck.iterdir() if p.name.split("-")[-1].isdigit())
    assert saved and saved[-1] < total and all(s % every == 0 for s in saved)
    r = subprocess.run(args + ["--resume_from_checkpoint", "latest"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    resumed_at = int((r.stdout + r.stderr).split("at step ")[1].split()[0])
    assert resumed_at == saved[-1] >= 2 * every  # the latest complete checkpoint: at most `every` steps lost
    steps = [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert steps[-1] == total and (out / "final" / "model_index.json").is_file()
    # Same LR schedule as an uninterrupted run: the final LR is the one-cycle end value.
    lr = float((out / "log.csv").read_text().splitlines()[-1].split(",")[2])
    assert lr == pytest.approx(1e-3 * 1e-4, rel=1e-3)


def test_resume_matches_uninterrupted_run(toy_root, tmp_path):
    """Stop at a checkpoint, resume: weights equal an uninterrupted run's (same batches, t, LR)."""
    common = ["checkpointing_steps=2", "val_every=0", "final_eval=false", "mixed_precision=no"]
    full, part = tmp_path / "full", tmp_path / "part"
    train_main(_args(toy_root, full, *common, steps=4))
    train_main(_args(toy_root, part, *common, "stop_at_step=2", steps=4))
    assert not (part / "final").exists() and (part / "checkpoints" / "checkpoint-2").is_dir()
    train_main(_args(toy_root, part, *common, steps=4) + ["--resume_from_checkpoint", "latest"])
    from diffusers import UNet2DModel
    a = UNet2DModel.from_pretrained(str(full / "final" / "unet")).state_dict()
    b = UNet2DModel.from_pretrained(str(part / "final" / "unet")).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_init_from_warm_starts_the_unet_and_refuses_another_architecture(toy_root, tmp_path):
    """``init_from``: a finished run's weights start a new run (fresh optimizer and schedule); a folder whose
    UNet has another shape is refused with the tensor that differs, before any step."""
    from diffusers import UNet2DModel

    first = tmp_path / "first"
    train_main(_args(toy_root, first, "final_eval=false", steps=2))
    src = UNet2DModel.from_pretrained(str(first / "final" / "unet")).state_dict()
    # 0 steps of training: the saved model must be exactly the one it started from.
    warm = tmp_path / "warm"
    train_main(_args(toy_root, warm, f"init_from={first / 'final'}", "final_eval=false", steps=0))
    got = UNet2DModel.from_pretrained(str(warm / "final" / "unet")).state_dict()
    assert all(torch.equal(got[k], src[k]) for k in src)
    # Without init_from the same seed gives other weights: the check above is not vacuous.
    cold = tmp_path / "cold"
    train_main(_args(toy_root, cold, "final_eval=false", steps=0))
    fresh = UNet2DModel.from_pretrained(str(cold / "final" / "unet")).state_dict()
    assert not all(torch.equal(fresh[k], src[k]) for k in src)
    with pytest.raises(SystemExit, match="does not match this config's UNet"):
        train_main(_args(toy_root, tmp_path / "other", f"init_from={first / 'final'}", "block_out_channels=[8,8]",
                         "final_eval=false", steps=2))
    with pytest.raises(SystemExit, match="not found"):
        train_main(_args(toy_root, tmp_path / "none", f"init_from={tmp_path / 'missing'}", steps=2))
