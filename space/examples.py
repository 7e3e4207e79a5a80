"""Draws the Space's example masks: simple CamVid-style street layouts, made by code (no dataset files).

    python -m space.examples            # (re)writes space/examples/street_*.png (+ *_color.png)
    python -m space.examples --photos --model checkpoints/semflow-camvid
                                        # also writes photo_*.png, the model's own synthesis of each layout,
                                        # used as Segment/Flow examples

Masks are single-channel PNGs of CamVid class ids at CamVid's 480x360, so they are also valid uploads for the
"label-id PNG" path of the Synthesize tab. The ``*_color.png`` twins use the SegNet display colours for the
"colour-coded mask" path.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

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


SEEDS = (1, 2, 3, 5)


def write_masks(out_dir: Path = EXAMPLES_DIR, seeds=SEEDS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, seed in enumerate(seeds):
        ids = draw_street(seed)
        p = out_dir / f"street_{i}.png"
        Image.fromarray(ids, mode="L").save(p, optimize=True)
        Image.fromarray(colorize(ids)).save(out_dir / f"street_{i}_color.png", optimize=True)
        paths.append(p)
    return paths


def write_photos(model: str, out_dir: Path = EXAMPLES_DIR, steps: int = 25) -> list[Path]:
    """The model's own synthesis of each drawn layout: photos for the Segment and Flow examples."""
    import torch

    from semflow_pipeline import SemFlowPipeline

    pipe = SemFlowPipeline.from_pretrained(model)
    paths = []
    for i, mask in enumerate(sorted(out_dir.glob("street_[0-9].png"))):
        ids = np.asarray(Image.open(mask)).astype(np.int64)
        img = pipe.synthesize(
            ids, num_inference_steps=steps, generator=torch.Generator().manual_seed(i), output_type="pil"
        ).images[0]
        p = out_dir / f"photo_{i}.png"
        img.convert("RGB").save(p, optimize=True)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    ap.add_argument("--photos", action="store_true", help="also synthesize example photos with --model")
    ap.add_argument("--model", default=os.environ.get("SEMFLOW_MODEL", "checkpoints/semflow-camvid"))
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()
    for p in write_masks(args.out):
        print(p)
    if args.photos:
        for p in write_photos(args.model, args.out, args.steps):
            print(p)


if __name__ == "__main__":
    main()
