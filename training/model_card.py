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
    is_ce = cfg["objective"] == "ce"
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
        title = f"Cross-entropy UNet baseline ({cfg['dataset']})"
        what = ("The discriminative baseline for SemFlow: the same `UNet2DModel` architecture and training "
                "budget, trained with plain cross-entropy. Load it with "
                "`training.baseline.BaselineSegmenter.from_pretrained(path)` from the SemFlow repository.")
    else:
        title = f"SemFlow ({cfg['dataset']}, {cfg['mode']} mode)"
        what = ("A SemFlow pipeline (Wang et al., NeurIPS 2024): one rectified-flow ODE between an image (t=0) and "
                "its anchor mask (t=1); integrating forward segments, integrating backward from a perturbed mask "
                f"synthesizes. Prediction type `{cfg['prediction_type']}`, palette `{cfg['palette']}`, "
                f"timestep sampling `{cfg['t_sampling']}` (t=0 prob {cfg['t_zero_prob']}, t=1 prob "
                f"{cfg['t_one_prob']}).")
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
