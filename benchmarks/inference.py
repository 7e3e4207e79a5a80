#!/usr/bin/env python
"""Inference speed and memory of SemFlowPipeline on CPU.

    python benchmarks/inference.py                      # shipped model, full table (~10 min on 2 cores)
    python benchmarks/inference.py --quick --model tiny # smoke run

Measures, per image (median [min–max] over ``--repeats`` timed runs after ``--warmup`` runs, all under
``torch.inference_mode`` with ``torch.set_num_threads(--threads)``):

* segmentation (``pipe.segment``) at 1, 2, 5, 10, 25 Euler steps, for a full 360x480 CamVid frame (labels
  returned at 360x480) and for an input already at the model's processing resolution, batch 1 and batch 8;
* one bare UNet forward at the shape the pipeline feeds it (the physical floor of one step) and the ratio
  pipeline / (steps x forward);
* synthesis (``pipe.synthesize``, ``output_type="np"``) at the same step counts, from a 360x480 label map and
  from one at the processing resolution; "batch 8" = ``num_images_per_mask=8`` (one network batch of 8);
* peak resident memory per row (VmHWM reset before the row);
* a breakdown of 1-step segmentation of a 360x480 frame into preprocessing (to tensor, resize, lift),
  network (the ODE integration, of which the UNet forward) and postprocessing (upsample of the class channels
  to 360x480, nearest-anchor read-back, copies to numpy).

Writes benchmarks/results/inference.json, inference.md and inference.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, ContentionMonitor, add_common_args, current_rss_mb, fmt_s,  # noqa: E402
                    load_pipeline, load_val_images, machine_info, markdown, model_summary, peak_rss_mb,
                    reset_peak_rss, resolve_model_arg, scale, setup_torch, summarize, time_paired, write_json)

FULL = (360, 480)


def make_inputs(pipe, data_root: str, n: int, seed: int = 0):
    """n CamVid val frames (uint8 360x480x3) and label maps, or random ones if the data is missing."""
    pairs = load_val_images(data_root, n)
    if pairs:
        imgs = [p[0] for p in pairs]
        labs = [p[1].astype(np.int64) for p in pairs]
        labs = [np.where(l == pipe.config.ignore_index, l, np.clip(l, 0, pipe.num_classes - 1)) for l in labs]
        src = "CamVid val frames"
    else:
        rng = np.random.default_rng(seed)
        imgs = [rng.integers(0, 256, (*FULL, 3), dtype=np.uint8) for _ in range(n)]
        labs = [np.kron(rng.integers(0, pipe.num_classes, (FULL[0] // 40, FULL[1] // 40)), np.ones((40, 40), int))
                for _ in range(n)]
        src = "random frames (no CamVid data found)"
    while len(imgs) < n:
        imgs, labs = imgs + imgs, labs + labs
    return imgs[:n], labs[:n], src


def resize_inputs(imgs, labs, size):
    """Images (bilinear, antialiased) and label maps (nearest) to ``size`` = (h, w)."""
    out_i = [F.interpolate(torch.from_numpy(im).permute(2, 0, 1)[None].float(), size=size, mode="bilinear",
                           antialias=True, align_corners=False)[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
             for im in imgs]
    out_l = [F.interpolate(torch.from_numpy(l)[None, None].float(), size=size, mode="nearest")[0, 0].long().numpy()
             for l in labs]
    return out_i, out_l


def unet_forward_fn(pipe, n: int, size):
    """A closure running one bare UNet forward on the state shape the pipeline uses for ``n`` images at ``size``."""
    r = pipe.config.space_to_depth
    ch = pipe.unet.config.in_channels
    h, w = size[0] // pipe.vae_scale_factor // r, size[1] // pipe.vae_scale_factor // r
    x = torch.randn(n, ch, h, w, generator=torch.Generator().manual_seed(0)).to(pipe.unet.dtype)
    t = torch.zeros(n)
    kwargs = {}
    if getattr(pipe.unet.config, "cross_attention_dim", None) is not None:
        kwargs["encoder_hidden_states"] = pipe.encode_empty_prompt().expand(n, -1, -1).to(pipe.unet.dtype)
    return lambda: pipe.unet(x, t, **kwargs).sample, (n, ch, h, w)


def breakdown(pipe, imgs, repeats: int, warmup: int):
    """1-step segmentation of ``imgs`` (one batch) split into pre / network / post by timing the pipeline's
    own methods (no re-implementation): pre = segment start -> integrate start, network = integrate (UNet
    forward inside), post = integrate end -> segment end (upsample, nearest anchor, to numpy)."""
    marks = {"unet": 0.0, "decode": 0.0}
    orig_integrate, orig_decode, orig_forward = pipe.integrate, pipe.codec.decode, pipe.unet.forward

    def integrate(*a, **k):
        marks["int0"] = time.perf_counter()
        r = orig_integrate(*a, **k)
        marks["int1"] = time.perf_counter()
        return r

    def decode(*a, **k):
        t = time.perf_counter()
        r = orig_decode(*a, **k)
        marks["decode"] += time.perf_counter() - t
        return r

    def forward(*a, **k):
        t = time.perf_counter()
        r = orig_forward(*a, **k)
        marks["unet"] += time.perf_counter() - t
        return r

    object.__setattr__(pipe, "integrate", integrate)
    pipe.codec.decode = decode
    pipe.unet.forward = forward
    rows = {k: [] for k in ("total", "pre", "network", "unet", "post", "decode")}
    try:
        for i in range(warmup + repeats):
            marks.update(unet=0.0, decode=0.0)
            t0 = time.perf_counter()
            pipe.segment(imgs, num_inference_steps=1, batch_size=len(imgs), output_type="np")
            t1 = time.perf_counter()
            if i < warmup:
                continue
            rows["total"].append(t1 - t0)
            rows["pre"].append(marks["int0"] - t0)
            rows["network"].append(marks["int1"] - marks["int0"])
            rows["unet"].append(marks["unet"])
            rows["post"].append(t1 - marks["int1"])
            rows["decode"].append(marks["decode"])
    finally:
        del pipe.__dict__["integrate"]
        del pipe.codec.decode
        del pipe.unet.forward
    n = len(imgs)
    out = {k: scale(summarize(v), 1 / n) for k, v in rows.items()}
    out["pre_post_over_unet"] = summarize([(a + b) / u for a, b, u in zip(rows["pre"], rows["post"], rows["unet"])])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeats=5)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 25])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--no-synthesis", action="store_true")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup = [1, 2], min(args.repeats, 2), 1
    setup_torch(args.threads)
    monitor = ContentionMonitor()
    model = resolve_model_arg(args.model)
    pipe, desc = load_pipeline(model, args.config, dtype=args.dtype, channels_last=args.channels_last)
    machine = machine_info(args.threads)
    rss_loaded = current_rss_mb()

    nmax = max(args.batch_sizes)
    imgs_full, labs_full, src = make_inputs(pipe, args.data_root, nmax)
    proc = pipe.processing_size(*FULL)
    imgs_proc, labs_proc = resize_inputs(imgs_full, labs_full, proc)
    shapes = {f"{FULL[0]}x{FULL[1]} (full)": (imgs_full, labs_full),
              f"{proc[0]}x{proc[1]} (processing)": (imgs_proc, labs_proc)}

    rows = []
    g = torch.Generator()
    with torch.inference_mode():
        for task in ["segment"] + ([] if args.no_synthesis else ["synthesize"]):
            for shape_name, (imgs, labs) in shapes.items():
                for n in args.batch_sizes:
                    fwd_fn, fwd_shape = unet_forward_fn(pipe, n, proc)
                    reset_peak_rss()
                    row = {"task": task, "input": shape_name, "batch": n, "forward_shape": list(fwd_shape),
                           "steps": {}}
                    fwd_times = []
                    for s in args.steps:
                        reps = args.repeats if s <= 5 else max(3, args.repeats // 2)
                        if task == "segment":
                            def fn(imgs=imgs[:n], s=s):
                                return pipe.segment(imgs, num_inference_steps=s, batch_size=n, output_type="np")
                        else:
                            def fn(lab=labs[0], s=s):
                                g.manual_seed(0)
                                return pipe.synthesize(lab, num_inference_steps=s, num_images_per_mask=n,
                                                       generator=g, output_type="np")
                        # Each run is paired with a bare forward just before it: the ratio is the median of
                        # per-pair ratios, robust to slow drifts of the CPU load.
                        fa, st, ratio = time_paired(fwd_fn, fn, reps, args.warmup if s <= 5 else 1)
                        fwd_times += fa["all"]
                        st = scale(st, 1 / n)
                        row["steps"][str(s)] = {"s_per_image": st, "ratio_to_steps_x_forward": ratio["median"] / s,
                                                "ratio_spread": [ratio["min"] / s, ratio["max"] / s]}
                        monitor.check()
                        print(f"{task:10s} {shape_name:22s} batch {n}: {s:2d} steps {fmt_s(st)} s/img "
                              f"(forward {fa['median'] / n:.4f}, ratio {ratio['median'] / s:.2f})", flush=True)
                    row["forward_s_per_image"] = scale(summarize(fwd_times), 1 / n)
                    row["peak_rss_mb"] = peak_rss_mb()
                    rows.append(row)

        full_name = next(iter(shapes))
        bd = {}
        for n in ([] if args.no_breakdown else args.batch_sizes):
            bd[str(n)] = breakdown(pipe, imgs_full[:n], args.repeats, args.warmup)
            monitor.check()
    monitor.check()

    res = {"benchmark": "inference", "machine": machine, "contended": monitor.contended,
           "training_jobs_seen": monitor.seen, "validity": monitor.label(), "model": desc,
           "model_summary": model_summary(pipe), "inputs": src, "processing_size": list(proc),
           "rss_after_load_mb": rss_loaded, "repeats": args.repeats, "warmup": args.warmup,
           "rows": rows, "breakdown_1step_full": bd, "full_input": full_name, "quick": args.quick}
    res["targets"] = targets(res)
    md = render(res, args.steps)
    print("\n" + md)
    out = args.out or os.path.join(RESULTS, "inference.json")
    write_json(out, res)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(md + "\n")
    if not args.no_plot:
        plot(res, args.steps, os.path.splitext(out)[0] + ".png")
    return res


def targets(res):
    """The issue's targets, from the measured medians."""
    t = {}
    for r in res["rows"]:
        if r["task"] == "segment" and "1" in r["steps"]:
            key = f"{r['input']} batch {r['batch']}"
            t[f"1-step ratio to one forward, {key} (target <= 1.1)"] = r["steps"]["1"]["ratio_to_steps_x_forward"]
            if r["input"] == res["full_input"] and r["batch"] == 1:
                t["1-step s per full 360x480 frame, batch 1 (target <= 0.2 s)"] = r["steps"]["1"]["s_per_image"]["median"]
    for n, b in res["breakdown_1step_full"].items():
        t[f"(pre + post) / UNet forward at 1 step, full frame, batch {n} (target <= 0.10)"] = b["pre_post_over_unet"]["median"]
    return t


def render(res, steps) -> str:
    m = res["machine"]
    out = [f"### Inference (CPU)\n\nMachine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, "
           f"{m['torch_threads']} threads, {m['date_utc']}. Model: {res['model']} "
           f"({res['model_summary']['unet_params'] / 1e6:.2f}M-param {res['model_summary']['unet_class']}, "
           f"processing size {res['processing_size'][0]}x{res['processing_size'][1]}). Inputs: {res['inputs']}. "
           f"Seconds per image, median [min–max] of {res['repeats']} runs (3+ for >= 10 steps). "
           f"**{res['validity']}.**\n"]
    header = ["task", "input", "batch", "1 UNet forward"] + [f"{s} step{'s' if s > 1 else ''}" for s in steps] + ["peak RSS MB"]
    rows = []
    for r in res["rows"]:
        rows.append([r["task"], r["input"], r["batch"], fmt_s(r["forward_s_per_image"])]
                    + [fmt_s(r["steps"][str(s)]["s_per_image"]) for s in steps] + [f"{r['peak_rss_mb']:.0f}"])
    out.append(markdown(rows, header))
    out.append("\nRatio pipeline / (steps x one UNet forward at the same batch and processing shape), median of "
               "runs each paired with a forward just before it [min–max]:\n")
    rows = [[r["task"], r["input"], r["batch"]] + [
        f"{r['steps'][str(s)]['ratio_to_steps_x_forward']:.2f} [{r['steps'][str(s)]['ratio_spread'][0]:.2f}–"
        f"{r['steps'][str(s)]['ratio_spread'][1]:.2f}]" for s in steps] for r in res["rows"]]
    out.append(markdown(rows, ["task", "input", "batch"] + [f"{s}" for s in steps]))
    if res["breakdown_1step_full"]:
        out.append(f"\n1-step segmentation of a full {res['full_input']} frame, seconds per image (median [min–max]):\n")
        rows = []
        for n, b in res["breakdown_1step_full"].items():
            r = b["pre_post_over_unet"]
            rows.append([n, fmt_s(b["total"]), fmt_s(b["pre"]), fmt_s(b["network"]), fmt_s(b["unet"]),
                         fmt_s(b["post"]), fmt_s(b["decode"]), f"{r['median']:.3f} [{r['min']:.3f}–{r['max']:.3f}]"])
        out.append(markdown(rows, ["batch", "total", "preprocess", "integrate (network)", "of which UNet forward",
                                   "postprocess", "of which codec.decode", "(pre+post) / UNet"]))
    out.append("\nTargets:\n")
    out += [f"- {k}: **{v:.3f}**" for k, v in res["targets"].items()]
    out.append(f"\nRSS after loading the model: {res['rss_after_load_mb']:.0f} MB.")
    return "\n".join(out)


def plot(res, steps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, task in zip(axes, ["segment", "synthesize"]):
        for r in [r for r in res["rows"] if r["task"] == task]:
            y = [r["steps"][str(s)]["s_per_image"]["median"] for s in steps]
            lo = [r["steps"][str(s)]["s_per_image"]["min"] for s in steps]
            hi = [r["steps"][str(s)]["s_per_image"]["max"] for s in steps]
            line, = ax.plot(steps, y, "o-", label=f"{r['input']}, batch {r['batch']}")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2)
            ax.plot(steps, [s * r["forward_s_per_image"]["median"] for s in steps], ":", color=line.get_color())
        ax.set_xscale("log"); ax.set_yscale("log")
        ax.set_xticks(steps); ax.set_xticklabels([str(s) for s in steps])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("ODE steps"); ax.set_title(f"{task} (dotted: steps x one UNet forward)")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    axes[0].set_ylabel("seconds per image (CPU)")
    note = "" if not res["contended"] else " — measured while a training job shared the CPU"
    fig.suptitle(f"SemFlow inference, {res['machine']['cpu']}, {res['machine']['torch_threads']} threads{note}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
