"""Checkpoints that can never be lost or mixed, on weights-only checkpoints (no DeepSpeed)."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import stat
from pathlib import Path

import pytest
import torch

import xmod_pretrain.checkpoint.storage as storage
from tests.unit.test_language_modules import make_run
from xmod_pretrain.checkpoint.checkpointer import Checkpointer
from xmod_pretrain.checkpoint.choice import resume_checkpoint
from xmod_pretrain.checkpoint.layout import CheckpointCorrupt, CheckpointError, latest_checkpoint
from xmod_pretrain.checkpoint.storage import CheckpointWriteError
from xmod_pretrain.checkpoint.verify import verify_checkpoint
from xmod_pretrain.runs.language_modules import save_language_module
from xmod_pretrain.runs.records import open_run
from xmod_pretrain.training.distributed import DistInfo

ALONE = DistInfo(0, 1, 0, 1)


def save(run: Path, *steps: int, keep: int = 0, size: int = 4) -> Checkpointer:
    saver = Checkpointer(run, ALONE, keep=keep, sidecars={"config.yaml": "x: 1\n"})
    for step in steps:
        saver.save_weights({"w": torch.full((size,), float(step))}, step, {"step": step})
    return saver


def names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-10])


# ---- the latest pointer ----------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    "garbage", "../../other/checkpoints/step_00000003", "/abs/run/checkpoints/step_00000003",
    "step_3", "step_00000003/..", "",
])
def test_latest_must_name_a_checkpoint_of_this_run(tmp_path, content):
    save(tmp_path, 3)
    (tmp_path / "checkpoints" / "latest").write_text(content + "\n")
    pattern = (re.escape(f"checkpoints/latest holds {content!r}, which is not the name of a "
                         "checkpoint") + ".*" +
               re.escape("delete it to resume from the newest verified checkpoint, or write a "
                         "checkpoint name into it"))
    for read in (latest_checkpoint, lambda run: resume_checkpoint(run, ALONE)):
        with pytest.raises(CheckpointError, match=pattern):
            read(tmp_path)
    assert names(tmp_path) == ["latest", "step_00000003"]  # nothing repaired behind the user's back


def test_latest_naming_a_missing_checkpoint_is_refused(tmp_path):
    save(tmp_path, 3)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match="names step_00000009, which is missing or incompl"):
        resume_checkpoint(tmp_path, ALONE)


# ---- resume: the newest verified checkpoint --------------------------------------------------

def test_missing_latest_resumes_from_the_newest_verified_checkpoint(tmp_path, capsys):
    save(tmp_path, 2, 10, 9)  # 9 saved last: the newest is found by step, not by time
    (tmp_path / "checkpoints" / "latest").unlink()
    assert resume_checkpoint(tmp_path, ALONE) == tmp_path / "checkpoints" / "step_00000010"
    assert "checkpoints/latest was missing: resuming from step_00000010, the newest verified " \
           "checkpoint; latest now names it" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path).name == "step_00000010"


def test_a_corrupt_checkpoint_is_moved_aside_and_the_previous_one_used(tmp_path, capsys):
    save(tmp_path, 2, 4, 6)
    truncate(tmp_path / "checkpoints" / "step_00000006" / "model.safetensors")
    state = tmp_path / "checkpoints" / "step_00000004" / "trainer_state.json"
    state.write_text(state.read_text().replace("4", "5"))  # same size, other content
    assert resume_checkpoint(tmp_path, ALONE).name == "step_00000002"
    err = capsys.readouterr().err
    assert "step_00000006/model.safetensors is corrupt: it is" in err
    assert "step_00000004/trainer_state.json is corrupt: its sha256" in err
    assert "Moved step_00000006 aside to corrupt-step_00000006 (nothing deleted)" in err
    assert "latest named step_00000006, which is corrupt: resuming from step_00000002" in err
    assert names(tmp_path) == ["corrupt-step_00000004", "corrupt-step_00000006", "latest",
                               "step_00000002"]
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    # A later save of step 6 does not collide with the corrupt copy, and never overwrites it.
    save(tmp_path, 6)
    (tmp_path / "checkpoints" / "step_00000006" / "model.safetensors").unlink()
    assert resume_checkpoint(tmp_path, ALONE).name == "step_00000002"
    assert "corrupt-step_00000006-2" in names(tmp_path)


def test_no_checkpoint_verifies_refuses_to_start_over(tmp_path):
    assert resume_checkpoint(tmp_path, ALONE) is None  # a new run
    save(tmp_path, 2)
    truncate(tmp_path / "checkpoints" / "step_00000002" / "model.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint in .*checkpoints verifies; the "
                                              "newest: .*model.safetensors is corrupt"):
        resume_checkpoint(tmp_path, ALONE)
    assert names(tmp_path) == ["latest", "step_00000002"]  # kept: a rerun must refuse again


def test_latest_naming_an_older_checkpoint_is_kept(tmp_path):
    """The user chose to go back: newer checkpoints are neither used nor verified."""
    save(tmp_path, 2, 4)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000002")
    truncate(tmp_path / "checkpoints" / "step_00000004" / "model.safetensors")
    assert resume_checkpoint(tmp_path, ALONE).name == "step_00000002"
    assert "step_00000004" in names(tmp_path)


# ---- checksums -------------------------------------------------------------------------------

def test_checksums_list_every_file_and_catch_each_kind_of_damage(tmp_path):
    path = save(tmp_path, 1, size=1000).root / "step_00000001"
    listing = json.loads((path / "checksums.json").read_text())
    assert sorted(listing) == ["config.yaml", "model.safetensors", "trainer_state.json"]
    verify_checkpoint(path)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(CheckpointCorrupt, match="model.safetensors is corrupt: its sha256 is"):
        verify_checkpoint(path)
    verify_checkpoint(path, ["config.yaml"])  # only the files asked for
    weights.write_bytes(data[:100])
    with pytest.raises(CheckpointCorrupt, match="is 100 bytes, not the .* recorded"):
        verify_checkpoint(path)
    weights.unlink()
    with pytest.raises(CheckpointCorrupt, match="model.safetensors is corrupt: it is missing"):
        verify_checkpoint(path)
    (path / "checksums.json").write_text("{not json")
    with pytest.raises(CheckpointCorrupt, match="checksums.json is corrupt"):
        verify_checkpoint(path)
    (path / "checksums.json").unlink()  # written before checksums existed: accepted as it is
    verify_checkpoint(path)


def test_open_run_verifies_what_it_reads_and_writes_nothing(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    root = run / "checkpoints"
    shutil.copytree(root / "step_00000003", root / "step_00000007")
    (root / "latest").write_text("step_00000007\n")
    truncate(root / "step_00000007" / "model.safetensors")
    with pytest.raises(CheckpointCorrupt, match="step_00000007/model.safetensors is corrupt"):
        open_run(run)
    (root / "latest").unlink()
    assert open_run(run).path == root / "step_00000003"
    err = capsys.readouterr().err
    assert "step_00000007/model.safetensors is corrupt" in err
    assert "latest is missing: reading step_00000003, the newest verified checkpoint" in err
    assert names(run) == ["step_00000003", "step_00000007"]  # read only: nothing moved or written
    truncate(root / "step_00000003" / "languages.json")
    with pytest.raises(CheckpointError, match="latest is missing and no checkpoint .* verifies"):
        open_run(run)
    (root / "latest").write_text("../../good/checkpoints/step_00000003")
    with pytest.raises(CheckpointError, match="not the name of a checkpoint"):
        open_run(run)


# ---- cleanup ---------------------------------------------------------------------------------

def test_prune_deletes_only_its_own_complete_checkpoints_by_step(tmp_path):
    root = tmp_path / "checkpoints"
    for foreign in ("step_zz", "step_3", "my_notes", "step_000000001"):  # not ours: never touched
        (root / foreign).mkdir(parents=True)
        (root / foreign / "trainer_state.json").write_text("{}")
    saver = save(tmp_path, 1, 2)
    (root / "step_00000002" / "checksums.json").unlink()  # from before checksums: not pruned
    save(tmp_path, 8, 9, 10, keep=2)
    assert names(tmp_path) == sorted(["latest", "my_notes", "step_000000001", "step_00000002",
                                      "step_3", "step_00000009", "step_00000010", "step_zz"])
    (root / "latest").write_text("step_00000009")  # a fallback: latest on an older step
    saver.keep = 1
    saver._prune()
    assert "step_00000009" in names(tmp_path) and "step_00000010" in names(tmp_path)


# ---- failed writes ---------------------------------------------------------------------------

def test_file_size_limit_during_a_save_keeps_latest(tmp_path):
    save(tmp_path, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # SIGXFSZ ignored by Checkpointer
    try:
        with pytest.raises(CheckpointWriteError) as raised:
            save(tmp_path, 2, size=10_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(raised.value)
    assert message.startswith("file size limit reached while writing ")
    assert ".tmp-step_00000002/model.safetensors" in message
    assert message.endswith("checkpoints/latest stays on step_00000001, the last complete "
                            "checkpoint")
    assert names(tmp_path) == ["latest", "step_00000001"]  # the partial save is gone
    verify_checkpoint(latest_checkpoint(tmp_path))


def test_disk_full_names_the_filesystem_and_the_file(tmp_path, monkeypatch):
    save(tmp_path, 1)

    def full(*args, **kwargs):  # what safetensors raises on ENOSPC
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(storage, "save_file", full)
    with pytest.raises(CheckpointWriteError) as raised:
        save(tmp_path, 2)
    mount = storage.mount_of(tmp_path)
    assert str(raised.value).startswith(f"no space left on {mount} while writing "
                                        f"{tmp_path}/checkpoints/.tmp-step_00000002/"
                                        "model.safetensors")
    assert mount.split(" (")[0] in [line.split()[1] for line in open("/proc/self/mounts")]
    assert names(tmp_path) == ["latest", "step_00000001"]
    monkeypatch.setattr(storage, "save_file", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):  # not a disk-space problem: it keeps its traceback
        save(tmp_path, 3)


# ---- file modes ------------------------------------------------------------------------------

def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = make_run(tmp_path / "run")
        module, meta = save_language_module(run, "de_DE", tmp_path / "modules")
    finally:
        os.umask(old)
    files = [p for p in run.rglob("*") if p.is_file()] + [module, meta]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
           {p.name: "0o644" for p in files}


def test_trainer_state_reads_checkpoints_of_earlier_versions():
    """trainer_state.json as earlier versions wrote it (with a ``sampler`` key nothing read)
    and as derived runs write it (``derived_from``) resumes the loop where it stood."""
    from xmod_pretrain.training.trainer import TrainerState

    older = {"step": 7, "tokens_seen": 896, "sampler": {"seed": 0, "next_step": 7},
             "first_valid": {"en_XX": 6.5}, "derived_from": {"run": "runs/demo"}}
    state = TrainerState.from_json(older)
    assert state == TrainerState(step=7, tokens_seen=896, first_valid={"en_XX": 6.5})
    assert TrainerState.from_json(state.to_json()) == state


def test_a_resume_refuses_a_checkpoint_whose_modules_state_is_inside_deepspeeds_files(tmp_path):
    """Written before the language modules had files of their own: refused with the reason and
    what still reads it; a checkpoint with a language manifest, or a weights-only one, passes."""
    from xmod_pretrain.checkpoint.layout import DEEPSPEED_STATE
    from xmod_pretrain.checkpoint.resume import RunStateError, check_language_state

    checkpoint = tmp_path / "step_00000002"
    checkpoint.mkdir()
    check_language_state(checkpoint)  # weights-only: nothing to resume, nothing refused here
    (checkpoint / DEEPSPEED_STATE).write_bytes(b"")
    with pytest.raises(RunStateError, match=r"step_00000002 keeps its language modules' "
                                            r"optimizer state inside DeepSpeed's files.*load_run"):
        check_language_state(checkpoint)
    (checkpoint / "languages.manifest.json").write_text("{}")
    check_language_state(checkpoint)


def language_checkpoint(root: Path, step: int, manifest: dict) -> Path:
    """A checkpoint folder that counts as complete and names ``manifest``'s language files."""
    from xmod_pretrain.checkpoint.language_files import write_manifest

    path = root / f"step_{step:08d}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step}))
    write_manifest(path, manifest)
    return path


def test_language_files_are_shared_verified_and_removed_once_no_checkpoint_names_them(tmp_path):
    """A save writes only the languages given, the next checkpoint's manifest names the older
    files of the others, a changed byte in a shared file is caught for every checkpoint that
    names it, and a file is removed only when no complete checkpoint names it."""
    from xmod_pretrain.checkpoint.language_files import (
        language_manifest,
        read_language_files,
        remove_unnamed_files,
        write_language_files,
    )
    from xmod_pretrain.checkpoint.verify import verify_language_files

    root = tmp_path / "checkpoints"
    tensors = {"de_DE": {"w": torch.zeros(3), "w::exp_avg": torch.ones(3)},
               "yo_NG": {"w": torch.full((3,), 2.0)}}
    first = write_language_files(root, 2, tensors)
    one = language_checkpoint(root, 2, first)
    second = {**first, **write_language_files(root, 4, {"de_DE": {"w": torch.ones(3)}})}
    two = language_checkpoint(root, 4, second)
    assert second["yo_NG"] == first["yo_NG"] and second["de_DE"] != first["de_DE"]
    assert len(list((root / "languages" / "de_DE").iterdir())) == 2
    read = read_language_files(two, language_manifest(two), with_state=False)
    assert torch.equal(read["de_DE"]["w"], torch.ones(3)) and "w::exp_avg" not in read["de_DE"]
    assert remove_unnamed_files(root) == []
    shutil.rmtree(one)  # pruned: its de_DE file is named by nothing now
    assert [p.name for p in remove_unnamed_files(root)] == [Path(first["de_DE"]["file"]).name]
    verify_language_files(two)
    truncate(root / second["yo_NG"]["file"])
    with pytest.raises(CheckpointCorrupt, match=r"yo_NG/step_00000002-\w+\.safetensors is "
                                                r"corrupt: it is \d+ bytes.*step_00000004/"
                                                r"languages.manifest.json"):
        verify_language_files(two)


def test_a_longer_schedule_says_where_the_old_one_had_left_the_learning_rate():
    """A raised train.max_steps after the old schedule ended: decayed to its end (its rate was
    about to reach zero), or still inside its warmup (it never decayed)."""
    from xmod_pretrain.checkpoint.resume import _schedule_change

    assert "decayed to its end at step 100" in _schedule_change(100, 100, warmup=10)
    assert "ended at step 4 inside its 50-step warmup" in _schedule_change(4, 4, warmup=50)
    assert "set optim.total_steps=100" in _schedule_change(40, 100, warmup=10)
