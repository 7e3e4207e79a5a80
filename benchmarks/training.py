#!/usr/bin/env python
"""Training step time on CPU: fp32 vs bf16 autocast, channels_last, torch.compile, 1 vs 2 accelerate processes.

    python benchmarks/training.py                    # the shipped recipe (training/configs/camvid.yaml)
    python benchmarks/training.py --quick --model tiny
    python benchmarks/training.py --compile          # also try torch.compile (slow to compile; --compile-timeout)

Every variant runs in its own process (so accelerate's state, thread count and peak memory are per variant) and
times the real training step of training/train_semflow.py: a batch from its ``StepBatches`` (augmented CamVid
crops at the config's resolution), ``semflow_loss`` through ``pipe.predict`` under ``accelerator.autocast()``,
``accelerator.backward``, gradient clipping, AdamW step. ``--warmup`` untimed steps, then ``--steps`` timed
ones; median [min–max] seconds per optimisation step and samples/s (global batch / step time). The 2-process
variant is ``accelerate launch --cpu --num_processes 2`` with 1 thread per process and ``batch_size`` per
process (global batch 2x). Writes benchmarks/results/training.json and training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ROOT, RESULTS, ContentionMonitor, add_common_args, fmt_s, load_pipeline, machine_info,  # noqa: E402
                    markdown, peak_rss_mb, resolve_model_arg, summarize, training_config, write_json)

EARLIER_COMPILE_NOTE = ("not re-run: issue 3 measured torch.compile on this CPU at ~250 s to compile and slower "
                        "steps than eager; pass --compile to measure it (costs minutes of the shared 2-core CPU)")


# ------------------------------------------------------------------------------------------------ worker
class _RandomPairs:
    """Stand-in dataset (random image/label crops) when the CamVid folder is missing."""

    def __init__(self, size, num_classes, n=64):
        g = torch.Generator().manual_seed(0)
        self.items = [{"image": torch.rand(3, *size, generator=g) * 2 - 1,
                       "label": torch.randint(0, num_classes, size, generator=g)} for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def set_epoch(self, epoch):
        pass


def worker(args) -> None:
    from accelerate import Accelerator

    from training.data import AugmentConfig, build_dataset
    from training.train_semflow import StepBatches, semflow_loss

    acc = Accelerator(mixed_precision=args.precision, cpu=True)
    if acc.num_processes != args.processes:
        raise SystemExit(f"expected {args.processes} processes, accelerate started {acc.num_processes}")
    threads = max(1, args.threads // acc.num_processes)
    torch.set_num_threads(threads)
    cfg = training_config(args.config)
    pipe, desc = load_pipeline(args.model_resolved, args.config)
    if args.model_resolved == "tiny":
        size = (32, 32)
    elif os.path.isdir(args.model_resolved):
        size = pipe.processing_size(360, 480)
    else:
        size = tuple(cfg["resolution"])
    cfg["resolution"] = list(size)
    bs = int(cfg["batch_size"])
    if os.path.isfile(os.path.join(args.data_root, f"{cfg['train_split']}.txt")):
        ds = build_dataset("camvid", args.data_root, cfg["train_split"], size=tuple(size), train=True,
                           aug=AugmentConfig(cfg["scale_min"], cfg["scale_max"], cfg["hflip"]), preload=True,
                           seed=0, max_samples=max(4 * bs * acc.num_processes, 32))
        data = "CamVid train crops"
    else:
        ds, data = _RandomPairs(size, pipe.num_classes), "random crops (no CamVid data found)"

    model = pipe.unet
    model.train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(cfg["learning_rate"]),
                                  weight_decay=float(cfg["weight_decay"]))
    compile_s = None
    if args.compile:
        model = torch.compile(model)
    model, optimizer = acc.prepare(model, optimizer)
    batches = StepBatches(ds, bs, acc.num_processes, acc.process_index, 0)
    gen = torch.Generator()
    step_times, data_times = [], []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        gen.manual_seed(step * 2 + acc.process_index)
        batch = {k: v.to(acc.device) for k, v in batches(step).items()}
        t1 = time.perf_counter()
        with acc.autocast():
            loss = semflow_loss(pipe, batch, cfg, gen, model=model)
        acc.backward(loss)
        if cfg["max_grad_norm"]:
            acc.clip_grad_norm_(model.parameters(), float(cfg["max_grad_norm"]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(loss.detach())
        t2 = time.perf_counter()
        if args.compile and step == 0:
            compile_s = t2 - t0
        if step >= args.warmup:
            step_times.append(t2 - t0)
            data_times.append(t1 - t0)
    acc.wait_for_everyone()
    if acc.is_main_process:
        st = summarize(step_times)
        global_bs = bs * acc.num_processes
        print("RESULT " + json.dumps({
            "model": desc, "resolution": list(size), "unet_input": [pipe.unet.config.in_channels,
                                                                    size[0] // pipe.config.space_to_depth,
                                                                    size[1] // pipe.config.space_to_depth],
            "params": int(sum(p.numel() for p in pipe.unet.parameters())), "data": data,
            "batch_per_process": bs, "global_batch": global_bs, "processes": acc.num_processes,
            "threads_per_process": threads, "precision": args.precision, "channels_last": args.channels_last,
            "compile": args.compile, "first_step_s": compile_s, "step_s": st,
            "data_s_median": summarize(data_times)["median"],
            "samples_per_s": global_bs / st["median"], "last_loss": loss_value, "peak_rss_mb": peak_rss_mb(),
        }), flush=True)


# ------------------------------------------------------------------------------------------ orchestrator
VARIANTS = [  # name, precision, channels_last, compile, processes
    ("fp32", "no", False, False, 1),
    ("bf16 autocast", "bf16", False, False, 1),
    ("fp32 + channels_last", "no", True, False, 1),
    ("bf16 + channels_last", "bf16", True, False, 1),
    ("bf16, 2 processes x 1 thread", "bf16", False, False, 2),
    ("fp32, 2 processes x 1 thread", "no", False, False, 2),
]


def run_variant(args, name, precision, channels_last, compile_, processes, timeout):
    flags = ["--worker", "--precision", precision, "--threads", str(args.threads), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--model", args.model_resolved, "--config", args.config,
             "--data-root", args.data_root, "--processes", str(processes)] + (["--channels-last"] if channels_last else []) + (
             ["--compile"] if compile_ else [])
    script = os.path.abspath(__file__)
    if processes == 1:
        cmd = [sys.executable, script] + flags
    else:
        # `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.x (its simple launcher
        # ignores num_processes without mpirun); the torchrun launcher (--multi_gpu) with Accelerator(cpu=True)
        # gives real 2-process DDP on CPU (DistributedType.MULTI_CPU, gloo). The worker checks the count.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no", script] + flags
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads // processes)), HF_HUB_OFFLINE="1")
    if processes > 1:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU DDP even on a GPU machine
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {timeout} s"}
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r.update(name=name, wall_s=time.time() - t)
            return r
    tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
    return {"name": name, "error": f"exit {p.returncode}: " + " | ".join(tail)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--steps", type=int, default=8, help="timed optimisation steps per variant")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (bf16)")
    ap.add_argument("--compile-timeout", type=int, default=420)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per variant")
    ap.add_argument("--variants", nargs="*", default=None, help="subset of variant names (default: all)")
    # worker-only flags
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    ap.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.model_resolved = resolve_model_arg(args.model)
    if args.worker:
        return worker(args)
    if args.quick:
        args.steps, args.warmup = 2, 1
    monitor = ContentionMonitor()
    variants = list(VARIANTS)
    if args.quick:
        variants = [v for v in variants if v[0] in ("fp32", "bf16 autocast", "bf16, 2 processes x 1 thread")]
    if args.variants:
        variants = [v for v in variants if v[0] in args.variants]
    if args.compile:
        variants.append(("bf16 + torch.compile", "bf16", False, True, 1))
    rows = []
    for name, precision, cl, comp, procs in variants:
        r = run_variant(args, name, precision, cl, comp, procs, args.compile_timeout if comp else args.timeout)
        rows.append(r)
        monitor.check()
        print(name, "->", r.get("error") or f"{fmt_s(r['step_s'])} s/step, {r['samples_per_s']:.1f} samples/s",
              flush=True)
    res = {"benchmark": "training", "machine": machine_info(args.threads), "config": os.path.relpath(args.config, ROOT),
           "model_arg": args.model_resolved, "steps": args.steps, "warmup": args.warmup, "rows": rows,
           "compile": None if args.compile else EARLIER_COMPILE_NOTE, "quick": args.quick,
           "contended": monitor.contended, "training_jobs_seen": monitor.seen, "validity": monitor.label()}
    ok = {r["name"]: r for r in rows if "error" not in r}
    if "fp32" in ok and "bf16 autocast" in ok:
        res["bf16_speedup"] = ok["fp32"]["step_s"]["median"] / ok["bf16 autocast"]["step_s"]["median"]
    md = render(res)
    print("\n" + md)
    out = args.out or os.path.join(RESULTS, "training.json")
    write_json(out, res)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(md + "\n")
    return res


def render(res) -> str:
    m = res["machine"]
    first = next((r for r in res["rows"] if "error" not in r), None)
    what = (f"{first['model']}, {first['params'] / 1e6:.2f}M params, {first['data']} {first['resolution'][0]}x"
            f"{first['resolution'][1]} (UNet input {first['unet_input'][0]}x{first['unet_input'][1]}x"
            f"{first['unet_input'][2]}), batch {first['batch_per_process']} per process") if first else res["model_arg"]
    out = [f"### Training step (CPU)\n\nMachine: {m['cpu']}, {m['logical_cpus']} logical CPUs (avx512_bf16: "
           f"{m['bf16_cpu_flag']}, AMX: {m['amx']}), torch {m['torch']}, {m['date_utc']}. Recipe: {res['config']}; "
           f"{what}. {res['warmup']} warm-up + {res['steps']} timed steps per variant. **{res['validity']}.**\n"]
    base = next((r for r in res["rows"] if r.get("name") == "fp32" and "error" not in r), None)
    rows = []
    for r in res["rows"]:
        if "error" in r:
            rows.append([r["name"], "-", "-", "-", "-", "-", "failed: " + r["error"][:120]])
            continue
        speed = f"{r['samples_per_s'] / base['samples_per_s']:.2f}x" if base else "-"
        rows.append([r["name"], f"{r['processes']} x {r['threads_per_process']}", r["global_batch"],
                     fmt_s(r["step_s"]), f"{r['samples_per_s']:.1f}", speed,
                     f"data {r['data_s_median'] * 1e3:.0f} ms/step, peak RSS {r['peak_rss_mb']:.0f} MB"
                     + (f", first step (compile) {r['first_step_s']:.0f} s" if r.get("compile") else "")])
    if res["compile"]:
        rows.append(["bf16 + torch.compile", "-", "-", "-", "-", "-", res["compile"]])
    out.append(markdown(rows, ["variant", "processes x threads", "global batch", "s / step", "samples / s",
                               "throughput vs fp32", "notes"]))
    if "bf16_speedup" in res:
        out.append(f"\nbf16 autocast vs fp32 step time: **{res['bf16_speedup']:.2f}x** (target >= 1.5x).")
    return "\n".join(out)


if __name__ == "__main__":
    main()
