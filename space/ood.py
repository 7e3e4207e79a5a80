"""Out-of-domain warning: is a photo far from what the model knows? Calibrated leave-one-sequence-out on CamVid.

Per photo, three features of one segmentation (at the step count the user chose):

- ``mean_confidence``: the pipeline's nearest-anchor margin, averaged over the pixels;
- ``low_confidence``: its 10th percentile (a photo that is half street, half something else is low here);
- ``layout``: how street-like the predicted layout is: the mean log-probability of each pixel's predicted class
  under a positional class prior (class frequencies per cell of a coarse grid, counted on the CamVid annotations:
  sky on top, road at the bottom, ...). A screenshot or a flat picture that the model labels confidently as
  "road" everywhere still has an implausible layout.

The score is a weighted sum of the features, each standardised by its mean and spread on CamVid frames;
candidates (each feature alone, and combinations) are compared **leave-one-sequence-out**: CamVid train+val come
from a few video sequences (a frame's name starts with its sequence id, e.g. ``0001TP_``, ``0006R0_``,
``0016E5_``); for each sequence, the threshold is fitted on the others and its false alarms are counted on the
held-out one. The shipped score is the candidate with the most out-of-domain pictures caught among those whose
worst held-out sequence stays within the false-alarm target; the final threshold is then fitted on all
sequences by the same rule. The model saw these frames in training (there is no other street data here), so
each frame is also shown as a new view (a random zoomed crop, brightness and contrast jitter, a mirror image):
pixels the model never saw, as a stand-in for a new photo of a street.

Re-run for a new model (the app only applies a calibration made for the model it serves, checked by a
fingerprint of its weights and config); it prints the table and takes a few minutes on 2 CPU cores:

    python -m space.ood --model checkpoints/semflow-camvid --data-root ../shared/datasets/camvid

It writes ``space/ood_calibration.json`` (read by the app) and ``space/ood_calibration.md``. The out-of-domain
pictures are pictures shipped inside installed Python packages (matplotlib's and gradio's sample images, found
by path, never copied) and a few generated ones (noise, a flat gradient, a cartoon street in flat colours, a text
page).
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
STATISTIC = "street_score"
LEGACY_STATISTIC = "mean_confidence"  # calibrations made before issue 17: a threshold on mean confidence
FEATURES = ("mean_confidence", "low_confidence", "layout")
LOW_QUANTILE = 10  # percentile of the confidence map for ``low_confidence``
GRID = (9, 12)  # rows x columns of the layout prior (CamVid's 360x480 in 40 px cells)
# Candidate scores: weights of the standardised features.
CANDIDATES = {
    "mean_confidence": {"mean_confidence": 1.0},
    "low_confidence": {"low_confidence": 1.0},
    "layout": {"layout": 1.0},
    "confidence+layout": {"mean_confidence": 1.0, "layout": 1.0},
    "low_confidence+layout": {"low_confidence": 1.0, "layout": 1.0},
    "all three": {"mean_confidence": 1.0, "low_confidence": 1.0, "layout": 1.0},
}


def statistic(confidence: np.ndarray) -> float:
    """The legacy per-photo statistic: mean confidence over the pixels."""
    return float(np.mean(confidence))


def grid_cells(shape: tuple[int, int], grid: tuple[int, int] = GRID) -> np.ndarray:
    """(H, W) -> the flat grid cell of every pixel (row-major), for a picture of any size."""
    h, w = shape
    rows = (np.arange(h) * grid[0] // h)[:, None]
    cols = (np.arange(w) * grid[1] // w)[None, :]
    return rows * grid[1] + cols


def label_histogram(labels: np.ndarray, num_classes: int, grid: tuple[int, int] = GRID) -> np.ndarray:
    """Counts of each class per grid cell, (K, rows*cols); ids outside 0..K-1 (void) are left out."""
    labels = np.asarray(labels)
    cells = grid_cells(labels.shape, grid).ravel()
    ids = labels.ravel().astype(np.int64)
    keep = (ids >= 0) & (ids < num_classes)
    n = grid[0] * grid[1]
    return np.bincount(ids[keep] * n + cells[keep], minlength=num_classes * n).reshape(num_classes, n).astype(
        np.float64)


def log_prior(counts: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Per-cell class log-probabilities (K, cells) from counts, with add-``alpha`` smoothing in pixel units."""
    counts = np.asarray(counts, np.float64) + alpha
    return np.log(counts / counts.sum(0, keepdims=True))


def features(confidence: np.ndarray, labels: np.ndarray, logp: np.ndarray) -> dict[str, float]:
    """The three features of one segmentation; ``logp`` = :func:`log_prior` (K, cells)."""
    conf = np.asarray(confidence, np.float32)
    hist = label_histogram(labels, logp.shape[0], GRID)
    return {"mean_confidence": float(conf.mean()), "low_confidence": float(np.percentile(conf, LOW_QUANTILE)),
            "layout": float((hist * logp).sum() / max(1.0, hist.sum()))}


def score(feats: dict[str, float], rule: dict) -> float:
    """The weighted sum of standardised features that ``rule`` (one step count's calibration) names."""
    return float(sum(w * (feats[f] - rule["mean"][f]) / rule["std"][f] for f, w in rule["weights"].items()))


class OODCheck:
    """Rules for the served model, or none (then the app says the check is not calibrated)."""

    def __init__(self, calibration: Optional[dict], model_fingerprint: str):
        self.calibration = calibration
        self.fingerprint = model_fingerprint
        ok = bool(calibration) and calibration.get("model_fingerprint") == model_fingerprint
        steps = calibration["steps"] if ok else {}
        self.rules: dict[int, dict] = {int(k): v for k, v in steps.items()}
        self.thresholds: dict[int, float] = {int(k): float(v["threshold"]) for k, v in steps.items()}
        self.far: dict[int, float] = {int(k): float(v["false_alarm_rate"]) for k, v in steps.items()}
        self.dataset = calibration.get("dataset") if ok else None
        self.legacy = ok and calibration.get("statistic", LEGACY_STATISTIC) == LEGACY_STATISTIC
        self.logp = (np.asarray(calibration["layout_log_prior"], np.float64)
                     if ok and not self.legacy else None)

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

    def check(self, confidence: np.ndarray, steps: int, labels: Optional[np.ndarray] = None) -> Optional[str]:
        """A warning (markdown-free text) if the photo looks out of domain, else None."""
        t = self.thresholds.get(int(steps))
        if t is None:
            return None
        far = self.far[int(steps)]
        if self.legacy:
            s = statistic(confidence)
            if s >= t:
                return None
            return (f"This photo looks unlike the street scenes the model was trained on (mean confidence {s:.2f}, "
                    f"below {t:.2f}, which flags {far:.0%} of {self.dataset}): the labels are probably "
                    "unreliable.")
        if labels is None:
            raise ValueError("this calibration scores the predicted labels too: pass labels")
        rule = self.rules[int(steps)]
        feats = features(confidence, labels, self.logp)
        s = score(feats, rule)
        if s >= t:
            return None
        return (f"This photo looks unlike the street scenes the model was trained on (street score {s:.1f}, below "
                f"{t:.1f}; mean confidence {feats['mean_confidence']:.2f}; the threshold flags {far:.0%} of "
                f"CamVid frames from sequences it was not fitted on): the labels are probably unreliable.")

    def describe(self) -> str:
        if not self.calibrated:
            return ("no out-of-domain check for this model (not calibrated: run `python -m space.ood --model "
                    "...`)")
        steps = sorted(self.thresholds)
        what = ("mean confidence below a threshold" if self.legacy else
                "a score of confidence and layout below a threshold")
        return f"photos far from it get a warning ({what} calibrated on {self.dataset}, for " \
               f"{', '.join(map(str, steps))} step(s))"


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
    from .layouts import draw_street

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


def sequence_of(path: os.PathLike | str) -> str:
    """A CamVid frame's sequence id: its name up to the first underscore (``0016E5_07959.png`` -> ``0016E5``)."""
    return Path(path).name.split("_")[0]


def list_frames(data_root: os.PathLike | str, splits=("train", "val")) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs of the listed splits (SegNet layout: ``<split>.txt`` of ``image label`` lines)."""
    pairs = []
    for split in splits:
        listing = Path(data_root) / f"{split}.txt"
        if not listing.is_file():
            sys.exit(f"{listing} not found: pass --data-root (CamVid in the SegNet layout)")
        for line in listing.read_text().splitlines():
            parts = line.split()
            if parts:
                pairs.append((Path(data_root) / parts[0], Path(data_root) / parts[1] if len(parts) > 1 else None))
    return pairs


def pick_frames(frames: list, per_sequence: Optional[int]) -> list:
    """Up to ``per_sequence`` frames of each sequence, evenly spaced over it (consecutive frames are alike)."""
    by_seq: dict[str, list] = {}
    for f in frames:
        by_seq.setdefault(sequence_of(f[0]), []).append(f)
    out = []
    for seq in sorted(by_seq):
        fs = sorted(by_seq[seq], key=lambda f: f[0].name)
        if per_sequence and len(fs) > per_sequence:
            fs = [fs[int(i)] for i in np.round(np.linspace(0, len(fs) - 1, per_sequence))]
        out += fs
    return out


def new_view(img, seed: int):
    """The frame as a photo the model never saw: a random zoomed crop (1.1-1.3x), brightness and contrast
    jitter (+-20%) and a mirror image half of the time, at the frame's size."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = np.random.default_rng(seed)
    w, h = img.size
    z = rng.uniform(1.1, 1.3)
    cw, ch = int(w / z), int(h / z)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.8, 1.2))
    out = ImageEnhance.Contrast(out).enhance(rng.uniform(0.8, 1.2))
    return ImageOps.mirror(out) if rng.random() < 0.5 else out


MARGINS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def fit_threshold(scores: np.ndarray, quantile: float, margin: float) -> float:
    """Flag below: the ``quantile`` of the fit frames' scores, lowered by ``margin`` spreads (standard deviations)
    of those scores, so that a sequence unlike the fit ones does not fall below it at once."""
    scores = np.asarray(scores, np.float64)
    return float(np.quantile(scores, quantile) - margin * max(float(np.std(scores)), 1e-6))


def _standardise(feats: list[dict], weights: dict) -> dict:
    mean = {f: float(np.mean([x[f] for x in feats])) for f in weights}
    std = {f: float(max(np.std([x[f] for x in feats]), 1e-6)) for f in weights}
    return {"weights": dict(weights), "mean": mean, "std": std}


def evaluate(frames: dict[str, list[dict]], ood: list[dict], counts: dict[str, np.ndarray], quantile: float,
             target: float, candidates: dict = CANDIDATES, margins=MARGINS) -> dict:
    """Leave-one-sequence-out for every candidate score.

    ``frames``: per sequence, each image's raw features ``{"mean_confidence", "low_confidence", "hist"}`` (hist:
    its predicted label histogram per grid cell); ``counts``: per sequence, the annotation's class counts per cell
    (the layout prior of a fold comes from its fit sequences only). For each candidate, the margin is the smallest
    of ``margins`` for which every held-out sequence stays within ``target`` false alarms (or the largest one);
    returns per candidate that margin, per held-out sequence its false-alarm rate and the out-of-domain catches of
    that fold's threshold, and the final rule, fitted on all sequences with that margin.
    """
    seqs = sorted(frames)

    def with_layout(items, logp):
        return [{"mean_confidence": x["mean_confidence"], "low_confidence": x["low_confidence"],
                 "layout": float((x["hist"] * logp).sum() / max(1.0, x["hist"].sum()))} for x in items]

    folds_data = {}
    for held in seqs if len(seqs) > 1 else []:
        logp = log_prior(sum(counts[q] for q in seqs if q != held))
        folds_data[held] = (with_layout([x for q in seqs if q != held for x in frames[q]], logp),
                            with_layout(frames[held], logp), with_layout(ood, logp))
    logp_all = log_prior(sum(counts[q] for q in seqs))
    fit_all, ood_all = with_layout([x for q in seqs for x in frames[q]], logp_all), with_layout(ood, logp_all)

    results = {}
    for name, weights in candidates.items():
        scored = {}
        for held, (fit, held_f, ood_f) in folds_data.items():
            rule = _standardise(fit, weights)
            scored[held] = (np.array([score(x, rule) for x in fit]), np.array([score(x, rule) for x in held_f]),
                            np.array([score(x, rule) for x in ood_f]))
        chosen_margin, folds = margins[-1], {}
        for margin in margins:
            folds = {}
            for held, (fit_s, held_s, ood_s) in scored.items():
                t = fit_threshold(fit_s, quantile, margin)
                folds[held] = {"false_alarm_rate": float((held_s < t).mean()), "n": int(len(held_s)),
                               "ood_caught": int((ood_s < t).sum())}
            if all(f["false_alarm_rate"] <= target for f in folds.values()):
                chosen_margin = margin
                break
        rule = _standardise(fit_all, weights)
        fit_scores = np.array([score(x, rule) for x in fit_all])
        t = fit_threshold(fit_scores, quantile, chosen_margin)
        ood_scores = np.array([score(x, rule) for x in ood_all])
        fars = [f["false_alarm_rate"] for f in folds.values()]
        n = sum(f["n"] for f in folds.values())
        results[name] = {
            "margin": chosen_margin, "folds": folds,
            "heldout_false_alarm_rate": (sum(f["false_alarm_rate"] * f["n"] for f in folds.values()) / n) if n else 0.0,
            "worst_heldout_false_alarm_rate": max(fars) if fars else 0.0,
            "rule": {**rule, "threshold": round(t, 4)},
            "fit_false_alarm_rate": float((fit_scores < t).mean()),
            "ood_caught": int((ood_scores < t).sum()), "ood_total": int(len(ood_scores)),
            "ood_scores": [round(float(v), 3) for v in ood_scores],
            "layout_log_prior": logp_all,
        }
    return results


def choose(results: dict, target: float) -> str:
    """The candidate with the most catches among those whose worst held-out sequence is within ``target``
    (ties: the lower held-out false-alarm rate); if none is, the one with the lowest worst-sequence rate."""
    ok = [n for n, r in results.items() if r["worst_heldout_false_alarm_rate"] <= target]
    if ok:
        return max(ok, key=lambda n: (results[n]["ood_caught"], -results[n]["heldout_false_alarm_rate"]))
    return min(results, key=lambda n: (results[n]["worst_heldout_false_alarm_rate"], -results[n]["ood_caught"]))


def table(results: dict, chosen: Optional[str] = None) -> list[str]:
    """Markdown table rows: one per candidate, false alarms per held-out sequence and catches."""
    seqs = sorted(next(iter(results.values()))["folds"])
    head = ("| score | " + " | ".join(f"false alarms, held-out {q}" for q in seqs)
            + " | held-out (all) | worst | margin | out-of-domain caught (final threshold) |")
    lines = [head, "|" + "---|" * (len(seqs) + 5)]
    for name, r in results.items():
        mark = " **(chosen)**" if name == chosen else ""
        cells = " | ".join(f"{r['folds'][q]['false_alarm_rate']:.1%} of {r['folds'][q]['n']}" for q in seqs)
        lines.append(f"| {name}{mark} | {cells} | {r['heldout_false_alarm_rate']:.1%} | "
                     f"{r['worst_heldout_false_alarm_rate']:.1%} | {r['margin']:g} | {r['ood_caught']}/{r['ood_total']} |")
    return lines


def calibrate(model: str, data_root: str, steps_list: list[int], target: float = 0.05, quantile: float = 0.01,
              per_sequence: Optional[int] = 12, views: bool = True,
              domain: str = DEFAULT_DOMAIN, splits=("train", "val"), batch: int = 4) -> dict:
    import tempfile

    import torch
    from PIL import Image

    from .inputs import load_photo
    from .model import SpaceModel
    from .limits import WORK_MAX_SIDE

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    m = SpaceModel(model)
    k = m.num_classes
    pairs = list_frames(data_root, splits)
    # Layout prior: the annotations of every listed frame, per sequence (cheap: no model).
    counts: dict[str, np.ndarray] = {}
    for img, ann in pairs:
        if ann is not None and ann.is_file():
            q = sequence_of(img)
            counts[q] = counts.get(q, 0) + label_histogram(np.asarray(Image.open(ann)), k)
    chosen_frames = pick_frames(pairs, per_sequence)
    seqs = sorted({sequence_of(f[0]) for f in chosen_frames})
    for q in seqs:
        counts.setdefault(q, np.zeros((k, GRID[0] * GRID[1])))
    ood_list = _ood_pictures(Path(tempfile.mkdtemp(prefix="semflow-ood-")))
    t0 = time.time()
    side = max(WORK_MAX_SIDE, m.processing_resolution)  # what the app feeds the model
    photos, names = [], []
    for i, (img, _) in enumerate(chosen_frames):
        ph = load_photo(str(img), side)
        photos.append(ph)
        names.append(img.name)
        if views:
            photos.append(new_view(ph, seed=i))
            names.append(img.name + " (new view)")
    ood_photos = [load_photo(p, side) for _, p in ood_list]
    print(f"{len(chosen_frames)} frames from sequences {', '.join(seqs)}"
          f"{' (+ a new view of each)' if views else ''}; {len(ood_photos)} out-of-domain pictures", flush=True)

    def raw(outs):
        return [{"mean_confidence": float(c.mean()), "low_confidence": float(np.percentile(c, LOW_QUANTILE)),
                 "hist": label_histogram(lab, k)} for lab, c in outs]

    def run(images, steps):
        outs = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            same = len({im.size for im in chunk}) == 1
            groups = [chunk] if same else [[im] for im in chunk]
            for g in groups:
                o = m.run(m.pipe.segment, g, num_inference_steps=int(steps), output_type="np")
                outs += [(o.labels[j], np.asarray(o.confidence[j], np.float32)) for j in range(len(g))]
        return raw(outs)

    result = {"statistic": STATISTIC, "model": m.name, "model_fingerprint": m.fingerprint(),
              "dataset": f"CamVid {'+'.join(splits)}, {len(chosen_frames)} frames of {len(seqs)} sequences "
                         f"({', '.join(seqs)}){', each also as a new view' if views else ''}",
              "domain": domain, "target_false_alarm_rate": target, "fit_quantile": quantile,
              "grid": list(GRID), "low_quantile": LOW_QUANTILE,
              "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "steps": {},
              "out_of_domain_pictures": [name for name, _ in ood_list]}
    for steps in steps_list:
        ts = time.time()
        feats = run(photos, steps)
        per_seq: dict[str, list] = {}
        for name, f in zip(names, feats):
            per_seq.setdefault(sequence_of(name), []).append(f)
        ood = run(ood_photos, steps)
        results = evaluate(per_seq, ood, counts, quantile, target)
        best = choose(results, target)
        r = results[best]
        result["layout_log_prior"] = np.round(r["layout_log_prior"], 4).tolist()  # the same for every step count
        result["steps"][str(steps)] = {
            "score": best, **r["rule"], "margin": r["margin"], "false_alarm_rate": r["heldout_false_alarm_rate"],
            "worst_heldout_false_alarm_rate": r["worst_heldout_false_alarm_rate"],
            "fit_false_alarm_rate": r["fit_false_alarm_rate"], "ood_detected": r["ood_caught"],
            "ood_total": r["ood_total"],
            "ood_values": {name: v for (name, _), v in zip(ood_list, r["ood_scores"])},
            "candidates": {n: {"heldout_false_alarm_rate": round(x["heldout_false_alarm_rate"], 4),
                               "worst_heldout_false_alarm_rate": round(x["worst_heldout_false_alarm_rate"], 4),
                               "margin": x["margin"], "folds": x["folds"], "ood_caught": x["ood_caught"]}
                           for n, x in results.items()},
        }
        print(f"\n## {steps} step(s) ({time.time() - ts:.0f} s): leave-one-sequence-out false alarms and catches of "
              f"the {len(ood)} out-of-domain pictures", flush=True)
        print("\n".join(table(results, best)), flush=True)
        print(f"chosen: {best}, margin {r['margin']:g}, threshold {r['rule']['threshold']:.2f}; held-out false alarms "
              f"{r['heldout_false_alarm_rate']:.1%} (worst sequence {r['worst_heldout_false_alarm_rate']:.1%}), "
              f"out-of-domain caught {r['ood_caught']}/{r['ood_total']}", flush=True)
    result["seconds"] = round(time.time() - t0, 1)
    return result


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "### Out-of-domain warning: calibration",
        "",
        f"Model `{result['model']}` (fingerprint `{result['model_fingerprint']}`); {result['dataset']}; "
        f"{result['created']}. Re-run: `python -m space.ood --model ...`.",
        "",
        f"Leave-one-sequence-out: for each sequence, the threshold (the {result['fit_quantile']:.0%} quantile of the "
        "other sequences' scores, minus a margin in standard deviations of those scores) is fitted without it and "
        "its false alarms are counted on it; each score gets the smallest margin that keeps every held-out sequence "
        f"within {result['target_false_alarm_rate']:.0%}; the shipped score is the one that then catches the most "
        "out-of-domain pictures, its threshold fitted on all sequences with its margin. Scores are sums of "
        "standardised features: mean confidence, its "
        f"{result['low_quantile']}th percentile (low_confidence), and the layout's log-probability under a positional "
        "class prior (layout).",
        "",
    ]
    for s, r in result["steps"].items():
        seqs = sorted(next(iter(r["candidates"].values()))["folds"])
        lines += [f"#### {s} step(s): chosen `{r['score']}`, threshold {r['threshold']:.2f}", "",
                  "| score | " + " | ".join(f"false alarms, held-out {q}" for q in seqs)
                  + " | held-out (all) | worst | margin | out-of-domain caught |", "|" + "---|" * (len(seqs) + 5)]
        for name, c in r["candidates"].items():
            mark = " **(chosen)**" if name == r["score"] else ""
            cells = " | ".join(f"{c['folds'][q]['false_alarm_rate']:.1%} of {c['folds'][q]['n']}" for q in seqs)
            lines.append(f"| {name}{mark} | {cells} | {c['heldout_false_alarm_rate']:.1%} | "
                         f"{c['worst_heldout_false_alarm_rate']:.1%} | {c['margin']:g} | {c['ood_caught']}/{r['ood_total']} |")
        lines += ["", "Out-of-domain pictures (chosen score; flagged below the threshold): "
                  + ", ".join(f"{k.split(':')[-1]} {v:.1f}" for k, v in r["ood_values"].items()), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("SEMFLOW_MODEL", "checkpoints/semflow-camvid"))
    ap.add_argument("--data-root", default=str(HERE.parent.parent / "shared" / "datasets" / "camvid"))
    ap.add_argument("--splits", nargs="+", default=["train", "val"], help="CamVid splits to draw sequences from")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="step counts to calibrate (default: the model's default, 1, 2, 5, 10); the app warns only "
                         "at calibrated step counts")
    ap.add_argument("--false-alarm", type=float, default=0.05,
                    help="target false-alarm rate on every held-out sequence (default 0.05)")
    ap.add_argument("--fit-quantile", type=float, default=0.01,
                    help="the threshold is this quantile of the fit frames' scores, minus a margin chosen "
                         "leave-one-sequence-out (default 0.01)")
    ap.add_argument("--per-sequence", type=int, default=12,
                    help="frames per sequence, evenly spaced (default 12; 0 = all, slow)")
    ap.add_argument("--no-views", action="store_true", help="only the frames as they are, no new view of each")
    ap.add_argument("--domain", default=DEFAULT_DOMAIN, help="the model's domain, as the page states it")
    ap.add_argument("--out", type=Path, default=CALIBRATION_FILE)
    args = ap.parse_args(argv)
    if args.steps is None:
        from semflow_pipeline import SemFlowPipeline

        default = int(SemFlowPipeline.load_config(args.model).get("default_num_inference_steps", 1))
        args.steps = sorted({default, 1, 2, 5, 10})
    result = calibrate(args.model, args.data_root, args.steps, args.false_alarm, args.fit_quantile,
                       args.per_sequence or None, not args.no_views, args.domain, tuple(args.splits))
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_markdown(result, args.out.with_suffix(".md"))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
