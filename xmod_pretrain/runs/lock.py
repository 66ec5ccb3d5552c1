"""One run directory, one trainer: an exclusive lock file, ``run_dir/.lock``.

Two trainers on one run directory would share its temporary checkpoint names and delete each
other's saves. The first takes ``.lock`` and keeps it for its whole life; a second is refused with
the holder's pid and host, before it loads or builds anything.

The lock must work across the nodes of a cluster, on NFS, Lustre or GPFS, where ``flock`` is not
reliable. Creation is a hard link of a complete, uniquely named file to ``.lock``: ``link`` fails
if the name exists, atomically, on every one of those filesystems, and a reader never sees a
half-written lock. The holder refreshes the file's mtime every ``HEARTBEAT_S`` (the heartbeat), so
a lock left by a crashed node shows its age. A lock may be taken over when its holder is known dead:
on this host, its pid is gone or now names another process (a different start time in /proc); on
another host, its heartbeat is older than ``STALE_AFTER_S``, or it belongs to an earlier run of this
Slurm job (a requeued job: Slurm killed the old incarnation before starting this one).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch.distributed as dist

from xmod_core.errors import UserError, error_line
from xmod_core.outputs import LOCK_NAME
from xmod_pretrain.training.distributed import DistInfo, barrier, shutdown_distributed

HEARTBEAT_S = 30.0
# Ten missed heartbeats: a live holder on a busy filesystem is not mistaken for a dead one.
STALE_AFTER_S = 300.0


class RunLockError(UserError):
    """The run directory is in use by another trainer."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: what the lock file records."""

    host: str
    pid: int
    start_time: int | None  # clock ticks after boot (/proc/PID/stat): tells a reused pid apart
    started: str            # ISO time, for people
    slurm_job_id: str | None
    slurm_restart_count: int
    command: list[str]

    @classmethod
    def this_process(cls) -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(),
                   start_time=process_start_time(os.getpid()),
                   started=datetime.now().isoformat(timespec="seconds"),
                   slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                   slurm_restart_count=int(os.environ.get("SLURM_RESTART_COUNT", 0)),
                   command=list(sys.argv))

    @classmethod
    def from_json(cls, text: str) -> Holder:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Seen:
    """The lock file as found: its holder (None if unreadable), inode and heartbeat age."""

    holder: Holder | None
    inode: int
    age_s: float


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat; None where there is no /proc or no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def dead_reason(holder: Holder) -> str | None:
    """Why a holder on this host is dead, or None while it lives."""
    if not pid_exists(holder.pid):
        return f"pid {holder.pid} is gone"
    now = process_start_time(holder.pid)
    if holder.start_time is not None and now is not None and now != holder.start_time:
        return f"pid {holder.pid} now belongs to another process"
    return None


class RunLock:
    """``run_dir/.lock``, held from ``acquire`` to ``release`` (or the process's exit)."""

    def __init__(self, run_dir: str | Path, stale_after_s: float = STALE_AFTER_S,
                 heartbeat_s: float = HEARTBEAT_S):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.me = Holder.this_process()
        self._fd: int | None = None
        self._created: list[Path] = []  # folders the lock made: removed again if left empty
        self._stop = threading.Event()

    # ---- taking and giving back ---------------------------------------------------------

    def acquire(self) -> str | None:
        """Take the lock, or raise ``RunLockError`` naming its holder. Returns a line to print
        when a dead holder's lock was taken over."""
        self._make_run_dir()
        try:
            note = self._link()
        except BaseException:
            self._remove_created()
            raise
        atexit.register(self.release)
        threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True).start()
        return note

    def release(self, remove_new_run_dir: bool = False) -> None:
        """Remove the lock file if it is still ours; then any folder the lock made, if empty, or
        whole with ``remove_new_run_dir`` (a start that failed before training: what it wrote
        into a run_dir it made is a half-made run). Idempotent: called by the trainer and again
        at exit."""
        if self._fd is None:
            return
        self._stop.set()
        if self._is_ours():
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None
        atexit.unregister(self.release)
        if remove_new_run_dir and self.run_dir in self._created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        self._remove_created()

    def _link(self) -> str | None:
        mine = self.run_dir / f"{LOCK_NAME}.{self.me.host}.{self.me.pid}.{uuid.uuid4().hex[:8]}"
        mine.write_text(json.dumps(asdict(self.me)) + "\n", encoding="utf-8")
        note = None
        try:
            for _ in range(5):  # each failed round saw a lock that vanished or was taken over
                try:
                    os.link(mine, self.path)
                except FileExistsError:
                    note = self._take_over_if_dead() or note
                    continue
                # An open descriptor keeps naming our inode, even if a taker renames .lock away.
                self._fd = os.open(mine, os.O_RDONLY)
                return note
            raise RunLockError(f"run_dir {self.run_dir}: {self.path} keeps changing hands; "
                               "another trainer is starting on it")
        finally:
            mine.unlink(missing_ok=True)

    def _take_over_if_dead(self) -> str | None:
        """Move a dead holder's lock aside and say so; refuse a live one."""
        seen = self._read()
        if seen is None:  # released meanwhile
            return None
        reason = self._dead_reason(seen)
        if reason is None:
            raise RunLockError(f"{self._describe(seen, 'is in use by')}: wait for it, stop it, "
                               "or pick another run_dir")
        aside = self.path.with_name(f"{LOCK_NAME}.dead.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another starter took it aside first
            return None
        taken = os.stat(aside).st_ino == seen.inode
        if not taken:  # a live lock, linked between our read and our rename: give it back
            with suppress(FileExistsError):
                os.link(aside, self.path)
        aside.unlink()
        return f"{self._describe(seen, 'was locked by')}: taking it over, {reason}" if taken else None

    def _read(self) -> Seen | None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, encoding="utf-8") as f:
            stat = os.fstat(fd)
            try:
                holder = Holder.from_json(f.read())
            except (ValueError, TypeError):  # not a lock this code wrote
                holder = None
        return Seen(holder, stat.st_ino, time.time() - stat.st_mtime)

    def _dead_reason(self, seen: Seen) -> str | None:
        """Why the holder of a lock is known dead, or None if it may live. On this host the
        process table decides (a stopped or busy holder keeps its lock); elsewhere, the heartbeat
        or Slurm does."""
        holder = seen.holder
        if holder is not None and holder.host == self.me.host:
            return dead_reason(holder)
        if seen.age_s > self.stale_after_s:
            return f"its heartbeat stopped {seen.age_s:.0f} s ago (limit {self.stale_after_s:.0f} s)"
        if (holder is not None and holder.slurm_job_id is not None
                and holder.slurm_job_id == self.me.slurm_job_id
                and holder.slurm_restart_count < self.me.slurm_restart_count):
            return f"it is an earlier run of Slurm job {holder.slurm_job_id}, now requeued"
        return None

    def _describe(self, seen: Seen, verb: str) -> str:
        holder = seen.holder
        if holder is None:
            return f"run_dir {self.run_dir} {verb} an unreadable lock file {self.path} " \
                   f"(heartbeat {seen.age_s:.0f} s ago)"
        return (f"run_dir {self.run_dir} {verb} pid {holder.pid} on host {holder.host} "
                f"(started {holder.started}, heartbeat {seen.age_s:.0f} s ago)")

    # ---- while held ---------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            fd = self._fd
            if fd is None:
                return
            try:
                os.utime(fd)  # our inode: never refreshes a lock another process took over
            except OSError:  # a filesystem hiccup: the next beat tries again
                pass

    def _is_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    # ---- the run directory --------------------------------------------------------------

    def _make_run_dir(self) -> None:
        missing = self.run_dir
        while not missing.exists():
            self._created.append(missing)
            missing = missing.parent
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def _remove_created(self) -> None:
        """A refused or failed start leaves no empty run_dir behind (deepest folder first)."""
        for folder in self._created:
            try:
                folder.rmdir()
            except FileNotFoundError:  # removed whole by release(remove_new_run_dir=True)
                continue
            except OSError:  # not empty: the run wrote something
                return
        self._created = []


def lock_run_dir(run_dir: str | Path, info: DistInfo) -> RunLock | None:
    """Rank 0 takes the run directory's lock and tells every rank the outcome, so that all
    of them go on, or all exit with status 1 together, rank 0 printing why. Returns rank 0's
    lock (None elsewhere)."""
    lock, refusal = None, None
    if info.is_main:
        lock = RunLock(run_dir)
        try:
            note = lock.acquire()
        except RunLockError as err:
            refusal = str(err)
        else:
            if note:
                print(note, flush=True)
    if info.world_size > 1:
        outcome = [refusal]
        dist.broadcast_object_list(outcome, src=0)
        refusal = outcome[0]
    if refusal is None:
        return lock
    if info.is_main:
        print(error_line(refusal), file=sys.stderr, flush=True)
    # The line is out before any rank exits: torchrun kills the others at the first exit. Every
    # rank is here, so the group can be left (its threads stopped before the interpreter exits).
    barrier()
    shutdown_distributed()
    raise SystemExit(1)
