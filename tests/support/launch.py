"""Run the real CLI in a subprocess, alone or under torchrun, and read what it wrote."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from xmod_pretrain.training.metrics import METRICS_FILE, read_records

TINY_PEAK_TFLOPS = 0.2
# A model small enough that a few dozen steps take seconds on 2 cores, with every part present.
# The MFU peak is given (about this machine's fp32 matmul peak) rather than measured: the
# measurement costs a second a run; tests of the measured peak set train.peak_tflops=null.
TINY_MODEL = [
    "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=4",
    "model.intermediate_size=128", "data.seq_len=64", "train.micro_batch_size=8",
    "train.eval_batches=2", f"train.peak_tflops={TINY_PEAK_TFLOPS}",
]


def run_training(run_dir: Path, data_dir: Path, *overrides: str, nproc: int = 1,
                 timeout: int = 300, check: bool = True,
                 env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None,
                 model: Sequence[str] = TINY_MODEL,
                 source: str = "null") -> subprocess.CompletedProcess:
    """``preexec_fn`` runs in the child before it starts (a umask, a resource limit); ``model``
    replaces the tiny model's overrides (empty: the demo's own), ``source`` is ``data.source``."""
    args = demo_args(run_dir, data_dir, *overrides, model=model, source=source)
    if nproc == 1:
        cmd = [sys.executable, "-m", "xmod_pretrain", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "xmod_pretrain", *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=preexec_fn)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def demo_args(run_dir: Path, data_dir: Path, *overrides: str,
              model: Sequence[str] = TINY_MODEL, source: str = "null") -> list[str]:
    """The command line of a demo run of the tiny model on prepared data (run_training's)."""
    return ["+exp=demo", f"run_dir={run_dir}", f"data.dir={data_dir}", f"data.source={source}",
            *model, *overrides]


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train records, valid records) of metrics.jsonl."""
    records = read_records(run_dir / METRICS_FILE)
    valid = [r for r in records if r.get("split") == "valid"]
    train = [r for r in records if "split" not in r]
    return train, valid


def tree_hash(path: Path) -> str:
    """A hash of everything under ``path``: names (folders included), modes and contents. Equal
    before and after a command means the command changed nothing there."""
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        digest.update(f"{entry.relative_to(path)} {entry.stat().st_mode:o}".encode())
        if entry.is_file():
            digest.update(entry.read_bytes())
    return digest.hexdigest()
