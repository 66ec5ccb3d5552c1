"""What a checkpoint costs the training loop: 2 ranks (torchrun, gloo), the mid config, our
DeepSpeed engine after one step, under ZeRO-2 and ZeRO-3. Per rank: the time ``save`` holds the
loop, the time until the checkpoint is published (``finish``), and the peak host memory the save
adds (resident set, sampled every 5 ms, above its level just before).

Then what a save costs against the languages registered: the small config under ZeRO-2 with 81
and with 2,000 languages, 4 of them trained since the last save: the seconds until published
(median of 3 such saves) and the bytes the save wrote (its checkpoint folder and the language
files it added).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.common import (
    MID,
    QUICK,
    REPO,
    SMALL,
    Size,
    engine_config,
    engine_step,
    machine,
    masked_batch,
)
from xmod_pretrain.checkpoint.checkpointer import Checkpointer
from xmod_pretrain.checkpoint.language_files import LANGUAGE_DIR
from xmod_pretrain.checkpoint.layout import step_tag
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.training.distributed import finish_process, init_distributed
from xmod_pretrain.training.engine import build_training_engine

STAGES = (2, 3)
PAGE = os.sysconf("SC_PAGE_SIZE")
COUNTS = (81, 2000)  # languages registered
TRAINED = 4  # languages trained between two saves
ROUNDS = 3  # saves timed, each after TRAINED languages trained
GOAL = 1.1  # a save at 2,000 languages may cost at most 10% more than at 81


def run(quick: bool) -> dict:
    size = QUICK if quick else MID
    languages_size = QUICK if quick else SMALL
    if quick:  # engines of a few kB: both parts in one pair of processes
        parts = in_torchrun({"stages": size.name, "languages": languages_size.name})
    else:
        parts = {**in_torchrun({"stages": size.name}),
                 **in_torchrun({"languages": languages_size.name})}
    stages, by_count = parts["stages"], parts["languages"]
    most, fewest = by_count[str(COUNTS[-1])], by_count[str(COUNTS[0])]
    worst = max(most[key] / fewest[key] for key in ("published_s", "bytes"))
    return {"machine": machine(), "config": size.name, "ranks": 2, "stages": stages,
            "languages": {"config": languages_size.name, "trained": TRAINED,
                          "registered": by_count, "worst_ratio": worst, "goal": GOAL,
                          "met": worst <= GOAL}}


def in_torchrun(parts: dict[str, str]) -> dict:
    """Parts of the benchmark (part: its size's name) on two ranks, in processes of their own
    (the engines a part builds are never freed, see bench.common.in_child): rank 0's JSON of
    each part."""
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp:
        out = Path(tmp) / "ranks.json"
        named = [f"{part}={size_name}" for part, size_name in parts.items()]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "bench.checkpoint", "--worker", str(out), "--parts", *named]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        subprocess.run(cmd, check=True, cwd=tmp, env=env)
        return json.loads(out.read_text(encoding="utf-8"))


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


def worker(out: Path, parts: dict[str, str]) -> None:
    """One rank of each part: ``stages`` (for each stage an engine, a step, two saves: every
    rank's figures of the second) or ``languages`` (``save_after_trained`` for each count).
    Rank 0 writes the figures."""
    sizes = {s.name: s for s in (MID, SMALL, QUICK)}
    info = init_distributed(600)
    results = {}
    for part, size_name in parts.items():
        size, root = sizes[size_name], out.parent / f"run-{part}"
        if part == "stages":
            results[part] = {f"ZeRO-{stage}": save_cost(size, stage, info, root / f"zero{stage}")
                             for stage in STAGES}
        else:
            results[part] = {str(count): save_after_trained(size, count, info, root / str(count))
                             for count in COUNTS}
    if info.is_main:
        out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    finish_process()  # as the CLI ends: an exit through the interpreter can abort a rank


def save_cost(size: Size, stage: int, info, root: Path) -> dict:
    """Every rank's figures of the second of two saves after one step."""
    import torch.distributed as dist

    torch.manual_seed(0)
    training = build_training_engine(XmodForMaskedLM(size.model_config()),
                                     engine_config(size.model_config(), size.batch, stage), info)
    engine_step(training, masked_batch(size))()
    saver = Checkpointer(root, info, keep=1, sidecars={})
    for step in (1, 2):
        with PeakRSS() as memory:
            start = time.perf_counter()
            saver.save(training.deepspeed, step, {"step": step}, training.store)
            held = time.perf_counter() - start
            saver.finish()
            published = time.perf_counter() - start
    mine = {"loop_held_s": held, "published_s": published, "peak_added_gib": memory.added_gib}
    gathered: list = [None] * info.world_size
    dist.all_gather_object(gathered, mine)
    return {f"rank {r}": figures for r, figures in enumerate(gathered)}


def save_after_trained(size: Size, count: int, info, root: Path) -> dict:
    """Rank 0's seconds (median of ROUNDS saves) and bytes of a save made after ``TRAINED``
    languages trained, with ``count`` registered (the first save wrote every language's file)."""
    cfg = dataclasses.replace(size, languages=count).model_config()
    torch.manual_seed(0)
    training = build_training_engine(XmodForMaskedLM(cfg), engine_config(cfg, size.batch, 2), info)
    saver = Checkpointer(root, info, keep=1, sidecars={})
    saver.save(training.deepspeed, 0, {"step": 0}, training.store)
    saver.finish()
    times = []
    for step in range(1, ROUNDS + 1):
        for lang in range(TRAINED):
            engine_step(training, masked_batch(size, lang, lang))()
        start = time.perf_counter()
        saver.save(training.deepspeed, step, {"step": step}, training.store)
        saver.finish()
        times.append(time.perf_counter() - start)
    checkpoint = root / "checkpoints" / step_tag(ROUNDS)
    language_files = list((root / "checkpoints" / LANGUAGE_DIR).glob(f"*/{step_tag(ROUNDS)}-*"))
    written = [p for p in checkpoint.rglob("*") if p.is_file()] + language_files
    return {"published_s": statistics.median(times), "times_s": times,
            "bytes": sum(p.stat().st_size for p in written),
            "language_files": len(language_files)}


def report(result: dict) -> str:
    lines = [f"config {result['config']}, {result['ranks']} ranks: the second save of each stage",
             f"{'stage':<8} {'rank':<7} {'loop held s':>12} {'published s':>12} "
             f"{'host GiB added':>15}"]
    for stage, ranks in result["stages"].items():
        for rank, f in ranks.items():
            lines.append(f"{stage:<8} {rank:<7} {f['loop_held_s']:>12.2f} {f['published_s']:>12.2f} "
                         f"{f['peak_added_gib']:>15.2f}")
    languages = result["languages"]
    lines += ["", f"config {languages['config']}, ZeRO-2, a save after {languages['trained']} "
                  f"languages trained (rank 0, median of {ROUNDS})",
              f"{'registered':<11} {'published s':>12} {'MB written':>11} {'language files':>15}"]
    for count, f in languages["registered"].items():
        lines.append(f"{count:<11} {f['published_s']:>12.2f} {f['bytes'] / 1e6:>11.1f} "
                     f"{f['language_files']:>15}")
    verdict = "met" if languages["met"] else "NOT met"
    lines.append(f"worst ratio {COUNTS[-1]:,} to {COUNTS[0]} languages "
                 f"{languages['worst_ratio']:.3f} (goal <= {languages['goal']}): {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", type=Path, required=True)
    parser.add_argument("--parts", nargs="+", required=True, help="stages=SIZE languages=SIZE")
    args = parser.parse_args()
    worker(args.worker, dict(named.split("=", 1) for named in args.parts))
