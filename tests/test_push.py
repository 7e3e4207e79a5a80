"""`semflow push`: what it checks before uploading (the folder loads, no symlink out of it, intact safetensors,
no pickle files), and how it talks to the Hub (visibility, branches, pull requests, stale files, tokens, clean
errors). Offline: HfApi is replaced by a recorder."""

import os
import shutil
import subprocess
import sys

import httpx
import huggingface_hub
import pytest
from huggingface_hub.errors import HfHubHTTPError

from semflow_pipeline.cli import main
from semflow_tiny import tiny_pixel_pipeline

REPO = "someone/semflow-tiny"
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    tiny_pixel_pipeline().save_pretrained(path)
    (path / "README.md").write_text(f'---\nlibrary_name: diffusers\n---\n# tiny\n\nfrom_pretrained("{REPO}")\n')
    return path


@pytest.fixture
def model_dir(saved, tmp_path):
    """A fresh copy per test: tests break it in different ways."""
    return shutil.copytree(saved, tmp_path / "model")


class FakeHub:
    """Records HfApi calls; ``fail`` maps a method name to the exception it raises."""

    def __init__(self):
        self.calls, self.fail, self.tokens = [], {}, []

    def api(self, token=None):
        self.tokens.append(token)
        hub = self

        class Api:
            def __getattr__(self, name):
                def call(*args, **kwargs):
                    hub.calls.append((name, args, kwargs))
                    if name in hub.fail:
                        raise hub.fail[name]
                    return f"https://huggingface.co/{REPO}/commit/abc" if name == "upload_folder" else None
                return call

        return Api()

    def named(self, name):
        return [kw | {"args": a} for n, a, kw in self.calls if n == name]


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_from_login")
    return fake


def test_push_uploads_the_checked_files_and_deletes_stale_ones(model_dir, hub, capsys):
    assert main(["push", str(model_dir), REPO]) == 0
    (create,), (upload,) = hub.named("create_repo"), hub.named("upload_folder")
    assert create["args"] == (REPO,) and create["exist_ok"] is True and create["private"] is False
    assert upload["repo_id"] == REPO and upload["folder_path"] == str(model_dir)
    assert WEIGHTS in upload["allow_patterns"] and "README.md" in upload["allow_patterns"]
    assert upload["delete_patterns"] == "*"  # files of an older upload that are no longer in the folder go
    assert upload["revision"] is None and upload["create_pr"] is None
    assert hub.tokens == ["hf_from_login"] and not hub.named("update_repo_settings")
    assert "Uploaded" in capsys.readouterr().out


def test_keep_remote_files(model_dir, hub):
    assert main(["push", str(model_dir), REPO, "--keep-remote-files"]) == 0
    assert hub.named("upload_folder")[0]["delete_patterns"] is None


def test_private_applies_to_an_existing_repo(model_dir, hub, capsys):
    assert main(["push", str(model_dir), REPO, "--private"]) == 0
    assert hub.named("create_repo")[0]["private"] is True
    (update,) = hub.named("update_repo_settings")  # create_repo(exist_ok=True) alone keeps a public repo public
    assert update["args"] == (REPO,) and update["private"] is True
    assert f"{REPO} is private" in capsys.readouterr().err


def test_revision_and_pull_request(model_dir, hub):
    assert main(["push", str(model_dir), REPO, "--revision", "v2"]) == 0
    assert hub.named("create_branch")[0]["branch"] == "v2" and hub.named("create_branch")[0]["exist_ok"] is True
    assert hub.named("upload_folder")[0]["revision"] == "v2"
    hub.calls.clear()
    assert main(["push", str(model_dir), REPO, "--create-pr"]) == 0
    assert hub.named("upload_folder")[0]["create_pr"] is True and not hub.named("create_branch")
    hub.calls.clear()
    assert main(["push", str(model_dir), REPO, "--revision", "refs/pr/3"]) == 0  # a commit to an open PR
    assert hub.named("upload_folder")[0]["revision"] == "refs/pr/3" and not hub.named("create_branch")
    with pytest.raises(SystemExit, match="--create-pr opens a pull request against main"):
        main(["push", str(model_dir), REPO, "--create-pr", "--revision", "v2"])


def test_token_comes_from_the_environment_or_login_not_the_command_line(model_dir, hub, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", str(model_dir), REPO]) == 1
    assert "hf auth login" in capsys.readouterr().err and not hub.calls
    assert main(["push", str(model_dir), REPO, "--token", "hf_typed"]) == 0  # still accepted, with a warning
    assert hub.tokens == ["hf_typed"] and "--token is deprecated" in capsys.readouterr().err


@pytest.mark.parametrize("step,status,hint", [("create_repo", 401, "hf auth login"),
                                              ("upload_folder", 403, "write token"),
                                              ("update_repo_settings", 404, "not found")])
def test_hub_errors_are_a_message_and_exit_code(model_dir, hub, capsys, step, status, hint):
    response = httpx.Response(status, request=httpx.Request("POST", "https://huggingface.co/api/x"))
    hub.fail[step] = HfHubHTTPError(f"{status} Client Error: for url https://huggingface.co/api/x", response=response)
    assert main(["push", str(model_dir), REPO, "--private"]) == 1
    err = capsys.readouterr().err
    assert f"semflow: push to {REPO} failed" in err and hint in err and "Traceback" not in err


def test_a_real_hub_client_offline_fails_cleanly(model_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_TOKEN="hf_not_a_real_token")
    done = subprocess.run([sys.executable, "-m", "semflow_pipeline.cli", "push", str(model_dir), REPO],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1
    assert "failed (create the repo)" in done.stderr and "HF_HUB_OFFLINE" in done.stderr
    assert "Traceback" not in done.stderr


def test_dry_run_checks_everything_and_touches_no_hub(model_dir, hub, capsys):
    hub.fail["create_repo"] = AssertionError("dry run must not call the Hub")
    assert main(["push", str(model_dir), REPO, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert WEIGHTS in out and not hub.calls and not hub.tokens
    assert "load as a SemFlow pipeline" in err and "would be deleted" in err


@pytest.mark.parametrize("name", ["extra.pickle", "scaler.joblib", "unet/model.pt", "unet/model.pth",
                                  "pytorch_model.bin", "model.ckpt", "stats.pkl", "unet/OLD.PT"])
def test_pickle_files_are_refused(model_dir, name):
    (model_dir / name).write_bytes(b"\x80\x04N.")
    with pytest.raises(SystemExit, match="pickle-based"):
        main(["push", str(model_dir), REPO, "--dry-run"])


def test_a_folder_that_does_not_load_is_refused(model_dir):
    (model_dir / "scheduler" / "scheduler_config.json").write_text("{")
    with pytest.raises(SystemExit, match="does not load with SemFlowPipeline.from_pretrained"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    (model_dir / "unet" / "config.json").unlink()  # the weights cannot even be compared with a model
    with pytest.raises(SystemExit, match=r"unet: cannot build diffusers.UNet2DModel from its config"):
        main(["push", str(model_dir), REPO, "--dry-run"])


def test_truncated_or_corrupt_weights_are_refused(model_dir):
    weights = model_dir / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])
    with pytest.raises(SystemExit, match=rf"corrupt safetensors weights:\n  {WEIGHTS}: truncated"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="truncated"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    weights.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="too short"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    weights.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(SystemExit, match="does not fit the file"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    weights.write_bytes(data + b"extra")
    with pytest.raises(SystemExit, match="data section"):
        main(["push", str(model_dir), REPO, "--dry-run"])


def test_symlinks_out_of_the_folder_are_refused(model_dir, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    (model_dir / "notes.txt").symlink_to(secret)
    with pytest.raises(SystemExit, match=r"notes.txt -> .*secret.txt \(outside the folder\)"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    (model_dir / "notes.txt").unlink()
    (model_dir / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SystemExit, match="passwd -> /etc/passwd"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    (model_dir / "passwd").unlink()
    (model_dir / "gone").symlink_to(tmp_path / "missing")
    with pytest.raises(SystemExit, match="dangling"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    (model_dir / "gone").unlink()
    (model_dir / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SystemExit, match="a linked folder"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    (model_dir / "elsewhere").unlink()
    (model_dir / "card.md").symlink_to(model_dir / "README.md")  # inside the folder: uploaded as a file
    capsys.readouterr()
    assert main(["push", str(model_dir), REPO, "--dry-run"]) == 0
    assert "card.md" in capsys.readouterr().out


def test_a_card_that_loads_another_repo_is_flagged(model_dir, capsys):
    assert main(["push", str(model_dir), "other/name", "--dry-run"]) == 0
    assert "does not load 'other/name'" in capsys.readouterr().err


# ------------------------------------------------------------------- issue 18: items 12-15 (push checks)
def _torch_zip(path):
    import torch
    torch.save({"w": torch.zeros(2)}, path)


def _pickle(protocol):
    import pickle
    return lambda path: path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))


def _object_npy(path):
    import io

    import numpy as np
    buf = io.BytesIO()
    np.save(buf, np.array([{"w": 1}], dtype=object), allow_pickle=True)
    path.write_bytes(buf.getvalue())


def _zipped_pickle(path):
    import io
    import pickle
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model.ckpt", pickle.dumps({"w": 1}))
    path.write_bytes(buf.getvalue())


def _gzipped_pickle(path):
    import gzip
    import pickle
    path.write_bytes(gzip.compress(pickle.dumps({"w": 1})))


@pytest.mark.parametrize("name,make", [
    ("weights.pth.tar", _torch_zip), ("stats.npy", _object_npy), ("no_suffix", _pickle(4)),
    ("model.ckpt.zip", _zipped_pickle), ("blob.dat", _pickle(2)), ("state.pickle5", _pickle(5)),
    ("unet/optimizer.bin.bak", _torch_zip), ("scaler.joblib.gz", _gzipped_pickle), ("archive.zip", _torch_zip),
    ("notes.txt", _pickle(0)),  # a protocol-0 pickle has no binary header at all
])
def test_pickles_are_found_by_content_not_suffix(model_dir, name, make):
    """Issue 18 item 12: these were listed under "Would upload" (exit 0)."""
    make(model_dir / name)
    with pytest.raises(SystemExit, match=rf"pickle-based files.*\n  {name} \("):
        main(["push", str(model_dir), REPO, "--dry-run"])


def test_content_check_passes_ordinary_files(model_dir, tmp_path):
    import gzip
    import io
    import zipfile

    import numpy as np

    from semflow_pipeline.cli import pickle_content
    tmp_path = tmp_path / "plain"
    tmp_path.mkdir()
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 3), np.float32))
    (tmp_path / "a.npy").write_bytes(buf.getvalue())
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("readme.txt", "hello (not a pickle)")
    (tmp_path / "a.zip").write_bytes(zbuf.getvalue())
    (tmp_path / "a.gz").write_bytes(gzip.compress(b'{"json": true}'))
    (tmp_path / "empty").write_bytes(b"")
    for f in [*tmp_path.iterdir(), *(p for p in model_dir.rglob("*") if p.is_file())]:
        assert pickle_content(f) is None, f


def _rewrite_header(path, change):
    """Rewrites a safetensors header with ``change(header)`` keeping the data bytes (and offsets) as they are."""
    import json
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _rename_conv_in_bias(h):
    h["renamed.weight"] = h.pop("conv_in.bias")


def _reshape_conv_in_bias(h):
    h["conv_in.bias"]["shape"] = [2, 4]  # same byte count


def _drop_conv_in_bias(h):
    h.pop("conv_in.bias")


@pytest.mark.parametrize("change,expect", [
    (_rename_conv_in_bias, r"missing tensors.*conv_in.bias(.|\n)*unexpected tensors.*renamed.weight"),
    (_reshape_conv_in_bias, r"wrong shape.*conv_in.bias \[2, 4\] \(the model has \[8\]\)"),
    (_drop_conv_in_bias, r"conv_in.bias"),  # leaves a hole in the data: refused as corrupt
])
def test_weights_must_match_the_model_exactly(model_dir, change, expect):
    """Issue 18 item 13: a header key renamed (same offsets) passed; diffusers only warned and initialised it."""
    from semflow_pipeline.cli import safetensors_problem
    weights = model_dir / WEIGHTS
    _rewrite_header(weights, change)
    if change is not _drop_conv_in_bias:
        assert safetensors_problem(weights) is None  # a valid file: only the model comparison catches it
    with pytest.raises(SystemExit, match=expect):
        main(["push", str(model_dir), REPO, "--dry-run"])


def test_non_finite_weights_are_refused(model_dir):
    import torch
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(model_dir / WEIGHTS))
    tensors["conv_out.weight"][0, 0, 0, 0] = float("nan")
    tensors["conv_in.bias"][3] = float("inf")
    save_file(tensors, str(model_dir / WEIGHTS), metadata={"format": "pt"})
    with pytest.raises(SystemExit, match="non-finite values.*conv_in.bias, conv_out.weight"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    assert torch.isnan(load_file(str(model_dir / WEIGHTS))["conv_out.weight"]).any()


def test_named_pipes_and_sockets_are_refused(model_dir):
    """Issue 18 item 14: a named pipe ended in shutil.SpecialFileError."""
    import socket
    os.mkfifo(model_dir / "pipe")
    with pytest.raises(SystemExit, match=r"not regular files(.|\n)*pipe \(a named pipe\)"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    os.unlink(model_dir / "pipe")
    os.mkfifo(model_dir.parent / "outside_pipe")
    (model_dir / "link").symlink_to(model_dir / "unet" / "pipe2")
    os.mkfifo(model_dir / "unet" / "pipe2")
    with pytest.raises(SystemExit, match=r"link \(a named pipe\)(.|\n)*unet/pipe2 \(a named pipe\)"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    for p in (model_dir / "link", model_dir / "unet" / "pipe2"):
        p.unlink()
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(model_dir / "s.sock"))
        with pytest.raises(SystemExit, match=r"s.sock \(a socket\)"):
            main(["push", str(model_dir), REPO, "--dry-run"])
    finally:
        sock.close()


EVIL = ("import os\nwith open({marker!r}, 'a') as _f:\n    _f.write('ran token=%s\\n' % os.environ.get('HF_TOKEN'))\n")


@pytest.mark.parametrize("where", ["pipeline_semflow.py", "scheduler/scheduling_semflow.py", "anchors.py"])
def test_dry_run_never_executes_the_folders_code(model_dir, tmp_path, hub, where):
    """Issue 18 item 15: the trust_remote_code load check ran the folder's own pipeline_semflow.py."""
    marker = tmp_path / "executed.txt"
    path = model_dir / where
    path.write_text(path.read_text() + EVIL.format(marker=str(marker)))
    with pytest.raises(SystemExit, match=rf"code is not this package's:\n  {where} \(differs(.|\n)*was not run"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    assert not marker.exists() and not hub.calls


def test_dry_run_refuses_extra_code_and_custom_components(model_dir, tmp_path, hub):
    marker = tmp_path / "executed.txt"
    (model_dir / "unet" / "my_unet.py").write_text(EVIL.format(marker=str(marker)))
    with pytest.raises(SystemExit, match=r"unet/my_unet.py \(not part of SemFlow's code\)"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    (model_dir / "unet" / "my_unet.py").unlink()
    import json
    index = json.loads((model_dir / "model_index.json").read_text())
    index["unet"] = ["my_unet", "UNet2DModel"]
    (model_dir / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(SystemExit, match=r"model_index.json unet = \['my_unet', 'UNet2DModel'\] \(a module of the"):
        main(["push", str(model_dir), REPO, "--dry-run"])
    assert not marker.exists()


def test_a_real_push_of_custom_code_checks_it_in_a_separate_process(model_dir, tmp_path, hub, monkeypatch, capsys):
    marker = tmp_path / "executed.txt"
    path = model_dir / "pipeline_semflow.py"
    path.write_text(path.read_text() + EVIL.format(marker=str(marker)))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    assert main(["push", str(model_dir), REPO]) == 0
    assert "its load checks run in a separate process, offline, without your Hub token" in capsys.readouterr().err
    assert marker.read_text().startswith("ran token=None")  # it ran, but not here and without the token
    assert hub.named("upload_folder")
