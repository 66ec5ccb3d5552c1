"""Run the real CLI in this process, in a subprocess or under torchrun, and read what it wrote."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import chdir, redirect_stderr, redirect_stdout
from pathlib import Path

from xmod_pretrain.cli import main
from xmod_pretrain.training.metrics import METRICS_FILE, read_records

TINY_PEAK_TFLOPS = 0.2
# A model small enough that a few dozen steps take seconds on 2 cores, with every part present.
# The MFU peak is given (about this machine's fp32 matmul peak) rather than measured: the
# measurement costs a second a run; tests of the measured peak set train.peak_tflops=null.
# One thread a process: the two test workers share 2 cores, and a run in either would otherwise
# take both (threads waiting on a busy core spin rather than yield).
TINY_MODEL = [
    "model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=4",
    "model.intermediate_size=128", "data.seq_len=64", "train.micro_batch_size=8",
    "train.eval_batches=2", f"train.peak_tflops={TINY_PEAK_TFLOPS}", "train.threads=1",
]


def cli_here(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``xmod_pretrain ARGV`` run in this process and read as cli()'s subprocess is (its output,
    its exit status). A command that trains on one rank runs here too: a subprocess would spend
    most of its 6 s importing torch and DeepSpeed. What needs a process of its own stays one: a
    signal, a kill, a resource limit, another working directory, the CLI's output as a user
    sees it (warnings, which pytest records instead of printing). ``cwd``: the directory it
    runs in (this one's, meanwhile)."""
    argv_before = sys.argv
    sys.argv = ["xmod_pretrain"]  # Hydra's app reads it (the dispatch rewrites it to train)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err), chdir(cwd or Path.cwd()):
            try:
                main(list(argv))
                status = 0
            except SystemExit as done:
                status = done.code if isinstance(done.code, int) else int(done.code is not None)
                if isinstance(done.code, str):  # the interpreter would print it at exit
                    print(done.code, file=sys.stderr)
    finally:
        sys.argv = argv_before
    return subprocess.CompletedProcess(["xmod_pretrain", *argv], status, out.getvalue(),
                                       err.getvalue())


def run_training(run_dir: Path, data_dir: Path, *overrides: str, nproc: int = 1,
                 timeout: int = 300, check: bool = True,
                 env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None,
                 model: Sequence[str] = TINY_MODEL,
                 source: str = "null",
                 own_process: bool = False) -> subprocess.CompletedProcess:
    """A demo run of the tiny model: on one rank in this process (``cli_here``), unless
    ``own_process`` or what only a process of its own has (``env``, or ``preexec_fn``, which runs
    in the child before it starts: a umask, a resource limit) is asked for; under torchrun on
    more. ``model`` replaces the tiny model's overrides (empty: the demo's own), ``source`` is
    ``data.source``."""
    args = demo_args(run_dir, data_dir, *overrides, model=model, source=source)
    if nproc == 1 and not (own_process or env or preexec_fn):
        proc = cli_here(*args)
    else:
        proc = _run_process(args, nproc, timeout, env, preexec_fn)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(proc.args)} exited {proc.returncode}\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def _run_process(args: list[str], nproc: int, timeout: int, env: dict[str, str] | None,
                 preexec_fn: Callable[[], None] | None) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "xmod_pretrain", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "xmod_pretrain", *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=preexec_fn)


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
