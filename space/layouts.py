"""The drawn street layouts (class-id maps) the app's examples and the out-of-domain pictures are made from.

Their own module, so that ``examples`` (which ranks layouts with the model and the out-of-domain check) and ``ood``
(whose test pictures include a cartoon street) both use them without importing each other."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

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
