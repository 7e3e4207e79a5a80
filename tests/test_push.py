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
    (model_dir / "unet" / "config.json").unlink()
    with pytest.raises(SystemExit, match="does not load with SemFlowPipeline.from_pretrained"):
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
