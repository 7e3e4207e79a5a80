"""The paper-scale configs (latent mode on SD-1.5, CelebAMask-HQ / Cityscapes / COCO-Stuff): their values are the
paper's, and each runs 2 training steps on CPU with tiny random SD-1.5-layout weights and a few generated images in
that dataset's own folder layout (2 steps, batch 2, 64 px; everything else from the config file)."""

import csv
import os

import numpy as np
import pytest
import yaml
from official_fixtures import make_tiny_sd_folder
from PIL import Image

from semflow_pipeline import SemFlowPipeline
from training.data import CITYSCAPES_ID_TO_TRAINID, build_dataset
from training.train_semflow import main as train_main

CONFIGS = "training/configs"
PAPER = {  # (lr, steps, batch per process, schedule, warm-up, precision): the authors' configs/*.yaml
    "sd15_celebamask_hq.yaml": (2e-5, 80000, 32, "linear", 500, "bf16"),
    "sd15_cityscapes.yaml": (5e-5, 8000, 32, "linear", 500, "bf16"),
    "sd15_coco_stuff.yaml": (1e-5, 320000, 16, "constant", 10000, "no"),
}


def _png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _photo(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_celebamask_hq(root, n=3):
    """The download's layout: CelebA-HQ-img/<i>.jpg (larger than the masks), per-part masks, <split>.txt."""
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(f"{root}/CelebA-HQ-img/{i}.jpg", _photo(rng, 96, 96))
        for part in ("skin", "hair", "l_eye"):
            _png(f"{root}/CelebAMask-HQ-mask-anno/{i // 2000}/{i:05d}_{part}.png",
                 (rng.random((48, 48)) > 0.5).astype(np.uint8) * 255)
    for split, ids in (("train", range(n - 1)), ("val", [n - 1])):
        with open(f"{root}/{split}.txt", "w") as f:
            f.write("".join(f"{i}\n" for i in ids))


def make_cityscapes(root, n=2):
    """leftImg8bit/<split>/<city>/ + gtFine trainIds (train) or only the shipped labelIds (val)."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for i in range(n):
            stem = f"{root}/%s/{split}/aachen/aachen_{i:06d}_000019"
            _png(f"{stem % 'leftImg8bit'}_leftImg8bit.png", _photo(rng, 64, 128))
            if split == "train":
                _png(f"{stem % 'gtFine'}_gtFine_labelTrainIds.png",
                     rng.choice([*range(19), 255], (64, 128)).astype(np.uint8))
            else:
                _png(f"{stem % 'gtFine'}_gtFine_labelIds.png", rng.integers(0, 34, (64, 128)).astype(np.uint8))


def make_coco_stuff(root, n=2):
    """images/<split>2017/*.jpg + annotations/<split>2017/*.png (stuffthingmaps ids 0..181, 255 unlabelled)."""
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for i in range(n):
            _png(f"{root}/images/{split}2017/{i:012d}.jpg", _photo(rng, 80, 96))
            _png(f"{root}/annotations/{split}2017/{i:012d}.png",
                 rng.choice([*range(182), 255], (80, 96)).astype(np.uint8))


LAYOUTS = {
    "sd15_celebamask_hq.yaml": (make_celebamask_hq, [64, 64], 19),
    "sd15_cityscapes.yaml": (make_cityscapes, [64, 128], 19),
    "sd15_coco_stuff.yaml": (make_coco_stuff, [64, 64], 171),
}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return make_tiny_sd_folder(tmp_path_factory.mktemp("sd15") / "sd")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_config_has_the_papers_values(name):
    with open(os.path.join(CONFIGS, name)) as f:
        cfg = yaml.safe_load(f)
    lr, steps, batch, schedule, warmup, precision = PAPER[name]
    assert (cfg["learning_rate"], cfg["train_steps"], cfg["batch_size"]) == (lr, steps, batch)
    assert (cfg["lr_schedule"], cfg["warmup_steps"], str(cfg["mixed_precision"])) == (schedule, warmup, precision)
    assert cfg["mode"] == "latent" and cfg["palette"] == "paper" and cfg["prediction_type"] == "velocity"
    assert cfg["pretrained_model_name_or_path"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cfg["perturbation"] == 0.05 and cfg["t_sampling"] == "uniform" and cfg["timestep_spacing"] == "official"
    assert (cfg["weight_decay"], cfg["max_grad_norm"], cfg["seed"]) == (0.01, 1.0, 123)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_config_trains_two_steps_on_cpu(name, tiny_sd, tmp_path):
    make_layout, resolution, num_classes = LAYOUTS[name]
    data = tmp_path / "data"
    make_layout(str(data))
    out = tmp_path / "run"
    result = train_main([
        "--config", os.path.join(CONFIGS, name), "--data_root", str(data), "--pretrained_model_name_or_path",
        str(tiny_sd), "--output_dir", str(out),
        "--set", "train_steps=2", "batch_size=2", f"resolution={resolution}", "mixed_precision=no", "num_workers=2",
        "checkpointing_steps=0", "val_every=0", "final_eval=false", "log_every=1", "tensorboard=false",
        f"processing_resolution={max(resolution)}",
    ])
    assert result["steps"] == 2
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2] and all(np.isfinite(float(r["loss"])) for r in rows)
    pipe = SemFlowPipeline.from_pretrained(out / "final")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.num_classes == num_classes and pipe.config.palette == "paper" and pipe.vae is not None
    assert pipe.empty_prompt_embedding is not None and pipe.text_encoder is None
    assert pipe.scheduler.config.timestep_spacing == "official"
    image = np.random.default_rng(0).integers(0, 256, (resolution[0], resolution[1], 3), dtype=np.uint8)
    labels = pipe.segment(image, num_inference_steps=2).labels
    assert labels.shape == (1, *resolution)


def test_dataset_layouts_read_back(tmp_path):
    # CelebAMask-HQ in the authors' preprocessed layout: CelebA-512-img, CelebAMask-HQ-mergemask, metas/<split>.txt
    root = tmp_path / "celeb"
    _png(f"{root}/CelebA-512-img/7.jpg", np.zeros((32, 32, 3), np.uint8))
    merged = np.arange(32 * 32).reshape(32, 32) % 19
    _png(f"{root}/CelebAMask-HQ-mergemask/7.png", merged.astype(np.uint8))
    os.makedirs(root / "metas")
    (root / "metas" / "val.txt").write_text("7\n")
    ds = build_dataset("celebamask_hq", str(root), "val")
    assert len(ds) == 1 and np.array_equal(ds.raw(0)[1].numpy(), merged)
    # Cityscapes labelIds (no trainIds files) are mapped to trainIds
    city = tmp_path / "city"
    make_cityscapes(str(city), n=1)
    ds = build_dataset("cityscapes", str(city), "val")
    lab_ids = np.asarray(Image.open(next((city / "gtFine" / "val" / "aachen").glob("*_labelIds.png"))))
    want = np.full(lab_ids.shape, 255)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        want[lab_ids == label_id] = train_id
    assert np.array_equal(ds.raw(0)[1].numpy(), want)
    # any folder of image/mask pairs
    pairs = tmp_path / "pairs"
    _png(f"{pairs}/images/a.jpg", np.zeros((16, 16, 3), np.uint8))
    _png(f"{pairs}/masks/a.png", np.full((16, 16), 40, np.uint8))
    ds = build_dataset("folder", str(pairs), "val", num_classes=19, ignore_index=255)
    assert len(ds) == 1 and int(ds.raw(0)[1].max()) == 255


def test_deepspeed_zero2_accelerate_config_parses():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file("training/accelerate/deepspeed_zero2.yaml")
    assert config.distributed_type.value == "DEEPSPEED"
    assert config.deepspeed_config["zero_stage"] == 2 and config.mixed_precision == "bf16"
