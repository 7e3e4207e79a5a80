"""Shared helpers for the benchmark scripts: model loading, timing statistics, memory, machine info, output.

Not a test module; the scripts in this folder import it as ``from common import ...``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
# The repo root goes first: this folder's training.py must not shadow the `training` package.
for p in (os.path.join(ROOT, "tests"), ROOT):
    while p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)

SHIPPED = os.path.join(ROOT, "checkpoints", "semflow-camvid")
DEFAULT_DATA_ROOT = os.path.join(ROOT, "..", "shared", "datasets", "camvid")
DEFAULT_TRAIN_CONFIG = os.path.join(ROOT, "training", "configs", "camvid.yaml")
TRAINING_PATTERN = "train_semflow|train_baseline|training/evaluate.py"


# ------------------------------------------------------------------------------------------- arguments
def add_common_args(ap, repeats: int = 7) -> None:
    ap.add_argument("--model", default=None,
                    help="pipeline folder or Hub id; 'random' = randomly initialised UNet of the training config's "
                         "architecture; 'tiny' = the tests' tiny model. Default: checkpoints/semflow-camvid if it "
                         "exists, else 'random' (flagged in the output).")
    ap.add_argument("--config", default=DEFAULT_TRAIN_CONFIG,
                    help="training YAML used by --model random (architecture) and training.py")
    ap.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="CamVid layout: <root>/val.txt ...")
    ap.add_argument("--repeats", type=int, default=repeats, help="timed repeats per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--quick", action="store_true", help="smoke run: few configurations and repeats")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<name>.json)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="UNet weights dtype (bfloat16 pays off only on CPUs with AVX512-BF16/AMX; ~20x slower on "
                         "AVX2-only CPUs)")
    ap.add_argument("--channels-last", action="store_true", help="UNet weights in channels_last memory format")


def resolve_model_arg(model: Optional[str]) -> str:
    if model:
        return model
    return SHIPPED if os.path.isdir(SHIPPED) else "random"


# --------------------------------------------------------------------------------------------- models
def training_config(path: Optional[str] = DEFAULT_TRAIN_CONFIG, overrides: Optional[Dict] = None) -> Dict[str, Any]:
    """The training script's DEFAULTS, updated by the YAML at ``path`` (if it exists) and ``overrides``."""
    import yaml
    from training.train_semflow import DEFAULTS

    cfg = dict(DEFAULTS)
    if path and os.path.isfile(path):
        with open(path) as f:
            cfg.update(yaml.safe_load(f) or {})
    cfg.update(overrides or {})
    return cfg


def camvid_info() -> Dict[str, Any]:
    from training.data import CAMVID_CLASSES, CAMVID_COLORS, CAMVID_IGNORE

    return {"class_names": list(CAMVID_CLASSES), "ignore_index": CAMVID_IGNORE, "colors": CAMVID_COLORS}


def load_pipeline(model: str, config: Optional[str] = DEFAULT_TRAIN_CONFIG, solver: Optional[str] = None,
                  dtype: str = "float32", channels_last: bool = False):
    """-> (pipe, description). ``model``: a folder / Hub id, ``"random"`` or ``"tiny"``; ``dtype`` /
    ``channels_last``: the UNet's weights (the scheduler step stays float32 either way)."""
    if model == "tiny":
        from semflow_tiny import tiny_pixel_pipeline

        pipe, desc = tiny_pixel_pipeline(resolution=32), "tiny test model (random init, 32 px, NOT the shipped model)"
    elif model == "random":
        from training.train_semflow import build_pipeline

        torch.manual_seed(0)
        cfg = training_config(config)
        pipe = build_pipeline(cfg, camvid_info())
        desc = (f"random init of the training config's architecture ({os.path.relpath(config, ROOT) if config and os.path.isfile(config) else 'train_semflow DEFAULTS'}; "
                f"NOT the shipped checkpoint)")
    else:
        from semflow_pipeline import SemFlowPipeline

        pipe, desc = SemFlowPipeline.from_pretrained(model), os.path.relpath(model, ROOT) if os.path.isdir(model) else model
    if solver is not None and solver != pipe.scheduler.config.solver:
        from semflow_pipeline import SemFlowScheduler

        extra = {"stochastic_sampling": False} if solver != "euler" else {}  # stochastic sampling is Euler's only
        sched = SemFlowScheduler.from_config(pipe.scheduler.config, solver=solver, **extra)
        pipe.scheduler = sched
    if dtype != "float32" or channels_last:
        pipe.unet.to(dtype=getattr(torch, dtype),
                     memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        desc += f", UNet in {dtype}" + (", channels_last" if channels_last else "")
    pipe.unet.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, desc


def model_summary(pipe) -> Dict[str, Any]:
    u = pipe.unet
    return {
        "unet_class": type(u).__name__,
        "unet_params": int(sum(p.numel() for p in u.parameters())),
        "block_out_channels": list(u.config.block_out_channels),
        "in_channels": u.config.in_channels,
        "out_channels": u.config.out_channels,
        "palette": pipe.config.palette,
        "space_to_depth": pipe.config.space_to_depth,
        "prediction_type": pipe.scheduler.config.prediction_type,
        "default_processing_resolution": pipe.config.default_processing_resolution,
        "vae": type(pipe.vae).__name__ if pipe.vae is not None else None,
    }


# ---------------------------------------------------------------------------------------------- timing
def time_fn(fn: Callable[[], Any], repeats: int, warmup: int) -> Dict[str, float]:
    """Runs ``fn`` ``warmup`` times untimed, then ``repeats`` times; -> seconds statistics per call."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return summarize(ts)


def time_paired(floor: Callable[[], Any], fn: Callable[[], Any], repeats: int, warmup: int):
    """Alternates ``floor`` and ``fn`` ``repeats`` times (after ``warmup`` untimed pairs) -> (floor stats, fn stats,
    per-pair ratio fn/floor stats). Pairing keeps the ratio meaningful when the CPU load drifts."""
    for _ in range(warmup):
        floor()
        fn()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        floor()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        ta.append(t1 - t)
        tb.append(t2 - t1)
    return summarize(ta), summarize(tb), summarize([b / a for a, b in zip(ta, tb)])


def summarize(ts: Sequence[float]) -> Dict[str, float]:
    ts = sorted(float(t) for t in ts)
    q = np.percentile(ts, [25, 75]) if len(ts) > 1 else [ts[0], ts[0]]
    return {"median": statistics.median(ts), "min": ts[0], "max": ts[-1], "q1": float(q[0]), "q3": float(q[1]),
            "n": len(ts), "all": ts}


def scale(stats: Dict[str, float], factor: float) -> Dict[str, float]:
    """Per-call statistics -> per-image (``factor`` = 1 / images per call)."""
    out = {k: (v * factor if k in ("median", "min", "max", "q1", "q3") else v) for k, v in stats.items()}
    out["all"] = [t * factor for t in stats["all"]]
    return out


def fmt_s(stats: Dict[str, float]) -> str:
    """``median [min–max]`` in seconds, 3 significant-ish digits."""
    def f(x):
        return f"{x:.4f}" if x < 0.1 else f"{x:.3f}"
    return f"{f(stats['median'])} [{f(stats['min'])}–{f(stats['max'])}]"


# ---------------------------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) for this process (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size since the last :func:`reset_peak_rss` (VmHWM), else ru_maxrss of the process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --------------------------------------------------------------------------------------------- machine
def training_processes() -> List[str]:
    """Command lines of running training jobs (they share the CPU and invalidate timings)."""
    try:
        out = subprocess.run(["pgrep", "-af", TRAINING_PATTERN], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    me = os.getpid()
    return [l for l in out.splitlines() if l.strip() and int(l.split()[0]) != me and "pgrep" not in l]


def machine_info(threads: int) -> Dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    import diffusers

    return {"cpu": model, "logical_cpus": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "bf16_cpu_flag": _cpu_flag("avx512_bf16"), "amx": _cpu_flag("amx_bf16"),
            "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cpu_flag(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return flag in f.read().split()
    except OSError:
        return False


class ContentionMonitor:
    """Notes any training job seen before, during (polled by :meth:`check`) or after the measurements."""

    def __init__(self):
        self.seen: List[str] = []
        self.check()

    def check(self) -> None:
        for p in training_processes():
            cmd = " ".join(p.split()[1:])
            if cmd not in self.seen:
                self.seen.append(cmd)

    @property
    def contended(self) -> bool:
        return bool(self.seen)

    def label(self) -> str:
        if not self.seen:
            return "no training job was running (valid timings)"
        return "MEASURED WHILE A TRAINING JOB SHARED THE CPU (timings inflated, not valid as final numbers)"


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


# ---------------------------------------------------------------------------------------------- output
def write_json(path: str, obj: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def markdown(rows: List[List[Any]], header: List[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def header_lines(title: str, machine: Dict[str, Any], model_desc: str, monitor: ContentionMonitor) -> str:
    return (f"### {title}\n\nMachine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch "
            f"{machine['torch']} ({machine['torch_threads']} threads), {machine['date_utc']}. Model: {model_desc}. "
            f"{monitor.label()}.\n")


def load_val_images(data_root: str, n: int, split: str = "val"):
    """First ``n`` (image uint8 HxWx3, label HxW int64) pairs of the split, or None if the data is missing."""
    if not os.path.isfile(os.path.join(data_root, f"{split}.txt")):
        return None
    from training.data import build_dataset

    ds = build_dataset("camvid", data_root, split, size=None, preload=False, max_samples=n)
    out = []
    for i in range(min(n, len(ds))):
        img, lab = ds.raw(i)
        out.append((img.permute(1, 2, 0).numpy(), lab.numpy()))
    return out
