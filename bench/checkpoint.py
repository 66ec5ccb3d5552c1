"""What a checkpoint costs the training loop: 2 ranks (torchrun, gloo), the mid config, our
DeepSpeed engine after one step, under ZeRO-2 and ZeRO-3. Per rank: the time ``save`` holds the
loop, the time until the checkpoint is published (``finish``), and the peak host memory the save
adds (resident set, sampled every 5 ms, above its level just before).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.common import MID, QUICK, REPO, engine_config, engine_step, machine, masked_batch
from xmod_pretrain.checkpoint.checkpointer import Checkpointer
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.training.distributed import finish_process, init_distributed
from xmod_pretrain.training.engine import build_training_engine

STAGES = (2, 3)
PAGE = os.sysconf("SC_PAGE_SIZE")


def run(quick: bool) -> dict:
    size = QUICK if quick else MID
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        out = Path(tmp) / "ranks.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "bench.checkpoint", "--worker", str(out), "--size", size.name]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        subprocess.run(cmd, check=True, cwd=tmp, env=env)
        ranks = json.loads(out.read_text(encoding="utf-8"))
    return {"machine": machine(), "config": size.name, "ranks": 2, "stages": ranks}


class PeakRSS:
    """The highest resident set of this process while inside the ``with``, above its start."""

    def __init__(self):
        self.stop = threading.Event()
        self.peak = self.start = rss()

    def __enter__(self) -> PeakRSS:
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss())

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss())

    @property
    def added_gib(self) -> float:
        return (self.peak - self.start) / 2**30


def rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE


def worker(out: Path, size_name: str) -> None:
    """One rank: for each stage, an engine, a step, two saves; rank 0 writes every rank's
    figures of the second save."""
    import torch.distributed as dist

    size = {s.name: s for s in (MID, QUICK)}[size_name]
    info = init_distributed(600)
    batch = masked_batch(size)
    results = {}
    for stage in STAGES:
        torch.manual_seed(0)
        training = build_training_engine(XmodForMaskedLM(size.model_config()),
                                         engine_config(size.model_config(), size.batch, stage),
                                         info)
        engine_step(training, batch)()
        saver = Checkpointer(out.parent / f"run-zero{stage}", info, keep=1, sidecars={})
        for step in (1, 2):
            with PeakRSS() as memory:
                start = time.perf_counter()
                saver.save(training.deepspeed, step, {"step": step}, training.store)
                held = time.perf_counter() - start
                saver.finish()
                published = time.perf_counter() - start
        mine = {"loop_held_s": held, "published_s": published,
                "peak_added_gib": memory.added_gib}
        gathered: list = [None] * info.world_size
        dist.all_gather_object(gathered, mine)
        results[f"ZeRO-{stage}"] = {f"rank {r}": figures for r, figures in enumerate(gathered)}
        del training
    if info.is_main:
        out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    finish_process()  # as the CLI ends: an exit through the interpreter can abort a rank


def report(result: dict) -> str:
    lines = [f"config {result['config']}, {result['ranks']} ranks: the second save of each stage",
             f"{'stage':<8} {'rank':<7} {'loop held s':>12} {'published s':>12} "
             f"{'host GiB added':>15}"]
    for stage, ranks in result["stages"].items():
        for rank, f in ranks.items():
            lines.append(f"{stage:<8} {rank:<7} {f['loop_held_s']:>12.2f} {f['published_s']:>12.2f} "
                         f"{f['peak_added_gib']:>15.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    parser.add_argument("--size", default=MID.name)
    args = parser.parse_args()
    worker(args.worker, args.size)
