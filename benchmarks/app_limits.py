"""Peak memory of the app's worst allowed requests, endpoint by endpoint (issue 10 item 2; target <= 2 GB).

Starts the app (``space.build_demo``, as ``python app.py`` does) in a child process with the model, then sends
each endpoint its most expensive request within the app's limits (``space/ui.py``: 25 MB / 40 megapixel uploads,
25 steps, 8 samples, 100 network calls per synthesis, 25 Flow steps) through ``gradio_client``. Before each
request the server's peak-RSS mark is reset (``/proc/<pid>/clear_refs``); after it, the server's ``VmHWM`` is the
request's peak resident memory (the whole server process: model, gradio, the request). Also: two worst requests
at once (the app runs two model requests concurrently), and an upload over the size limit (refused with 413).

    python benchmarks/app_limits.py                       # shipped model, writes results/app_limits.{json,md}
    python benchmarks/app_limits.py --model tiny --quick  # smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, ROOT, ContentionMonitor, machine_info, markdown, resolve_model_arg,  # noqa: E402
                    write_json)

TARGET_MB = 2048


def _status(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def serve(model: str, port: int, threads: int) -> None:
    """The child: the app on 127.0.0.1:port."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from space import build_demo, launch_kwargs

    demo = build_demo(model)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_kwargs(demo))
    print("READY", flush=True)
    while True:
        time.sleep(3600)


def make_inputs(tmp: Path, megapixels: float) -> dict[str, Path]:
    """The largest uploads the limits allow (files that compress well enough to stay under 25 MB)."""
    from PIL import Image

    sys.path.insert(0, ROOT)
    from space.examples import CAMVID_COLORS, draw_street

    w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    h = int(megapixels * 1e6 // w)
    ids = np.asarray(Image.fromarray(draw_street(1)).resize((w, h), Image.NEAREST))
    rgb = CAMVID_COLORS[ids]
    out = {}
    rgba = np.concatenate([rgb, np.full(ids.shape + (1,), 200, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(tmp / "photo_rgba.png", compress_level=9)
    out["photo_rgba"] = tmp / "photo_rgba.png"
    p = Image.fromarray(ids, "P")
    p.putpalette(CAMVID_COLORS.ravel().tolist())
    p.info["transparency"] = 0
    p.save(tmp / "photo_palette_transparent.png", transparency=0)
    out["photo_palette_transparent"] = tmp / "photo_palette_transparent.png"
    Image.fromarray((ids.astype(np.uint16) * 5000)).save(tmp / "photo_16bit.png")
    out["photo_16bit"] = tmp / "photo_16bit.png"
    Image.fromarray(ids, "L").save(tmp / "mask_ids.png")
    out["mask_ids"] = tmp / "mask_ids.png"
    Image.fromarray(rgb).save(tmp / "mask_rgb.png")
    out["mask_rgb"] = tmp / "mask_rgb.png"
    layer = np.zeros(ids.shape + (4,), np.uint8)
    layer[h // 2:, :, :3] = CAMVID_COLORS[3]
    layer[h // 2:, :, 3] = 255
    Image.fromarray(layer, "RGBA").save(tmp / "layer.png")
    out["layer"] = tmp / "layer.png"
    Image.fromarray(rgba, "RGBA").save(tmp / "background.png")
    out["background"] = tmp / "background.png"
    for k, v in out.items():
        size = v.stat().st_size
        assert size <= 25 * 2**20, f"{k} is {size / 2**20:.1f} MB, over the upload limit"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4-megapixel inputs and few steps (a smoke run)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "app_limits"))
    ap.add_argument("--serve", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]), args.threads)

    model = resolve_model_arg(args.model)
    if model == "tiny":
        from semflow_tiny import tiny_pixel_pipeline

        model = tempfile.mkdtemp(prefix="semflow-tiny-")
        tiny_pixel_pipeline(resolution=32).save_pretrained(model)
    sys.path.insert(0, ROOT)
    from space.ui import MAX_FLOW_STEPS, MAX_PIXELS, MAX_SAMPLES, MAX_STEPS, MAX_SYNTHESIS_CALLS, MAX_UPLOAD_BYTES

    monitor = ContentionMonitor()
    mp = 4.0 if args.quick else MAX_PIXELS / 1e6 * 0.999
    steps = 2 if args.quick else MAX_STEPS
    syn_steps = MAX_SYNTHESIS_CALLS // MAX_SAMPLES  # 12 steps x 8 samples = 96 calls
    tmp = Path(tempfile.mkdtemp(prefix="semflow-limits-"))
    inputs = make_inputs(tmp, mp)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", model, str(port),
                             "--threads", str(args.threads)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if "READY" not in line:
            sys.exit(f"the app did not start: {line}")
        from gradio_client import Client, handle_file

        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False)
        idle = _status(proc.pid, "VmRSS")
        f = lambda k: handle_file(str(inputs[k]))  # noqa: E731

        def editor(bg, layer):
            return {"background": f(bg) if bg else None, "layers": [f(layer)], "composite": f(layer), "id": None}

        cases = [
            ("/segment", "RGBA PNG photo", lambda: client.predict(f("photo_rgba"), steps, 0.5, api_name="/segment")),
            ("/segment", "palette PNG photo with transparency",
             lambda: client.predict(f("photo_palette_transparent"), steps, 0.5, api_name="/segment")),
            ("/segment", "16-bit grayscale photo", lambda: client.predict(f("photo_16bit"), steps, 0.5,
                                                                          api_name="/segment")),
            ("/edit_predict", "RGBA PNG photo", lambda: client.predict(f("photo_rgba"), steps, api_name="/edit_predict")),
            ("/flow", f"RGBA PNG photo, {MAX_FLOW_STEPS if not args.quick else 2} steps",
             lambda: client.predict(f("photo_rgba"), MAX_FLOW_STEPS if not args.quick else 2, api_name="/flow")),
            ("/synthesize", f"label-id PNG, {MAX_SAMPLES} samples x {syn_steps} steps",
             lambda: client.predict(f("mask_ids"), syn_steps if not args.quick else 1, 0.05, 0, MAX_SAMPLES,
                                    api_name="/synthesize")),
            ("/synthesize", f"colour PNG, {MAX_SAMPLES} samples x {syn_steps} steps",
             lambda: client.predict(f("mask_rgb"), syn_steps if not args.quick else 1, 0.05, 0, MAX_SAMPLES,
                                    api_name="/synthesize")),
            ("/synthesize", f"label-id PNG, 4 samples x {MAX_STEPS} steps",
             lambda: client.predict(f("mask_ids"), steps, 0.05, 0, 4, api_name="/synthesize")),
            ("/synthesize_canvas", f"RGBA background + layer + composite, {MAX_SAMPLES} samples",
             lambda: client.predict(editor("background", "layer"), 1, syn_steps if not args.quick else 1, 0.05, 0,
                                    MAX_SAMPLES, api_name="/synthesize_canvas")),
            ("/edit_synthesize", f"RGBA background + layer + composite, {MAX_SAMPLES} samples",
             lambda: client.predict(editor("background", "layer"), syn_steps if not args.quick else 1, 0.05, 0,
                                    MAX_SAMPLES, api_name="/edit_synthesize")),
        ]
        rows, results = [], []
        for endpoint, what, fn in cases:
            monitor.check()
            _reset_peak(proc.pid)
            base = _status(proc.pid, "VmRSS")
            t0 = time.perf_counter()
            error = None
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - recorded: a refusal would mean the case is not "allowed"
                error = f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            peak = _status(proc.pid, "VmHWM")
            r = {"endpoint": endpoint, "request": f"{mp:.0f} MP {what}", "seconds": round(dt, 2),
                 "rss_before_mb": round(base, 1), "peak_rss_mb": round(peak, 1), "error": error}
            results.append(r)
            rows.append([endpoint, r["request"], f"{dt:.1f}", f"{base:.0f}", f"**{peak:.0f}**", error or "ok"])
            print(rows[-1], flush=True)

        # Two of the worst requests at once (the app's concurrency limit is 2).
        worst = max((r for r in results if not r["error"]), key=lambda r: r["peak_rss_mb"])
        fn = next(fn for (e, w, fn), r in zip(cases, results) if r is worst)
        _reset_peak(proc.pid)
        base = _status(proc.pid, "VmRSS")
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: fn(), range(2)))
        dt = time.perf_counter() - t0
        peak2 = _status(proc.pid, "VmHWM")
        concurrent = {"request": f"2 x ({worst['endpoint']} {worst['request']}) at once", "seconds": round(dt, 2),
                      "rss_before_mb": round(base, 1), "peak_rss_mb": round(peak2, 1)}
        rows.append(["2 at once", concurrent["request"], f"{dt:.1f}", f"{base:.0f}", f"**{peak2:.0f}**", "ok"])

        # Over the upload limit: refused by gradio's upload route before the file reaches the disk.
        import requests

        big = tmp / "big.bin"
        with open(big, "wb") as fh:
            fh.truncate(MAX_UPLOAD_BYTES + 1)
        with open(big, "rb") as fh:
            status = requests.post(f"{url}gradio_api/upload", files={"files": ("big.png", fh)}, timeout=120).status_code
        monitor.check()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    machine = machine_info(args.threads)
    single = max(r["peak_rss_mb"] for r in results if not r["error"])
    out = {"model": model, "machine": machine, "contended": monitor.contended, "training_jobs": monitor.seen,
           "idle_rss_mb": round(idle, 1), "target_mb": TARGET_MB, "worst_single_request_peak_mb": single,
           "within_target": single <= TARGET_MB, "cases": results, "two_at_once": concurrent,
           "upload_over_limit_status": status,
           "limits": {"max_upload_mb": MAX_UPLOAD_BYTES / 2**20, "max_megapixels": MAX_PIXELS / 1e6,
                      "max_steps": MAX_STEPS, "max_samples": MAX_SAMPLES, "max_synthesis_calls": MAX_SYNTHESIS_CALLS,
                      "max_flow_steps": MAX_FLOW_STEPS}}
    write_json(args.out + ".json", out)
    md = (f"### App: peak memory of the worst allowed requests\n\nModel: {model}. Machine: {machine['cpu']}, "
          f"{machine['logical_cpus']} logical CPUs, torch {machine['torch']} ({args.threads} threads), "
          f"{machine['date_utc']}. Server process resident memory (VmHWM, reset before each request); idle after "
          f"start-up: {idle:.0f} MB. Target: <= {TARGET_MB} MB for one request. "
          f"{'(times inflated: other jobs shared the CPU) ' if monitor.contended else ''}"
          f"Re-run: `python benchmarks/app_limits.py`.\n\n"
          + markdown(rows, ["endpoint", "request", "s", "RSS before (MB)", "peak RSS (MB)", "result"])
          + f"\n\nWorst single request: **{single:.0f} MB** ({'within' if single <= TARGET_MB else 'OVER'} the "
          f"{TARGET_MB} MB target). An upload of {MAX_UPLOAD_BYTES / 2**20:.0f} MB + 1 byte: HTTP {status}.\n")
    with open(args.out + ".md", "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
