"""data_prep end to end (read text, encode, write shards) against SentencePiece's raw encode
rate on the same text, 1 and 2 workers; and the sampler's batch rate against a training step.

The text is the bundled corpus (19 languages), replicated to 200 MB as plain ``<lang>.txt``
files; the tokenizer (8000 pieces) is trained on the bundled text once, before any timing.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from omegaconf import OmegaConf

from bench.common import Batch, bar_chart, machine, ours_step, rate, target, time_steps
from data_prep.prepare import prepare
from data_prep.sources import open_source
from xmod_core.shards import TOKENIZER_FILE, read_manifest
from xmod_core.tokenizer import train_tokenizer
from xmod_pretrain.config import CONF_DIR
from xmod_pretrain.data.config import DataConfig, MaskingConfig
from xmod_pretrain.data.masking import Masker
from xmod_pretrain.data.sampler import LanguageSampler
from xmod_pretrain.data.shards import ShardSet
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.training.config import OptimConfig
from xmod_pretrain.training.optim import build_optimizer

MB = 1e6
GOAL_VS_SENTENCEPIECE = 0.7  # per-worker rate >= 70% of SentencePiece's raw encode
GOAL_SCALING = 1.7  # 2 workers >= 1.7x one
GOAL_SAMPLER = 20.0  # sampler batches/s >= 20x training steps/s
WORKERS = (1, 2)


def run(quick: bool) -> dict:
    corpus_bytes, vocab = (0.5 * MB, 2000) if quick else (200 * MB, 8000)
    with tempfile.TemporaryDirectory(prefix="bench-data-prep-") as tmp:
        root = Path(tmp)
        texts = bundled_cut(corpus_bytes)
        size = write_corpus(root / "corpus", texts, corpus_bytes)
        model_path = root / TOKENIZER_FILE
        lines = (line for lang_lines in texts.values() for line in lang_lines)
        train_tokenizer(lines, model_path, vocab)  # once, not timed
        raw = sentencepiece_rate(root / "corpus", model_path, size)
        prep = {w: prepare_rate(root / "corpus", root / f"out{w}", model_path, w, size)
                for w in WORKERS}
        sampler = sampler_vs_step(root / "out1", quick)
    per_worker = {w: p["per_s"] / w for w, p in prep.items()}
    scaling = prep[2]["per_s"] / prep[1]["per_s"]
    return {"machine": machine(), "corpus_bytes": size, "languages": len(texts),
            "tokenizer_pieces": vocab, "sentencepiece_mb_per_s": raw["per_s"] / MB,
            "data_prep": {str(w): {"seconds": p["median_s"], "mb_per_s": p["per_s"] / MB,
                                   "mb_per_s_per_worker": per_worker[w] / MB}
                          for w, p in prep.items()},
            "target_vs_sentencepiece": {str(w): target(per_worker[w] / raw["per_s"],
                                                       GOAL_VS_SENTENCEPIECE) for w in WORKERS},
            "target_scaling": target(scaling, GOAL_SCALING),
            "sampler": sampler, "target_sampler": target(sampler["ratio"], GOAL_SAMPLER)}


def bundled_cut(total: float) -> dict[str, list[str]]:
    """The bundled corpus cut to about ``total`` bytes (``cut``)."""
    return cut({lang: list(src.lines()) for lang, src in open_source("bundled").items()}, total)


def cut(texts: dict[str, list[str]], total: float) -> dict[str, list[str]]:
    """Each language's first lines, the same share of each, about ``total`` bytes in all (the
    whole text when it is smaller)."""
    bundled = sum(len(line.encode()) + 1 for lines in texts.values() for line in lines)
    share = min(1.0, total / bundled)
    return {lang: lines[: max(2, int(len(lines) * share))] for lang, lines in texts.items()}


def write_corpus(folder: Path, texts: dict[str, list[str]], total: float) -> int:
    """Each language's text as ``<lang>.txt``, repeated until the files hold at least ``total``
    bytes; returns the bytes written."""
    folder.mkdir(parents=True)
    blocks = {lang: "".join(f"{line}\n" for line in lines).encode() for lang, lines in texts.items()}
    copies = math.ceil(total / sum(len(b) for b in blocks.values()))
    return sum((folder / f"{lang}.txt").write_bytes(block * copies)
               for lang, block in blocks.items())


def sentencepiece_rate(corpus: Path, model: Path, size: int) -> dict:
    """Bytes/s of ``SentencePieceProcessor.encode`` over the corpus's lines, one thread,
    with the lines already in memory."""
    lines = [line for path in sorted(corpus.iterdir())
             for line in path.read_text(encoding="utf-8").splitlines()]
    processor = spm.SentencePieceProcessor(model_file=str(model))
    start = time.perf_counter()
    processor.encode(lines, num_threads=1)
    return rate([time.perf_counter() - start], size)


def prepare_rate(corpus: Path, out: Path, model: Path, workers: int, size: int) -> dict:
    """Bytes/s of ``data_prep.prepare`` from the text files to the manifest (tokenizer given)."""
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its per-language progress bars
        prepare(corpus, out, tokenizer=model, workers=workers)
    return rate([time.perf_counter() - start], size)


def sampler_vs_step(data_dir: Path, quick: bool) -> dict:
    """Micro-batches/s of the trainer's sampler beside steps/s of the demo model (conf/model/
    demo.yaml on this data's vocabulary and languages; model + optimizer, fp32)."""
    batch, seq, draws = (2, 32, 20) if quick else (16, 128, 200)
    manifest = read_manifest(data_dir)
    langs = list(manifest["languages"])
    vocab = manifest["tokenizer"]["vocab_size"]
    masker = Masker(MaskingConfig(), vocab)
    sampler = LanguageSampler(ShardSet(data_dir, "train", langs), DataConfig(seq_len=seq), masker,
                              batch, seed=1, lang_ids=list(range(len(langs))))
    start = time.perf_counter()
    micro = [sampler.micro_batch(step, 0, 0) for step in range(draws)]
    sampling = rate([time.perf_counter() - start], draws)
    cfg = demo_config(vocab, langs)
    torch.manual_seed(0)
    model = XmodForMaskedLM(cfg).train()
    first = Batch(micro[0].lang, micro[0].input_ids, micro[0].mlm_positions, micro[0].mlm_targets)
    optimizer = build_optimizer(model.named_parameters(), OptimConfig())
    steps = time_steps(ours_step(model, optimizer, first),
                       *((1, 2) if quick else (2, 5)))
    step_rate = rate(steps, 1)
    return {"batch": batch, "seq": seq, "draws": draws, "batches_per_s": sampling["per_s"],
            "step_s": step_rate["median_s"], "steps_per_s": step_rate["per_s"],
            "ratio": sampling["per_s"] / step_rate["per_s"],
            "model_parameters": int(sum(np.prod(p.shape) for p in model.parameters()))}


def demo_config(vocab: int, languages: list[str]) -> ModelConfig:
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                             OmegaConf.load(Path(CONF_DIR) / "model" / "demo.yaml"),
                             {"vocab_size": vocab, "languages": languages})
    return OmegaConf.to_object(merged)


def report(result: dict) -> str:
    lines = [(f"corpus {result['corpus_bytes'] / MB:.1f} MB, {result['languages']} languages, "
             f"tokenizer {result['tokenizer_pieces']} pieces"),
             (f"SentencePiece encode (1 thread, lines in memory): "
             f"{result['sentencepiece_mb_per_s']:.2f} MB/s")]
    for w, p in result["data_prep"].items():
        t = result["target_vs_sentencepiece"][w]
        lines.append(f"data_prep, {w} worker(s): {p['seconds']:.1f} s, {p['mb_per_s']:.2f} MB/s, "
                     f"{p['mb_per_s_per_worker']:.2f} MB/s per worker = {t['value']:.0%} of "
                     f"SentencePiece (>= {t['goal']:.0%}: {'met' if t['met'] else 'NOT met'})")
    t = result["target_scaling"]
    lines.append(f"2 workers / 1 worker: {t['value']:.2f}x (>= {t['goal']}x: "
                 f"{'met' if t['met'] else 'NOT met'})")
    s, t = result["sampler"], result["target_sampler"]
    lines.append(f"sampler {s['batches_per_s']:,.0f} batches/s ({s['batch']} x {s['seq']}), demo "
                 f"step {s['step_s']:.3f} s: {t['value']:.0f}x (>= {t['goal']:.0f}x: "
                 f"{'met' if t['met'] else 'NOT met'})")
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    rates = {"SentencePiece encode": result["sentencepiece_mb_per_s"]}
    rates |= {f"data_prep, {w} worker(s)": p["mb_per_s_per_worker"]
              for w, p in result["data_prep"].items()}
    return [bar_chart(out_dir / "data_prep.png", "Encoding rate per process", "MB/s",
                      {"per worker": rates})]
