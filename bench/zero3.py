"""What the ZeRO-3 path costs: one language per micro-step for all ranks, against per-rank
languages, on 2 processes.

Under ZeRO-3 every rank must run the same language's modules in a micro-step (DeepSpeed gathers
each module's weights with all ranks together), so the ZeRO-3 path is ``data.language_per=step``.
Three real ``torchrun`` trainings of the demo model on the bundled corpus, same global batch,
compared by training tokens/s (from each run's metrics.jsonl, the first log window, which
holds start-up, left out). ``--quick`` trains a tiny model on a 0.3 MB cut of the corpus
(its tokenizer 2000 pieces), prepared once before the runs:

- ZeRO-2, per-rank languages (the default)
- ZeRO-2, per-step languages (what sharing the language alone costs)
- ZeRO-3, per-step languages (the ZeRO-3 path)
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, machine
from bench.data_prep import bundled_cut, write_corpus
from data_prep.prepare import prepare
from xmod_pretrain.training.metrics import METRICS_FILE, read_records

LAYOUTS = {
    "zero2_per_rank": ["deepspeed=zero2", "data.language_per=rank"],
    "zero2_per_step": ["deepspeed=zero2", "data.language_per=step"],
    "zero3_per_step": ["deepspeed=zero3", "data.language_per=step"],
}
QUICK_MODEL = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
               "model.intermediate_size=64", "data.seq_len=32", "train.micro_batch_size=2"]
QUICK_CORPUS_BYTES, QUICK_VOCAB = 0.3e6, 2000


def quick_data(root: Path) -> Path:
    """Shards of a cut of the bundled corpus: preparing all of it takes about as long as the
    three quick runs together."""
    write_corpus(root / "corpus", bundled_cut(QUICK_CORPUS_BYTES), QUICK_CORPUS_BYTES)
    with contextlib.redirect_stderr(io.StringIO()):  # its per-language progress bars
        prepare(str(root / "corpus"), root / "data", vocab_size=QUICK_VOCAB, workers=1)
    return root / "data"


def train(run_dir: Path, data_dir: Path, layout: list[str], quick: bool) -> float:
    """Median training tokens/s of one 2-process demo run."""
    steps, every = (6, 2) if quick else (60, 10)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "xmod_pretrain", "+exp=demo", f"run_dir={run_dir}", f"data.dir={data_dir}",
           # the full size prepares the bundled corpus on first use, in the first of the runs
           f"data.source={'null' if quick else 'bundled'}",
           f"train.max_steps={steps}", f"train.log_every={every}", "train.eval_every=0",
           "train.eval_batches=1", "train.save_every=0", "logging.wandb=false", *layout,
           *(QUICK_MODEL if quick else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core per process on 2 cores
    subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True, text=True)
    records = read_records(run_dir / METRICS_FILE)
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    return statistics.median(rates[1:])


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-zero3-") as tmp:
        data_dir = quick_data(Path(tmp)) if quick else Path(tmp) / "data"
        rates = {name: train(Path(tmp) / name, data_dir, layout, quick)
                 for name, layout in LAYOUTS.items()}
    base = rates["zero2_per_rank"]
    return {"machine": machine(), "processes": 2, "tokens_per_s": rates,
            "vs_zero2_per_rank": {name: r / base for name, r in rates.items()}}


def report(result: dict) -> str:
    lines = ["| layout | tokens/s | vs ZeRO-2 per-rank |", "|---|---:|---:|"]
    for name, rate in result["tokens_per_s"].items():
        lines.append(f"| {name} | {rate:,.0f} | {result['vs_zero2_per_rank'][name]:.3f}x |")
    return "\n".join(lines)
