import os
import shutil
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
from diffusers import DiffusionPipeline

from semflow_pipeline import SemFlowPipeline
from semflow_pipeline.cli import main
from semflow_tiny import tiny_pixel_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tiny_pixel_pipeline().save_pretrained(path)
    (path / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# tiny\n")
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        PIL.Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def test_segment_folder_writes_label_and_colour_pngs(model_dir, photos, tmp_path, capsys):
    (photos / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    code = main(["segment", str(photos), "-o", str(out), "--model", str(model_dir), "--num-inference-steps", "2"])
    assert code == 1  # one input failed ...
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_{k}.png" for n in "abc" for k in ("labels", "color"))
    pipe = SemFlowPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe.segment(PIL.Image.open(photos / "b.png"), num_inference_steps=2).labels[0]
    assert np.array_equal(np.asarray(PIL.Image.open(out / "b_labels.png")), expected)  # ... the others are kept


def test_synthesize_is_seeded_per_mask(model_dir, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(2):
        PIL.Image.fromarray(np.full((30, 40), 3 + i, np.uint8), mode="L").save(masks / f"m{i}.png")
    args = ["synthesize", str(masks), "--model", str(model_dir), "--num-samples", "2", "--seed", "7",
            "--perturbation", "0.3"]
    assert main(args + ["-o", str(tmp_path / "o1")]) == 0
    assert main(args + ["-o", str(tmp_path / "o2")]) == 0
    names = sorted(p.name for p in (tmp_path / "o1").iterdir())
    assert names == ["m0_sample0.png", "m0_sample1.png", "m1_sample0.png", "m1_sample1.png"]
    for n in names:
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "o1" / n)),
                              np.asarray(PIL.Image.open(tmp_path / "o2" / n)))
    a, b = (np.asarray(PIL.Image.open(tmp_path / "o1" / f"m0_sample{k}.png")) for k in range(2))
    assert not np.array_equal(a, b)


def test_missing_model_and_inputs_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(SystemExit, match="model folder not found"):
        main(["segment", str(model_dir / "README.md"), "-o", str(tmp_path), "--model", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="no such file"):
        main(["segment", str(tmp_path / "missing.png"), "-o", str(tmp_path), "--model", str(model_dir)])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model_dir, corrupt)
    (corrupt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    photo = tmp_path / "p.png"
    PIL.Image.new("RGB", (8, 8)).save(photo)
    with pytest.raises(SystemExit, match="could not load the model"):
        main(["segment", str(photo), "-o", str(tmp_path / "o"), "--model", str(corrupt)])


def test_accelerate_launch_splits_files_across_two_processes(model_dir, photos, tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # Through sys.executable, not PATH: the tests also run with the venv not activated (`venv/bin/pytest`).
    subprocess.run([sys.executable, "-m", "semflow_pipeline.cli", "segment", str(photos), "-o", str(out1),
                    "--model", str(model_dir)],
                   check=True, env=env, capture_output=True, timeout=300)
    # `--cpu --num_processes 2` starts a single process in accelerate 1.x; the multi-process launcher with no
    # visible GPU gives two real CPU processes (gloo).
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "semflow_pipeline.cli",
         "segment", str(photos), "-o", str(out2), "--model", str(model_dir)],
        env=dict(env, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "process 1/2: 2 files" in launched.stderr and "process 2/2: 1 files" in launched.stderr
    names = sorted(p.name for p in out1.iterdir())
    assert names == sorted(p.name for p in out2.iterdir()) and len(names) == 6
    for n in names:
        assert np.array_equal(np.asarray(PIL.Image.open(out1 / n)), np.asarray(PIL.Image.open(out2 / n)))


def test_push_dry_run_lists_a_complete_loadable_repo(model_dir, tmp_path, capsys):
    (model_dir / "unet" / "__pycache__").mkdir(exist_ok=True)
    (model_dir / "unet" / "__pycache__" / "x.pyc").write_bytes(b"")
    assert main(["push", str(model_dir), "user/semflow-tiny", "--dry-run"]) == 0
    listed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert "README.md" in listed and "unet/diffusion_pytorch_model.safetensors" in listed
    assert not any("__pycache__" in f for f in listed)
    repo = tmp_path / "repo"  # exactly the listed files, as the Hub would hold them
    for f in listed:
        (repo / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir / f, repo / f)
    assert isinstance(SemFlowPipeline.from_pretrained(repo), SemFlowPipeline)
    remote = DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)
    assert type(remote).__name__ == "SemFlowPipeline"


def test_push_refuses_an_incomplete_folder(model_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    (partial / "pipeline_semflow.py").unlink()
    with pytest.raises(SystemExit, match="pipeline_semflow.py"):
        main(["push", str(partial), "user/x", "--dry-run"])


# ------------------------------------------------------------------------ issue 17 items 9-11: CLI rough edges
def _help(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_synthesize_help_names_the_synthesis_defaults(capsys):
    text = _help("synthesize", capsys)
    assert "default_synthesis_num_inference_steps" in text and "default_synthesis_perturbation" in text
    assert "default_synthesis" not in _help("segment", capsys)


def test_synthesize_uses_the_model_perturbation_when_none_is_given(model_dir, tmp_path, monkeypatch):
    seen = []
    real = SemFlowPipeline.synthesize

    def spy(self, *args, **kwargs):
        seen.append((kwargs["num_inference_steps"], kwargs["perturbation"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SemFlowPipeline, "synthesize", spy)
    PIL.Image.fromarray(np.full((16, 16), 3, np.uint8)).save(tmp_path / "m.png")
    assert main(["synthesize", str(tmp_path / "m.png"), "-o", str(tmp_path / "o"), "--model", str(model_dir)]) == 0
    assert seen == [(None, None)]  # the pipeline reads both from the model's config


@pytest.mark.parametrize("argv,message", [
    (["segment", "--num-inference-steps", "0"], "must be a positive integer"),
    (["segment", "--num-inference-steps", "1.5"], "must be a positive integer"),
    (["segment", "--processing-resolution", "-1"], "non-negative integer"),
    (["synthesize", "--num-samples", "0"], "must be a positive integer"),
    (["synthesize", "--perturbation", "-0.1"], "non-negative number"),
    (["synthesize", "--perturbation", "nan"], "non-negative number"),
])
def test_bad_arguments_are_refused_before_anything_is_loaded(argv, message, tmp_path, monkeypatch, capsys):
    loads = []
    monkeypatch.setattr("semflow_pipeline.cli.load_pipeline", lambda *a: loads.append(a))
    PIL.Image.fromarray(np.full((16, 16), 3, np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit) as e:
        main([argv[0], str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), *argv[1:]])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not loads and not (tmp_path / "o").exists()


def test_steps_above_the_limit_are_refused_before_loading(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr("semflow_pipeline.cli.load_pipeline", lambda *a: loads.append(a))
    PIL.Image.fromarray(np.full((16, 16), 3, np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(SystemExit, match="above the pipeline's limit of 100"):
        main(["synthesize", str(tmp_path / "x.png"), "-o", str(tmp_path / "o"), "--num-inference-steps", "101"])
    assert not loads


def test_same_file_name_in_two_folders_gets_no_meaningless_rename_message(tmp_path, capsys):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        PIL.Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / sub / "a.png")
    with pytest.raises(SystemExit, match="would write the same output files"):
        main(["segment", str(tmp_path / "x"), str(tmp_path / "y"), "-o", str(tmp_path / "o")])
    assert "share the name" not in capsys.readouterr().err
    # With a third file (a.bmp) the names still clash: the refusal, without a rename that lists a.png twice.
    PIL.Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x" / "a.bmp")
    with pytest.raises(SystemExit, match="would write the same output files"):
        main(["segment", str(tmp_path / "x"), str(tmp_path / "y"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "a.png, a.png" not in err and "a_png_*, a_png_*" not in err


@pytest.mark.parametrize("command", ["segment", "synthesize"])
def test_output_dir_that_is_a_file_is_a_clear_error(model_dir, photos, tmp_path, command):
    """Issue 18 item 8: `-o existing_file.png` used to end in a FileExistsError traceback."""
    existing = tmp_path / "existing_file.png"
    existing.write_bytes(b"keep me")
    with pytest.raises(SystemExit, match=r"-o .*existing_file.png: that is an existing file, not a folder"):
        main([command, str(photos / "a.png"), "-o", str(existing), "--model", str(model_dir)])
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(SystemExit, match="cannot create the output folder"):
        main([command, str(photos / "a.png"), "-o", str(existing / "sub"), "--model", str(model_dir)])
    done = subprocess.run([sys.executable, "-m", "semflow_pipeline.cli", command, str(photos / "a.png"), "-o",
                           str(existing), "--model", str(model_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "not a folder" in done.stderr and "Traceback" not in done.stderr
