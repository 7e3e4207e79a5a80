#!/usr/bin/env python
"""Markdown summary of finished runs: val mIoU per step count, synthesis metrics, wall time.

    python training/ablation_table.py runs/abl_ce runs/abl_ep_simplex_ends ...
    python training/ablation_table.py --generative runs/abl_full runs/abl_no_trunk ...   # issue 15's columns

Reads each run's config.yaml, result.json, eval.json and (if present) eval_synth.json. ``--generative`` gives
1-step segmentation (all val images, from eval.json) with the rare classes, and the synthesis metrics of
eval_synth.json's first row (layout fidelity, sharpness, blurred two-seed |Δ|, KID on Lite0 features, patch C2ST).
"""

import json
import os
import sys

import yaml


def describe(cfg):
    if cfg["objective"] != "semflow":
        return f"{cfg['objective'].upper()} discriminative UNet"
    t = cfg["t_sampling"]
    if t == "ends":
        t = f"t=0 w.p. {cfg['t_zero_prob']}, t=1 w.p. {cfg['t_one_prob']}, else U(0,1)"
    extra = f", aux CE x{cfg['mask_ce_weight']}" if cfg.get("mask_ce_weight") else ""
    return f"{cfg['prediction_type']} + {cfg['palette']} + {t}{extra}"


def read_run(run):
    """-> (result.json, eval.json, eval_synth.json's synthesis rows or None) of a finished run folder."""
    def load(name):
        with open(os.path.join(run, name)) as f:
            return json.load(f)

    synth = load("eval_synth.json")["synthesis"] if os.path.isfile(os.path.join(run, "eval_synth.json")) else None
    return load("result.json"), load("eval.json"), synth


def main(runs):
    lines = ["| run | objective | steps | val mIoU 1 step | 2 steps | 5 steps | synth mIoU / ratio (β=0.05, 1 step) | "
             "synth mIoU / ratio (β=0.05, 5 steps) | diversity β=0.05 / 0.2 | wall time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        with open(os.path.join(r, "config.yaml")) as f:
            cfg = yaml.safe_load(f)
        res, ev, rows = read_run(r)
        seg = {row["name"]: row["miou"] for row in ev["segmentation"]}
        m = [seg.get(f"SemFlow {s} step{'s' if s > 1 else ''}") for s in (1, 2, 5)]
        if ev["kind"] == "baseline":
            m = [ev["segmentation"][0]["miou"], None, None]
        syn = ["-", "-", "-"]
        if rows:
            pick = {(x["steps"], x["perturbation"]): x for x in rows}
            f = lambda x: f"{x['synth_miou']:.3f} / {x['ratio']:.2f}" if x else "-"
            syn[0] = f(pick.get((1, 0.05)))
            syn[1] = f(pick.get((5, 0.05)))
            d = [pick.get((1, b)) for b in (0.05, 0.2)]
            syn[2] = " / ".join(f"{x['diversity_std']:.3f}" if x else "-" for x in d)
        cells = [f"{x:.3f}" if x is not None else "-" for x in m]
        lines.append(f"| {os.path.basename(r.rstrip('/'))} | {describe(cfg)} | {res['steps']} | " + " | ".join(cells)
                     + f" | {syn[0]} | {syn[1]} | {syn[2]} | {res['wall_time_s'] / 60:.1f} min |")
    print("\n".join(lines))


RARE = ("pole", "sign_symbol", "pedestrian", "bicyclist")


def generative_table(runs):
    lines = ["| run | steps | wall time | seg mIoU, 1 step | pole / sign / pedestrian / bicyclist IoU | synthesis steps "
             "| layout fidelity | sharpness ratio | blurred two-seed abs diff | KID (Lite0) | patch C2ST |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        res, ev, rows = read_run(r)
        seg = ev["segmentation"][0]
        names = ev["class_names"]
        rare = " / ".join(f"{seg['iou'][names.index(n)]:.2f}" for n in RARE if n in names)
        syn = ["-"] * 6
        if rows:
            x = rows[0]
            syn = [str(x["steps"]), f"{x['ratio']:.2f}", f"{x['sharpness_ratio']:.2f}", f"{x['diversity_blur4']:.3f}",
                   f"{x['kid_lite0']:.3f}", f"{x['c2st']:.3f}"]
        lines.append(f"| {os.path.basename(r.rstrip('/'))} | {res['steps']} | {res['wall_time_s'] / 60:.1f} min | "
                     f"{seg['miou']:.3f} | {rare} | " + " | ".join(syn) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generative"]:
        generative_table(sys.argv[2:])
    else:
        main(sys.argv[1:])
