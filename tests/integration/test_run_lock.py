"""One run directory, one trainer; workers that lose torchrun stop; Ctrl-C saves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.launch import TINY_MODEL, run_training
from tests.support.runs import copy_run
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.runs.lock import LOCK_NAME

pytestmark = pytest.mark.integration

LONG_RUN = ("train.max_steps=2000", "train.log_every=1", "train.eval_every=0")


class Launched:
    """The CLI in the background, alone or under torchrun, in a session of its own (so that a
    test can signal the whole group, as a terminal's Ctrl-C does). Its output is read as it
    comes: a full pipe would block the trainer."""

    def __init__(self, run_dir: Path, data_dir: Path, *overrides: str, nproc: int = 1):
        args = ["+exp=demo", f"run_dir={run_dir}", f"data.dir={data_dir}", "data.source=null",
                *TINY_MODEL, *overrides]
        launcher = ([] if nproc == 1 else
                    ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
        self.proc = subprocess.Popen(
            [sys.executable, *launcher, "-m", "xmod_pretrain", *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"})
        self.pid = self.proc.pid
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=lambda s=stream, l=lines: l.extend(s), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out),
                                              (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until a line of stdout holds ``text``."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.out)):
            assert self.proc.poll() is None, f"exited before {text!r}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {text!r} in time:\n{self.output()}"
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> tuple[str, str]:
        """Wait for the exit and for the pipes to close (any orphans gone too): (stdout, stderr)."""
        self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(timeout)
        return "".join(self.out), "".join(self.err)

    def output(self) -> str:
        return "".join(self.out) + "".join(self.err)[-3000:]


def saved_step(run_dir: Path) -> int:
    return json.loads((latest_checkpoint(run_dir) / "trainer_state.json").read_text())["step"]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---- the run lock -----------------------------------------------------------------------

def test_a_second_trainer_on_a_run_dir_is_refused_at_once(tiny_data, tmp_path):
    run = tmp_path / "run"
    first = Launched(run, tiny_data, *LONG_RUN, "train.save_every=3", "train.keep_checkpoints=0")
    first.wait_for(" 2/2000 |")
    began = time.monotonic()
    # Under torchrun: rank 0 takes the lock, and both ranks must exit, not one hang.
    second = run_training(run, tiny_data, *LONG_RUN, nproc=2, check=False)
    took = time.monotonic() - began
    first.proc.send_signal(signal.SIGTERM)
    _, err = first.finish()
    assert second.returncode != 0
    errors = [line for line in second.stderr.splitlines() if line.startswith("xmod_pretrain:")]
    assert len(errors) == 1, second.stderr[-3000:]
    assert errors[0].startswith(f"xmod_pretrain: error: run_dir {run} is in use by pid "
                                f"{first.pid} on host {socket.gethostname()} (started ")
    assert errors[0].endswith("wait for it, stop it, or pick another run_dir")
    assert "optimizer:" not in second.stdout  # refused before building anything
    assert took < 90, took  # torchrun, torch and deepspeed start (slow on 2 busy cores), no more
    # The first went on undisturbed: every checkpoint it saved is there, the last one complete.
    assert first.proc.returncode == 0, err[-3000:]
    step = saved_step(run)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == sorted(
        {f"step_{s:08d}" for s in [*range(3, step + 1, 3), step]})
    assert not list(run.glob("checkpoints/.tmp-*"))
    assert not (run / LOCK_NAME).exists()


# ---- orphaned workers -------------------------------------------------------------------

def test_workers_stop_and_save_when_torchrun_is_killed(tiny_data, tmp_path):
    run = tmp_path / "run"
    agent = Launched(run, tiny_data, *LONG_RUN, "train.save_every=0", nproc=2)
    agent.wait_for(" 2/2000 |")
    workers = children(agent.pid)
    assert len(workers) == 2
    agent.proc.kill()  # kill -9: torchrun cannot pass anything on
    deadline = time.monotonic() + 30
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    out, _ = agent.finish(30)
    assert not any(map(running, workers)), "orphaned workers still running after 30 s"
    assert "stopping on SIGTERM" in out
    stopped_at = saved_step(run)
    assert stopped_at >= 2
    resumed = run_training(run, tiny_data, "train.max_steps=" + str(stopped_at + 1),
                           "train.eval_every=0", nproc=2)
    assert f"at step {stopped_at}" in resumed.stdout


# ---- Ctrl-C -----------------------------------------------------------------------------

def test_ctrl_c_finishes_the_step_saves_and_the_same_command_resumes(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = Launched(run, tiny_data, *LONG_RUN, "train.save_every=0")
    proc.wait_for(" 3/2000 |")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
    out, err = proc.finish()
    assert proc.proc.returncode == 0, err[-3000:]
    stopped_at = saved_step(run)
    # The step in progress, or the next one when Ctrl-C lands between a step and the stop check.
    assert any(f"Ctrl-C: finishing step {step} and saving a checkpoint; press Ctrl-C again to "
               "abort without saving" in out for step in (stopped_at, stopped_at + 1)), out
    assert (f"stopping on SIGINT after step {stopped_at}; the same command resumes from the "
            "checkpoint") in out
    assert "Traceback" not in err
    resumed = run_training(run, tiny_data, f"train.max_steps={stopped_at + 1}", "train.eval_every=0")
    assert f"at step {stopped_at}" in resumed.stdout


def test_a_second_ctrl_c_aborts_at_once_without_saving(run_2_steps, shared_data, tmp_path):
    # The checkpoint to keep comes from a finished run: a run saving as it goes could publish
    # another while the test reacts (a save is flushed in the background, as slowly as the disk).
    run = copy_run(run_2_steps, tmp_path / "run")
    latest = latest_checkpoint(run)
    # Long steps (many micro-batches: a larger global batch than the checkpoint's, allowed), and
    # the first Ctrl-C sent into one, not at the boundary where the step's log line was just
    # printed: the second then lands before the first's save.
    proc = Launched(run, shared_data, *LONG_RUN, "train.grad_accum_steps=60", "train.save_every=0",
                    "train.allow_batch_change=true")
    proc.wait_for(" 3/2000 |")
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait_for("Ctrl-C: finishing step")
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.finish(60)
    assert proc.proc.returncode == 130
    assert time.monotonic() - began < 10
    assert err.strip().splitlines()[-1] == f"aborted by a second Ctrl-C; the last checkpoint is {latest}"
    assert "Traceback" not in err
    assert latest_checkpoint(run) == latest
    assert sorted(run.glob("checkpoints/step_*")) == [latest]
    assert not (run / LOCK_NAME).exists()
