"""The Space's examples, all made by the project itself: drawn street layouts and the model's own photos of them.

    python -m space.examples                         # masks + photos with checkpoints/semflow-camvid ($SEMFLOW_MODEL)
    python -m space.examples --model PATH_OR_REPO_ID # after swapping in another SemFlowPipeline checkpoint
    python -m space.examples --masks-only            # only the drawn layouts (no model needed)

Writes into ``space/examples/``:

- ``street_0.png`` .. ``street_3.png``: label-id masks, saved as palette PNGs whose index is the class id and
  whose palette is the model's display colours, so they are valid label-id uploads *and* look like colour masks
  in any viewer (a plain grayscale id PNG looks black: ids 0..10 out of 255);
- ``street_4_color.png`` .. ``street_7_color.png``: colour-coded RGB masks in the display colours;
- ``photo_0.png`` .. ``photo_3.png``: the model's synthesis of layouts 0..3 (Segment, Edit and Flow examples),
  with the app's synthesis defaults for that model (``default_synthesis_num_inference_steps`` /
  ``default_synthesis_perturbation`` in its ``model_index.json``, else 25 steps and beta 0.05) and seed = index.

Layouts are CamVid-style street scenes at CamVid's 480x360, drawn by code from class *names* (sky, building,
road, ...), mapped to the model's ids; no dataset file is used.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
WIDTH, HEIGHT = 480, 360

# CamVid (SegNet split) ids, as in the dataset's README; 11 = void (ignore).
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST, VOID = range(12)
CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]
CAMVID_COLORS = np.array(
    [
        [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
        [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0],
    ],
    dtype=np.uint8,
)
ID_LAYOUTS = (0, 1, 2, 3)  # street_<i>.png, palette label ids
COLOR_LAYOUTS = (4, 5, 6, 7)  # street_<i>_color.png, RGB
PHOTO_LAYOUTS = (0, 1, 2, 3)  # photo_<j>.png is the synthesis of street_<PHOTO_LAYOUTS[j]>
SEEDS = (1, 2, 3, 5, 8, 11, 13, 21)  # the drawing seed of layout i

def _car(d: ImageDraw.ImageDraw, x: int, y: int, w: int) -> None:
    """A side-ish view of a car with its bottom-left corner at (x, y)."""
    h = int(w * 0.42)
    d.rectangle([x, y - int(h * 0.6), x + w, y], fill=CAR)  # body
    d.polygon(
        [(x + int(w * 0.18), y - int(h * 0.6)), (x + int(w * 0.32), y - h), (x + int(w * 0.72), y - h),
         (x + int(w * 0.86), y - int(h * 0.6))],
        fill=CAR,
    )  # cabin


def _pedestrian(d: ImageDraw.ImageDraw, x: int, y: int, h: int) -> None:
    w = max(3, h // 4)
    d.ellipse([x - w // 2, y - h, x + w // 2, y - h + w], fill=PEDESTRIAN)  # head
    d.rectangle([x - w // 2, y - h + w, x + w // 2, y], fill=PEDESTRIAN)  # body and legs


def draw_street(seed: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """One street layout, (H, W) uint8 class ids: sky on top, buildings, pavement, road at the bottom, cars..."""
    rng = random.Random(seed)
    im = Image.new("L", (width, height), SKY)
    d = ImageDraw.Draw(im)
    horizon = int(height * rng.uniform(0.45, 0.55))
    vx = int(width * rng.uniform(0.4, 0.6))  # vanishing point of the road

    # Buildings: a skyline of blocks whose tops vary, down to the horizon.
    x = 0
    while x < width:
        w = rng.randint(width // 10, width // 4)
        top = int(height * rng.uniform(0.05, 0.35))
        d.rectangle([x, top, x + w, horizon], fill=BUILDING)
        x += w
    # A gap of sky over the road's far end keeps the perspective readable.
    d.rectangle([vx - width // 16, 0, vx + width // 16, int(height * rng.uniform(0.25, 0.4))], fill=SKY)

    # Trees: round crowns on trunks in front of the buildings.
    for _ in range(rng.randint(0, 3)):
        cx = rng.randint(0, width)
        r = rng.randint(height // 14, height // 7)
        cy = horizon - r - rng.randint(0, height // 10)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=TREE)
        d.rectangle([cx - 2, cy, cx + 2, horizon + 4], fill=TREE)

    # Ground: pavement everywhere below the horizon, then the road as a trapezoid towards the vanishing point.
    d.rectangle([0, horizon, width, height], fill=PAVEMENT)
    far = width // 20
    d.polygon([(vx - far, horizon), (vx + far, horizon), (width + width // 4, height), (-width // 4, height)], fill=ROAD)

    # A fence along the left pavement, poles and a sign on the right.
    if rng.random() < 0.6:
        d.rectangle([0, horizon - height // 20, vx - width // 5, horizon + 2], fill=FENCE)
    for _ in range(rng.randint(1, 3)):
        px = rng.randint(int(width * 0.62), width - 8)
        top = int(horizon - height * rng.uniform(0.2, 0.35))
        bottom = horizon + int((px - vx) / width * height * 0.6)
        d.rectangle([px, top, px + 3, bottom], fill=POLE)
        if rng.random() < 0.5:
            d.rectangle([px - 8, top, px + 11, top + 14], fill=SIGN)

    # Cars on the road: nearer ones lower and bigger.
    for _ in range(rng.randint(1, 3)):
        y = int(horizon + (height - horizon) * rng.uniform(0.25, 0.9))
        depth = (y - horizon) / (height - horizon)
        w = int(width * (0.1 + 0.3 * depth))
        x = int(vx + (rng.uniform(-0.9, 0.5)) * (width * 0.5 * depth + far))
        _car(d, x, y, w)

    # Pedestrians and a cyclist on the pavement.
    for _ in range(rng.randint(0, 2)):
        y = int(horizon + (height - horizon) * rng.uniform(0.1, 0.5))
        _pedestrian(d, rng.choice([rng.randint(5, width // 6), rng.randint(5 * width // 6, width - 5)]), y,
                    int(height * 0.12 + (y - horizon) * 0.4))
    if rng.random() < 0.3:
        y = int(horizon + (height - horizon) * rng.uniform(0.3, 0.6))
        x = rng.randint(width // 10, width // 3)
        d.ellipse([x, y - 14, x + 14, y], fill=BICYCLIST)
        d.ellipse([x + 22, y - 14, x + 36, y], fill=BICYCLIST)
        d.rectangle([x + 12, y - 40, x + 22, y - 10], fill=BICYCLIST)
    return np.asarray(im)


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
    """The model's own synthesis of layouts PHOTO_LAYOUTS, with the app's synthesis defaults for that model.

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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    ap.add_argument("--model", default=os.environ.get("SEMFLOW_MODEL", "checkpoints/semflow-camvid"),
                    help="the SemFlowPipeline whose classes, colours and syntheses the examples use")
    ap.add_argument("--masks-only", action="store_true", help="only draw the layouts (CamVid ids and colours)")
    args = ap.parse_args(argv)
    for old in list(args.out.glob("street_*.png")) + list(args.out.glob("photo_*.png")):
        old.unlink()  # no stale examples from an earlier layout set
    if args.masks_only:
        paths = write_masks(args.out)
    else:
        from .model import SpaceModel

        m = SpaceModel(args.model)
        colors = np.concatenate([m.colors, m.ignore_color[None]]) if m.ignore_index == m.num_classes else m.colors
        paths = write_masks(args.out, m.class_names, colors)
        paths += write_photos(m, args.out)
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
