"""The run directory's lock: one holder, refusals naming it, take-overs of dead holders only."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xmod_core.errors import UserError
from xmod_pretrain.runs.lock import LOCK_NAME, Holder, RunLock, RunLockError, process_start_time

HOST = socket.gethostname()


def write_lock(run_dir: Path, holder: Holder, age_s: float = 0.0) -> Path:
    """A lock file as another trainer would have left it, its heartbeat ``age_s`` old."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    path.write_text(json.dumps(dataclasses.asdict(holder)))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def holder(pid: int, host: str = HOST, **changes) -> Holder:
    fields = {"start_time": process_start_time(pid), "started": "2026-12-02T17:40:00", **changes}
    return dataclasses.replace(Holder.this_process(), pid=pid, host=host, **fields)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_acquire_writes_the_holder_and_release_removes_the_file(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    recorded = json.loads((tmp_path / LOCK_NAME).read_text())
    assert recorded["pid"] == os.getpid() and recorded["host"] == HOST
    assert recorded["start_time"] == process_start_time(os.getpid())
    assert recorded["command"] == sys.argv and recorded["started"]
    lock.release()
    assert list(tmp_path.iterdir()) == []  # no lock, no leftover temporary file
    lock.release()  # idempotent (the trainer's finally, then atexit)


def test_a_second_acquire_is_refused_naming_the_holder(tmp_path, sleeper):
    write_lock(tmp_path, holder(sleeper), age_s=3)
    with pytest.raises(RunLockError) as err:
        RunLock(tmp_path).acquire()
    assert isinstance(err.value, UserError)
    assert str(err.value) == (
        f"run_dir {tmp_path} is in use by pid {sleeper} on host {HOST} (started "
        "2026-12-02T17:40:00, heartbeat 3 s ago): wait for it, stop it, or pick another run_dir")


def test_a_live_holder_in_this_process_refuses_a_second_lock(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunLockError, match=f"in use by pid {os.getpid()} on host {HOST}"):
        RunLock(tmp_path).acquire()
    first.release()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_message(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, holder(pid))
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert f"was locked by pid {pid} on host {HOST}" in note
    assert f"taking it over, pid {pid} is gone" in note
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path, sleeper):
    reused = holder(sleeper, start_time=process_start_time(sleeper) - 1)
    write_lock(tmp_path, reused)
    lock = RunLock(tmp_path)
    assert f"pid {sleeper} now belongs to another process" in lock.acquire()
    lock.release()


def test_a_fresh_lock_of_another_host_is_refused(tmp_path):
    write_lock(tmp_path, holder(dead_pid(), host="node7"), age_s=60)
    with pytest.raises(RunLockError, match="in use by pid .* on host node7 .*heartbeat 60 s ago"):
        RunLock(tmp_path).acquire()


def test_a_stale_lock_of_another_host_is_taken_over(tmp_path):
    write_lock(tmp_path, holder(os.getpid(), host="node7"), age_s=400)
    lock = RunLock(tmp_path, stale_after_s=300)
    assert "taking it over, its heartbeat stopped 400 s ago (limit 300 s)" in lock.acquire()
    lock.release()


def test_an_earlier_run_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch):
    write_lock(tmp_path, holder(os.getpid(), host="node7", slurm_job_id="4242",
                                slurm_restart_count=0))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock = RunLock(tmp_path)
    assert "an earlier run of Slurm job 4242" in lock.acquire()
    lock.release()
    # Another job's fresh lock is not.
    write_lock(tmp_path, holder(os.getpid(), host="node7", slurm_job_id="999"))
    with pytest.raises(RunLockError):
        RunLock(tmp_path).acquire()


def test_the_heartbeat_refreshes_the_mtime(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05)
    lock.acquire()
    path = tmp_path / LOCK_NAME
    os.utime(path, (0, 0))
    # Until the first beat after the reset: a busy machine may hold the thread back a while,
    # which the test must not take for a missing heartbeat.
    deadline = time.monotonic() + 60
    while path.stat().st_mtime == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert time.time() - path.stat().st_mtime < 5
    lock.release()


def test_a_failed_start_on_a_fresh_run_dir_leaves_no_folder(tmp_path):
    """The lock made runs/new/run (and runs/new); the start fails before writing anything."""
    fresh = tmp_path / "new" / "run"
    lock = RunLock(fresh)
    lock.acquire()
    lock.release()
    assert list(tmp_path.iterdir()) == []
    # A run_dir that existed before stays.
    lock = RunLock(tmp_path)
    lock.acquire()
    lock.release()
    assert tmp_path.is_dir()

