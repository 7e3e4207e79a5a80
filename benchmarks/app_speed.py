"""The app's speed next to the bare pipeline (issue 9 item 14): /segment round trip target <= 0.25 s.

Starts the app (``space.build_demo``, as ``python app.py`` does) in a child process and measures, interleaved
repeat by repeat so both see the same machine load:

- bare pipeline: ``pipe.segment(photo, 1 step)`` / ``pipe.synthesize(mask, 25 steps, 1 sample)`` in this process;
- app, server side: the handler (model + outputs) and gradio's whole ``process_api`` (+ pre/postprocessing);
- app round trip through ``gradio_client`` (upload, queue, processing, download of every output file);
- the first request after start-up (the app warms the model up before it serves).

The photo is a 480x360 CamVid val frame if ``--data-root`` has one (read by path), else the app's example photo.

    python benchmarks/app_speed.py                      # writes results/app_speed.{json,md}
    python benchmarks/app_speed.py --model tiny --quick
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (DEFAULT_DATA_ROOT, RESULTS, ROOT, ContentionMonitor, machine_info, markdown,  # noqa: E402
                    resolve_model_arg, setup_torch, write_json)


def serve(model: str, port: int, threads: int, timings: str) -> None:
    """The child: the app on 127.0.0.1:port; server-side timings appended to ``timings`` (JSON lines)."""
    setup_torch(threads)
    sys.path.insert(0, ROOT)
    from gradio import blocks

    from space import build_demo, launch_kwargs

    def record(name, seconds):
        with open(timings, "a") as f:
            f.write(json.dumps({"name": name, "s": seconds}) + "\n")

    orig = blocks.Blocks.process_api

    @functools.wraps(orig)
    async def process_api(self, *a, **k):
        t = time.perf_counter()
        out = await orig(self, *a, **k)
        record("process_api", time.perf_counter() - t)
        return out

    blocks.Blocks.process_api = process_api
    t0 = time.perf_counter()
    demo = build_demo(model)
    record("build_demo_with_warmup", time.perf_counter() - t0)
    for fn in demo.fns.values():
        if fn.api_name in ("segment", "synthesize"):
            def timed(*a, _fn=fn.fn, _name=fn.api_name, **k):
                t = time.perf_counter()
                out = _fn(*a, **k)
                record(f"handler_{_name}", time.perf_counter() - t)
                return out

            fn.fn = timed
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(demo))
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def _stats(ts):
    return {"median": statistics.median(ts), "min": min(ts), "max": max(ts), "n": len(ts)}


def _fmt(st):
    return f"{st['median']:.3f} [{st['min']:.3f}–{st['max']:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data-root", default=DEFAULT_DATA_ROOT)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, in the app and for the bare pipeline")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--synthesis-repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(RESULTS, "app_speed"))
    ap.add_argument("--serve", nargs=3, metavar=("MODEL", "PORT", "TIMINGS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]), args.threads, args.serve[2])
    if args.quick:
        args.repeats, args.synthesis_repeats = 4, 2

    setup_torch(args.threads)
    model = resolve_model_arg(args.model)
    if model == "tiny":
        from semflow_tiny import tiny_pixel_pipeline

        model = tempfile.mkdtemp(prefix="semflow-tiny-")
        tiny_pixel_pipeline(resolution=32).save_pretrained(model)
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    from PIL import Image

    from semflow_pipeline import SemFlowPipeline
    from space.examples import EXAMPLES_DIR

    monitor = ContentionMonitor()
    listing = Path(args.data_root) / "val.txt"
    if listing.is_file():
        photo_path = str(Path(args.data_root) / listing.read_text().split()[0])
        photo_desc = "CamVid val frame " + os.path.basename(photo_path)
    else:
        photo_path, photo_desc = str(EXAMPLES_DIR / "photo_0.png"), "the app's example photo_0.png"
    mask_path = str(EXAMPLES_DIR / "street_0.png")
    photo = Image.open(photo_path).convert("RGB")
    mask = np.asarray(Image.open(mask_path)).astype(np.int64)

    tmp = Path(tempfile.mkdtemp(prefix="semflow-speed-"))
    timings = tmp / "timings.jsonl"
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", model, str(port), str(timings),
                             "--threads", str(args.threads)], env=env, stdout=subprocess.PIPE, text=True)

    def server_times(name, since):
        rows = [json.loads(line) for line in timings.read_text().splitlines()[since:]]
        return [r["s"] for r in rows if r["name"] == name]

    try:
        if "READY" not in proc.stdout.readline():
            sys.exit("the app did not start")
        from gradio_client import Client, handle_file

        pipe = SemFlowPipeline.from_pretrained(model)
        pipe.set_progress_bar_config(disable=True)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        n0 = len(timings.read_text().splitlines())
        t = time.perf_counter()
        client.predict(handle_file(photo_path), 1, 0.5, api_name="/segment")
        first = time.perf_counter() - t
        pipe.segment(photo, num_inference_steps=1, output_type="np")  # warm the bare pipeline too
        client.predict(handle_file(photo_path), 1, 0.5, api_name="/segment")
        mark = len(timings.read_text().splitlines())
        bare, app = [], []
        for _ in range(args.repeats):
            monitor.check()
            t = time.perf_counter()
            with torch.inference_mode():
                pipe.segment(photo, num_inference_steps=1, output_type="np")
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.predict(handle_file(photo_path), 1, 0.5, api_name="/segment")
            app.append(time.perf_counter() - t)
        seg_handler, seg_api = server_times("handler_segment", mark), server_times("process_api", mark)
        warm = server_times("build_demo_with_warmup", 0)

        steps = 2 if args.quick else 25
        mark = len(timings.read_text().splitlines())
        bare_syn, app_syn = [], []
        for _ in range(args.synthesis_repeats):
            monitor.check()
            t = time.perf_counter()
            pipe.synthesize(mask, num_inference_steps=steps, perturbation=0.05, output_type="pil",
                            generator=torch.Generator().manual_seed(0))
            bare_syn.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.predict(handle_file(mask_path), steps, 0.05, 0, 1, api_name="/synthesize")
            app_syn.append(time.perf_counter() - t)
        syn_handler, syn_api = server_times("handler_synthesize", mark), server_times("process_api", mark)
        monitor.check()
        _ = n0
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    machine = machine_info(args.threads)
    res = {
        "model": model, "photo": photo_desc, "machine": machine, "contended": monitor.contended,
        "training_jobs": monitor.seen, "target_roundtrip_s": 0.25,
        "segment_1_step": {"bare_pipeline": _stats(bare), "app_handler": _stats(seg_handler),
                           "app_process_api": _stats(seg_api), "app_roundtrip": _stats(app),
                           "first_request_after_start": first},
        f"synthesize_{steps}_steps_1_sample": {"bare_pipeline": _stats(bare_syn), "app_handler": _stats(syn_handler),
                                               "app_process_api": _stats(syn_api), "app_roundtrip": _stats(app_syn)},
        "startup_build_and_warmup_s": warm[0] if warm else None,
    }
    write_json(args.out + ".json", res)
    s, y = res["segment_1_step"], res[f"synthesize_{steps}_steps_1_sample"]
    rows = [
        ["`/segment`, 480x360 photo, 1 step", _fmt(s["bare_pipeline"]), _fmt(s["app_handler"]),
         _fmt(s["app_process_api"]), f"**{_fmt(s['app_roundtrip'])}**"],
        [f"`/synthesize`, 480x360 mask, {steps} steps, 1 sample", _fmt(y["bare_pipeline"]), _fmt(y["app_handler"]),
         _fmt(y["app_process_api"]), f"**{_fmt(y['app_roundtrip'])}**"],
    ]
    md = (f"### App speed next to the bare pipeline\n\nModel: {model}; photo: {photo_desc}. Machine: "
          f"{machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch {machine['torch']} ({args.threads} "
          f"threads in the app and for the bare pipeline), {machine['date_utc']}. {monitor.label()}. Seconds, median "
          f"[min–max] of {args.repeats} (segment) / {args.synthesis_repeats} (synthesize) interleaved repeats. "
          "Round trip = `gradio_client` `predict` with `handle_file` (upload, queue, processing, download of every "
          "output file). Target: `/segment` round trip <= 0.25 s.\n\n"
          + markdown(rows, ["request", "bare pipeline", "app handler (model + outputs)", "app process_api",
                            "app round trip"])
          + f"\n\nFirst `/segment` after start-up: {first:.3f} s (start-up incl. the model warm-up: "
          f"{res['startup_build_and_warmup_s'] or float('nan'):.1f} s). Re-run: `python benchmarks/app_speed.py`.\n")
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
