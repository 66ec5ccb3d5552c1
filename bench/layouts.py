"""The long tail's data: ``data_prep.prepare`` on one worker for each layout a corpus ships in
(a folder of ``<code>.txt``, CC-100's ``.txt.xz`` files of blank-line-separated documents through
a JSON list, FineWeb-2's folders of parquet files), in documents/s and MB/s of text; the time a
preparation killed half-way (``kill -9`` once half its languages are done) takes to finish
against the time of a whole one; the memory training a tokenizer on its language-balanced sample
adds, at the 19 bundled languages and at 1,000 synthetic ones; and, where ``sbatch`` reaches a
cluster (``SLURM_CONF``; here the local one of ``tests/support/slurm_cluster.sh``), an array of
2 ``slurm/prepare.sh`` tasks against 1.

The text is the bundled corpus in documents of 4 lines, replicated to the size asked; the
tokenizer the layouts encode with is trained once, before any timing.
"""

from __future__ import annotations

import contextlib
import io
import json
import lzma
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.checkpoint import PeakRSS
from bench.common import REPO, bar_chart, in_child, machine
from bench.data_prep import bundled_cut
from data_prep import record
from data_prep.prepare import Sampling, prepare, train_on_sample
from data_prep.sources import open_source
from xmod_core.shards import TOKENIZER_FILE
from xmod_core.tokenizer import train_tokenizer

MB = 1e6
LINES_PER_DOCUMENT = 4
LAYOUTS = ("text", "cc100", "fineweb2")
SYNTHETIC_LANGUAGES = (19, 1000)
SLURM_COPIES = 4


def run(quick: bool) -> dict:
    corpus_bytes, vocab, sample_gb = (0.5 * MB, 2000, 0.0005) if quick else (100 * MB, 8000, 0.05)
    with tempfile.TemporaryDirectory(prefix="bench-layouts-") as tmp:
        root = Path(tmp)
        docs = documents(bundled_cut(corpus_bytes), corpus_bytes)
        model = root / TOKENIZER_FILE
        train_tokenizer((line for texts in docs.values() for text in texts
                         for line in text.split("\n")), model, vocab)  # once, not timed
        sources = {"text": write_text(root / "text", docs),
                   "cc100": write_cc100(root / "cc100", docs),
                   "fineweb2": write_fineweb2(root / "fineweb2", docs)}
        size = sum(len(text.encode()) + 1 for texts in docs.values() for text in texts)
        count = sum(len(texts) for texts in docs.values())
        rates = {name: layout_rate(source, root / f"out-{name}", model, size, count)
                 for name, source in sources.items()}
        resume = killed_and_resumed(sources["text"], root / "killed", model, len(docs))
        memory = {str(n): in_child(sample_memory, n, sample_gb, vocab, str(root / f"sample-{n}"))
                  for n in SYNTHETIC_LANGUAGES}
        slurm = slurm_tasks(sources["text"], root / "slurm", model) if not quick else None
    return {"machine": machine(), "corpus_bytes": size, "documents": count,
            "languages": len(docs), "tokenizer_pieces": vocab, "workers": 1, "layouts": rates,
            "resume": resume, "tokenizer_sample_gb": sample_gb, "sample_memory": memory,
            "slurm": slurm}


def documents(texts: dict[str, list[str]], total: float) -> dict[str, list[str]]:
    """Each language's lines in documents of LINES_PER_DOCUMENT, repeated to ``total`` bytes."""
    bundled = sum(len(line.encode()) + 1 for lines in texts.values() for line in lines)
    copies = max(1, math.ceil(total / bundled))
    return {lang: ["\n".join(lines[i:i + LINES_PER_DOCUMENT])
                   for i in range(0, len(lines), LINES_PER_DOCUMENT)] * copies
            for lang, lines in texts.items()}


def write_text(folder: Path, docs: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True)
    for lang, texts in docs.items():
        (folder / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return folder


def write_cc100(folder: Path, docs: dict[str, list[str]]) -> Path:
    """CC-100's files (documents separated by a blank line, xz) and the JSON list naming them."""
    folder.mkdir(parents=True)
    for lang, texts in docs.items():
        (folder / f"{lang[:2]}.txt.xz").write_bytes(
            lzma.compress("\n\n".join(texts).encode() + b"\n", preset=1))
    listing = folder / "cc100.json"
    listing.write_text(json.dumps({lang: f"{lang[:2]}.txt.xz" for lang in docs}))
    return listing


def write_fineweb2(folder: Path, docs: dict[str, list[str]]) -> Path:
    """FineWeb-2's layout: data/<code>/train/000_00000.parquet, a row a document."""
    for lang, texts in docs.items():
        path = folder / "data" / lang / "train" / "000_00000.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table({"text": texts}), path)
    return folder


def layout_rate(source: Path, out: Path, model: Path, size: int, count: int) -> dict:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its per-language progress bars
        prepare(source, out, tokenizer=model, workers=1)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb_per_s": size / MB / seconds, "documents_per_s": count / seconds}


def killed_and_resumed(source: Path, out: Path, model: Path, languages: int) -> dict:
    """A preparation killed once half its languages are done, then the same command again;
    and an uninterrupted one, for the ratio."""
    cmd = [sys.executable, "-m", "data_prep.prepare", "--source", str(source), "--tokenizer",
           str(model), "--workers", "1"]
    start = time.perf_counter()
    subprocess.run([*cmd, "--out", str(out.with_name("whole"))], check=True, cwd=REPO,
                   capture_output=True)
    whole = time.perf_counter() - start
    proc = subprocess.Popen([*cmd, "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while len(list(out.glob(f"*/{record.DONE_FILE}"))) < languages // 2:
        if proc.poll() is not None:
            raise RuntimeError("the preparation ended before half its languages were done")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob(f"*/{record.DONE_FILE}")))
    start = time.perf_counter()
    subprocess.run([*cmd, "--out", str(out)], check=True, cwd=REPO, capture_output=True)
    resumed = time.perf_counter() - start
    return {"whole_s": whole, "resumed_s": resumed, "done_when_killed": done,
            "languages": languages, "resumed_vs_whole": resumed / whole}


def sample_memory(languages: int, sample_gb: float, vocab: int, folder: str) -> dict:
    """The memory training a tokenizer adds, on ``sample_gb`` of text from
    ``languages`` synthetic languages (each the bundled text with its Latin letters enciphered
    by a permutation of its own), each holding 4 times its share of the budget; measured in a
    process of its own."""
    out = Path(folder)
    corpus = out / "corpus"
    corpus.mkdir(parents=True)
    base = [line for src in open_source("bundled").values() for line in src.lines()]
    rng = random.Random(0)
    per_language = max(1, int(sample_gb * 1e9 * 4 / languages))
    letters = "abcdefghijklmnopqrstuvwxyz"
    for i in range(languages):
        cipher = str.maketrans(letters, "".join(rng.sample(letters, len(letters))))
        lines, size = [], 0
        while size < per_language:
            lines.append(rng.choice(base).translate(cipher))
            size += len(lines[-1].encode()) + 1
        (corpus / f"{synthetic_code(i)}.txt").write_text("\n".join(lines) + "\n")
    del base
    start = time.perf_counter()
    with PeakRSS() as memory:
        train_on_sample(out, open_source(corpus), vocab, Sampling(gb=sample_gb))
    given = json.loads((out / record.SAMPLE_FILE).read_text())["bytes"]
    return {"added_mib": memory.added_gib * 1024, "seconds": time.perf_counter() - start,
            "sample_mb": sum(given.values()) / MB, "corpus_mb": languages * per_language / MB}


def slurm_tasks(text: Path, root: Path, model: Path) -> dict | None:
    """Seconds from submission to the last task's end of ``slurm/prepare.sh`` as an array of 1
    task and of 2 (one worker each), on the text layout's files SLURM_COPIES times over (Slurm's
    scheduling and each task's start cost a few seconds whatever the size); None without a
    cluster to submit to."""
    if not (shutil.which("sbatch") and os.environ.get("SLURM_CONF")):
        return None
    source = root / "text"
    source.mkdir(parents=True)
    for path in text.iterdir():
        (source / path.name).write_bytes(path.read_bytes() * SLURM_COPIES)
    seconds = {}
    for tasks in (1, 2):
        (root / "logs").mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        job = subprocess.run(
            ["sbatch", "--parsable", f"--array=0-{tasks - 1}", f"--chdir={root}",
             "--cpus-per-task=1", "--export=ALL", str(REPO / "slurm" / "prepare.sh"),
             "--source", str(source), "--tokenizer", str(model), "--out",
             str(root / f"out-{tasks}")], check=True, capture_output=True, text=True,
            env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}).stdout.strip()
        while subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                             text=True).stdout.strip():
            time.sleep(0.2)
        seconds[str(tasks)] = time.perf_counter() - start
        if not (root / f"out-{tasks}" / "manifest.json").is_file():
            raise RuntimeError(f"array job {job} wrote no manifest: see {root / 'logs'}")
    return {"corpus_mb": sum(p.stat().st_size for p in source.iterdir()) / MB,
            "seconds": seconds, "speedup": seconds["1"] / seconds["2"], "goal": 1.7,
            "met": seconds["1"] / seconds["2"] >= 1.7}


def synthetic_code(i: int) -> str:
    """A distinct xxx_Xxxx code for synthetic language ``i``."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return f"{letters[i // 676 % 26]}{letters[i // 26 % 26]}{letters[i % 26]}_Synt"


def report(result: dict) -> str:
    lines = [f"{result['languages']} languages, {result['corpus_bytes'] / MB:.1f} MB of text in "
             f"{result['documents']:,} documents, 1 worker",
             f"{'layout':<10} {'seconds':>8} {'MB/s':>8} {'documents/s':>12}"]
    for name, r in result["layouts"].items():
        lines.append(f"{name:<10} {r['seconds']:>8.2f} {r['mb_per_s']:>8.2f} "
                     f"{r['documents_per_s']:>12,.0f}")
    resume = result["resume"]
    lines += ["", f"killed with {resume['done_when_killed']} of {resume['languages']} languages "
                  f"done: resumed in {resume['resumed_s']:.2f} s against {resume['whole_s']:.2f} s "
                  f"for the whole ({resume['resumed_vs_whole']:.2f}x)",
              "", f"tokenizer sample of {result['tokenizer_sample_gb']} GB: memory the training "
                  "added (peak resident set above its start)",
              f"{'languages':<10} {'corpus MB':>10} {'sample MB':>10} {'added MiB':>10} {'s':>6}"]
    for n, m in result["sample_memory"].items():
        lines.append(f"{n:<10} {m['corpus_mb']:>10.1f} {m['sample_mb']:>10.1f} "
                     f"{m['added_mib']:>10.0f} {m['seconds']:>6.1f}")
    slurm = result["slurm"]
    if slurm is None:
        lines += ["", "Slurm array: not run (no sbatch and SLURM_CONF here)"]
    else:
        verdict = "met" if slurm["met"] else "NOT met"
        one, two = slurm["seconds"]["1"], slurm["seconds"]["2"]
        lines += ["", f"Slurm array on {slurm['corpus_mb']:.0f} MB, submission to the last task's "
                      f"end: 1 task {one:.1f} s, 2 tasks {two:.1f} s: {slurm['speedup']:.2f}x "
                      f"(goal >= {slurm['goal']}): {verdict}"]
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    return [bar_chart(out_dir / "layouts.png", f"prepare by layout, 1 worker "
                      f"({result['machine']['cpu']})", "MB/s of text",
                      {name: {"MB/s": r["mb_per_s"]} for name, r in result["layouts"].items()})]
