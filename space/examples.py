"""The Space's examples, all made by the project itself: drawn street layouts and the model's own photos of them.

    python -m space.examples                         # masks + photos with checkpoints/semflow-camvid ($SEMFLOW_MODEL)
    python -m space.examples --model PATH_OR_REPO_ID # after swapping in another SemFlowPipeline checkpoint
    python -m space.examples --masks-only            # only the drawn layouts (no model needed)

The photos are the model's **best round-trips**: ``--candidates`` layouts (drawing seeds) are drawn, each is
synthesized ``--seeds-per-layout`` times with the app's synthesis defaults for that model
(``default_synthesis_num_inference_steps`` / ``default_synthesis_perturbation`` in its ``model_index.json``, else
25 steps and beta 0.05), each photo is segmented back at the model's default step count, and the photos whose
labels agree best with the layout they were drawn from (pixel agreement) are kept, one per layout; a photo that
the out-of-domain check would flag (when ``space/ood_calibration.json`` is for this model) is not kept. It prints
the table of candidates and takes a few minutes on 2 CPU cores.

Writes into ``space/examples/``:

- ``street_0.png`` .. ``street_3.png``: the layouts of the 4 best round-trips, as label-id masks saved as palette
  PNGs whose index is the class id and whose palette is the model's display colours, so they are valid label-id
  uploads *and* look like colour masks in any viewer (a plain grayscale id PNG looks black: ids 0..10 of 255);
- ``street_4_color.png`` .. ``street_7_color.png``: the next 4 layouts, colour-coded RGB masks;
- ``photo_0.png`` .. ``photo_3.png``: the model's synthesis of ``street_0`` .. ``street_3`` (Segment, Edit and Flow
  examples);
- ``examples.json``: the model (name, fingerprint), the settings, each example's drawing seed, synthesis seed and
  round-trip agreement, and the whole candidate table. ``tests/test_examples.py`` checks that every shipped photo
  segments back to its layout with at least :data:`MIN_AGREEMENT` and without the out-of-domain warning.

Layouts are CamVid-style street scenes at CamVid's 480x360, drawn by code from class *names* (sky, building,
road, ...), mapped to the model's ids; no dataset file is used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .layouts import (  # noqa: F401  (re-exported: the drawing lives in layouts.py)
    BICYCLIST, BUILDING, CAMVID_CLASSES, CAMVID_COLORS, CAR, FENCE, HEIGHT, PAVEMENT, PEDESTRIAN, POLE, ROAD, SIGN,
    SKY, TREE, VOID, WIDTH, draw_street,
)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

ID_LAYOUTS = (0, 1, 2, 3)  # street_<i>.png, palette label ids
COLOR_LAYOUTS = (4, 5, 6, 7)  # street_<i>_color.png, RGB
PHOTO_LAYOUTS = (0, 1, 2, 3)  # photo_<j>.png is the synthesis of street_<PHOTO_LAYOUTS[j]>
SEEDS = (1, 2, 3, 5, 8, 11, 13, 21)  # the drawing seeds of --masks-only (no model to rank candidates with)
MANIFEST = "examples.json"
# Every shipped photo must segment back to its layout with at least this pixel agreement (void pixels left out),
# at the model's default step count, without the out-of-domain warning (tests/test_examples.py).
MIN_AGREEMENT = 0.6

def colorize(ids: np.ndarray, colors: np.ndarray = CAMVID_COLORS) -> np.ndarray:
    return np.asarray(colors, dtype=np.uint8)[ids]


def class_ids(class_names: list[str]) -> np.ndarray:
    """CamVid ids used by the drawer -> the model's ids (by class name). Raises for a model without these classes."""
    missing = [n for n in CAMVID_CLASSES if n not in class_names]
    if missing:
        raise SystemExit(f"The examples are CamVid street layouts; the model has no class(es) {missing} "
                         f"(its classes: {class_names}).")
    return np.array([class_names.index(n) for n in CAMVID_CLASSES], dtype=np.uint8)


def palette_png(ids: np.ndarray, colors: np.ndarray, path: Path) -> None:
    """Label ids as a palette PNG: pixel value = class id, palette entry i = class i's display colour."""
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(colors)] = colors
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(pal.ravel().tolist())
    im.save(path, optimize=True)


def write_masks(out_dir: Path = EXAMPLES_DIR, class_names: Optional[list[str]] = None,
                colors: Optional[np.ndarray] = None) -> list[Path]:
    """Draws the layouts; ``class_names`` / ``colors`` (K or K+1 x 3, the ignore colour last) of the model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remap = class_ids(class_names) if class_names is not None else np.arange(len(CAMVID_CLASSES), dtype=np.uint8)
    colors = CAMVID_COLORS if colors is None else np.asarray(colors, np.uint8)
    paths = []
    for i, seed in enumerate(SEEDS):
        ids = remap[draw_street(seed)]
        if i in ID_LAYOUTS:
            p = out_dir / f"street_{i}.png"
            palette_png(ids, colors, p)
        else:
            p = out_dir / f"street_{i}_color.png"
            Image.fromarray(colorize(ids, colors)).save(p, optimize=True)
        paths.append(p)
    return paths


def write_photos(model, out_dir: Path = EXAMPLES_DIR) -> list[Path]:
    """The model's own synthesis of the layouts of SEEDS[PHOTO_LAYOUTS] (no ranking; see :func:`select`).

    ``model``: a SpaceModel, or a pipeline folder / Hub id."""
    from .model import SpaceModel

    m = model if isinstance(model, SpaceModel) else SpaceModel(model)
    remap = class_ids(m.class_names)
    paths = []
    for j, i in enumerate(PHOTO_LAYOUTS):
        ids = remap[draw_street(SEEDS[i])].astype(np.int64)
        img = m.synthesize(ids, m.synthesis_steps, m.synthesis_perturbation, 1, seed=j)[0]
        p = out_dir / f"photo_{j}.png"
        img.convert("RGB").save(p, optimize=True)
        paths.append(p)
    print(f"photos: {m.name}, {m.synthesis_steps} steps, beta {m.synthesis_perturbation}")
    return paths


def agreement(predicted: np.ndarray, layout: np.ndarray, num_classes: int) -> float:
    """Share of the layout's class pixels (void left out) that the segmentation labels with the layout's class."""
    predicted, layout = np.asarray(predicted), np.asarray(layout)
    valid = (layout >= 0) & (layout < num_classes)
    return float((predicted[valid] == layout[valid]).mean()) if valid.any() else 0.0


def round_trip(m, ids: np.ndarray, photo, ood=None) -> tuple[float, Optional[str]]:
    """(agreement of the photo's segmentation with ``ids``, the out-of-domain warning or None), at the model's
    default step count, as the Segment tab runs it."""
    seg = m.segment(photo.convert("RGB"), m.default_steps)
    warning = ood.check(seg.confidence, m.default_steps, seg.labels) if ood is not None else None
    return agreement(seg.labels, ids, m.num_classes), warning


def select(m, candidates: int = 16, seeds_per_layout: int = 2, first_seed: int = 1) -> tuple[list[dict], list]:
    """Draw ``candidates`` layouts, synthesize each ``seeds_per_layout`` times, segment every photo back.

    Returns (one row per photo: drawing seed, synthesis seed, agreement, warning; sorted best first) and the
    photos by (drawing seed, synthesis seed)."""
    from .ood import OODCheck

    ood = OODCheck.load(m.fingerprint())
    if not ood.calibrated:
        print("note: space/ood_calibration.json is not for this model: photos are ranked without the "
              "out-of-domain check (run python -m space.ood first)", flush=True)
        ood = None
    remap = class_ids(m.class_names)
    rows, photos = [], {}
    t0 = time.time()
    for c in range(candidates):
        seed = first_seed + c
        ids = remap[draw_street(seed)].astype(np.int64)
        images = m.synthesize(ids, m.synthesis_steps, m.synthesis_perturbation, seeds_per_layout, seed=seed)
        for s, img in enumerate(images):
            agree, warning = round_trip(m, ids, img, ood)
            photos[(seed, s)] = img.convert("RGB")
            rows.append({"layout_seed": seed, "sample": s, "synthesis_seed": seed, "agreement": round(agree, 4),
                         "ood_warning": bool(warning)})
        best = max(r["agreement"] for r in rows if r["layout_seed"] == seed)
        print(f"layout {c + 1}/{candidates} (seed {seed}): best agreement {best:.3f} ({time.time() - t0:.0f} s)",
              flush=True)
    rows.sort(key=lambda r: (r["ood_warning"], -r["agreement"]))
    return rows, photos


def write_selected(m, rows: list[dict], photos: dict, out_dir: Path = EXAMPLES_DIR) -> list[Path]:
    """The 4 best photos (one per layout, no warning first) with their layouts as id masks, the next 4 layouts as
    colour masks, and the manifest."""
    remap = class_ids(m.class_names)
    colors = np.concatenate([m.colors, m.ignore_color[None]]) if m.ignore_index == m.num_classes else m.colors
    colors = np.asarray(colors, np.uint8)
    best_per_layout: list[dict] = []
    for r in rows:
        if all(b["layout_seed"] != r["layout_seed"] for b in best_per_layout):
            best_per_layout.append(r)
    n_id, n_col = len(ID_LAYOUTS), len(COLOR_LAYOUTS)
    if len(best_per_layout) < n_id + n_col:
        raise SystemExit(f"need at least {n_id + n_col} candidate layouts, got {len(best_per_layout)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, shipped = [], []
    for i, r in enumerate(best_per_layout[: n_id + n_col]):
        ids = remap[draw_street(r["layout_seed"])]
        if i < n_id:
            p = out_dir / f"street_{i}.png"
            palette_png(ids, colors, p)
            photo = out_dir / f"photo_{i}.png"
            photos[(r["layout_seed"], r["sample"])].save(photo, optimize=True)
            paths += [p, photo]
            shipped.append({"photo": photo.name, "mask": p.name, **r})
        else:
            p = out_dir / f"street_{i}_color.png"
            Image.fromarray(colorize(ids, colors)).save(p, optimize=True)
            paths.append(p)
            shipped.append({"mask": p.name, **r})
    manifest = {
        "model": m.name, "model_fingerprint": m.fingerprint(), "synthesis_steps": m.synthesis_steps,
        "synthesis_perturbation": m.synthesis_perturbation, "segmentation_steps": m.default_steps,
        "min_agreement": MIN_AGREEMENT, "examples": shipped, "candidates": rows,
        "how": "python -m space.examples: best round-trips (synthesize the layout, segment it back) of the "
               "candidate layouts; synthesis seed s of a layout is sample s of a batch seeded with the drawing seed",
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    paths.append(out_dir / MANIFEST)
    return paths


def print_table(rows: list[dict], limit: int = 12) -> None:
    print("\n| rank | layout seed | sample | round-trip agreement | out-of-domain warning |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rows[:limit]):
        print(f"| {i + 1} | {r['layout_seed']} | {r['sample']} | {r['agreement']:.3f} | "
              f"{'yes' if r['ood_warning'] else 'no'} |")
    print(f"({len(rows)} candidate photos; every shipped photo must reach {MIN_AGREEMENT:.2f})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    ap.add_argument("--model", default=os.environ.get("SEMFLOW_MODEL", "checkpoints/semflow-camvid"),
                    help="the SemFlowPipeline whose classes, colours and syntheses the examples use")
    ap.add_argument("--masks-only", action="store_true", help="only draw the layouts (CamVid ids and colours)")
    ap.add_argument("--candidates", type=int, default=16, help="candidate layouts (drawing seeds), default 16")
    ap.add_argument("--seeds-per-layout", type=int, default=2, help="photos synthesized per layout, default 2")
    ap.add_argument("--first-seed", type=int, default=1, help="drawing seeds first-seed .. first-seed+candidates-1")
    args = ap.parse_args(argv)
    if args.masks_only:
        _clear(args.out)
        paths = write_masks(args.out)
    else:
        import torch

        from .model import SpaceModel

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        m = SpaceModel(args.model)
        rows, photos = select(m, args.candidates, args.seeds_per_layout, args.first_seed)
        print_table(rows)
        _clear(args.out)
        paths = write_selected(m, rows, photos, args.out)
        low = [r for r in rows[: len(ID_LAYOUTS)] if r["agreement"] < MIN_AGREEMENT or r["ood_warning"]]
        if low:
            print(f"WARNING: {len(low)} shipped photo(s) below {MIN_AGREEMENT} agreement or flagged out of domain: "
                  "try more --candidates", flush=True)
    for p in paths:
        print(p)


def _clear(out: Path) -> None:
    for old in list(out.glob("street_*.png")) + list(out.glob("photo_*.png")) + list(out.glob(MANIFEST)):
        old.unlink()  # no stale examples from an earlier layout set


if __name__ == "__main__":
    main()
