"""Stop requests: SIGTERM, SIGUSR1 and Ctrl-C end a run at the next step boundary, with a checkpoint.

Slurm sends SIGUSR1 (``--signal``) or SIGTERM before a time limit or a preemption; torchrun
forwards SIGTERM, and SIGINT, to its workers. A handler only records the signal: the loop finishes
its step, all ranks agree that one of them was signalled, and every rank saves and exits together.
A second Ctrl-C aborts at once, without saving.

Workers started by torchrun also stop when torchrun itself dies (``kill -9``, the OOM killer):
left running, they would train beside a restarted run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from xmod_core.errors import Aborted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# A Ctrl-C in a terminal reaches torchrun and its workers, and torchrun forwards it to them too:
# under torchrun, a SIGINT this soon after the first is the same Ctrl-C.
SAME_CTRL_C_S = 2.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The launcher, read as early as possible: a parent that died before the watch starts is noticed.
PARENT_AT_START = os.getppid()


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


class StopRequest:
    """Records stop signals and agrees on them over ranks. ``step`` gives the step in progress
    and ``run_dir`` the checkpoints named when a second Ctrl-C aborts; ``announce`` prints the
    first Ctrl-C's notice.

    With several ranks the agreement is an all-reduce on a host-side (gloo) group, started after
    one step and read after the next: no step waits on the device or on the other ranks for it,
    and a signal stops the run one step later than a single process would (``delay``).
    """

    def __init__(self, run_dir: Path, step: Callable[[], int], announce: bool,
                 world_size: int) -> None:
        self.signum = 0
        self.run_dir, self.step, self.announce = run_dir, step, announce
        self.first_ctrl_c: float | None = None
        # A collective: every rank builds its StopRequest at the same point.
        self.group = dist.new_group(backend="gloo") if world_size > 1 else None
        self.pending: tuple[dist.Work, torch.Tensor] | None = None
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._record)

    @property
    def delay(self) -> int:
        """Steps between the one a signal arrives in and the one the run stops after."""
        return 0 if self.group is None else 1

    def _record(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            self._ctrl_c()
        self.signum = signum

    def _ctrl_c(self) -> None:
        now = time.monotonic()
        if self.first_ctrl_c is None:
            self.first_ctrl_c = now
            if self.announce:
                print(f"Ctrl-C: finishing step {self.step() + self.delay} and saving a "
                      "checkpoint; press Ctrl-C again to abort without saving", flush=True)
        elif not under_torchrun() or now - self.first_ctrl_c > SAME_CTRL_C_S:
            from xmod_pretrain.checkpoint.layout import latest_checkpoint

            latest = latest_checkpoint(self.run_dir)
            raise Aborted("aborted by a second Ctrl-C; " + (
                f"the last checkpoint is {latest}" if latest else f"{self.run_dir} has no checkpoint"))

    def agreed(self) -> int:
        """Called by every rank after every step: the signal any rank had received by the end
        of the previous step (this step with one rank); 0: none."""
        if self.group is None:
            return self.signum
        agreed = self.finish()
        flag = torch.tensor([self.signum])
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self.pending = (work, flag)
        return agreed

    def finish(self) -> int:
        """Wait for the agreement in flight; its signal (0: none, or nothing in flight)."""
        if self.pending is None:
            return 0
        work, flag = self.pending
        work.wait()
        self.pending = None
        return int(flag.item())  # a host tensor: no device sync


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def stop_when_orphaned() -> None:
    """Under torchrun, SIGTERM this worker when torchrun dies, so that it saves and exits.

    Not for a plain ``python -m xmod_pretrain``: its parent is a shell, which a user may close
    while the run goes on under nohup.
    """
    if not under_torchrun():
        return
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, name="parent-watch", daemon=True).start()
    elif os.getppid() != PARENT_AT_START:  # it died before the kernel was told to watch it
        os.kill(os.getpid(), signal.SIGTERM)


def _parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` when the parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def _watch_parent(period_s: float = 1.0) -> None:
    """The fallback to prctl: poll for a new parent (the orphan's adopter)."""
    while os.getppid() == PARENT_AT_START:
        time.sleep(period_s)
    os.kill(os.getpid(), signal.SIGTERM)
