"""Stop requests: SIGTERM and SIGUSR1 end a run at the next step boundary, with a checkpoint.

Slurm sends SIGUSR1 (``--signal``) or SIGTERM before a time limit or a preemption; torchrun
forwards SIGTERM to its workers. A handler only records the signal: the loop finishes its step,
all ranks agree that one of them was signalled, and every rank saves and exits together.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self) -> None:
        self.signum = 0
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._record)

    def _record(self, signum: int, frame) -> None:
        self.signum = signum

    def agreed(self, world_size: int, device: torch.device) -> int:
        """The signal any rank received (0: none). A collective when there are several ranks."""
        if world_size == 1:
            return self.signum
        flag = torch.tensor([self.signum], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
