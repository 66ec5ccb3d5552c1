"""The CLI commands several integration files run: add-language, any command in a subprocess,
and the one-line refusal they must print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.support.launch import TINY_PEAK_TFLOPS, cli_here
from xmod_pretrain.runs.records import open_run

# add-language's training overrides for the tiny model (its model comes from the source run).
TRAIN = ["data.seq_len=64", "train.micro_batch_size=8", "train.eval_batches=2",
         "train.log_every=5", "train.eval_every=0", f"train.peak_tflops={TINY_PEAK_TFLOPS}"]


def add_language(*args: str, nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    """``xmod_pretrain add-language ARGS``: in this process on one rank, under torchrun on more."""
    if nproc == 1:
        proc = cli_here("add-language", *args)
    else:
        cli = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "xmod_pretrain.cli", "add-language"]
        proc = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def weights_of(run: Path) -> dict[str, torch.Tensor]:
    return open_run(run).weights()


def cli(*args: str) -> subprocess.CompletedProcess:
    """``xmod_pretrain ARGS`` in a subprocess."""
    return subprocess.run([sys.executable, "-c", "from xmod_pretrain.cli import main; main()",
                           *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line a refusal prints: no traceback."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]
