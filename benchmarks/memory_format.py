#!/usr/bin/env python
"""Contiguous vs channels_last UNet weights, timed in alternation in one process (the app and the CLI use
channels_last; this is the measurement behind that choice).

    python benchmarks/memory_format.py                  # shipped model, fp32, writes results/memory_format.{json,md}
    python benchmarks/memory_format.py --dtype bfloat16 # the same in bf16 (only on CPUs with AVX512-BF16 / AMX)
    python benchmarks/memory_format.py --quick --model tiny

Separate benchmark runs minutes apart differ by 10-15% on a shared 2-vCPU machine, more than the effect measured
here; so both pipelines are loaded side by side and every repeat times one call of each, back to back
(``common.time_paired``), and the table gives the per-pair ratio. Tasks: 1-step segmentation of a 360x480 val frame
and synthesis from its label map with the model's default synthesis steps, batch 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, ContentionMonitor, add_common_args, fmt_s, header_lines, load_pipeline,  # noqa: E402
                    load_val_images, machine_info, markdown, resolve_model_arg, setup_torch, time_paired,
                    write_json)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeats=9)
    args = ap.parse_args()
    setup_torch(args.threads)
    monitor = ContentionMonitor()
    model = resolve_model_arg(args.model)
    plain, desc = load_pipeline(model, args.config, dtype=args.dtype, channels_last=False)
    fast, _ = load_pipeline(model, args.config, dtype=args.dtype, channels_last=True)
    pairs = load_val_images(args.data_root, 1)
    if pairs is None:  # no CamVid here: a random frame and layout of the same size
        rng = np.random.default_rng(0)
        pairs = [(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8), rng.integers(0, 11, (360, 480)))]
    image, labels = pairs[0]
    syn_steps = int(plain.config.get("default_synthesis_num_inference_steps") or 12)
    repeats, warmup = (2, 1) if args.quick else (args.repeats, args.warmup)

    def segment(pipe):
        return lambda: pipe.segment(image, num_inference_steps=1, output_type="np")

    def synthesize(pipe):
        return lambda: pipe.synthesize(labels, num_inference_steps=syn_steps, output_type="np",
                                       generator=torch.Generator().manual_seed(0))

    rows, records = [], []
    with torch.inference_mode():
        for task, make in (("segment, 1 step", segment), (f"synthesize, {syn_steps} steps", synthesize)):
            a, b, ratio = time_paired(make(plain), make(fast), repeats, warmup)
            monitor.check()
            rows.append([task, fmt_s(a), fmt_s(b), f"{ratio['median']:.3f} [{ratio['min']:.3f}–{ratio['max']:.3f}]"])
            records.append({"task": task, "contiguous_s": a, "channels_last_s": b, "ratio": ratio})
            print(rows[-1], flush=True)

    machine = machine_info(args.threads)
    text = header_lines("UNet memory format: contiguous vs channels_last", machine, f"{desc}, UNet in {args.dtype}",
                        monitor)
    text += (f"\nSeconds per 360x480 frame, median [min–max] of {repeats} pairs, each pair one call of each format "
             "back to back; ratio = channels_last / contiguous per pair.\n\n")
    text += markdown(rows, ["task", "contiguous", "channels_last", "ratio"]) + "\n"
    print(text)
    name = "memory_format" if args.dtype == "float32" else f"memory_format_{args.dtype}"
    out = args.out or os.path.join(RESULTS, f"{name}.json")
    write_json(out, {"model": desc, "machine": machine, "dtype": args.dtype, "contended": monitor.contended,
                     "rows": records})
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
