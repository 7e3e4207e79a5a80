"""Peak memory and disk of the app's worst allowed requests (issue 10 item 2, issue 18; targets: <= 2 GB RSS,
<= 100 MB of the app's own files on disk).

Starts the app (``space.build_demo``, as ``python app.py`` does) in a child process with the model, then sends
each endpoint its most expensive request within the app's limits (``space/ui.py``: 25 MB / 40 megapixel uploads,
25 steps, 8 samples, 100 network calls per synthesis, 25 Flow steps) through ``gradio_client``. Before each
request the server's peak-RSS mark is reset (``/proc/<pid>/clear_refs``); after it, the server's ``VmHWM`` is the
request's peak resident memory (the whole server process: model, gradio, the request). Then: four worst requests
at once (the app runs two model requests concurrently, the queue holds the others), disk attacks (25 MB uploads
one after another, one upload request of 1,000 files, 20 MB pasted ``data:`` images), and ``--calls`` sequential
cheap (refused) API calls, each a new gradio session, with the idle RSS before and after.

The server's temporary folder (``TMPDIR``, with gradio's cache ``GRADIO_TEMP_DIR`` inside it) is a fresh folder, so
the app's own files on disk are that folder's size, sampled every 0.2 s during each step (peak) and after it.

    python benchmarks/app_limits.py                       # shipped model, writes results/app_limits.{json,md}
    python benchmarks/app_limits.py --calls 2000          # fewer sequential calls (10,000 by default)
    python benchmarks/app_limits.py --model tiny --quick  # smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import base64
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (RESULTS, ROOT, ContentionMonitor, machine_info, markdown, resolve_model_arg,  # noqa: E402
                    write_json)

TARGET_MB = 2048
DISK_TARGET_MB = 100


def _du_mb(root: str, by_folder: Optional[dict] = None) -> float:
    """Bytes on disk under ``root`` (allocated blocks, as ``du``), in MB; ``by_folder`` gets MB per first-level
    folder (gradio's upload folders together as ``<uploads>``), to say where a peak came from."""
    total = 0
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root).split(os.sep)
        key = "<uploads>" if len(rel) > 1 and len(rel[1]) == 64 else "/".join(rel[:2])
        for name in dirs + files:
            try:
                size = os.lstat(os.path.join(d, name)).st_blocks * 512
            except OSError:
                continue
            total += size
            if by_folder is not None:
                by_folder[key] = by_folder.get(key, 0) + size / 2**20
    return total / 2**20


class DiskPeak:
    """Samples the server's temporary folder every 0.2 s while a ``with`` block runs; ``peak`` and ``after`` in MB."""

    def __init__(self, root: str):
        self.root, self.peak, self.after, self.peak_folders = root, 0.0, 0.0, {}

    def __enter__(self):
        self._stop = threading.Event()

        def loop():
            while not self._stop.is_set():
                folders: dict = {}
                size = _du_mb(self.root, folders)
                if size > self.peak:
                    self.peak, self.peak_folders = size, {k: round(v, 1) for k, v in folders.items() if v >= 0.1}
                self._stop.wait(0.2)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        time.sleep(0.5)  # background moves / deletions of the last request
        self.after = _du_mb(self.root)
        self.peak = max(self.peak, self.after)


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
    signal.signal(signal.SIGTERM, _interrupt)  # as app.py: a stop signal closes the server, which removes its files
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        demo.close()  # gradio's and the app's shutdown: their files are removed here
        os._exit(0)  # without waiting for worker threads that outlive the server


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _call(url: str, endpoint: str, data: list, session=None) -> str:
    """A raw API call (``/gradio_api/call``, as curl sends it): its last SSE event, "complete" or "error"."""
    import requests

    s = session or requests
    eid = s.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=300).json()["event_id"]
    text = s.get(f"{url}gradio_api/call/{endpoint}/{eid}", timeout=300).text
    events = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("event:")]
    return events[-1] if events else "none"


def make_inputs(tmp: Path, megapixels: float, canvas_megapixels: float) -> dict[str, Path]:
    """The largest uploads the limits allow (files that compress well enough to stay under 25 MB); the canvas's
    images at ``canvas_megapixels`` each (three of them: background, layer, composite)."""
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
    cw = int((canvas_megapixels * 1e6 * 4 / 3) ** 0.5)
    ch = int(canvas_megapixels * 1e6 // cw)
    layer = np.zeros((ch, cw, 4), np.uint8)
    layer[ch // 2:, :, :3] = CAMVID_COLORS[3]
    layer[ch // 2:, :, 3] = 255
    Image.fromarray(layer, "RGBA").save(tmp / "layer.png")
    out["layer"] = tmp / "layer.png"
    Image.fromarray(rgba, "RGBA").resize((cw, ch), Image.NEAREST).save(tmp / "background.png")
    out["background"] = tmp / "background.png"
    # Issue 18 item 1: one small transparent PNG, named many times in a canvas's layers.
    Image.new("RGBA", (1024, 1024)).save(tmp / "clear_layer.png")
    out["clear_layer"] = tmp / "clear_layer.png"
    for k, v in out.items():
        size = v.stat().st_size
        assert size <= 25 * 2**20, f"{k} is {size / 2**20:.1f} MB, over the upload limit"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4-megapixel inputs and few steps (a smoke run)")
    ap.add_argument("--calls", type=int, default=10_000, help="sequential cheap (refused) API calls")
    ap.add_argument("--out", default=os.path.join(RESULTS, "app_limits"))
    ap.add_argument("--first-case-only", action="store_true",
                    help="only the first single-request case (a smoke run of the concurrent, disk and call steps)")
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
    from space.uploads import MAX_EDITOR_PIXELS
    from space.ui import (MAX_DISK_BYTES, MAX_FLOW_STEPS, MAX_PIXELS, MAX_SAMPLES, MAX_SESSIONS, MAX_STEPS,
                          MAX_SYNTHESIS_CALLS, MAX_UPLOAD_BYTES)

    monitor = ContentionMonitor()
    mp = 4.0 if args.quick else MAX_PIXELS / 1e6 * 0.999
    steps = 2 if args.quick else MAX_STEPS
    syn_steps = MAX_SYNTHESIS_CALLS // MAX_SAMPLES  # 12 steps x 8 samples = 96 calls
    tmp = Path(tempfile.mkdtemp(prefix="semflow-limits-"))
    canvas_mp = min(mp, MAX_EDITOR_PIXELS / 1e6 / 3 * 0.999)  # background + layer + composite within the limit
    inputs = make_inputs(tmp, mp, canvas_mp)

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server_tmp = tempfile.mkdtemp(prefix="semflow-limits-server-")  # the server's own files: all below here
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TMPDIR": server_tmp,
           "GRADIO_TEMP_DIR": os.path.join(server_tmp, "gradio")}
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

        def editor(bg, layer, n_layers=1):
            return {"background": f(bg) if bg else None, "layers": [f(layer)] * n_layers, "composite": f(layer),
                    "id": None}

        cases = [
            ("/segment", f"{mp:.0f} MP RGBA PNG photo",
             lambda: client.predict(f("photo_rgba"), steps, 0.5, api_name="/segment")),
            ("/segment", f"{mp:.0f} MP palette PNG photo with transparency",
             lambda: client.predict(f("photo_palette_transparent"), steps, 0.5, api_name="/segment")),
            ("/segment", f"{mp:.0f} MP 16-bit grayscale photo",
             lambda: client.predict(f("photo_16bit"), steps, 0.5, api_name="/segment")),
            ("/edit_predict", f"{mp:.0f} MP RGBA PNG photo",
             lambda: client.predict(f("photo_rgba"), steps, api_name="/edit_predict")),
            ("/flow", f"{mp:.0f} MP RGBA PNG photo, {MAX_FLOW_STEPS if not args.quick else 2} steps",
             lambda: client.predict(f("photo_rgba"), MAX_FLOW_STEPS if not args.quick else 2, api_name="/flow")),
            ("/synthesize", f"{mp:.0f} MP label-id PNG, {MAX_SAMPLES} samples x {syn_steps} steps",
             lambda: client.predict(f("mask_ids"), syn_steps if not args.quick else 1, 0.05, 0, MAX_SAMPLES,
                                    api_name="/synthesize")),
            ("/synthesize", f"{mp:.0f} MP colour PNG, {MAX_SAMPLES} samples x {syn_steps} steps",
             lambda: client.predict(f("mask_rgb"), syn_steps if not args.quick else 1, 0.05, 0, MAX_SAMPLES,
                                    api_name="/synthesize")),
            ("/synthesize", f"{mp:.0f} MP label-id PNG, 4 samples x {MAX_STEPS} steps",
             lambda: client.predict(f("mask_ids"), steps, 0.05, 0, 4, api_name="/synthesize")),
            ("/synthesize_canvas", f"3 x {canvas_mp:.1f} MP RGBA background + layer + composite, "
                                   f"{MAX_SAMPLES} samples",
             lambda: client.predict(editor("background", "layer"), 1, syn_steps if not args.quick else 1, 0.05, 0,
                                    MAX_SAMPLES, api_name="/synthesize_canvas")),
            ("/edit_synthesize", f"3 x {canvas_mp:.1f} MP RGBA background + layer + composite, "
                                 f"{MAX_SAMPLES} samples",
             lambda: client.predict(editor("background", "layer"), syn_steps if not args.quick else 1, 0.05, 0,
                                    MAX_SAMPLES, api_name="/edit_synthesize")),
            # Attacks (refusals expected): issue 18 item 1, one 1 MP transparent PNG named 400 times as layers.
            ("/synthesize_canvas", "400 layers naming one 1 MP transparent PNG",
             lambda: client.predict(editor("background", "clear_layer", 400), 1, 1, 0.05, 0, 1,
                                    api_name="/synthesize_canvas")),
            ("/edit_synthesize", "400 layers naming one 1 MP transparent PNG",
             lambda: client.predict(editor("background", "clear_layer", 400), 1, 0.05, 0, 1,
                                    api_name="/edit_synthesize")),
        ]
        rows, results = [], []
        disk_root = server_tmp

        def measure(label, what, fn):
            """Runs ``fn`` with the server's peak-RSS mark reset and its disk sampled; a table row and a record."""
            monitor.check()
            _reset_peak(proc.pid)
            base = _status(proc.pid, "VmRSS")
            t0 = time.perf_counter()
            error = None
            with DiskPeak(disk_root) as disk:
                try:
                    detail = fn()
                    detail = detail if isinstance(detail, str) else None  # a model case's outputs: not shown
                except Exception as e:  # noqa: BLE001 - recorded: a refusal would mean the case is not "allowed"
                    error, detail = f"{type(e).__name__}: {e}", None
            dt = time.perf_counter() - t0
            peak = _status(proc.pid, "VmHWM")
            after = _status(proc.pid, "VmRSS")
            r = {"endpoint": label, "request": what, "seconds": round(dt, 2), "rss_before_mb": round(base, 1),
                 "peak_rss_mb": round(peak, 1), "rss_after_mb": round(after, 1), "disk_peak_mb": round(disk.peak, 1),
                 "disk_after_mb": round(disk.after, 1), "disk_peak_folders_mb": disk.peak_folders, "error": error,
                 "detail": detail}
            rows.append([label, what, f"{dt:.1f}", f"{base:.0f}", f"**{peak:.0f}**", f"{after:.0f}",
                         f"{disk.peak:.1f}", f"{disk.after:.1f}", error or detail or "ok"])
            print(rows[-1], flush=True)
            return r

        for endpoint, what, fn in cases[:1] if args.first_case_only else cases:
            results.append(measure(endpoint, what, fn))

        # Four of the worst requests at once (the app runs two model requests at a time; the queue holds the rest).
        worst = max((r for r in results if not r["error"]), key=lambda r: r["peak_rss_mb"])
        fn = next(fn for (e, w, fn), r in zip(cases, results) if r is worst)  # noqa: B023

        def four():
            with cf.ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: fn(), range(4)))

        concurrent = measure("4 at once", f"4 x ({worst['endpoint']} {worst['request']})", four)

        # Disk: the largest uploads one after another, one request of 1,000 small files, large pasted images.
        import requests

        def uploads(n=10):
            codes = []
            for i in range(n):
                with open(tmp / "random.bin", "wb") as fh:
                    fh.write(os.urandom(MAX_UPLOAD_BYTES - 4096))
                with open(tmp / "random.bin", "rb") as fh:
                    codes.append(requests.post(f"{url}gradio_api/upload", files={"files": (f"u{i}.png", fh)},
                                               timeout=300).status_code)
            return "HTTP " + ",".join(sorted({str(c) for c in codes}))

        def many_files(n=1000):
            parts = [("files", (f"f{i}.png", os.urandom(20_000))) for i in range(n)]
            return f"HTTP {requests.post(f'{url}gradio_api/upload', files=parts, timeout=300).status_code}"

        def pastes(n=5):
            data = "data:image/png;base64," + base64.b64encode(os.urandom(20 * 2**20)).decode()
            # Random bytes, no image: each is decoded to a file, refused by the image reader, and deleted.
            return ", ".join(sorted({_call(url, "segment", [{"url": data}, 1, 0.5]) for _ in range(n)}))

        disk_cases = [
            measure("/upload", f"10 x {MAX_UPLOAD_BYTES / 2**20:.0f} MB files, one after another", uploads),
            measure("/upload", "1,000 files of 20 KB in one request", many_files),
            measure("/segment", "5 x 20 MB pasted data: URL, one after another", pastes),
        ]

        # Many cheap calls, one after another: each /call is a new gradio session.
        def calls(n=args.calls):
            s = requests.Session()
            t0 = time.perf_counter()
            for i in range(n):
                assert _call(url, "segment", [None, 1, 0.5], s) == "error"
                if (i + 1) % 250 == 0:
                    print(f"  {i + 1} calls, {time.perf_counter() - t0:.0f} s, RSS "
                          f"{_status(proc.pid, 'VmRSS'):.0f} MB", flush=True)
            return f"{n} refused (no photo)"

        sequential = measure("/segment", f"{args.calls:,} sequential refused calls", calls)
        time.sleep(2)
        idle_end = _status(proc.pid, "VmRSS")

        # Over the upload limit: refused by gradio's upload route before the file reaches the disk.
        big = tmp / "big.bin"
        with open(big, "wb") as fh:
            fh.truncate(MAX_UPLOAD_BYTES + 1)
        with open(big, "rb") as fh:
            status = requests.post(f"{url}gradio_api/upload", files={"files": ("big.png", fh)}, timeout=120).status_code
        monitor.check()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=180)
            stopped = "stopped"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            stopped = "did not stop within 180 s (killed)"
        left_after_exit = _du_mb(server_tmp)
        shutil.rmtree(server_tmp, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    machine = machine_info(args.threads)
    single = max(r["peak_rss_mb"] for r in results if not r["error"])
    every = results + [concurrent, *disk_cases, sequential]
    peak_all = max(r["peak_rss_mb"] for r in every)
    disk_all = max(r["disk_peak_mb"] for r in every)
    out = {"model": model, "machine": machine, "contended": monitor.contended, "training_jobs": monitor.seen,
           "idle_rss_mb": round(idle, 1), "idle_rss_end_mb": round(idle_end, 1), "target_mb": TARGET_MB,
           "disk_target_mb": DISK_TARGET_MB, "worst_single_request_peak_mb": single, "peak_rss_mb": peak_all,
           "disk_peak_mb": disk_all, "disk_left_after_exit_mb": round(left_after_exit, 1), "server_stop": stopped,
           "within_target": peak_all <= TARGET_MB and disk_all <= DISK_TARGET_MB, "cases": results,
           "four_at_once": concurrent, "disk": disk_cases, "sequential_calls": sequential, "calls": args.calls,
           "upload_over_limit_status": status,
           "limits": {"max_upload_mb": MAX_UPLOAD_BYTES / 2**20, "max_megapixels": MAX_PIXELS / 1e6,
                      "max_steps": MAX_STEPS, "max_samples": MAX_SAMPLES, "max_synthesis_calls": MAX_SYNTHESIS_CALLS,
                      "max_flow_steps": MAX_FLOW_STEPS, "max_sessions": MAX_SESSIONS,
                      "max_disk_mb": MAX_DISK_BYTES / 2**20}}
    write_json(args.out + ".json", out)
    md = (f"### App: peak memory and disk of the worst allowed requests\n\nModel: {model}. Machine: {machine['cpu']}, "
          f"{machine['logical_cpus']} logical CPUs, torch {machine['torch']} ({args.threads} threads), "
          f"{machine['date_utc']}. Server process resident memory (VmHWM, reset before each step); idle after "
          f"start-up: {idle:.0f} MB, at the end: {idle_end:.0f} MB. Disk: the server's temporary folder (uploads, "
          f"outputs, pasted images), sampled every 0.2 s. Targets: <= {TARGET_MB} MB RSS, <= {DISK_TARGET_MB} MB "
          f"on disk. {'(times inflated: other jobs shared the CPU) ' if monitor.contended else ''}"
          f"Re-run: `python benchmarks/app_limits.py{'' if args.calls == 10_000 else f' --calls {args.calls}'}`.\n\n"
          + markdown(rows, ["endpoint", "request", "s", "RSS before (MB)", "peak RSS (MB)", "RSS after (MB)",
                            "disk peak (MB)", "disk after (MB)", "result"])
          + f"\n\nWorst single request: **{single:.0f} MB**; worst of everything: **{peak_all:.0f} MB** RSS "
          f"({'within' if peak_all <= TARGET_MB else 'OVER'} the {TARGET_MB} MB target), **{disk_all:.0f} MB** on "
          f"disk ({'within' if disk_all <= DISK_TARGET_MB else 'OVER'} the {DISK_TARGET_MB} MB target); "
          f"{left_after_exit:.1f} MB left after SIGTERM (the server {stopped}). An upload of "
          f"{MAX_UPLOAD_BYTES / 2**20:.0f} MB + 1 byte: HTTP {status}.\n")
    with open(args.out + ".md", "w") as fh:
        fh.write(md)
    print(md)


if __name__ == "__main__":
    main()
