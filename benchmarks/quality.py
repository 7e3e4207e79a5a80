#!/usr/bin/env python
"""Quality vs steps (the paper's table 2 on our data): CamVid val mIoU per step count, Euler vs Heun.

    python benchmarks/quality.py                                  # shipped model + baseline, whole val split
    python benchmarks/quality.py --quick --model tiny             # smoke run (8 images, 1-2 steps)

* Segmentation: val mIoU (confusion matrix over the split, void ignored, labels at full 360x480) for Euler at
  1, 2, 4, 5, 10, 25 steps and Heun (``SemFlowScheduler(solver="heun")``, 2 network calls per step) at 1, 2, 5
  steps, so Euler 2 / Heun 1, Euler 4 / Heun 2 and Euler 10 / Heun 5 use the same number of network calls.
* Synthesis as a generative model, per step count: images synthesized from every val label map (β =
  ``--perturbation``, ``--num-seeds`` samples each), scored by training/evaluate.py's ``synthesis_metrics``:
  layout fidelity (the cross-entropy baseline's mIoU on them / on the real photos; target >= 0.8), diversity
  (two-sample mean |Δ|; per-pixel std over 4 samples), sharpness (Laplacian variance ratio to the real photos)
  and a Fréchet distance on the baseline encoder's features.
* The baseline's own val mIoU as the reference line.

All scoring is training/evaluate.py's code (``segment_split``, ``synthesis_metrics``); nothing is re-implemented.
Writes benchmarks/results/quality.json, quality.md and quality.png.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ROOT, RESULTS, ContentionMonitor, add_common_args, load_pipeline, machine_info,  # noqa: E402
                    markdown, resolve_model_arg, setup_torch, write_json)

DEFAULT_BASELINE = os.path.join(ROOT, "checkpoints", "baseline-camvid")


def main(argv=None):
    from training.evaluate import SAMPLERS, segment_split, set_sampler, synthesis_metrics

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--split", default="val")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 5, 10, 25], help="Euler step counts")
    ap.add_argument("--heun-steps", type=int, nargs="*", default=[1, 2, 5], help="Heun step counts (2 calls each)")
    ap.add_argument("--synthesis-steps", type=int, nargs="+", default=[1, 5, 10, 25])
    ap.add_argument("--synthesis-heun-steps", type=int, nargs="*", default=[])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="CE baseline folder that scores synthesized images")
    ap.add_argument("--perturbation", type=float, default=0.05, help="synthesis β")
    ap.add_argument("--num-seeds", type=int, default=2, help="synthesized images per label map")
    ap.add_argument("--std-images", type=int, default=16, help="label maps that get 4 samples for the pixel std")
    ap.add_argument("--max-images", type=int, default=None, help="only the first N pairs of the split")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-synthesis", action="store_true")
    ap.add_argument("--sampler", choices=SAMPLERS, default="model",
                    help="synthesis sampler: the model's scheduler setting, the plain ODE, or stochastic sampling")
    ap.add_argument("--segmentation-from", default=None, metavar="EVAL_JSON",
                    help="take the Euler segmentation rows from a training/evaluate.py --json file (e.g. the run's "
                         "eval.json) instead of measuring them again; use with --steps 1 --heun-steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.heun_steps = [1, 2], [1]
        args.synthesis_steps, args.synthesis_heun_steps = [1], []
        args.max_images = args.max_images or 8
    setup_torch(args.threads)
    monitor = ContentionMonitor()

    from training.baseline import BaselineSegmenter
    from training.data import build_dataset

    model = resolve_model_arg(args.model)
    prec = dict(dtype=args.dtype, channels_last=args.channels_last)
    euler, desc = load_pipeline(model, args.config, solver="euler", **prec)
    heun, _ = load_pipeline(model, args.config, solver="heun", **prec)
    set_sampler(euler, args.sampler)  # synthesis only: segmentation ignores stochastic_sampling
    ds = build_dataset("camvid", args.data_root, args.split, size=None, preload=True, max_samples=args.max_images)
    k, ignore = len(ds.class_names), ds.ignore_index
    base = BaselineSegmenter.from_pretrained(args.baseline) if os.path.isdir(args.baseline) else None

    res = {"benchmark": "quality", "machine": machine_info(args.threads), "model": desc,
           "baseline": os.path.relpath(args.baseline, ROOT) if base else None, "split": args.split,
           "num_images": len(ds), "perturbation": args.perturbation, "num_seeds": args.num_seeds,
           "sampler": args.sampler,
           "quick": args.quick, "segmentation": [], "synthesis": []}
    with torch.inference_mode():
        warm = [ds.raw(0)[0].permute(1, 2, 0).numpy()]  # first calls pay one-off costs: keep them out of s/image
        for pipe in (euler, heun):
            pipe.segment(warm, num_inference_steps=1)
        if base is not None:
            base.segment(warm)
            cm, spi = segment_split("baseline", base, ds, k, ignore, batch_size=args.batch_size)
            res["baseline_real_miou"] = cm.miou()
            res["baseline_sec_per_image"] = spi
            print(f"baseline (CE) on real val photos: mIoU {cm.miou():.4f}", flush=True)
        for solver, pipe, steps in (("euler", euler, args.steps), ("heun", heun, args.heun_steps)):
            for s in steps:
                cm, spi = segment_split("semflow", pipe, ds, k, ignore, s, args.batch_size)
                nfe = s * (2 if solver == "heun" else 1)
                res["segmentation"].append({"solver": solver, "steps": s, "network_calls": nfe, "miou": cm.miou(),
                                            "pixel_acc": cm.pixel_accuracy(), "iou": [float(x) for x in cm.iou()],
                                            "sec_per_image": spi})
                monitor.check()
                print(f"segment {solver} {s:2d} steps ({nfe:2d} calls): mIoU {cm.miou():.4f}  {spi:.3f} s/img", flush=True)
        if base is None or args.no_synthesis:
            res["synthesis_skipped"] = ("--no-synthesis" if args.no_synthesis else
                                        f"no baseline segmenter at {args.baseline} to score synthesized images")
            print("synthesis skipped:", res["synthesis_skipped"])
        else:
            for solver, pipe, steps in (("euler", euler, args.synthesis_steps), ("heun", heun, args.synthesis_heun_steps)):
                if not steps:  # nothing to sample: skip the features and the C2ST calibration fits as well
                    continue
                rows = synthesis_metrics(pipe, base, ds, [args.perturbation], args.num_seeds, steps,
                                         real_miou=res["baseline_real_miou"], std_images=args.std_images)
                for r in rows:
                    r.update(solver=solver, network_calls=r["steps"] * (2 if solver == "heun" else 1))
                    res["synthesis"].append(r)
                    print(f"synthesize {solver} {r['steps']:2d} steps: baseline mIoU on synthesized "
                          f"{r['synth_miou']:.4f} (ratio {r['ratio']:.2f})", flush=True)
                monitor.check()
    if args.segmentation_from:
        import json

        with open(args.segmentation_from) as f:
            ev = json.load(f)
        measured = {(r["solver"], r["steps"]) for r in res["segmentation"]}
        for r in ev["segmentation"]:
            steps = int(r["name"].split()[1])
            if ("euler", steps) not in measured:
                res["segmentation"].append({"solver": "euler", "steps": steps, "network_calls": steps,
                                            "miou": r["miou"], "pixel_acc": r["pixel_acc"], "iou": r["iou"],
                                            "sec_per_image": r["sec_per_image"]})
        res["segmentation_from"] = args.segmentation_from
    monitor.check()
    res.update(contended=monitor.contended, training_jobs_seen=monitor.seen, validity=monitor.label())
    md = render(res)
    print("\n" + md)
    out = args.out or os.path.join(RESULTS, "quality.json")
    write_json(out, res)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(md + "\n")
    plot(res, os.path.splitext(out)[0] + ".png")
    return res


def c2st_cell(row: dict) -> str:
    """Mean patch C2ST over its fits, with their range when there were several."""
    runs = row.get("c2st_runs") or []
    spread = f" ({min(runs):.2f}-{max(runs):.2f})" if len(runs) > 1 else ""
    return f"{row.get('c2st', float('nan')):.3f}{spread}"


def render(res) -> str:
    m = res["machine"]
    out = [f"### Quality vs steps (CamVid {res['split']}, {res['num_images']} images, labels at full resolution)\n\n"
           f"Model: {res['model']}. Synthesis scored by: {res['baseline'] or '-'} (β = {res['perturbation']}, "
           f"{res['num_seeds']} sample(s) per label map). Machine: {m['cpu']}, {m['torch_threads']} threads, "
           f"{m['date_utc']}; s/image is for the whole split at batch 8 ({res['validity']}).\n"]
    syn = {(r["solver"], r["steps"]): r for r in res["synthesis"]}
    rows = []
    keys = sorted({(r["solver"], r["steps"]) for r in res["segmentation"]} | set(syn),
                  key=lambda sk: (sk[1] * (2 if sk[0] == "heun" else 1), sk[0]))
    seg = {(r["solver"], r["steps"]): r for r in res["segmentation"]}
    for sk in keys:
        s, y = seg.get(sk), syn.get(sk)
        rows.append([sk[0].capitalize(), sk[1], sk[1] * (2 if sk[0] == "heun" else 1),
                     f"**{s['miou']:.3f}**" if s else "-", f"{s['pixel_acc']:.3f}" if s else "-",
                     f"{s['sec_per_image']:.3f}" if s else "-",
                     f"{y['synth_miou']:.3f}" if y else "-", f"{y['ratio']:.2f}" if y else "-",
                     f"{y['diversity_abs_diff']:.3f}" if y else "-", f"{y['diversity_std']:.3f}" if y else "-",
                     f"{y.get('diversity_blur4', float('nan')):.3f}" if y else "-",
                     f"{y['sharpness_ratio']:.2f}" if y else "-", f"{y['frechet_distance']:.2f}" if y else "-",
                     f"{y.get('kid_lite0', float('nan')):.4f}" if y else "-", c2st_cell(y) if y else "-",
                     f"{y['sec_per_image']:.3f}" if y else "-"])
    out.append(markdown(rows, ["solver", "steps", "network calls", "segmentation mIoU", "pixel acc", "seg s/image",
                               "baseline mIoU on synthesized", "layout fidelity", "two-seed mean abs diff",
                               "pixel std (4 seeds)", "blurred (r=4) abs diff", "sharpness ratio", "Fréchet distance",
                               "KID (Lite0)", "patch C2ST (mean; range of fits)", "synth s/image"]))
    cal = next((r["c2st_calibration"] for r in res["synthesis"] if r.get("c2st_calibration")), None)
    if cal:
        out.append("\nPatch C2ST (held-out accuracy telling each real frame from the other image; 0.5 = "
                   "indistinguishable) for references: " + ", ".join(f"{k} {v:.3f}" for k, v in cal.items()) + ".")
    if "baseline_real_miou" in res:
        out.append(f"\nCE baseline (same UNet, cross-entropy) on the real val photos: mIoU "
                   f"**{res['baseline_real_miou']:.3f}** ({res['baseline_sec_per_image']:.3f} s/image).")
    if res.get("synthesis_skipped"):
        out.append(f"\nSynthesis not scored: {res['synthesis_skipped']}.")
    pairs = []
    for h in [r for r in res["segmentation"] if r["solver"] == "heun"]:
        e = next((r for r in res["segmentation"] if r["solver"] == "euler" and r["network_calls"] == h["network_calls"]), None)
        if e:
            pairs.append(f"{h['network_calls']} calls: Euler {e['miou']:.3f} vs Heun {h['miou']:.3f}")
    if pairs:
        out.append("\nEuler vs Heun at equal network calls (segmentation mIoU): " + "; ".join(pairs) + ".")
    return "\n".join(out)


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = ((axes[0], "miou", res["segmentation"], "val mIoU (segmentation)"),
              (axes[1], "ratio", res["synthesis"], "layout fidelity of synthesized images"),
              (axes[2], "frechet_distance", res["synthesis"], "Fréchet distance to real (lower is better)"))
    for ax, key, rows, ylab in panels:
        for solver, style in (("euler", "o-"), ("heun", "s--")):
            r = sorted([r for r in rows if r["solver"] == solver], key=lambda r: r["network_calls"])
            if r:
                ax.plot([x["network_calls"] for x in r], [x[key] for x in r], style, label=solver.capitalize())
        if key == "miou" and "baseline_real_miou" in res:
            ax.axhline(res["baseline_real_miou"], color="gray", ls=":", label="CE baseline on real photos")
        if key == "ratio":
            ax.axhline(0.8, color="red", ls=":", lw=0.8, label="target 0.8")
        ax.set_xscale("log")
        calls = sorted({x["network_calls"] for x in rows})
        if calls:
            ax.set_xticks(calls)
            ax.set_xticklabels([str(c) for c in calls])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("network calls (Euler: steps, Heun: 2 x steps)")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if not rows:
            ax.text(0.5, 0.5, res.get("synthesis_skipped", "not measured"), ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, wrap=True)
    fig.suptitle(f"SemFlow quality vs steps, CamVid {res['split']} ({res['num_images']} images), {res['model']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
