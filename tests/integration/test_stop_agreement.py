"""Several ranks agree on a stop without waiting on each other every step: a signal to one rank
stops every rank after the same step, one step after the one it arrived in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

TWO_RANKS = """
import os, signal, sys, time
from pathlib import Path
from xmod_pretrain.training.distributed import finish_process, init_distributed
from xmod_pretrain.training.signals import StopRequest

info = init_distributed(60)
step = 0
stop = StopRequest(Path(sys.argv[1]), lambda: step + 1, info.is_main, info.world_size)
assert stop.delay == 1
while step < 50:
    if info.rank == 1 and step == 3:  # during step 4 (steps count from 1)
        os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.05 * (info.rank + 1))  # the ranks' steps take different times
    step += 1
    agreed = stop.agreed()
    if agreed:
        print(f"rank {info.rank}: stop on {signal.Signals(agreed).name} after step {step}",
              flush=True)
        break
stop.finish()
finish_process()  # as the CLI ends: an exit through the interpreter can abort a rank
"""


def test_a_signal_to_one_rank_stops_both_after_the_next_step(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: stop on SIGUSR1 after step 5" in proc.stdout, proc.stdout
