"""Out-of-domain warning: is a photo far from what the model knows? Calibrated on the model's validation set.

The statistic is the photo's **mean confidence** (the pipeline's nearest-anchor margin, averaged over the
pixels) at the step count the user chose. Photos like the training data end near the class anchors; a
portrait, an animal, a cartoon or a screenshot ends between them. The threshold is set on CamVid val so that
at most ``--false-alarm`` of the val photos (default 1%) would be flagged; it is per step count, because
confidence falls as the number of steps grows.

Re-run for a new model (the app only applies thresholds calibrated for the model it serves, checked by a
fingerprint of its weights and config):

    python -m space.ood --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid

It writes ``space/ood_calibration.json`` (read by the app) and ``space/ood_calibration.md``. Besides val, it
reports how many clearly out-of-domain pictures the threshold catches: pictures shipped inside installed
Python packages (matplotlib's and gradio's sample images, found by path, never copied) and a few generated
ones (noise, a flat gradient, a cartoon street in flat colours, a text page).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

HERE = Path(__file__).resolve().parent
CALIBRATION_FILE = HERE / "ood_calibration.json"
STATISTIC = "mean_confidence"


def statistic(confidence: np.ndarray) -> float:
    """The per-photo statistic: mean confidence over the pixels."""
    return float(np.mean(confidence))


class OODCheck:
    """Thresholds for the served model, or none (then the app says the check is not calibrated)."""

    def __init__(self, calibration: Optional[dict], model_fingerprint: str):
        self.calibration = calibration
        self.fingerprint = model_fingerprint
        ok = bool(calibration) and calibration.get("model_fingerprint") == model_fingerprint
        self.thresholds: dict[int, float] = (
            {int(k): float(v["threshold"]) for k, v in calibration["steps"].items()} if ok else {}
        )
        self.far: dict[int, float] = (
            {int(k): float(v["false_alarm_rate"]) for k, v in calibration["steps"].items()} if ok else {}
        )
        self.dataset = calibration.get("dataset") if ok else None

    @classmethod
    def load(cls, model_fingerprint: str, path: os.PathLike | str = CALIBRATION_FILE) -> "OODCheck":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = None
        return cls(data, model_fingerprint)

    @property
    def calibrated(self) -> bool:
        return bool(self.thresholds)

    def check(self, confidence: np.ndarray, steps: int) -> Optional[str]:
        """A warning (markdown-free text) if the photo looks out of domain, else None."""
        t = self.thresholds.get(int(steps))
        if t is None:
            return None
        s = statistic(confidence)
        if s >= t:
            return None
        return (f"This photo looks unlike the street scenes the model was trained on (mean confidence {s:.2f}, "
                f"below {t:.2f}, which flags {self.far[int(steps)]:.0%} of {self.dataset}): the labels are "
                "probably unreliable.")

    def describe(self) -> str:
        if not self.calibrated:
            return ("no out-of-domain check for this model (not calibrated: run `python -m space.ood --model "
                    "...`)")
        steps = sorted(self.thresholds)
        return (f"photos far from it get a warning (mean confidence below a threshold calibrated on {self.dataset}, "
                f"for {', '.join(map(str, steps))} step(s))")


# ----------------------------------------------------------------------------------------------- calibration
def _ood_pictures(tmp: Path) -> list[tuple[str, str]]:
    """(name, path) of clearly out-of-domain pictures: package sample images and generated ones."""
    from PIL import Image, ImageDraw

    found = []
    for mod, pattern in (("matplotlib", "mpl-data/sample_data/*.jpg"), ("matplotlib", "mpl-data/sample_data/*.png"),
                         ("gradio", "media_assets/images/*"), ("gradio", "test_data/*.jpg")):
        try:
            base = Path(__import__(mod).__file__).parent
        except ImportError:
            continue
        for p in sorted(glob.glob(str(base / pattern))):
            if p.lower().endswith((".jpg", ".jpeg", ".png", ".gif")) and os.path.getsize(p) > 2000:
                found.append((f"{mod}:{os.path.basename(p)}", p))
    rng = np.random.default_rng(0)
    tmp.mkdir(parents=True, exist_ok=True)
    gen = {
        "noise": Image.fromarray(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)),
        "gradient": Image.fromarray(np.broadcast_to(np.linspace(0, 255, 480, dtype=np.uint8)[None, :, None],
                                                    (360, 480, 3)).copy()),
    }
    from .examples import draw_street

    ids = draw_street(7)
    cartoon = np.array([[255, 230, 0], [255, 60, 60], [0, 0, 0], [40, 200, 255], [250, 250, 250], [0, 180, 0],
                        [255, 0, 255], [120, 60, 0], [0, 0, 255], [255, 140, 0], [0, 255, 160]], np.uint8)
    gen["cartoon_street"] = Image.fromarray(cartoon[ids % len(cartoon)])
    page = Image.new("RGB", (480, 360), "white")
    d = ImageDraw.Draw(page)
    for y in range(20, 340, 16):
        d.text((20, y), "The quick brown fox jumps over the lazy dog " * 2, fill="black")
    gen["text_page"] = page
    for name, im in gen.items():
        p = tmp / f"{name}.png"
        im.save(p)
        found.append((f"generated:{name}", str(p)))
    return found


DEFAULT_DOMAIN = "street scenes filmed from a driving car, like CamVid's (Cambridge, UK; 480x360)"


def calibrate(model: str, data_root: str, steps_list: list[int], false_alarm: float, split: str = "val",
              max_images: Optional[int] = None, domain: str = DEFAULT_DOMAIN) -> dict:
    import tempfile

    import torch

    from .inputs import load_photo
    from .model import SpaceModel
    from .limits import WORK_MAX_SIDE

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    m = SpaceModel(model)
    listing = Path(data_root) / f"{split}.txt"
    if not listing.is_file():
        sys.exit(f"{listing} not found: pass --data-root (CamVid in the SegNet layout)")
    images = [Path(data_root) / line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if max_images:
        images = images[:max_images]
    ood = _ood_pictures(Path(tempfile.mkdtemp(prefix="semflow-ood-")))
    t0 = time.time()
    result = {"statistic": STATISTIC, "model": m.name, "model_fingerprint": m.fingerprint(),
              "dataset": f"CamVid {split} ({len(images)} photos)", "domain": domain,
              "target_false_alarm_rate": false_alarm,
              "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "steps": {},
              "out_of_domain_pictures": [name for name, _ in ood]}
    side = max(WORK_MAX_SIDE, m.processing_resolution)  # what the app feeds the model
    photos = [load_photo(str(p), side) for p in images]
    ood_photos = [load_photo(p, side) for _, p in ood]
    for steps in steps_list:
        val = np.array([statistic(m.segment(ph, steps).confidence) for ph in photos])
        out = np.array([statistic(m.segment(ph, steps).confidence) for ph in ood_photos])
        # Flag below the threshold: at most `false_alarm` of val lies strictly below it.
        k = int(np.floor(false_alarm * len(val)))
        threshold = float(np.sort(val)[k]) if k < len(val) else float(val.max())
        far = float((val < threshold).mean())
        result["steps"][str(steps)] = {
            "threshold": round(threshold, 4), "false_alarm_rate": far, "val_min": float(val.min()),
            "val_median": float(np.median(val)), "val_p5": float(np.percentile(val, 5)),
            "ood_detected": int((out < threshold).sum()), "ood_total": int(len(out)),
            "ood_values": {name: round(float(v), 4) for (name, _), v in zip(ood, out)},
        }
        print(f"steps {steps}: threshold {threshold:.4f}, false alarms on {split} {far:.1%}, "
              f"out-of-domain caught {(out < threshold).sum()}/{len(out)}", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    return result


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "### Out-of-domain warning: calibration",
        "",
        f"Model `{result['model']}` (fingerprint `{result['model_fingerprint']}`), statistic: mean confidence per "
        f"photo; threshold set on {result['dataset']} for a false-alarm rate of at most "
        f"{result['target_false_alarm_rate']:.0%}; {result['created']}. Re-run: `python -m space.ood --model ...`.",
        "",
        "| steps | threshold | false alarms on val | val min / 5th pct / median | out-of-domain pictures caught |",
        "|---|---|---|---|---|",
    ]
    for s, r in result["steps"].items():
        lines.append(f"| {s} | {r['threshold']:.3f} | {r['false_alarm_rate']:.1%} | {r['val_min']:.3f} / "
                     f"{r['val_p5']:.3f} / {r['val_median']:.3f} | {r['ood_detected']}/{r['ood_total']} |")
    first = next(iter(result["steps"].values()))
    lines += ["", f"Out-of-domain pictures (mean confidence at {next(iter(result['steps']))} step(s)): "
              + ", ".join(f"{k.split(':')[-1]} {v:.2f}" for k, v in first["ood_values"].items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("SEMFLOW_MODEL", "checkpoints/semflow-camvid"))
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "datasets" / "camvid"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="step counts to calibrate (default: the model's default, 1, 2, 5, 10); the app warns only "
                         "at calibrated step counts")
    ap.add_argument("--false-alarm", type=float, default=0.01, help="target false-alarm rate on the split")
    ap.add_argument("--max-images", type=int, default=None, help="first N photos only (a quick check)")
    ap.add_argument("--domain", default=DEFAULT_DOMAIN, help="the model's domain, as the page states it")
    ap.add_argument("--out", type=Path, default=CALIBRATION_FILE)
    args = ap.parse_args(argv)
    if args.steps is None:
        from semflow_pipeline import SemFlowPipeline

        default = int(SemFlowPipeline.load_config(args.model).get("default_num_inference_steps", 1))
        args.steps = sorted({default, 1, 2, 5, 10})
    result = calibrate(args.model, args.data_root, args.steps, args.false_alarm, args.split, args.max_images,
                       args.domain)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    write_markdown(result, args.out.with_suffix(".md"))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
