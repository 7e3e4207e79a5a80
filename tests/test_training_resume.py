"""Issue 10, training side: resume survives a corrupt latest checkpoint, an older checkpoint with newer ones
present, a broken wall_time.json and a log with rows past the resume point (item 5); mixed precision picked
from the hardware (item 6). Tiny models and images, as in test_training_e2e.py."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import training.train_semflow as ts  # noqa: E402
from test_training_e2e import _args  # noqa: E402

COMMON = ["checkpointing_steps=2", "val_every=0", "final_eval=false", "mixed_precision=no",
          "checkpoints_total_limit=null"]


@pytest.fixture(scope="module")
def uninterrupted(toy_root, tmp_path_factory):
    """Final UNet weights of an uninterrupted 6-step run (the reference every resume must reproduce)."""
    out = tmp_path_factory.mktemp("full")
    ts.main(_args(toy_root, out, *COMMON, steps=6))
    return _weights(out)


def _weights(run):
    from diffusers import UNet2DModel
    return UNet2DModel.from_pretrained(str(run / "final" / "unet")).state_dict()


def _assert_same_weights(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def _log_steps(run):
    with open(run / "log.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _stopped_run(toy_root, out, at=4):
    ts.main(_args(toy_root, out, *COMMON, f"stop_at_step={at}", steps=6))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"checkpoint-{s}" for s in range(2, at + 1, 2)]


def _corrupt_weights(ck):
    f = ck / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _corrupt_optimizer(ck):
    (ck / "optimizer.bin").write_bytes(b"")


def _empty_folder(ck):
    for f in ck.iterdir():
        f.unlink()


@pytest.mark.parametrize("corrupt", [_corrupt_weights, _corrupt_optimizer, _empty_folder])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(toy_root, tmp_path, uninterrupted, capsys, corrupt):
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    corrupt(out / "checkpoints" / "checkpoint-4")
    capsys.readouterr()
    res = ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    text = capsys.readouterr().out
    assert res["steps"] == 6
    assert "checkpoint-4 could not be loaded" in text and "falling back" in text
    assert "resumed from" in text and text.split("resumed from ")[1].split()[0].endswith("checkpoint-2")
    _assert_same_weights(uninterrupted, _weights(out))  # the corrupt checkpoint was replaced, nothing leaked
    assert ts.checkpoint_step(ts.latest_checkpoint(str(out / "checkpoints"))) == 4
    assert _log_steps(out) == list(range(1, 7))


def test_no_loadable_checkpoint_is_a_clear_error(toy_root, tmp_path):
    out = tmp_path / "run"
    _stopped_run(toy_root, out, at=2)
    _corrupt_weights(out / "checkpoints" / "checkpoint-2")
    with pytest.raises(SystemExit, match="no loadable checkpoint"):
        ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    with pytest.raises(SystemExit, match="could not load"):
        ts.main(_args(toy_root, out, *COMMON, steps=6)
                + ["--resume_from_checkpoint", str(out / "checkpoints" / "checkpoint-2")])


def test_resume_from_an_older_checkpoint_replaces_the_newer_ones(toy_root, tmp_path, uninterrupted, capsys):
    """Used to crash at step 4: OSError: Directory not empty: 'checkpoint-4.tmp' -> 'checkpoint-4'."""
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    old4 = (out / "checkpoints" / "checkpoint-4" / "model.safetensors").stat().st_mtime_ns
    (out / "checkpoints" / "checkpoint-4.tmp").mkdir()  # the leftover of a save killed half-way
    (out / "checkpoints" / "checkpoint-4.tmp" / "stale.bin").write_bytes(b"x")
    (out / "checkpoints" / "checkpoint-2.old").mkdir()  # the leftover of a replace killed half-way
    capsys.readouterr()
    res = ts.main(_args(toy_root, out, *COMMON, steps=6)
                  + ["--resume_from_checkpoint", str(out / "checkpoints" / "checkpoint-2")])
    assert res["steps"] == 6 and "replaced as training reaches their steps" in capsys.readouterr().out
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-2", "checkpoint-4"]  # no .tmp / .old leftovers
    assert (ck / "checkpoint-4" / "model.safetensors").stat().st_mtime_ns != old4
    assert not (ck / "checkpoint-4" / "stale.bin").exists()
    _assert_same_weights(uninterrupted, _weights(out))
    assert _log_steps(out) == list(range(1, 7))  # the rows 3..4 of the first run are not duplicated


def test_replace_dir_leaves_a_complete_checkpoint_at_every_point(tmp_path):
    src, dst = tmp_path / "checkpoint-4.tmp", tmp_path / "checkpoint-4"
    for d, tag in ((src, b"new"), (dst, b"old")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(tag)
    (tmp_path / "checkpoint-4.old").mkdir()  # leftover of an earlier interrupted replace
    ts.replace_dir(str(src), str(dst))
    assert (dst / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]


def test_broken_wall_time_json_does_not_break_resume(toy_root, tmp_path, uninterrupted, capsys):
    """Used to fail with JSONDecodeError on an empty wall_time.json."""
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    (out / "wall_time.json").write_text("")
    (out / "checkpoints" / "checkpoint-4" / "wall_time.json").unlink()  # force the run-level file to be read
    res = ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    assert res["steps"] == 6 and res["wall_time_s"] >= 0
    assert "wall_time.json is unreadable" in capsys.readouterr().out
    _assert_same_weights(uninterrupted, _weights(out))


@pytest.mark.parametrize("content", ["", "{", "null", "[]", '{"elapsed_s": "x"}', '{"elapsed_s": NaN}', '{"step": 4}'])
def test_read_elapsed_tolerates_broken_files(tmp_path, content):
    (tmp_path / "w.json").write_text(content)
    assert ts.read_elapsed(str(tmp_path / "w.json")) is None
    (tmp_path / "w.json").write_text('{"elapsed_s": 12.5, "step": 4}')
    assert ts.read_elapsed(str(tmp_path / "w.json")) == 12.5


def test_wall_time_is_written_atomically_and_per_checkpoint(toy_root, tmp_path):
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    state = json.loads((out / "wall_time.json").read_text())
    own = json.loads((out / "checkpoints" / "checkpoint-4" / "wall_time.json").read_text())
    assert state["step"] == own["step"] == 4 and state["elapsed_s"] == own["elapsed_s"] > 0
    assert not list(out.glob("*.tmp"))
    # Resuming from checkpoint-2 counts checkpoint-2's time, not the run's later total.
    two = json.loads((out / "checkpoints" / "checkpoint-2" / "wall_time.json").read_text())["elapsed_s"]
    assert two <= own["elapsed_s"]
    (out / "wall_time.json").write_text('{"elapsed_s": 1e9, "step": 4}')
    res = ts.main(_args(toy_root, out, *COMMON, steps=6)
                  + ["--resume_from_checkpoint", str(out / "checkpoints" / "checkpoint-2")])
    assert res["wall_time_s"] < 1e8


def test_log_rows_after_the_resume_step_are_dropped(toy_root, tmp_path):
    """A run killed between checkpoints has logged steps past the last checkpoint; they are logged again."""
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    with open(out / "log.csv", "a") as f:
        f.write("5,0.5,1.0e-03,,1.0\n6,0.4,1.0e-03,,1.1\n7,0.3")  # the last row cut by the kill
    ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    assert _log_steps(out) == list(range(1, 7))
    assert ts.truncate_log(str(out / "log.csv"), 3) == 3 and _log_steps(out) == [1, 2, 3]


# ---------------------------------------------------------------------------------- item 6: mixed precision
def test_mixed_precision_defaults_to_auto():
    assert ts.DEFAULTS["mixed_precision"] == "auto"


@pytest.mark.parametrize("has_bf16,expected", [(True, "bf16"), (False, "no")])
def test_auto_precision_follows_the_cpu(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(ts, "cpu_bf16_support", lambda: (has_bf16, "the CPU has X (test)"))
    mp, reason = ts.resolve_mixed_precision("auto", use_cpu=True)
    assert mp == expected and "auto" in reason and "the CPU has X" in reason
    if not has_bf16:
        assert "emulated" in reason
    # An explicit choice wins over the hardware; YAML's unquoted `no` is False.
    assert ts.resolve_mixed_precision("bf16", use_cpu=True)[0] == "bf16"
    for off in ("no", False, None, "fp32"):
        assert ts.resolve_mixed_precision(off, use_cpu=True)[0] == "no"
    with pytest.raises(SystemExit, match="mixed_precision must be"):
        ts.resolve_mixed_precision("fp64", use_cpu=True)


def test_cpu_bf16_detection_matches_the_cpu_flags():
    ok, why = ts.cpu_bf16_support()
    if os.path.isfile("/proc/cpuinfo") and sys.platform.startswith("linux"):
        flags = set(open("/proc/cpuinfo").read().split())
        assert ok == bool({"avx512_bf16", "amx_bf16"} & flags), why


def test_training_logs_the_precision_it_picked(toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ts, "cpu_bf16_support", lambda: (False, "the CPU has neither AVX512-BF16 nor AMX-BF16"))
    out = tmp_path / "run"
    args = _args(toy_root, out, "val_every=0", "final_eval=false", "checkpointing_steps=0", steps=2)
    assert not any(a.startswith("mixed_precision") for a in args)
    res = ts.main(args)
    assert "mixed precision: no (auto: the CPU has neither" in capsys.readouterr().out
    assert res["mixed_precision"].startswith("no (auto") and "mixed_precision=no" in res["hardware"]
    assert "mixed precision no" in (out / "final" / "README.md").read_text()
    import yaml
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["mixed_precision"] == "auto" and saved["mixed_precision_used"].startswith("no (auto")
