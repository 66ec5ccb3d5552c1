"""metrics.jsonl after faults: kill -9 between checkpoints, then the same command, leaves one
record per (split, step), consistent with the checkpoint; a torn last line is repaired on resume.
Every reader (report included) then reads the file as it is."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.launch import TINY_MODEL, read_metrics, run_training
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.evaluation.report import main as report_main
from xmod_pretrain.training.metrics import read_records

pytestmark = pytest.mark.integration

STEPS = 30
# Validation every 2 steps and a checkpoint every 5: a kill between saves leaves train and valid
# records of steps the checkpoint does not hold.
ARGS = (f"train.max_steps={STEPS}", "train.log_every=1", "train.eval_every=2",
        "train.save_every=5", "train.keep_checkpoints=10")


def saved_step(run: Path) -> int:
    latest = latest_checkpoint(run)
    return -1 if latest is None else json.loads((latest / "trainer_state.json").read_text())["step"]


def whole_lines(data: bytes) -> list[tuple[bytes, dict]]:
    """(line, record) of each line written whole; a last line being written (or torn) is left
    out."""
    lines = []
    for line in data.splitlines():
        try:
            lines.append((line, json.loads(line)))
        except ValueError:
            break
    return lines


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [record["step"] for _, record in whole_lines(path.read_bytes() if path.exists() else b"")]


def kill_between_saves(run: Path, data: Path) -> None:
    """Train until a checkpoint exists and two steps beyond it are logged, then SIGKILL."""
    cmd = [sys.executable, "-m", "xmod_pretrain", "+exp=demo", f"run_dir={run}",
           f"data.dir={data}", "data.source=null", *TINY_MODEL, *ARGS]
    log = run.parent / "killed.log"  # a file, not a pipe: nothing reads it while it trains
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            saved = saved_step(run)
            if saved > 0 and max(logged_steps(run), default=0) >= saved + 2:
                return
            time.sleep(0.02)
        raise TimeoutError("no records beyond a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def report(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xmod_pretrain", "report", "--from", str(run)],
                          capture_output=True, text=True, timeout=120)


def assert_one_record_per_split_and_step(run: Path, last: int) -> None:
    train, valid = read_metrics(run)
    assert [r["step"] for r in train] == list(range(1, last + 1))
    assert [r["step"] for r in valid] == sorted({*range(0, last, 2), last})
    assert not [k for k, n in Counter((r.get("split"), r["step"]) for r in
                                      read_records(run / "metrics.jsonl")).items() if n > 1]


@pytest.fixture(scope="module")
def killed(tiny_data, tmp_path_factory) -> tuple[Path, int, int, bytes, str]:
    """A run killed -9 past its checkpoint, then resumed by the same command: (run, the
    checkpoint's step, the last step the dead attempt logged, metrics.jsonl as the kill left it,
    the resume's stdout)."""
    run = tmp_path_factory.mktemp("killed") / "run"
    kill_between_saves(run, tiny_data)
    saved, dead = saved_step(run), max(logged_steps(run))
    assert dead > saved >= 5
    left = (run / "metrics.jsonl").read_bytes()
    resumed = run_training(run, tiny_data, *ARGS)
    return run, saved, dead, left, resumed.stdout


def test_kill_9_then_the_same_command_leaves_one_record_per_step(killed):
    """The records the dead attempt logged after its checkpoint are dropped, said in one line;
    those the checkpoint holds stay as they were, and the resumed run logs each step once."""
    run, saved, dead, left, out = killed
    assert f"resumed from {run / 'checkpoints'}" in out
    lines = whole_lines(left)
    dropped = [record for _, record in lines if record["step"] > saved]  # train and valid
    assert (f"{run / 'metrics.jsonl'}: dropped {len(dropped)} record(s) of steps {saved + 1}-"
            f"{dead}, logged after the checkpoint this start resumes from") in out
    assert_one_record_per_split_and_step(run, STEPS)
    kept = b"".join(line + b"\n" for line, record in lines if record["step"] <= saved)
    assert (run / "metrics.jsonl").read_bytes().startswith(kept)  # what the checkpoint holds
    page = report(run)
    assert page.returncode == 0, page.stderr


def test_a_torn_last_line_is_dropped_on_resume_and_the_log_goes_on(killed, tiny_data, tmp_path,
                                                                   capsys):
    """Cut 40 bytes off the end of the log (the last validation), resume: the torn line is
    dropped with one line that says so, and the new records start on lines of their own."""
    run = tmp_path / "run"
    shutil.copytree(killed[0], run)
    metrics = run / "metrics.jsonl"
    whole = metrics.read_bytes()
    metrics.write_bytes(whole[:-40])  # what a crash mid-write leaves
    number = whole.count(b"\n")
    torn = len(whole.rstrip(b"\n").rsplit(b"\n", 1)[1]) + 1 - 40
    assert report_main(["--from", str(run)]) == 1
    assert capsys.readouterr().err.startswith(
        f"xmod_pretrain report: error: {metrics}:{number}: not JSON (")
    resumed = run_training(run, tiny_data, *ARGS, f"train.max_steps={STEPS + 1}")
    (note,) = [line for line in resumed.stdout.splitlines() if "dropped" in line]
    assert note.startswith(f"{metrics}:{number}: dropped a torn last line ({torn} bytes, not JSON (")
    assert note.endswith("what a crash mid-write leaves")
    train, valid = read_metrics(run)  # every line parses: the new records have lines of their own
    assert train[-1]["step"] == STEPS + 1 and valid[-1]["step"] == STEPS + 1
    assert STEPS not in [r["step"] for r in valid]  # the torn validation is gone, not glued
    assert report(run).returncode == 0
