"""What clusters do to jobs: signals before a time limit, a NaN, a writer killed mid-save."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.support.launch import TINY_MODEL, read_metrics, run_training
from xmod_pretrain.checkpoint.checkpointer import Checkpointer
from xmod_pretrain.checkpoint.language_files import language_manifest
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.training.distributed import DistInfo

pytestmark = pytest.mark.integration


def start_training(run_dir: Path, data_dir: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "xmod_pretrain", "+exp=demo", f"run_dir={run_dir}",
           f"data.dir={data_dir}", "data.source=null", *TINY_MODEL, *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            # Whole lines only: the trainer appends while this reads, and a line that crosses a
            # page can be read half-written.
            lines = metrics.read_text().split("\n")[:-1]
            steps = [json.loads(line).get("step", 0) for line in lines]
            if steps and max(steps) >= step:
                return
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_and_the_same_command_resumes(tiny_data, tmp_path, signum):
    run = tmp_path / "run"
    args = ("train.max_steps=2000", "train.log_every=1", "train.eval_every=0", "train.save_every=0")
    proc = start_training(run, tiny_data, *args)
    wait_for_step(run, 3, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert f"stopping on {signal.Signals(signum).name}" in out
    stopped_at = json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())["step"]
    assert stopped_at >= 3
    resumed = run_training(run, tiny_data, *args[1:], f"train.max_steps={stopped_at + 2}")
    assert f"at step {stopped_at}" in resumed.stdout
    train, _ = read_metrics(run)
    assert train[-1]["step"] == stopped_at + 2


def test_nan_loss_stops_without_a_poisoned_checkpoint(tiny_data, tmp_path):
    run = tmp_path / "run"
    # An absurd learning rate without clipping drives the weights, then the loss, to inf/NaN.
    proc = run_training(run, tiny_data, "train.max_steps=200", "train.eval_every=0",
                        "train.save_every=1", "optim.lr=1e12", "optim.clip_grad_norm=0",
                        "optim.warmup_steps=1", check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert re.search(r"loss is NaN or inf between steps \d+ and \d+ \(\d+ \w+ micro-batch",
                     message), message[-2000:]
    assert "stopping without saving" in message
    from safetensors.torch import load_file

    for saved in run.glob("checkpoints/step_*/model.safetensors"):
        assert all(torch.isfinite(w).all() for w in load_file(str(saved)).values()), saved


WRITER = """
import os, sys, torch
from pathlib import Path
import xmod_pretrain.checkpoint.checkpointer as ckpt
from xmod_pretrain.training.distributed import DistInfo
run = Path(sys.argv[1])
saver = ckpt.Checkpointer(run, DistInfo(0, 1, 0, 1), keep=0, sidecars={"config.yaml": "x: 1\\n"})
saver.save_weights({"w": torch.ones(4)}, 1, {"step": 1})
def killed(*args):  # the process dies here, as under kill -9: no cleanup runs
    os.kill(os.getpid(), 9)
setattr(ckpt, sys.argv[2], killed)
saver.save_weights({"w": torch.full((4,), 2.0)}, 2, {"step": 2})
"""


@pytest.mark.parametrize("dies_in", ["fsync_tree", "write_text"])
def test_writer_killed_mid_save_leaves_latest_on_a_complete_checkpoint(tmp_path, dies_in):
    """Killed before the rename (fsync_tree) or before ``latest`` moves (write_text)."""
    proc = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), dies_in])
    assert proc.returncode == -signal.SIGKILL
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001"
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(latest / "model.safetensors"))["w"], torch.ones(4))
    # The next save of the same step cleans up and publishes normally.
    saver = Checkpointer(tmp_path, DistInfo(0, 1, 0, 1), keep=0, sidecars={})
    saver.save_weights({"w": torch.zeros(4)}, 2, {"step": 2})
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert not list(tmp_path.glob("checkpoints/.tmp-*"))


def test_keep_checkpoints_bounds_how_many_stay(tiny_data, tmp_path):
    run = tmp_path / "run"
    run_training(run, tiny_data, "train.max_steps=6", "train.save_every=2", "train.eval_every=0",
                 "train.keep_checkpoints=2")
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["languages", "step_00000004", "step_00000006"]  # languages/: files both name
    named = {entry["file"] for name in kept[1:]
             for entry in language_manifest(run / "checkpoints" / name).values()}
    stored = {p.relative_to(run / "checkpoints").as_posix()
              for p in (run / "checkpoints" / "languages").glob("*/*")}
    assert stored == named  # the pruned checkpoints' own files went with them
    assert latest_checkpoint(run).name == "step_00000006"
