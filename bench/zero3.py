"""What ZeRO-3 costs, on 2 processes, with ranks on their own languages and sharing them.

The language modules live outside DeepSpeed (training/language_store.py), so ZeRO-3 runs ranks of
different languages as ZeRO-2 does. Three real ``torchrun`` trainings of the demo model on the
bundled corpus, same global batch, compared by training tokens/s (from each run's metrics.jsonl,
the first log window, which holds start-up, left out) and by the last logged loss. ``--quick``
trains a tiny model on a 0.3 MB cut of the corpus (its tokenizer 2000 pieces), prepared once
before the runs:

- ZeRO-2, per-rank languages (the default)
- ZeRO-3, per-rank languages (the ``large`` recipe's layout)
- ZeRO-3, per-step languages (one language per micro-step for all ranks)
- ZeRO-2 and ZeRO-3, per-rank languages, with 2,000 languages registered: the corpus' 19 and
  made-up ones absent from every step

``--quick`` runs the per-rank layouts, and 2,000 languages under ZeRO-2 alone.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, language_codes, machine
from bench.data_prep import bundled_cut, write_corpus
from data_prep.prepare import prepare
from xmod_core.shards import read_manifest
from xmod_pretrain.training.metrics import METRICS_FILE, read_records

LAYOUTS = {
    "zero2_per_rank": ["deepspeed=zero2", "data.language_per=rank"],
    "zero3_per_rank": ["deepspeed=zero3", "data.language_per=rank"],
    "zero3_per_step": ["deepspeed=zero3", "data.language_per=step"],
    "zero2_per_rank_2000_languages": ["deepspeed=zero2", "data.language_per=rank"],
    "zero3_per_rank_2000_languages": ["deepspeed=zero3", "data.language_per=rank"],
}
REGISTERED = 2000  # the languages of the *_2000_languages layouts
# --quick: the per-rank layouts of both stages (the 2,000-language ones are the full run's)
QUICK_LAYOUTS = ("zero2_per_rank", "zero3_per_rank")
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


def train(run_dir: Path, data_dir: Path, layout: list[str], quick: bool) -> tuple[float, float]:
    """Median training tokens/s of one 2-process demo run, and its last logged loss."""
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
    logged = [r for r in records if "tokens_per_s" in r]
    return statistics.median(r["tokens_per_s"] for r in logged[1:]), logged[-1]["loss"]


def registered(name: str, data_dir: Path) -> list[str]:
    """``model.languages`` of a layout with REGISTERED languages: the data's, then made-up ones
    (the data is prepared by then: the first layout's run prepares it)."""
    if not name.endswith(f"_{REGISTERED}_languages"):
        return []
    data = list(read_manifest(data_dir)["languages"])
    extra = (code for code in language_codes(REGISTERED + len(data)) if code not in data)
    codes = data + list(itertools.islice(extra, REGISTERED - len(data)))
    return [f"model.languages=[{','.join(codes)}]"]


def run(quick: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-zero3-") as tmp:
        data_dir = quick_data(Path(tmp)) if quick else Path(tmp) / "data"
        runs = {name: train(Path(tmp) / name, data_dir,
                            LAYOUTS[name] + registered(name, data_dir), quick)
                for name in (QUICK_LAYOUTS if quick else LAYOUTS)}
    rates = {name: rate for name, (rate, _) in runs.items()}
    base = rates["zero2_per_rank"]
    return {"machine": machine(), "processes": 2, "tokens_per_s": rates,
            "last_loss": {name: loss for name, (_, loss) in runs.items()},
            "vs_zero2_per_rank": {name: r / base for name, r in rates.items()}}


def report(result: dict) -> str:
    lines = ["| layout | tokens/s | vs ZeRO-2 per-rank | last loss |", "|---|---:|---:|---:|"]
    for name, rate in result["tokens_per_s"].items():
        lines.append(f"| {name} | {rate:,.0f} | {result['vs_zero2_per_rank'][name]:.3f}x | "
                     f"{result['last_loss'][name]:.4f} |")
    return "\n".join(lines)
