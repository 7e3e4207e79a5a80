"""Issue 18, training side: checkpoints are verified by checksum on resume (item 9), a full disk or a read-only
output folder is a clear message that leaves the last good checkpoint intact (item 10), and a run into a folder
with checkpoints is refused without --resume_from_checkpoint or --overwrite (item 11). Tiny models, as in
test_training_resume.py; the real full / read-only disks are small tmpfs mounts (root only, else skipped; the
monkeypatched variants run everywhere)."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import training.train_semflow as ts  # noqa: E402
from test_training_e2e import _args  # noqa: E402
from test_training_resume import COMMON, _assert_same_weights, _stopped_run, _weights  # noqa: E402


@pytest.fixture(scope="module")
def uninterrupted(toy_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    ts.main(_args(toy_root, out, *COMMON, steps=6))
    return _weights(out)


def _flip_a_float_byte(path: Path):
    """Flips the exponent byte of one float32 inside the data section: the file stays a valid safetensors file."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    name, entry = next((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    at = 8 + n + entry["data_offsets"][0] + 3
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    from safetensors.torch import load_file
    load_file(str(path))  # still loads
    return name


# ------------------------------------------------------------------------------------------ item 9: checksums
def test_checkpoints_record_a_checksum_of_every_file(toy_root, tmp_path):
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    for ck in (out / "checkpoints").iterdir():
        record = json.loads((ck / "checksums.json").read_text())
        files = {p.relative_to(ck).as_posix() for p in ck.rglob("*") if p.is_file()}
        assert set(record["files"]) == files - {"checksums.json", "wall_time.json"}
        assert "model.safetensors" in record["files"] and "optimizer.bin" in record["files"]
        assert ts.verify_checksums(str(ck))[0] is True


def test_a_flipped_byte_in_the_latest_checkpoint_falls_back_to_the_previous_one(toy_root, tmp_path, uninterrupted,
                                                                                capsys):
    """Used to say "resumed from checkpoint-4" and finish with different weights."""
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    _flip_a_float_byte(out / "checkpoints" / "checkpoint-4" / "model.safetensors")
    capsys.readouterr()
    res = ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    text = capsys.readouterr().out
    assert res["steps"] == 6
    assert "checkpoint-4 could not be loaded (checksum check failed: model.safetensors differs" in text
    assert "falling back" in text
    assert text.split("resumed from ")[1].split()[0].endswith("checkpoint-2")
    _assert_same_weights(uninterrupted, _weights(out))
    assert ts.verify_checksums(str(out / "checkpoints" / "checkpoint-4"))[0] is True  # replaced by a good one


@pytest.mark.parametrize("damage", ["flip", "delete_optimizer", "garble_record"])
def test_a_named_checkpoint_that_fails_its_checksums_is_refused(toy_root, tmp_path, damage):
    out = tmp_path / "run"
    _stopped_run(toy_root, out, at=2)
    ck = out / "checkpoints" / "checkpoint-2"
    if damage == "flip":
        _flip_a_float_byte(ck / "model.safetensors")
    elif damage == "delete_optimizer":
        (ck / "optimizer.bin").unlink()
    else:
        (ck / "checksums.json").write_text("{")
    with pytest.raises(SystemExit, match="checksum check failed"):
        ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", str(ck)])
    with pytest.raises(SystemExit, match="no loadable checkpoint"):
        ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])


def test_a_checkpoint_without_a_record_loads_unverified_and_says_so(toy_root, tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    (out / "checkpoints" / "checkpoint-4" / "checksums.json").unlink()  # as saved by an older version
    capsys.readouterr()
    ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    text = capsys.readouterr().out
    assert "checkpoint-4 has no checksums.json" in text and "unverified" in text
    _assert_same_weights(uninterrupted, _weights(out))


# --------------------------------------------------------------------------- item 11: no silent overwrite
def test_a_second_run_into_a_folder_with_checkpoints_is_refused(toy_root, tmp_path):
    out = tmp_path / "run"
    _stopped_run(toy_root, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("*")}
    with pytest.raises(SystemExit, match=r"already holds checkpoints \(checkpoint-4, checkpoint-2\).*"
                                         r"--resume_from_checkpoint latest.*new --output_dir.*--overwrite"):
        ts.main(_args(toy_root, out, *COMMON, steps=6))
    assert {p: p.stat().st_mtime_ns for p in (out / "checkpoints").rglob("*")} == before


def test_overwrite_starts_from_scratch_and_deletes_the_old_checkpoints(toy_root, tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    _stopped_run(toy_root, out, at=4)
    capsys.readouterr()
    res = ts.main(_args(toy_root, out, *COMMON, "stop_at_step=2", steps=6) + ["--overwrite"])
    assert res["stopped"] and "--overwrite: deleting the earlier run's checkpoint-4, checkpoint-2" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]  # no stale checkpoint-4
    ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    _assert_same_weights(uninterrupted, _weights(out))


def test_an_empty_or_new_output_dir_needs_no_flag(toy_root, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert ts.main(_args(toy_root, tmp_path / "run", *COMMON, "stop_at_step=2", steps=6))["stopped"]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------ item 10: full disk, read-only folder
def _no_space(*_a, **_k):
    from safetensors import SafetensorError
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')


def _torch_unexpected_pos(*_a, **_k):
    raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 576 vs 470")


@pytest.mark.parametrize("target,fake,cause", [
    ("accelerate.utils.other.safe_save_file", _no_space, "the disk is full"),
    ("torch.save", _torch_unexpected_pos, "a write stopped part-way (the usual cause is a full disk)"),
])
def test_a_failed_checkpoint_write_is_a_message_and_keeps_the_last_good_one(toy_root, tmp_path, monkeypatch,
                                                                           target, fake, cause):
    out = tmp_path / "run"
    _stopped_run(toy_root, out, at=2)
    good = {p.name: p.read_bytes() for p in (out / "checkpoints" / "checkpoint-2").iterdir()}
    monkeypatch.setattr(target, fake)
    with pytest.raises(SystemExit) as e:
        ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    msg = str(e.value)
    assert "could not write checkpoint-4" in msg and cause in msg and "MB free there" in msg
    assert "checkpoint-2, is intact" in msg and "--resume_from_checkpoint latest" in msg
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]  # the partial save is gone
    assert {p.name: p.read_bytes() for p in (out / "checkpoints" / "checkpoint-2").iterdir()} == good


@pytest.mark.parametrize("errno_,cause", [(30, "read-only file system"), (28, "the disk is full"),
                                          (13, "no permission to write")])
def test_write_failure_messages_name_the_cause(tmp_path, errno_, cause):
    e = OSError(errno_, os.strerror(errno_))
    assert ts.is_write_failure(e)
    assert cause in ts.write_failure_message(e, "config.yaml", str(tmp_path), str(tmp_path / "checkpoints"))
    assert not ts.is_write_failure(ValueError("x")) and not ts.is_write_failure(RuntimeError("shape mismatch"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A helper that mounts a tmpfs of a given size (root only; skipped elsewhere), unmounted at the end."""
    mounts = []

    def mount(size_bytes: int) -> Path:
        where = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        mounts.append(where)
        return where

    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_really_full_disk(toy_root, tmp_path, small_tmpfs):
    """A tmpfs that holds the run and one checkpoint, not two: the second save fails with ENOSPC."""
    probe = tmp_path / "probe"
    _stopped_run(toy_root, probe, at=2)
    ck = _du(probe / "checkpoints" / "checkpoint-2")
    disk = small_tmpfs(_du(probe) + ck // 2 + 64 * 1024)
    out = disk / "run"
    with pytest.raises(SystemExit) as e:
        ts.main(_args(toy_root, out, *COMMON, steps=6))
    msg = str(e.value)
    assert "the disk is full" in msg and "checkpoint-2, is intact" in msg, msg
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]
    assert ts.verify_checksums(str(out / "checkpoints" / "checkpoint-2"))[0] is True


def test_a_read_only_output_folder(toy_root, small_tmpfs):
    disk = small_tmpfs(64 * 2**20)
    out = disk / "run"
    _stopped_run(toy_root, out, at=2)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    with pytest.raises(SystemExit) as e:
        ts.main(_args(toy_root, out, *COMMON, steps=6) + ["--resume_from_checkpoint", "latest"])
    msg = str(e.value)
    assert "read-only file system" in msg and "checkpoint-2, is intact" in msg, msg
    assert ts.verify_checksums(str(out / "checkpoints" / "checkpoint-2"))[0] is True
