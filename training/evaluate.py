#!/usr/bin/env python
"""Evaluate a SemFlow pipeline or the CE baseline on a labelled split, at the labels' full resolution.

    python training/evaluate.py --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid --split val
    python training/evaluate.py --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid \\
        --num-inference-steps 1 2 5 10 25 --json out.json
    python training/evaluate.py --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid \\
        --synthesis --baseline checkpoints/baseline-camvid --perturbations 0.05 0.2 --num-seeds 3

Segmentation: per-class IoU and mIoU from one confusion matrix summed over the split (ignore label not
scored), per step count, plus seconds per image (batch 8, this machine).
Synthesis (``--synthesis``): for every label map, ``--num-seeds`` images are synthesized, segmented by the
baseline, and scored against the label map ("segmenter mIoU on generated images"); the ratio to the
baseline's mIoU on the real photos, and diversity = mean over pixels of the per-pixel std across seeds
(RGB in [0, 1]), per perturbation strength.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from training.baseline import BaselineSegmenter  # noqa: E402
from training.data import build_dataset  # noqa: E402
from training.metrics import ConfusionMatrix, markdown_table  # noqa: E402


def load_model(path: str):
    """A folder / Hub id -> ("baseline", BaselineSegmenter) or ("semflow", SemFlowPipeline)."""
    if os.path.isdir(path) and BaselineSegmenter.is_baseline_dir(path):
        return "baseline", BaselineSegmenter.from_pretrained(path)
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download
        local = snapshot_download(path)
        if BaselineSegmenter.is_baseline_dir(local):
            return "baseline", BaselineSegmenter.from_pretrained(local)
        path = local
    from semflow_pipeline import SemFlowPipeline
    pipe = SemFlowPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return "semflow", pipe


def _images(ds, idx: Sequence[int]):
    pairs = [ds.raw(i) for i in idx]
    return [p[0].permute(1, 2, 0).numpy() for p in pairs], [p[1] for p in pairs]


def _batches(ds, batch_size: int):
    """Consecutive indices grouped into batches of images of one size (the pipeline batches per size)."""
    group, size = [], None
    for i in range(len(ds)):
        s = tuple(ds.raw(i)[1].shape)
        if group and (s != size or len(group) == batch_size):
            yield group
            group = []
        group.append(i)
        size = s
    if group:
        yield group


def segment_split(kind: str, model, ds, num_classes: int, ignore_index, steps: int = 1, batch_size: int = 8):
    """-> (ConfusionMatrix, seconds per image) over the whole split."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    elapsed = 0.0
    for idx in _batches(ds, batch_size):
        imgs, labs = _images(ds, idx)
        t = time.perf_counter()
        if kind == "semflow":
            preds = model.segment(imgs, num_inference_steps=steps, batch_size=batch_size, output_type="np").labels
        else:
            preds = model.segment(imgs, batch_size=batch_size)
        elapsed += time.perf_counter() - t
        for p, lab in zip(preds, labs):
            cm.update(p, lab)
    return cm, elapsed / len(ds)


def _row(name, cm: ConfusionMatrix, spi: Optional[float]) -> Dict:
    return {"name": name, "iou": [float(x) for x in cm.iou()], "miou": cm.miou(),
            "pixel_acc": cm.pixel_accuracy(), "sec_per_image": spi}


def evaluate_model(path: str, ds, steps: Sequence[int] = (1,), batch_size: int = 8) -> Dict:
    """Segmentation table for the model at ``path`` on dataset ``ds`` (full-resolution pairs)."""
    kind, model = load_model(path)
    names = list(ds.class_names)
    rows = []
    with torch.inference_mode():
        if kind == "baseline":
            cm, spi = segment_split(kind, model, ds, len(names), ds.ignore_index, batch_size=batch_size)
            rows.append(_row(f"baseline ({model.objective.upper()})", cm, spi))
        else:
            for s in steps:
                cm, spi = segment_split(kind, model, ds, len(names), ds.ignore_index, s, batch_size)
                rows.append(_row(f"SemFlow {s} step{'s' if s > 1 else ''}", cm, spi))
    return {"model": path, "kind": kind, "class_names": names, "num_images": len(ds), "segmentation": rows}


def synthesis_metrics(pipe, baseline: BaselineSegmenter, ds, perturbations: Sequence[float], num_seeds: int = 3,
                      steps: Sequence[int] = (1,), real_miou: Optional[float] = None, seed: int = 0) -> List[Dict]:
    """Baseline-segmenter mIoU on images synthesized from each label map, and diversity across seeds."""
    k, ignore = len(ds.class_names), ds.ignore_index
    if real_miou is None:
        real_miou = segment_split("baseline", baseline, ds, k, ignore)[0].miou()
    out = []
    for s in steps:
        for beta in perturbations:
            cm = ConfusionMatrix(k, ignore)
            stds, t_total = [], 0.0
            for i in range(len(ds)):
                lab = ds.raw(i)[1].long()
                g = torch.Generator().manual_seed(seed * 100003 + i)
                t = time.perf_counter()
                imgs = pipe.synthesize(lab, num_inference_steps=s, perturbation=float(beta),
                                       num_images_per_mask=num_seeds, generator=g, output_type="np").images
                t_total += time.perf_counter() - t
                imgs = np.asarray(imgs)  # (S, H, W, 3) in [0, 1]
                preds = baseline.segment([(im * 255).round().astype(np.uint8) for im in imgs])
                for p in preds:
                    cm.update(p, lab)
                if num_seeds > 1:
                    stds.append(float(imgs.std(axis=0).mean()))
            miou = cm.miou()
            out.append({"steps": s, "perturbation": float(beta), "num_seeds": num_seeds, "synth_miou": miou,
                        "real_miou": real_miou, "ratio": miou / real_miou if real_miou else float("nan"),
                        "diversity_std": float(np.mean(stds)) if stds else 0.0,
                        "sec_per_image": t_total / (len(ds) * num_seeds),
                        "iou": [float(x) for x in cm.iou()]})
    return out


def format_results(res: Dict) -> str:
    lines = [markdown_table(res["segmentation"], res["class_names"])]
    if res.get("synthesis"):
        lines += ["", "| synthesis steps | perturbation β | baseline mIoU on synthesized | on real photos | ratio | "
                      "diversity (pixel std) | s/image |", "|---|---|---|---|---|---|---|"]
        for r in res["synthesis"]:
            lines.append(f"| {r['steps']} | {r['perturbation']:g} | {r['synth_miou']:.3f} | {r['real_miou']:.3f} | "
                         f"{r['ratio']:.2f} | {r['diversity_std']:.4f} | {r['sec_per_image']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="SemFlow pipeline folder / Hub id, or a baseline folder")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="val", help="reads <data-root>/<split>.txt")
    ap.add_argument("--dataset", default="camvid", help="camvid | splitfile | cityscapes | coco_stuff | celebamask_hq")
    ap.add_argument("--num-inference-steps", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-images", type=int, default=None, help="only the first N pairs (quick checks)")
    ap.add_argument("--synthesis", action="store_true", help="also score synthesis (needs --baseline)")
    ap.add_argument("--baseline", default=None, help="baseline folder used to score synthesized images")
    ap.add_argument("--perturbations", type=float, nargs="+", default=[0.05, 0.2])
    ap.add_argument("--synthesis-steps", type=int, nargs="+", default=[1])
    ap.add_argument("--num-seeds", type=int, default=3)
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args(argv)

    ds = build_dataset(args.dataset, args.data_root, args.split, size=None, preload=False, max_samples=args.max_images)
    res = evaluate_model(args.model, ds, args.num_inference_steps, args.batch_size)
    if args.synthesis:
        if res["kind"] != "semflow":
            raise SystemExit("--synthesis needs a SemFlow model")
        if not args.baseline:
            raise SystemExit("--synthesis needs --baseline (the segmenter that scores synthesized images)")
        _, pipe = load_model(args.model)
        base = BaselineSegmenter.from_pretrained(args.baseline)
        with torch.inference_mode():
            res["synthesis"] = synthesis_metrics(pipe, base, ds, args.perturbations, args.num_seeds,
                                                 args.synthesis_steps)
    print(format_results(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
