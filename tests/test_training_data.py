"""Data loaders on tiny fixtures generated in each dataset's on-disk layout."""

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.data import (  # noqa: E402
    AugmentConfig, CamVidDataset, CelebAMaskHQDataset, CityscapesDataset, CocoStuffDataset, SplitFileDataset,
    augment_pair, build_dataset, coco_stuff_lut,
)
from training.metrics import ConfusionMatrix  # noqa: E402
from training.train_semflow import StepBatches, sample_t  # noqa: E402

CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"


def _save_rgb(path, h, w, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _save_label(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def make_splitfile(root, n=3, h=12, w=16, num_classes=4, ignore=4):
    lines = []
    for i in range(n):
        _save_rgb(os.path.join(root, "img", f"{i}.png"), h, w, i)
        lab = (np.arange(h * w).reshape(h, w) + i) % (num_classes + 1)  # includes the ignore id
        _save_label(os.path.join(root, "lab", f"{i}.png"), lab)
        lines.append(f"img/{i}.png lab/{i}.png")
    (Path(root) / "train.txt").write_text("\n".join(lines) + "\n")


def test_split_file_loader_shapes_ranges_and_ignore(tmp_path):
    make_splitfile(tmp_path)
    ds = SplitFileDataset(str(tmp_path), "train", num_classes=4, ignore_index=4, size=(8, 8), train=True,
                          aug=AugmentConfig(1.0, 2.0, True), preload=True)
    assert len(ds) == 3
    item = ds[1]
    assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
    assert -1 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    assert item["label"].shape == (8, 8) and item["label"].dtype == torch.long
    assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3, 4}
    full = SplitFileDataset(str(tmp_path), "train", num_classes=4, ignore_index=4)[0]
    assert full["image"].shape == (3, 12, 16) and full["label"].shape == (12, 16)
    # Same (epoch, index) -> same augmentation (resume replays it); another epoch -> a new draw.
    a, b = ds[2]["label"], ds[2]["label"]
    assert torch.equal(a, b)


def test_split_file_loader_rejects_bad_lines(tmp_path):
    (tmp_path / "val.txt").write_text("only_one_path.png\n")
    with pytest.raises(ValueError, match="image_path label_path"):
        SplitFileDataset(str(tmp_path), "val")
    with pytest.raises(FileNotFoundError):
        SplitFileDataset(str(tmp_path), "test")


def test_augment_keeps_pairs_aligned():
    # The label is a function of the image (class = red > 127), so any misalignment shows.
    rng = np.random.default_rng(0)
    red = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    img = torch.from_numpy(np.stack([red, red, red]))
    lab = torch.from_numpy((red > 127).astype(np.uint8))
    for seed in range(5):
        x, y = augment_pair(img, lab, (30, 40), AugmentConfig(1.0, 1.0, True), 255, random.Random(seed))
        assert torch.equal((x[0] > (127.5 / 127.5 - 1)).long(), y)  # same-size crop: exact pixels
    x, y = augment_pair(img, lab, (12, 16), AugmentConfig(0.5, 0.5, False), 255, random.Random(0))
    assert (y == 255).any()  # zoom-out pads with the ignore id


def test_cityscapes_layout(tmp_path):
    for split, city, stem in [("train", "aachen", "aachen_000000_000019"), ("val", "lindau", "lindau_000001_000019")]:
        _save_rgb(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 8, 16, 0)
        lab = np.full((8, 16), 255, np.uint8)
        lab[:4] = 0
        lab[4:, :8] = 18
        _save_label(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", lab)
    ds = CityscapesDataset(str(tmp_path), "val")
    assert len(ds) == 1 and ds.num_classes == 19 and ds.ignore_index == 255
    lab = ds[0]["label"]
    assert lab[0, 0] == 0 and lab[5, 0] == 18 and lab[5, 15] == 255
    assert isinstance(build_dataset("cityscapes", str(tmp_path), "train"), CityscapesDataset)


def test_coco_stuff_171_mapping(tmp_path):
    lut = coco_stuff_lut()
    assert (lut < 255).sum() == 171 and lut[0] == 0 and lut[11] == 255 and lut[12] == 11 and lut[181] == 170
    _save_rgb(tmp_path / "images" / "val2017" / "000000000139.jpg", 8, 8, 0)
    lab = np.array([[0, 11, 12, 181, 255, 90, 91, 182]] * 8, np.uint8)
    _save_label(tmp_path / "annotations" / "val2017" / "000000000139.png", lab)
    ds = CocoStuffDataset(str(tmp_path), "val")
    assert ds[0]["label"][0].tolist() == [0, 255, 11, 170, 255, 255, 80, 255]


def test_celebamask_hq_parts_merge_in_order(tmp_path):
    _save_rgb(tmp_path / "CelebA-HQ-img" / "2001.jpg", 16, 16, 0)  # images are 2x the masks, as in the release
    folder = tmp_path / "CelebAMask-HQ-mask-anno" / "1"
    skin = np.zeros((8, 8), np.uint8); skin[2:6, 2:6] = 255
    hair = np.zeros((8, 8), np.uint8); hair[:3] = 255
    _save_label(folder / "02001_skin.png", skin)
    _save_label(folder / "02001_hair.png", hair)
    (tmp_path / "train.txt").write_text("2001\n")
    ds = CelebAMaskHQDataset(str(tmp_path), "train")
    item = ds[0]
    assert item["image"].shape == (3, 8, 8)  # brought to the mask's size
    lab = item["label"]
    assert lab[7, 7] == 0 and lab[4, 4] == 1 and lab[2, 3] == 13  # hair (13) drawn over skin (1)
    assert ds.num_classes == 19 and len(ds.class_names) == 19


def test_confusion_matrix_miou():
    cm = ConfusionMatrix(3, ignore_index=3)
    cm.update(np.array([[0, 1, 2, 2]]), np.array([[0, 1, 2, 3]]))  # the ignore pixel is not scored
    assert np.allclose(cm.iou(), [1, 1, 1])
    cm.update(np.array([[0]]), np.array([[1]]))
    assert np.allclose(cm.iou(), [0.5, 0.5, 1.0])


def test_t_sampling_weights_the_ends():
    g = torch.Generator().manual_seed(0)
    t = sample_t({"t_sampling": "ends", "t_zero_prob": 0.5, "t_one_prob": 0.1}, 20000, g)
    assert abs((t == 0).float().mean().item() - 0.5) < 0.02 and abs((t == 1).float().mean().item() - 0.1) < 0.02
    t = sample_t({"t_sampling": "beta", "t_beta_alpha": 0.5}, 20000, g)
    assert 0 <= t.min() and t.max() <= 1 and ((t < 0.1) | (t > 0.9)).float().mean() > 0.3
    t = sample_t({"t_sampling": "uniform"}, 20000, g)
    assert abs(t.mean().item() - 0.5) < 0.02


def test_step_batches_shard_across_processes_and_replay(tmp_path):
    make_splitfile(tmp_path, n=6)
    ds = SplitFileDataset(str(tmp_path), "train", num_classes=4, ignore_index=4, size=(8, 8), train=True)
    p0, p1 = StepBatches(ds, 2, 2, 0, seed=1), StepBatches(ds, 2, 2, 1, seed=1)
    b0, b1 = p0(5), p1(5)
    assert b0["image"].shape == (2, 3, 8, 8) and not torch.equal(b0["image"], b1["image"])
    assert torch.equal(StepBatches(ds, 2, 2, 0, seed=1)(5)["label"], b0["label"])  # a resumed run sees the same


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/datasets/camvid not present")
def test_camvid_real_pairs():
    ds = CamVidDataset(str(CAMVID), "val", max_samples=2)
    item = ds[0]
    assert item["image"].shape == (3, 360, 480) and item["label"].shape == (360, 480)
    assert int(item["label"].max()) <= 11
