"""Real training runs whose checkpoints are damaged, lost or cannot be written."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launch import cli_here, read_metrics, run_training, tree_hash
from xmod_pretrain.checkpoint.layout import CheckpointCorrupt, latest_checkpoint
from xmod_pretrain.checkpoint.verify import verify_checkpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]  # this checkout's code, for a script run from elsewhere

FAST = ("train.save_every=2", "train.eval_every=0", "train.log_every=1")
OPTIMIZER_STATE = "zero_pp_rank_0_mp_rank_00_optim_states.pt"


def umask_022() -> None:
    os.umask(0o022)


@pytest.fixture(scope="module")
def two_saves(tiny_data, tmp_path_factory) -> Path:
    """A run with checkpoints at steps 2 and 4, written under umask 022; copy it to change it."""
    run = tmp_path_factory.mktemp("base") / "run"
    run_training(run, tiny_data, "train.max_steps=4", *FAST, preexec_fn=umask_022)
    return run


@pytest.fixture
def run(two_saves, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(two_saves, copy)
    return copy


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xmod_pretrain.cli", *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=umask_022,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_checkpoints_are_checksummed_and_follow_the_umask(two_saves, tmp_path):
    latest = latest_checkpoint(two_saves)
    files = sorted(p.relative_to(latest).as_posix() for p in latest.rglob("*") if p.is_file())
    listed = json.loads((latest / "checksums.json").read_text())
    assert sorted(listed) == [f for f in files if f != "checksums.json"]
    assert OPTIMIZER_STATE in listed and "mp_rank_00_model_states.pt" in listed  # DeepSpeed's too
    verify_checkpoint(latest)
    export = cli("export", "--from", str(two_saves), "--out", str(tmp_path / "hf"))
    assert export.returncode == 0, export.stderr[-3000:]
    written = [latest / f for f in files] + [p for p in (tmp_path / "hf").iterdir()]
    assert {str(p): mode(p) for p in written} == {str(p): "0o644" for p in written}


@pytest.mark.parametrize("damaged", ["model.safetensors", OPTIMIZER_STATE, "trainer_state.json"])
def test_resume_moves_a_corrupt_checkpoint_aside_and_falls_back(run, tiny_data, damaged):
    truncate(run / "checkpoints" / "step_00000004" / damaged)
    proc = run_training(run, tiny_data, "train.max_steps=6", *FAST)
    assert f"step_00000004/{damaged} is corrupt: it is" in proc.stderr
    assert "Moved step_00000004 aside to corrupt-step_00000004 (nothing deleted)" in proc.stderr
    assert ("latest named step_00000004, which is corrupt: resuming from step_00000002"
            in proc.stderr)
    assert "at step 2" in proc.stdout
    assert (run / "checkpoints" / "corrupt-step_00000004" / damaged).is_file()
    latest = latest_checkpoint(run)
    assert latest.name == "step_00000006"
    verify_checkpoint(latest)
    train, _ = read_metrics(run)
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]  # steps 3-4 trained again, kept once


def test_resume_without_latest_uses_the_newest_checkpoint(run, tiny_data):
    (run / "checkpoints" / "latest").unlink()
    proc = run_training(run, tiny_data, "train.max_steps=6", *FAST)
    assert "checkpoints/latest was missing: resuming from step_00000004, the newest verified " \
           "checkpoint; latest now names it" in proc.stderr
    assert "at step 4" in proc.stdout  # not from scratch
    assert latest_checkpoint(run).name == "step_00000006"


def test_export_and_evaluate_name_the_corrupt_file(run, tmp_path):
    truncate(run / "checkpoints" / "step_00000004" / "model.safetensors")
    for args in (["export", "--from", str(run), "--out", str(tmp_path / "hf")],
                 ["evaluate", "--from", str(run), "--out", str(tmp_path / "eval")]):
        proc = cli_here(*args)
        assert proc.returncode == 1, (args, proc.stderr[-3000:])
        assert "step_00000004/model.safetensors is corrupt: it is" in proc.stderr, args
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "hf").exists()


def limit_file_size() -> None:
    """Below the DeepSpeed state files of the tiny model (0.7 and 2 MB), above the logs."""
    os.umask(0o022)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))


def assert_save_failed_cleanly(proc: subprocess.CompletedProcess, run: Path, stays: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.endswith(f"checkpoints/latest stays on {stays}, the last complete checkpoint")
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert latest_checkpoint(run).name == stays
    verify_checkpoint(latest_checkpoint(run))


def test_file_size_limit_during_a_save(run, tiny_data):
    proc = run_training(run, tiny_data, "train.max_steps=6", *FAST, check=False,
                        preexec_fn=limit_file_size)
    assert "xmod_pretrain: error: file size limit reached while writing " \
           f"{run}/checkpoints/.tmp-step_00000006/" in proc.stderr
    assert_save_failed_cleanly(proc, run, "step_00000004")


@pytest.fixture
def small_tmpfs(tmp_path) -> Path:
    """A 5 MiB tmpfs: one tiny-model checkpoint (3.5 MB) fits, a second does not."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)]).returncode:
        pytest.skip("mount -t tmpfs failed (no CAP_SYS_ADMIN here)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_during_a_save(small_tmpfs, tiny_data):
    run = small_tmpfs / "run"
    proc = run_training(run, tiny_data, "train.max_steps=4", *FAST, check=False,
                        preexec_fn=umask_022)
    assert f"xmod_pretrain: error: no space left on {small_tmpfs} (tmpfs) while writing " \
           f"{run}/checkpoints/.tmp-step_00000004/" in proc.stderr
    assert_save_failed_cleanly(proc, run, "step_00000002")


TWO_RANKS = """
import sys, torch
from pathlib import Path
import xmod_pretrain.checkpoint.checkpointer as ckpt
import xmod_pretrain.checkpoint.storage as storage
from xmod_pretrain.training.distributed import init_distributed

info = init_distributed(60)
torch.manual_seed(0)  # the same weights on both ranks, as in training


class Engine:  # what Checkpointer.save uses of a DeepSpeed engine
    module = torch.nn.Linear(2, 2)

    def save_checkpoint(self, root, tag, save_latest):
        (Path(root) / tag / f"rank{info.rank}.pt").write_bytes(b"engine state")

    def zero_optimization_partition_weights(self):
        return False


def disk_full(*args, **kwargs):
    raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")


saver = ckpt.Checkpointer(sys.argv[1], info, keep=0, sidecars={})
saver.save(Engine(), 1, {"step": 1})
if info.rank == 0:  # only rank 0 publishes: the others learn of its failure from it
    storage.save_file = disk_full
try:
    saver.save(Engine(), 2, {"step": 2})
    saver.finish()  # rank 0 publishes in the background; every rank learns how it went here
except storage.CheckpointWriteError as err:
    print(f"rank {info.rank}: {err}", flush=True)
    sys.exit(3)
"""


def test_a_failed_publish_stops_every_rank(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: no space left on " in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("checkpoints/latest stays on step_00000001") == 2
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))


def flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def test_damage_to_any_file_of_a_real_checkpoint_is_named(two_saves, tmp_path):
    """Every file DeepSpeed and we write into a checkpoint is covered by its checksums."""
    names = sorted(json.loads((latest_checkpoint(two_saves) / "checksums.json").read_text()))
    assert {"model.safetensors", "trainer_state.json", "config.yaml", "languages.json",
            "sentencepiece.bpe.model", OPTIMIZER_STATE, "mp_rank_00_model_states.pt"} <= set(names)
    for name in names:
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(latest_checkpoint(two_saves), copy)
        flip_a_byte(copy / name)
        with pytest.raises(CheckpointCorrupt, match=f"{re.escape(name)} is corrupt: its sha256"):
            verify_checkpoint(copy)


@pytest.mark.parametrize("pointer", ["garbage\n", "../../other/checkpoints/step_00000004\n",
                                     "/tmp/step_00000004\n"])
def test_a_latest_that_names_no_checkpoint_of_the_run_is_refused(run, tiny_data, pointer):
    (run / "checkpoints" / "latest").write_text(pointer)
    before = tree_hash(run)
    proc = run_training(run, tiny_data, "train.max_steps=6", *FAST, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"holds {pointer.strip()!r}, which is not the name of a checkpoint" in proc.stderr
    assert tree_hash(run) == before


def test_strays_in_checkpoints_survive_cleanup(run, tiny_data):
    """Only complete step_ + 8-digit checkpoints are ever deleted, oldest step first."""
    root = run / "checkpoints"
    strays = ["step_zz", "step_3", "step_00000009-mine", "notes"]
    for name in strays:
        (root / name).mkdir()
        (root / name / "keep.txt").write_text(name)
    run_training(run, tiny_data, "train.max_steps=6", "train.keep_checkpoints=1", *FAST)
    kept = sorted(p.name for p in root.iterdir() if not p.name.startswith("zero_to_"))  # DeepSpeed's
    assert kept == sorted(["languages", "latest", "step_00000006", *strays])
    assert all((root / name / "keep.txt").read_text() == name for name in strays)


def test_resume_says_what_changed_and_clears_dead_saves(run, tiny_data):
    """Allowed, but not silent: settings that shape the batches or the schedule; and the
    ``.tmp-*`` a second Ctrl-C leaves goes at the next start."""
    (run / "checkpoints" / ".tmp-step_00000005").mkdir()
    proc = run_training(run, tiny_data, "train.max_steps=6", "data.alpha=0.3", *FAST)
    assert "removed .tmp-step_00000005, the remains of a save that did not finish" in proc.stdout
    warning = next(line for line in proc.stderr.splitlines() if line.startswith("warning: resuming"))
    assert "data.alpha 0.7 -> 0.3" in warning
    assert "train.max_steps 4 -> 6 (the schedule's length" in warning
    # The run's schedule ended at step 4 while still warming up (the demo's 50 warmup steps).
    assert ("the old schedule ended at step 4 inside its 50-step warmup; the learning rate "
            "follows the longer schedule") in warning
    assert "set optim.total_steps=4" not in warning
    assert not list((run / "checkpoints").glob(".tmp-*"))
    same = run_training(run, tiny_data, "train.max_steps=6", "data.alpha=0.3", *FAST)
    assert "warning: resuming" not in same.stderr  # the same command again: nothing to say
