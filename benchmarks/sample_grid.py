#!/usr/bin/env python
"""Side-by-side synthesis grid: for the same label maps, the real photo (optional) and samples of each model.

    python benchmarks/sample_grid.py --models v3=checkpoints/semflow-camvid-v3 v4=checkpoints/semflow-camvid \
        --data-root ../shared/datasets/camvid --indices 0 20 40 60 80 -o outputs/grid_val.png
    python benchmarks/sample_grid.py --models v3=checkpoints/semflow-camvid-v3 v4=checkpoints/semflow-camvid \
        --drawn -o benchmarks/results/grid_drawn.jpg        # the app's drawn layouts: no dataset pixels

Rows are label maps; columns: the mask in display colours, the real photo (dataset rows only), then
``--seeds`` samples per model at its default synthesis steps (or ``--steps``). CamVid photos must not be
committed: write dataset grids under ``outputs/`` (git-ignored); ``--drawn`` grids use the project's own layouts.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def label_maps(args):
    """[(name, label map (H, W), real photo (H, W, 3) uint8 or None)]."""
    if args.drawn:
        from space.examples import SEEDS, draw_street

        return [(f"drawn layout {i}", draw_street(seed), None) for i, seed in enumerate(SEEDS[:len(args.indices)])]
    from training.data import build_dataset

    ds = build_dataset("camvid", args.data_root, args.split, size=None, preload=False)
    out = []
    for i in args.indices:
        img, lab = ds.raw(i)
        out.append((f"{args.split} #{i}", lab.numpy(), img.permute(1, 2, 0).numpy()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, metavar="NAME=PATH")
    ap.add_argument("--data-root", default=os.path.join(ROOT, "..", "shared", "datasets", "camvid"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--indices", type=int, nargs="+", default=[0, 20, 40, 60, 80])
    ap.add_argument("--drawn", action="store_true", help="the app's drawn example layouts instead of dataset masks")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=None, help="synthesis steps (default: each model's own)")
    ap.add_argument("--scale", type=float, default=0.5, help="tile size relative to the 360x480 frame")
    ap.add_argument("-o", "--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    from semflow_pipeline import SemFlowPipeline

    models = []
    for spec in args.models:
        name, path = spec.split("=", 1)
        pipe = SemFlowPipeline.from_pretrained(path)
        pipe.set_progress_bar_config(disable=True)
        models.append((name, pipe))
    rows = label_maps(args)
    colors = models[0][1]  # any of the pipelines: they share the classes and their display colours
    tiles, header = [], ["mask"] + (["real"] if rows[0][2] is not None else [])
    header += [f"{n} seed {s}" for n, _ in models for s in args.seeds]
    for name, lab, real in rows:
        row = [Image.fromarray(colors.colorize(lab))]
        if real is not None:
            row.append(Image.fromarray(real))
        for _, pipe in models:
            for s in args.seeds:
                with torch.inference_mode():
                    im = pipe.synthesize(lab, num_inference_steps=args.steps,
                                         generator=torch.Generator().manual_seed(s)).images[0]
                row.append(im)
        tiles.append(row)
        print(f"{name}: done", flush=True)
    w0, h0 = tiles[0][0].size
    w, h = int(w0 * args.scale), int(h0 * args.scale)
    pad = 18
    grid = Image.new("RGB", (w * len(header), pad + h * len(tiles)), "white")
    draw = ImageDraw.Draw(grid)
    for j, text in enumerate(header):
        draw.text((j * w + 4, 3), text, fill="black")
    for i, row in enumerate(tiles):
        for j, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((w, h), Image.BICUBIC), (j * w, pad + i * h))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    grid.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
