"""`semflow convert-official`: the authors' face.pt + an SD-1.5 folder -> a SemFlowPipeline folder (offline stand-ins)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from official_fixtures import RESOLUTION, make_tiny_official_checkpoint, make_tiny_sd_folder
from safetensors.torch import save_file

from semflow_pipeline import SemFlowPipeline
from semflow_pipeline.cli import main as cli_main
from semflow_pipeline.convert_official import (CELEBAMASK_HQ_CLASSES, NotAStateDictError, convert_official,
                                               load_official_state_dict, resolve_checkpoint)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    sd = make_tiny_sd_folder(root / "sd")
    checkpoint = make_tiny_official_checkpoint(root / "face.pt")
    out = root / "out"
    assert cli_main(["convert-official", "--checkpoint", str(checkpoint), "--stable-diffusion", str(sd),
                     "-o", str(out)]) == 0
    return {"root": root, "sd": sd, "checkpoint": checkpoint, "out": out}


def test_the_folder_holds_safetensors_the_stored_embedding_and_a_card(converted):
    out = converted["out"]
    files = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    assert {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "empty_prompt_embedding/diffusion_pytorch_model.safetensors",
            "empty_prompt_embedding/prompt_embedding.py", "README.md"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert not [f for f in files if f.startswith(("text_encoder", "tokenizer"))]  # no text encoder at run time
    index = json.loads((out / "model_index.json").read_text())
    assert index["empty_prompt_embedding"] == ["prompt_embedding", "SemFlowPromptEmbedding"]
    assert index["text_encoder"] == [None, None]
    assert index["palette"] == "paper" and index["ignore_index"] == 255
    assert [index["id2label"][str(i)] for i in range(19)] == CELEBAMASK_HQ_CLASSES
    card = (out / "README.md").read_text()
    for needle in ("Wang", "NeurIPS 2024", "MIT", "OpenRAIL", "chaoyangw/semflow",
                   "trust_remote_code=True", "SemFlowPipeline.from_pretrained"):
        assert needle in card, needle


def test_weights_and_embedding_are_the_official_ones(converted):
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = SemFlowPipeline.from_pretrained(converted["out"])
    official = torch.load(converted["checkpoint"], weights_only=True)
    ours = pipe.unet.state_dict()
    assert set(ours) == set(official)
    assert all(torch.equal(ours[k], official[k]) for k in official)
    tokenizer = CLIPTokenizer.from_pretrained(converted["sd"], subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(converted["sd"], subfolder="text_encoder")
    ids = tokenizer([""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder(ids)[0]
    assert pipe.text_encoder is None
    torch.testing.assert_close(pipe.encode_empty_prompt("cpu"), expected)
    assert pipe.scheduler.config.timestep_spacing == "official"


def test_segments_and_synthesizes_with_the_package(converted):
    pipe = SemFlowPipeline.from_pretrained(converted["out"])
    pipe.set_progress_bar_config(disable=True)
    image = np.random.default_rng(0).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    labels = pipe.segment(image, num_inference_steps=2, processing_resolution=RESOLUTION).labels
    assert labels.shape == (1, RESOLUTION, RESOLUTION) and labels.max() < 19
    images = pipe.synthesize(labels[0], num_inference_steps=2, processing_resolution=RESOLUTION, output_type="np",
                             generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, RESOLUTION, RESOLUTION, 3) and np.isfinite(images).all()


def test_loads_with_trust_remote_code_without_the_package(converted, tmp_path):
    pipe = SemFlowPipeline.from_pretrained(converted["out"])
    pipe.set_progress_bar_config(disable=True)
    image = np.random.default_rng(1).integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    labels = np.random.default_rng(2).integers(0, 19, (RESOLUTION, RESOLUTION))
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "labels.npy", labels)
    kw = dict(num_inference_steps=2, processing_resolution=RESOLUTION)
    np.save(tmp_path / "seg.npy", pipe.segment(image, **kw).labels)
    np.save(tmp_path / "syn.npy", pipe.synthesize(labels, output_type="np", generator=torch.Generator().manual_seed(3),
                                                  **kw).images)
    code = textwrap.dedent(f"""
        import sys, numpy as np, torch
        class Block:  # the package must not be importable: the folder's own code has to do the work
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "semflow_pipeline":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({str(converted["out"])!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        assert type(pipe).__name__ == "SemFlowPipeline" and "semflow_pipeline" not in type(pipe).__module__
        assert type(pipe.empty_prompt_embedding).__name__ == "SemFlowPromptEmbedding"
        assert pipe.text_encoder is None and pipe.scheduler.config.timestep_spacing == "official"
        kw = dict(num_inference_steps=2, processing_resolution={RESOLUTION})
        seg = pipe.segment(np.load({str(tmp_path / "image.npy")!r}), **kw).labels
        assert np.array_equal(seg, np.load({str(tmp_path / "seg.npy")!r}))
        syn = pipe.synthesize(np.load({str(tmp_path / "labels.npy")!r}), output_type="np",
                              generator=torch.Generator().manual_seed(3), **kw).images
        np.testing.assert_allclose(syn, np.load({str(tmp_path / "syn.npy")!r}), atol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


class Payload:  # a pickled object: torch.load(weights_only=True) must not run or build it
    pass


def test_refuses_anything_but_a_plain_tensor_state_dict(tmp_path):
    torch.save({"w": torch.zeros(1), "obj": Payload()}, tmp_path / "pickle.pt")
    with pytest.raises(NotAStateDictError, match="weights_only"):
        load_official_state_dict(tmp_path / "pickle.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "step": 3}, tmp_path / "nested.pt")
    with pytest.raises(NotAStateDictError, match="not a plain tensor state dict.*state_dict"):
        load_official_state_dict(tmp_path / "nested.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(NotAStateDictError, match="holds a list"):
        load_official_state_dict(tmp_path / "list.pt")
    torch.save({"module.w": torch.ones(2)}, tmp_path / "ddp.pt")
    assert list(load_official_state_dict(tmp_path / "ddp.pt")) == ["w"]


def test_cli_reports_a_wrong_checkpoint_and_refuses_a_full_folder(converted, tmp_path, capsys):
    torch.save({"conv_in.weight": torch.zeros(3)}, tmp_path / "small.pt")
    rc = cli_main(["convert-official", "--checkpoint", str(tmp_path / "small.pt"), "--stable-diffusion",
                   str(converted["sd"]), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and "does not fit the UNet" in err and "missing keys" in err
    rc = cli_main(["convert-official", "--checkpoint", str(converted["checkpoint"]), "--stable-diffusion",
                   str(converted["sd"]), "-o", str(converted["out"])])
    assert rc == 1 and "--overwrite" in capsys.readouterr().err


def test_a_precomputed_embedding_replaces_the_text_encoder(converted, tmp_path):
    sd = make_tiny_sd_folder(tmp_path / "sd_no_text", text_encoder=False)
    embedding = torch.randn(1, 77, 16)
    save_file({"prompt_embeds": embedding}, str(tmp_path / "null.safetensors"))
    pipe = convert_official(converted["checkpoint"], str(sd), tmp_path / "out",
                            prompt_embedding=tmp_path / "null.safetensors")
    torch.testing.assert_close(pipe.encode_empty_prompt("cpu"), embedding)
    loaded = SemFlowPipeline.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(loaded.encode_empty_prompt("cpu"), embedding)


def test_hub_checkpoint_names_are_downloaded_with_hf_hub_download(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda **kw: calls.append(kw) or "/cache/face.pt")
    assert resolve_checkpoint("chaoyangw/semflow/face.pt") == "/cache/face.pt"
    assert calls == [{"repo_id": "chaoyangw/semflow", "filename": "face.pt"}]
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        resolve_checkpoint(str(tmp_path / "missing.pt"))


def test_evaluate_scores_the_converted_model_on_a_folder_of_pairs(converted, tmp_path):
    import json as _json

    from training.evaluate import main as evaluate_main

    rng = np.random.default_rng(4)
    (tmp_path / "pairs" / "images").mkdir(parents=True)
    (tmp_path / "pairs" / "masks").mkdir()
    from PIL import Image
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)).save(
            tmp_path / "pairs" / "images" / f"{i}.jpg")
        Image.fromarray(rng.choice([*range(19), 255], (RESOLUTION, RESOLUTION)).astype(np.uint8)).save(
            tmp_path / "pairs" / "masks" / f"{i}.png")
    res = evaluate_main(["--model", str(converted["out"]), "--dataset", "folder", "--data-root",
                         str(tmp_path / "pairs"), "--num-inference-steps", "1", "2", "--processing-resolution",
                         str(RESOLUTION), "--json", str(tmp_path / "eval.json")])
    rows = res["segmentation"]
    assert [r["name"] for r in rows] == ["SemFlow 1 step", "SemFlow 2 steps"]
    assert all(0.0 <= r["miou"] <= 1.0 and len(r["iou"]) == 19 for r in rows)
    assert res["class_names"] == CELEBAMASK_HQ_CLASSES and res["num_images"] == 2
    assert _json.loads((tmp_path / "eval.json").read_text())["segmentation"][1]["miou"] == rows[1]["miou"]
