"""Model card (README.md with Hub metadata) for a trained SemFlow pipeline or baseline folder."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from huggingface_hub import ModelCard, ModelCardData

DATASET_IDS = {"camvid": "camvid", "cityscapes": "cityscapes", "coco_stuff": "coco-stuff",
               "celebamask_hq": "CelebAMask-HQ"}


def write_model_card(folder: str, cfg: Dict[str, Any], info: Dict[str, Any], result: Dict[str, Any],
                     table: Optional[str], hardware: str, extra: str = "") -> str:
    """Writes ``folder/README.md``; returns its text."""
    is_ce = cfg["objective"] in ("ce", "mse")  # discriminative baselines
    metrics = []
    if result.get("eval"):
        for r in result["eval"]["segmentation"]:
            metrics.append(r["miou"])
    card_data = ModelCardData(
        library_name="semflow" if is_ce else "diffusers",  # baseline: loaded by our code, not diffusers
        pipeline_tag="image-segmentation",
        license=cfg.get("license", "mit"),
        datasets=[DATASET_IDS.get(cfg["dataset"], cfg["dataset"])],
        metrics=["mean_iou"],
        tags=(["semantic-segmentation", "baseline", "unet"] if is_ce else
              ["semflow", "rectified-flow", "semantic-segmentation", "semantic-image-synthesis", "diffusers"]),
    )
    minutes = result["wall_time_s"] / 60
    if is_ce:
        title = f"{'Cross-entropy' if cfg['objective'] == 'ce' else 'MSE (one-hot)'} UNet baseline ({cfg['dataset']})"
        what = (f"The discriminative baseline for SemFlow: the same `UNet2DModel` architecture and training "
                "budget, trained with plain {'cross-entropy' if cfg['objective'] == 'ce' else 'MSE to the +-1 one-hot'}. Load it with "
                "`training.baseline.BaselineSegmenter.from_pretrained(path)` from the SemFlow repository.")
    else:
        title = f"SemFlow ({cfg['dataset']}, {cfg['mode']} mode)"
        what = ("A SemFlow pipeline (Wang et al., NeurIPS 2024): one rectified-flow ODE between an image (t=0) and "
                "its anchor mask (t=1); integrating forward segments, integrating backward from a perturbed mask "
                f"synthesizes. Prediction type `{cfg['prediction_type']}`, palette `{cfg['palette']}`, "
                f"timestep sampling `{cfg['t_sampling']}` (t=0 prob {cfg['t_zero_prob']}, t=1 prob "
                f"{cfg['t_one_prob']})"
                + (f", auxiliary cross-entropy on the predicted mask end (weight {cfg['mask_ce_weight']}, logit "
                   f"scale {cfg.get('mask_ce_scale', 4.0)})" if cfg.get("mask_ce_weight") else "") + ".")
    usage = ("```python\nfrom training.baseline import BaselineSegmenter\n"
             f"seg = BaselineSegmenter.from_pretrained(\"{folder}\")\nlabels = seg.segment([image])  # (N, H, W)\n```"
             if is_ce else
             "```python\nfrom semflow_pipeline import SemFlowPipeline\n"
             f"pipe = SemFlowPipeline.from_pretrained(\"{folder}\")\n"
             "labels = pipe.segment(image, num_inference_steps=1).labels      # (1, H, W) class ids\n"
             "images = pipe.synthesize(label_map, num_inference_steps=1).images  # PIL images\n```\n"
             "Without the package: `DiffusionPipeline.from_pretrained(path, trust_remote_code=True)`.")
    classes = ", ".join(f"{i}: {n}" for i, n in enumerate(info["class_names"]))
    h, w = cfg["resolution"]
    text = f"""---
{card_data.to_yaml()}
---

# {title}

{what}

## Usage

{usage}

## Training

- Command: `{cfg['command']}`
- Data: `{cfg['dataset']}` split `{cfg['train_split']}` from `{cfg['data_root']}`; validation split
  `{cfg['val_split']}` held out for reporting. Classes ({len(info['class_names'])}): {classes};
  ignore label {info['ignore_index']} (no loss, not scored).
- Resolution {h}x{w} (random zoom {cfg['scale_min']}-{cfg['scale_max']}, crop, horizontal flip),
  space-to-depth {cfg['space_to_depth']}, UNet channels {list(cfg['block_out_channels'])},
  {result['params'] / 1e6:.2f}M parameters.
- {result['steps']} steps, batch {cfg['batch_size']} per process, AdamW lr {cfg['learning_rate']}
  ({cfg['lr_schedule']}), weight decay {cfg['weight_decay']}, grad clip {cfg['max_grad_norm']},
  mixed precision {cfg['mixed_precision']}, EMA {cfg['ema']}, seed {cfg['seed']}.
- Wall time: {minutes:.1f} min on {hardware}.

## Evaluation ({cfg['val_split']} split, full label resolution, confusion matrix over the split, void ignored)

Reproduce with `python training/evaluate.py --model <this folder> --data-root {cfg['data_root']} --split {cfg['val_split']}`.

{table or '(not evaluated)'}
{extra}
"""
    ModelCard(text).save(os.path.join(folder, "README.md"))
    return text


def ship(run_dir: str, dest: str, synthesis_json: Optional[str] = None, command: Optional[str] = None,
         extra: str = "") -> None:
    """Copies ``run_dir/final`` to ``dest`` and rewrites its card with the run's eval (and synthesis) tables.

    ``command`` replaces the recorded command (e.g. the equivalent ``--config`` form after a config file
    was updated to the winning settings).
    """
    import json
    import shutil
    import sys

    import yaml

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from training.evaluate import format_results

    with open(os.path.join(run_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(run_dir, "result.json")) as f:
        result = json.load(f)
    with open(os.path.join(run_dir, "eval.json")) as f:
        res = json.load(f)
    if synthesis_json:
        with open(synthesis_json) as f:
            res["synthesis"] = json.load(f)["synthesis"]
    if command:
        cfg["command"] = command
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(os.path.join(run_dir, "final"), dest)
    if os.path.isfile(os.path.join(dest, "model_index.json")):
        from semflow_pipeline.pipeline_semflow import write_remote_code
        write_remote_code(dest)
    for name in ("training_curves.png",):
        if os.path.isfile(os.path.join(run_dir, name)):
            shutil.copyfile(os.path.join(run_dir, name), os.path.join(dest, name))
    info = {"class_names": res["class_names"], "ignore_index": cfg.get("ignore_index", 11)}
    from training.data import build_dataset
    ds = build_dataset(cfg["dataset"], cfg["data_root"], cfg["val_split"], size=None, preload=False)
    info["ignore_index"] = ds.ignore_index
    result["eval"] = res
    hardware = result.get("hardware")
    if not hardware:  # runs from before result.json recorded it: take it from the run's own card
        import re
        card = open(os.path.join(run_dir, "final", "README.md")).read()
        m = re.search(r"Wall time: [\d.]+ min on (.+?)\.\n", card)
        hardware = m.group(1) if m else "unknown"
    write_model_card(dest, cfg, info, result, format_results(res), hardware, extra)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Copy a finished run's final folder to checkpoints/ with its card")
    ap.add_argument("run_dir")
    ap.add_argument("dest")
    ap.add_argument("--synthesis-json")
    ap.add_argument("--command")
    ap.add_argument("--extra-file", help="markdown appended to the card (e.g. the ablation table)")
    a = ap.parse_args()
    extra = open(a.extra_file).read() if a.extra_file else ""
    ship(a.run_dir, a.dest, a.synthesis_json, a.command, extra)
