"""Datasets of (image, label map) pairs for SemFlow training and evaluation.

Every dataset returns ``{"image": float (3,H,W) in [-1,1], "label": long (H,W)}``
with unlabelled pixels set to ``ignore_index``.  Layouts supported:

* ``SplitFileDataset`` -- ``<root>/<split>.txt`` with lines ``image_path label_path``
  (relative to root), single-channel label PNGs holding class ids (CamVid/SegNet).
* ``CityscapesDataset`` -- ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`` (19 classes, 255 ignore); without the trainIds files
  (made by cityscapesscripts' ``createTrainIdLabelImgs``) the ``*_gtFine_labelIds.png`` that the download ships are
  mapped to trainIds here.
* ``CocoStuffDataset`` -- ``images/<split>2017/*.jpg`` and
  ``annotations/<split>2017/*.png`` (stuffthingmaps: ids 0..181, 255 unlabelled)
  remapped to the 171 contiguous classes used by mmsegmentation.
* ``CelebAMaskHQDataset`` -- ``CelebA-HQ-img/<i>.jpg`` and
  ``CelebAMask-HQ-mask-anno/<i//2000>/<i:05d>_<part>.png`` merged into 19 classes (the download's layout), or
  the SemFlow authors' preprocessed layout: ``CelebA-512-img/<i>.jpg``, ``CelebAMask-HQ-mergemask/<i>.png``
  (class ids 0..18) and ``metas/<split>.txt``.
* ``FolderPairsDataset`` -- any folder of image/mask pairs: ``[<split>/]images/<name>.<ext>`` with
  ``[<split>/]masks/<name>.png`` (single-channel class ids; ids >= ``num_classes`` are unlabelled).

CPU training is data-starved if each step decodes PNGs, so datasets can
``preload`` everything into memory as uint8 once; augmentation then runs on
tensors (crop on the uint8 array first, then one small ``F.interpolate``).
"""

from __future__ import annotations

import glob
import math
import os
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]
CAMVID_COLORS = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
    [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]
CAMVID_IGNORE = 11

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
]

# Cityscapes labelIds -> trainIds (cityscapesscripts' labels.py); every other id is ignored (255).
CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                            25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_trainid_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        lut[label_id] = train_id
    return lut


# CelebAMask-HQ part files, in the order of their class ids 1..18 (0 = background).
# Later parts overwrite earlier ones where they overlap (the official
# g_mask.py convention), so e.g. hair drawn over skin stays hair.
CELEBAMASK_PARTS = [
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
]
CELEBAMASK_CLASSES = ["background"] + CELEBAMASK_PARTS

# stuffthingmaps ids (0-based COCO category id - 1) that no category uses;
# removing them leaves the 171 classes of COCO-Stuff-164k.
COCO_STUFF_UNUSED = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def coco_stuff_lut(ignore_index: int = 255) -> np.ndarray:
    """uint8 lookup table (256,) mapping stuffthingmaps ids to 0..170, others to ignore."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    valid = [i for i in range(182) if i not in COCO_STUFF_UNUSED]
    assert len(valid) == 171
    lut[np.array(valid)] = np.arange(171, dtype=np.uint8)
    return lut


@dataclass
class AugmentConfig:
    """Random scale / crop / flip.

    ``scale`` is a zoom factor relative to "whole image fits the crop": 1.0 shows
    the full (aspect-resized) frame, 2.0 a random half-size window.  Values
    below 1 zoom out and pad with ignore (label) and 0 (image).
    """

    scale_min: float = 1.0
    scale_max: float = 1.0
    hflip: bool = False


def _load_rgb(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


def _load_label(path: str) -> np.ndarray:
    arr = np.asarray(Image.open(path))
    if arr.ndim == 3:  # some tools save ids as RGB with equal channels
        arr = arr[..., 0]
    return arr.astype(np.uint8 if arr.max(initial=0) < 256 else np.int32)


def resize_pair(
    image: torch.Tensor, label: torch.Tensor, size: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """image uint8 (3,h,w), label (h,w) -> float image (3,H,W) in [-1,1], long label (H,W).

    Images: bilinear with antialias (area-like when shrinking); labels: nearest.
    """
    img = image.float().unsqueeze(0)
    if tuple(img.shape[-2:]) != tuple(size):
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)
    img = (img[0] / 127.5 - 1.0).clamp(-1, 1)
    lab = label.long()
    if tuple(lab.shape) != tuple(size):
        lab = F.interpolate(lab[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return img, lab


def augment_pair(
    image: torch.Tensor,
    label: torch.Tensor,
    size: Tuple[int, int],
    aug: AugmentConfig,
    ignore_index: int,
    rng: random.Random,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random zoom-crop + flip of one uint8 pair, then resize to ``size`` (H,W).

    image uint8 (3,h,w), label (h,w) -> image float (3,H,W) in [-1,1], label long (H,W).
    The crop window has the aspect ratio of ``size``, so nothing is stretched.
    """
    _, h, w = image.shape
    out_h, out_w = size
    s = rng.uniform(aug.scale_min, aug.scale_max)
    # Largest window of the output's aspect ratio that fits the frame, shrunk by the zoom.
    fit = min(h / out_h, w / out_w)
    ch, cw = max(1, round(out_h * fit / s)), max(1, round(out_w * fit / s))
    if ch > h or cw > w:  # zoom out: pad to the window size
        ph, pw = max(ch, h), max(cw, w)
        img_p = torch.zeros((3, ph, pw), dtype=image.dtype)
        lab_p = torch.full((ph, pw), ignore_index, dtype=label.dtype)
        oy, ox = rng.randint(0, ph - h), rng.randint(0, pw - w)
        img_p[:, oy:oy + h, ox:ox + w] = image
        lab_p[oy:oy + h, ox:ox + w] = label
        image, label, h, w = img_p, lab_p, ph, pw
    y0, x0 = rng.randint(0, h - ch), rng.randint(0, w - cw)
    image = image[:, y0:y0 + ch, x0:x0 + cw]
    label = label[y0:y0 + ch, x0:x0 + cw]
    if aug.hflip and rng.random() < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    return resize_pair(image, label, size)


class PairDataset(torch.utils.data.Dataset):
    """Base class: a list of samples, each loadable as (uint8 HxWx3 image, HxW label).

    Args:
        size: (H, W) output size, or None to return the full-resolution pair.
        train: apply ``aug`` (random zoom/crop/flip); otherwise a plain resize.
        preload: decode everything once into memory (uint8).
        label_transform: optional callable on the raw label array (e.g. a LUT).
    """

    num_classes: int = 0
    class_names: List[str] = []
    ignore_index: int = 255

    def __init__(
        self,
        samples: Sequence,
        size: Optional[Tuple[int, int]] = None,
        train: bool = False,
        aug: Optional[AugmentConfig] = None,
        preload: bool = False,
        seed: int = 0,
    ):
        self.samples = list(samples)
        if not self.samples:
            raise ValueError(f"{type(self).__name__}: no samples found")
        self.size = tuple(size) if size is not None else None
        self.train = train
        self.aug = aug or AugmentConfig()
        self.seed = seed
        self.epoch = 0
        self._cache = None
        if preload:
            self._cache = [self._load_tensors(i) for i in range(len(self.samples))]

    # Subclasses implement these two.
    def load_image(self, sample) -> np.ndarray:  # (h,w,3) uint8
        raise NotImplementedError

    def load_label(self, sample) -> np.ndarray:  # (h,w) integer ids
        raise NotImplementedError

    def _load_tensors(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[i]
        img = torch.from_numpy(np.array(self.load_image(s), copy=True)).permute(2, 0, 1).contiguous()
        lab = torch.from_numpy(np.array(self.load_label(s), copy=True))
        if img.shape[-2:] != lab.shape:
            # CelebAMask-HQ ships 1024^2 images with 512^2 masks: bring the image to the mask.
            img = F.interpolate(img[None].float(), size=tuple(lab.shape), mode="bilinear",
                                antialias=True, align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        return img, lab

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The full-resolution pair: uint8 image (3,h,w), integer label (h,w)."""
        return self._cache[i] if self._cache is not None else self._load_tensors(i)

    def __getitem__(self, i: int) -> dict:
        img, lab = self.raw(i)
        if self.size is None:
            return {"image": img.float() / 127.5 - 1.0, "label": lab.long()}
        if self.train:
            # Per-(epoch, index) RNG: the augmentation of a resumed run is the same
            # as the uninterrupted one's, and worker/process count doesn't matter.
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
            img, lab = augment_pair(img, lab, self.size, self.aug, self.ignore_index, rng)
        else:
            img, lab = resize_pair(img, lab, self.size)
        return {"image": img, "label": lab}


class SplitFileDataset(PairDataset):
    """``<root>/<split>.txt`` listing ``image_path label_path`` per line (paths relative to root)."""

    def __init__(self, root: str, split: str = "train", num_classes: int = 11,
                 class_names: Optional[List[str]] = None, ignore_index: int = 11,
                 max_samples: Optional[int] = None, **kw):
        path = os.path.join(root, f"{split}.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"split file not found: {path}")
        samples = []
        with open(path) as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{path}: expected 'image_path label_path', got {line!r}")
                samples.append(tuple(os.path.join(root, p) for p in parts))
        if max_samples:
            samples = samples[:max_samples]
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.ignore_index = ignore_index
        super().__init__(samples, **kw)

    def load_image(self, sample):
        return _load_rgb(sample[0])

    def load_label(self, sample):
        lab = _load_label(sample[1])
        # Anything outside 0..K-1 is unlabelled; map it to the ignore id.
        bad = lab >= self.num_classes
        if bad.any():
            lab = lab.copy()
            lab[bad] = self.ignore_index
        return lab


class CamVidDataset(SplitFileDataset):
    """CamVid in the SegNet layout: 11 classes, void = 11 (ignored)."""

    def __init__(self, root: str, split: str = "train", **kw):
        super().__init__(root, split, num_classes=11, class_names=CAMVID_CLASSES,
                         ignore_index=CAMVID_IGNORE, **kw)


class CityscapesDataset(PairDataset):
    """Cityscapes fine annotations as trainIds (19 classes, 255 ignore)."""

    num_classes = 19
    class_names = CITYSCAPES_CLASSES
    ignore_index = 255

    def __init__(self, root: str, split: str = "train", max_samples: Optional[int] = None, **kw):
        imgs = sorted(glob.glob(os.path.join(root, "leftImg8bit", split, "*", "*_leftImg8bit.png")))
        samples = []
        for p in imgs:
            city = os.path.basename(os.path.dirname(p))
            stem = os.path.basename(p)[: -len("_leftImg8bit.png")]
            lab = os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelTrainIds.png")
            if not os.path.isfile(lab):
                ids = os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png")
                if not os.path.isfile(ids):
                    raise FileNotFoundError(f"missing label for {p}: neither {lab} nor {ids}")
                lab = ids
            samples.append((p, lab))
        if not samples:
            raise FileNotFoundError(f"no Cityscapes images in {os.path.join(root, 'leftImg8bit', split)}")
        self.lut = cityscapes_trainid_lut()
        super().__init__(samples[:max_samples] if max_samples else samples, **kw)

    def load_image(self, sample):
        return _load_rgb(sample[0])

    def load_label(self, sample):
        lab = _load_label(sample[1])
        return self.lut[lab] if sample[1].endswith("_gtFine_labelIds.png") else lab


class CocoStuffDataset(PairDataset):
    """COCO-Stuff-164k stuffthingmaps, remapped to 171 contiguous classes (255 ignore)."""

    num_classes = 171
    ignore_index = 255

    def __init__(self, root: str, split: str = "train", max_samples: Optional[int] = None, **kw):
        folder = split if split.endswith("2017") else f"{split}2017"
        labs = sorted(glob.glob(os.path.join(root, "annotations", folder, "*.png")))
        samples = []
        for lab in labs:
            stem = os.path.splitext(os.path.basename(lab))[0]
            img = os.path.join(root, "images", folder, stem + ".jpg")
            if not os.path.isfile(img):
                raise FileNotFoundError(f"missing image for {lab}: {img}")
            samples.append((img, lab))
        self.lut = coco_stuff_lut(self.ignore_index)
        self.class_names = [str(i) for i in range(171)]
        super().__init__(samples[:max_samples] if max_samples else samples, **kw)

    def load_image(self, sample):
        return _load_rgb(sample[0])

    def load_label(self, sample):
        return self.lut[_load_label(sample[1]).astype(np.uint8)]


class CelebAMaskHQDataset(PairDataset):
    """CelebAMask-HQ: 19 classes built from per-part binary PNGs (0 = background).

    The split is ``<root>/<split>.txt`` with one image index per line if present,
    otherwise every image in ``CelebA-HQ-img``.
    """

    num_classes = 19
    class_names = CELEBAMASK_CLASSES
    ignore_index = 255

    def __init__(self, root: str, split: str = "train", max_samples: Optional[int] = None, **kw):
        self.merged = os.path.isdir(os.path.join(root, "CelebAMask-HQ-mergemask"))
        if self.merged:  # the SemFlow authors' preprocessed layout
            split_file = os.path.join(root, "metas", f"{split}.txt")
            if not os.path.isfile(split_file):
                raise FileNotFoundError(f"split file not found: {split_file}")
            with open(split_file) as f:
                ids = [int(x.split()[0]) for x in f if x.strip()]
            self.root = root
            super().__init__(ids[:max_samples] if max_samples else ids, **kw)
            return
        split_file = os.path.join(root, f"{split}.txt")
        if os.path.isfile(split_file):
            with open(split_file) as f:
                ids = [int(x.split()[0]) for x in f if x.strip()]
        else:
            ids = sorted(int(os.path.splitext(os.path.basename(p))[0])
                         for p in glob.glob(os.path.join(root, "CelebA-HQ-img", "*.jpg")))
        self.root = root
        super().__init__(ids[:max_samples] if max_samples else ids, **kw)

    def load_image(self, idx):
        return _load_rgb(os.path.join(self.root, "CelebA-512-img" if self.merged else "CelebA-HQ-img", f"{idx}.jpg"))

    def load_label(self, idx):
        if self.merged:
            lab = _load_label(os.path.join(self.root, "CelebAMask-HQ-mergemask", f"{idx}.png"))
            return np.where(lab < self.num_classes, lab, self.ignore_index).astype(np.uint8)
        folder = os.path.join(self.root, "CelebAMask-HQ-mask-anno", str(idx // 2000))
        lab = None
        for cls, part in enumerate(CELEBAMASK_PARTS, start=1):
            p = os.path.join(folder, f"{idx:05d}_{part}.png")
            if not os.path.isfile(p):
                continue  # most faces lack some parts (hat, glasses, ...)
            m = np.asarray(Image.open(p).convert("L")) > 127
            if lab is None:
                lab = np.zeros(m.shape, dtype=np.uint8)
            lab[m] = cls
        if lab is None:
            raise FileNotFoundError(f"no part masks for CelebAMask-HQ image {idx} in {folder}")
        return lab


class FolderPairsDataset(PairDataset):
    """Any folder of image/mask pairs: ``<root>/<split>/images/*`` and ``<root>/<split>/masks/<stem>.png`` (or
    ``<root>/images`` and ``<root>/masks`` when there is no ``<split>`` folder), matched by file stem. Masks hold class
    ids; ids >= ``num_classes`` become ``ignore_index``."""

    IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

    def __init__(self, root: str, split: str = "val", num_classes: int = 256, class_names: Optional[List[str]] = None,
                 ignore_index: int = 255, max_samples: Optional[int] = None, **kw):
        base = os.path.join(root, split) if os.path.isdir(os.path.join(root, split, "images")) else root
        image_dir, mask_dir = os.path.join(base, "images"), os.path.join(base, "masks")
        if not os.path.isdir(image_dir) or not os.path.isdir(mask_dir):
            raise FileNotFoundError(f"expected {image_dir}/ and {mask_dir}/ (image/mask pairs matched by file name)")
        samples = []
        for name in sorted(os.listdir(image_dir)):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in self.IMAGE_EXTENSIONS:
                continue
            mask = os.path.join(mask_dir, stem + ".png")
            if not os.path.isfile(mask):
                raise FileNotFoundError(f"no mask for {os.path.join(image_dir, name)}: {mask}")
            samples.append((os.path.join(image_dir, name), mask))
        self.num_classes = num_classes
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.ignore_index = ignore_index
        super().__init__(samples[:max_samples] if max_samples else samples, **kw)

    def load_image(self, sample):
        return _load_rgb(sample[0])

    def load_label(self, sample):
        lab = _load_label(sample[1])
        bad = lab >= self.num_classes
        if bad.any():
            lab = lab.astype(np.int64 if self.ignore_index > 255 else lab.dtype, copy=True)
            lab[bad] = self.ignore_index
        return lab


DATASETS = {
    "camvid": CamVidDataset,
    "splitfile": SplitFileDataset,
    "cityscapes": CityscapesDataset,
    "coco_stuff": CocoStuffDataset,
    "celebamask_hq": CelebAMaskHQDataset,
    "folder": FolderPairsDataset,
}


def build_dataset(name: str, root: str, split: str, **kw) -> PairDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name](root, split, **kw)


def collate(batch: List[dict]) -> dict:
    return {"image": torch.stack([b["image"] for b in batch]), "label": torch.stack([b["label"] for b in batch])}
