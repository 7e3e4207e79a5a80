#!/usr/bin/env python
"""Evaluate a SemFlow pipeline or the CE baseline on a labelled split, at the labels' full resolution.

    python training/evaluate.py --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid --split val
    python training/evaluate.py --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid \\
        --num-inference-steps 1 2 5 10 25 --json out.json
    python training/evaluate.py --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid \\
        --synthesis --baseline checkpoints/baseline-camvid --perturbations 0.05 0.2 --num-seeds 3
    # the authors' converted CelebAMask-HQ model (semflow convert-official) on a GPU, or on any image/mask folder
    python training/evaluate.py --model semflow-face --dataset celebamask_hq --data-root /data/CelebAMask-HQ \\
        --split val --num-inference-steps 1 2 5 10 25 --device cuda --dtype float16
    python training/evaluate.py --model semflow-face --dataset folder --data-root my_pairs/ --num-inference-steps 1 25

Segmentation: per-class IoU and mIoU from one confusion matrix summed over the split (ignore label not
scored), per step count, plus seconds per image (batch 8, this machine).
Synthesis (``--synthesis``): for every label map, ``--num-seeds`` images are synthesized, segmented by the
baseline, and scored against the label map; reported per step count and β: layout fidelity (that mIoU / the
baseline's on the real photos), diversity (two-sample mean |Δ|, per-pixel std over 4 samples), sharpness
(Laplacian variance ratio to the real photos) and a Fréchet distance on the baseline encoder's features
(see ``training/generative_metrics.py`` and ``synthesis_metrics``).
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


def load_model(path: str, device: Optional[str] = None, dtype: Optional[str] = None):
    """A folder / Hub id -> ("baseline", BaselineSegmenter) or ("semflow", SemFlowPipeline); a SemFlow pipeline is
    moved to ``device`` and its weights cast to ``dtype`` (e.g. ``"float16"``) when given."""
    if os.path.isdir(path) and BaselineSegmenter.is_baseline_dir(path):
        return "baseline", BaselineSegmenter.from_pretrained(path)
    if not os.path.isdir(path):
        from huggingface_hub import snapshot_download
        local = snapshot_download(path)
        if BaselineSegmenter.is_baseline_dir(local):
            return "baseline", BaselineSegmenter.from_pretrained(local)
        path = local
    from semflow_pipeline import SemFlowPipeline
    pipe = SemFlowPipeline.from_pretrained(path, **({"dtype": getattr(torch, dtype)} if dtype else {}))
    if device:
        pipe.to(device)
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


def segment_split(kind: str, model, ds, num_classes: int, ignore_index, steps: int = 1, batch_size: int = 8,
                  processing_resolution: Optional[int] = None):
    """-> (ConfusionMatrix, seconds per image) over the whole split."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    elapsed = 0.0
    for idx in _batches(ds, batch_size):
        imgs, labs = _images(ds, idx)
        t = time.perf_counter()
        if kind == "semflow":
            preds = model.segment(imgs, num_inference_steps=steps, batch_size=batch_size, output_type="np",
                                  processing_resolution=processing_resolution).labels
        else:
            preds = model.segment(imgs, batch_size=batch_size)
        elapsed += time.perf_counter() - t
        for p, lab in zip(preds, labs):
            cm.update(p, lab)
    return cm, elapsed / len(ds)


def _row(name, cm: ConfusionMatrix, spi: Optional[float]) -> Dict:
    return {"name": name, "iou": [float(x) for x in cm.iou()], "miou": cm.miou(),
            "pixel_acc": cm.pixel_accuracy(), "sec_per_image": spi}


def evaluate_model(path: str, ds, steps: Sequence[int] = (1,), batch_size: int = 8,
                   processing_resolution: Optional[int] = None, device: Optional[str] = None,
                   dtype: Optional[str] = None) -> Dict:
    """Segmentation table for the model at ``path`` on dataset ``ds`` (full-resolution pairs)."""
    kind, model = load_model(path, device, dtype)
    names = list(ds.class_names)
    rows = []
    with torch.inference_mode():
        if kind == "baseline":
            cm, spi = segment_split(kind, model, ds, len(names), ds.ignore_index, batch_size=batch_size)
            rows.append(_row(f"baseline ({model.objective.upper()})", cm, spi))
        else:
            for s in steps:
                cm, spi = segment_split(kind, model, ds, len(names), ds.ignore_index, s, batch_size,
                                        processing_resolution)
                rows.append(_row(f"SemFlow {s} step{'s' if s > 1 else ''}", cm, spi))
    return {"model": path, "kind": kind, "class_names": names, "num_images": len(ds), "segmentation": rows}


SAMPLERS = ("model", "ode", "stochastic")


def set_sampler(pipe, sampler: str = "model"):
    """Synthesis sampler: ``"model"`` keeps the scheduler's own ``stochastic_sampling``; ``"ode"`` turns it off (the
    deterministic ODE from the start's noise); ``"stochastic"`` re-draws the noise at every step."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}; got {sampler!r}")
    if sampler != "model":
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config,
                                                          stochastic_sampling=sampler == "stochastic")
    return pipe


def synthesis_metrics(pipe, baseline: BaselineSegmenter, ds, perturbations: Sequence[float], num_seeds: int = 2,
                      steps: Sequence[int] = (1,), real_miou: Optional[float] = None, seed: int = 0,
                      std_seeds: int = 4, std_images: int = 16, calibrate: bool = True,
                      c2st_fits: int = 5) -> List[Dict]:
    """Synthesis judged as a generative model, per (step count, β), on images made from every label map.

    For each label map ``num_seeds`` images are synthesized (``std_seeds`` for the first ``std_images`` maps):

    - layout fidelity (``ratio``): the baseline segmenter's mIoU on the synthesized images (``synth_miou``,
      against the label map) / its mIoU on the real photos (``real_miou``);
    - diversity: ``diversity_abs_diff``, mean |Δ| between two samples of one mask (RGB in [0, 1]), and
      ``diversity_std``, the per-pixel std over ``std_seeds`` samples;
    - ``sharpness_ratio``: Laplacian variance of samples / of the real photos, at the labels' (output) size;
    - ``frechet_distance``: real vs synthesized photos on the baseline encoder's features (see
      ``training/generative_metrics.py``; no Inception weights offline, so only comparable between our models);
    - ``kid_lite0``: kernel inception distance on ImageNet-pretrained EfficientNet-Lite0 features (a network that
      never saw CamVid);
    - ``diversity_blur4``: two-sample mean |Δ| after a Gaussian blur of radius 4 (diversity that is not grain);
    - ``c2st``: held-out accuracy of a patch classifier telling each real frame from a sample of its own mask
      (0.5 = indistinguishable), the mean of ``c2st_fits`` fits on other halves of the frames (``c2st_runs``);
      ``c2st_calibration`` gives the same test for the next real frame, a blur of radius 1 and a 2x down-and-up
      copy of each frame (computed once per call; ``calibrate=False`` skips it, e.g. for ablation rows on the same
      images, as it costs 3 x ``c2st_fits`` more classifier fits).
    """
    from training.generative_metrics import (Lite0Features, SegmenterFeatures, blurred_abs_diff,
                                             degraded_references, frechet_distance, kernel_inception_distance,
                                             laplacian_variance, mean_abs_diff, patch_c2st, patch_c2st_runs,
                                             pixel_std, summarize_sharpness)

    k, ignore = len(ds.class_names), ds.ignore_index
    if real_miou is None:
        real_miou = segment_split("baseline", baseline, ds, k, ignore)[0].miou()
    features = SegmenterFeatures(baseline)
    real = [ds.raw(i)[0].permute(1, 2, 0).numpy() for i in range(len(ds))]  # uint8 (H, W, 3)
    real_feats = np.concatenate([features(np.stack([im])) for im in real])
    real_lap = np.concatenate([laplacian_variance(im[None].astype(np.float32) / 255.0) for im in real])
    lite0 = Lite0Features()
    real_lite0 = np.concatenate([lite0(np.stack([im])) for im in real])
    calibration = ({name: patch_c2st(real, other, repeats=c2st_fits) for name, other in degraded_references(real).items()}
                   if calibrate else {})
    if calibration:
        print("patch C2ST calibration: " + ", ".join(f"{k} {v:.3f}" for k, v in calibration.items()), flush=True)
    out = []
    for s in steps:
        for beta in perturbations:
            cm = ConfusionMatrix(k, ignore)
            diffs, stds, laps, feats, t_total, n_images = [], [], [], [], 0.0, 0
            blurred, lite_feats, firsts = [], [], []
            for i in range(len(ds)):
                lab = ds.raw(i)[1].long()
                n = max(num_seeds, std_seeds if i < std_images else 0)
                g = torch.Generator().manual_seed(seed * 100003 + i)
                t = time.perf_counter()
                imgs = pipe.synthesize(lab, num_inference_steps=s, perturbation=float(beta),
                                       num_images_per_mask=n, generator=g, output_type="np").images
                t_total += time.perf_counter() - t
                n_images += n
                imgs = np.asarray(imgs)  # (n, H, W, 3) in [0, 1]
                scored = imgs[:num_seeds]
                for p in baseline.segment([(im * 255).round().astype(np.uint8) for im in scored]):
                    cm.update(p, lab)
                laps.append(laplacian_variance(scored))
                feats.append(features(scored))
                lite_feats.append(lite0(scored))
                firsts.append((imgs[0] * 255).round().astype(np.uint8))
                if n >= 2:
                    diffs.append(mean_abs_diff(imgs[0], imgs[1]))
                    blurred.append(blurred_abs_diff(imgs[0], imgs[1]))
                if i < std_images and n >= std_seeds:
                    stds.append(pixel_std(imgs[:std_seeds]))
            miou = cm.miou()
            c2st_runs = patch_c2st_runs(real, firsts, repeats=c2st_fits)
            out.append({"steps": s, "perturbation": float(beta), "num_seeds": num_seeds, "synth_miou": miou,
                        "real_miou": real_miou, "ratio": miou / real_miou if real_miou else float("nan"),
                        "diversity_abs_diff": float(np.mean(diffs)) if diffs else 0.0,
                        "diversity_std": float(np.mean(stds)) if stds else 0.0, "std_seeds": std_seeds,
                        "std_images": min(std_images, len(ds)),
                        "sharpness_ratio": summarize_sharpness(np.concatenate(laps), real_lap),
                        "frechet_distance": frechet_distance(real_feats, np.concatenate(feats)),
                        "kid_lite0": kernel_inception_distance(real_lite0, np.concatenate(lite_feats)),
                        "diversity_blur4": float(np.mean(blurred)) if blurred else 0.0,
                        "c2st": float(np.mean(c2st_runs)), "c2st_runs": c2st_runs,
                        "c2st_calibration": calibration,
                        "sec_per_image": t_total / n_images, "iou": [float(x) for x in cm.iou()]})
            print(f"synthesis {s} steps, β={beta:g}: fidelity {out[-1]['ratio']:.3f}, |Δ| "
                  f"{out[-1]['diversity_abs_diff']:.4f}, std {out[-1]['diversity_std']:.4f}, sharpness "
                  f"{out[-1]['sharpness_ratio']:.3f}, FD {out[-1]['frechet_distance']:.3f}, KID(Lite0) "
                  f"{out[-1]['kid_lite0']:.4f}, blurred |Δ| {out[-1]['diversity_blur4']:.4f}, patch C2ST "
                  f"{out[-1]['c2st']:.3f}", flush=True)
    return out


def format_results(res: Dict) -> str:
    lines = [markdown_table(res["segmentation"], res["class_names"])]
    if res.get("synthesis"):
        lines += ["", "| synthesis steps | β | baseline mIoU on synthesized | on real photos | layout fidelity | "
                      "two-sample mean abs diff | blurred (r=4) | pixel std (4 samples) | sharpness ratio | "
                      "Fréchet distance | KID (Lite0) | patch C2ST | s/image |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["synthesis"]:
            lines.append(f"| {r['steps']} | {r['perturbation']:g} | {r['synth_miou']:.3f} | {r['real_miou']:.3f} | "
                         f"{r['ratio']:.2f} | {r.get('diversity_abs_diff', 0):.4f} | {r.get('diversity_blur4', float('nan')):.4f} | "
                         f"{r['diversity_std']:.4f} | {r.get('sharpness_ratio', float('nan')):.3f} | "
                         f"{r.get('frechet_distance', float('nan')):.3f} | {r.get('kid_lite0', float('nan')):.4f} | "
                         f"{r.get('c2st', float('nan')):.3f} | {r['sec_per_image']:.3f} |")
        cal = res["synthesis"][0].get("c2st_calibration")
        if cal:
            lines += ["", "Patch C2ST calibration (the same test, real frame vs): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in cal.items()) + "."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="SemFlow pipeline folder / Hub id, or a baseline folder")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="val", help="reads <data-root>/<split>.txt")
    ap.add_argument("--dataset", default="camvid", help="camvid | splitfile | cityscapes | coco_stuff | celebamask_hq | "
                    "folder (any [<split>/]images/ + masks/<name>.png pairs, scored with the model's classes)")
    ap.add_argument("--ignore-index", type=int, default=255, help="--dataset folder: the mask id that is not scored")
    ap.add_argument("--processing-resolution", type=int, default=None,
                    help="longest edge the model works at (default: the model's default_processing_resolution)")
    ap.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="cast the pipeline's weights (default: as saved)")
    ap.add_argument("--num-inference-steps", type=int, nargs="+", default=[1, 2, 5])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-images", type=int, default=None, help="only the first N pairs (quick checks)")
    ap.add_argument("--synthesis", action="store_true", help="also score synthesis (needs --baseline)")
    ap.add_argument("--baseline", default=None, help="baseline folder used to score synthesized images")
    ap.add_argument("--perturbations", type=float, nargs="+", default=[0.05])
    ap.add_argument("--synthesis-steps", type=int, nargs="+", default=[1])
    ap.add_argument("--num-seeds", type=int, default=2, help="samples per label map for fidelity, |Δ|, sharpness, FD")
    ap.add_argument("--std-seeds", type=int, default=4, help="samples per map for the per-pixel std")
    ap.add_argument("--std-images", type=int, default=16, help="label maps that get --std-seeds samples")
    ap.add_argument("--no-calibration", action="store_true",
                    help="skip the patch C2ST's reference rows (next frame, blur, 2x down-up): 3 x --c2st-fits fits")
    ap.add_argument("--c2st-fits", type=int, default=5,
                    help="patch C2ST: classifier fits averaged per row (one fit on 40 frames varied from 0.74 to 1.0)")
    ap.add_argument("--sampler", choices=SAMPLERS, default="model",
                    help="synthesis: the model's own scheduler setting, the plain ODE, or stochastic sampling")
    ap.add_argument("--json", default=None, help="write all numbers here")
    args = ap.parse_args(argv)

    extra = {}
    if args.dataset == "folder":  # no class list of its own: the model's classes, ids beyond them not scored
        from semflow_pipeline import SemFlowPipeline
        with open(os.path.join(SemFlowPipeline._resolve_folder(args.model, {}), "model_index.json")) as f:
            config = json.load(f)
        names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        extra = dict(num_classes=len(names), class_names=names, ignore_index=args.ignore_index)
    ds = build_dataset(args.dataset, args.data_root, args.split, size=None, preload=False, max_samples=args.max_images,
                       **extra)
    res = evaluate_model(args.model, ds, args.num_inference_steps, args.batch_size, args.processing_resolution,
                         args.device, args.dtype)
    if args.synthesis:
        if res["kind"] != "semflow":
            raise SystemExit("--synthesis needs a SemFlow model")
        if not args.baseline:
            raise SystemExit("--synthesis needs --baseline (the segmenter that scores synthesized images)")
        pipe = set_sampler(load_model(args.model)[1], args.sampler)
        base = BaselineSegmenter.from_pretrained(args.baseline)
        with torch.inference_mode():
            res["synthesis"] = synthesis_metrics(pipe, base, ds, args.perturbations, args.num_seeds,
                                                 args.synthesis_steps, std_seeds=args.std_seeds,
                                                 std_images=args.std_images, calibrate=not args.no_calibration,
                                                 c2st_fits=args.c2st_fits)
    if args.synthesis:
        res["sampler"] = args.sampler
    print(format_results(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
