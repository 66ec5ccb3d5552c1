"""``add-language --extend-vocab N``: grow the vocabulary for the new language, the old ones kept.

The new run learns up to N pieces from the new language's training lines
(``xmod_pretrain.vocabulary.pieces``: only pieces that cannot match the old languages' text), writes the
grown SentencePiece model to ``<run>/vocabulary/`` and prepares the new language's shards with it.
The model's new rows start from the old tokenizer's view of each piece and train in rows of their
own (``xmod_pretrain.vocabulary.split_model``); what the extension promises is reported after training:
each old language's loss through the grown softmax against the source's (old ids only), and bits
per byte of the new language.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from data_prep.shards import valid_lines
from data_prep.sources import open_source
from xmod_core.atomic import atomic_path, write_text
from xmod_core.languages import language_index
from xmod_core.shards import TOKENIZER_FILE, is_prepared, read_manifest
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.config import Config
from xmod_pretrain.data.masking import Masker
from xmod_pretrain.data.sampler import validation_batches
from xmod_pretrain.data.shards import ShardSet
from xmod_pretrain.interop.tokenizer import TOKENIZER_JSON, build_tokenizer
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.runs.records import RunCheckpoint
from xmod_pretrain.training.distributed import DistInfo, barrier
from xmod_pretrain.training.trainer import Trainer
from xmod_pretrain.vocabulary.config import AddedPieces, VocabularyConfig
from xmod_pretrain.vocabulary.pieces import (
    ExtensionError,
    characters_outside,
    extend_tokenizer,
    learn_pieces,
    old_spelling,
    piece_bytes,
    read_model,
    tokens_per_character,
)
from xmod_pretrain.vocabulary.split_model import (
    BIAS,
    EMBEDDINGS,
    OldContexts,
    decoder_inputs,
    grow_rows,
    initial_rows,
    vocabulary_losses,
)

VOCAB_DIR = "vocabulary"      # in the new run: the grown tokenizer (SentencePiece, tokenizer.json)
LEARNED_FILE = "learned.json"  # the pieces, the characters left out, tokens per character
MAX_RISE = 1e-3                # the old languages' loss through the grown softmax: at most +0.1%
MAX_CONTEXTS = 8192            # old-language decoder inputs the new pieces are kept out of


@dataclass
class GrownVocabulary:
    """The vocabulary a run grew: its tokenizer and which ids are new."""

    tokenizer: Path
    config: VocabularyConfig
    first: int
    """The first new id (the source's <mask> id)."""
    count: int


def grow_vocabulary(cfg: Config, source: RunCheckpoint, text: str,
                    info: DistInfo) -> GrownVocabulary:
    """The grown tokenizer of this run: learned and written by rank 0 on first use (every rank
    waits for it), read back on a resume."""
    lang = cfg.add_language.languages[0]
    path = Path(cfg.run_dir) / VOCAB_DIR / TOKENIZER_FILE
    if info.is_main and not path.is_file():
        _learn(cfg, source, text, lang, path)
    barrier()
    old, grown = read_model(source.tokenizer), read_model(path)
    if list(grown.pieces)[:len(old.pieces)] != list(old.pieces):
        raise ExtensionError(f"{path} does not extend the tokenizer of {source.run_dir}: move it "
                             "away to learn the pieces again")
    first, count = len(old.pieces) + 1, len(grown.pieces) - len(old.pieces)
    before = source.config.vocab
    vocab = VocabularyConfig(
        base_size=before.base_size or first + 1,
        base_tokenizer_sha256=before.base_tokenizer_sha256 or source.tokenizer_sha256(),
        added=[*before.added, AddedPieces(language=lang, first_id=first, count=count)])
    return GrownVocabulary(tokenizer=path, config=vocab, first=first, count=count)


def _learn(cfg: Config, source: RunCheckpoint, text: str, lang: str, out: Path) -> None:
    lines = list(open_source(text, [lang])[lang].lines())
    train = lines[:len(lines) - valid_lines(len(lines), cfg.data.valid_fraction)]
    protected, guarded_by = _protected_characters(source)
    requested = cfg.add_language.extend_vocab
    learned = learn_pieces(train, lang, read_model(source.tokenizer), requested, protected,
                           seed=cfg.train.seed)
    # The SentencePiece model goes in place last: a run that has it has learned its pieces.
    scratch = out.with_name(f".{out.name}.partial")
    grown = extend_tokenizer(source.tokenizer, learned.pieces, scratch)
    with atomic_path(out.parent / TOKENIZER_JSON) as tmp:
        build_tokenizer(scratch).save(str(tmp))
    old = Tokenizer.from_file(source.tokenizer)
    before, after = tokens_per_character(old, lines), tokens_per_character(grown, lines)
    report = {"language": lang, "requested": requested, "learned": len(learned.pieces),
              "pieces": learned.pieces, "new_characters": learned.new_characters,
              "left_out": learned.left_out, "guarded_by": guarded_by,
              "tokens_per_character": {"before": before, "after": after}}
    write_text(out.parent / LEARNED_FILE, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    os.replace(scratch, out)
    short = "" if len(learned.pieces) == requested else \
        f" (learned {len(learned.pieces)} of {requested}: the text supports no more)"
    left = ", ".join(f"{c} ({why})" for c, why in learned.left_out.items())
    print(f"vocabulary: {len(learned.pieces)} pieces for {lang}{short}, ids {old.vocab_size - 1}"
          f"..{grown.vocab_size - 2}, <mask> now {grown.mask_id}; {lang} text "
          f"{before:.3f} -> {after:.3f} tokens a character"
          f"{'; left to byte fallback: ' + left if left else ''}; old languages guarded by "
          f"{guarded_by}", flush=True)


def _protected_characters(source: RunCheckpoint) -> tuple[set[str], str]:
    """Characters the old languages' data holds that the vocabulary lacks (no new piece may
    contain one), and what they were read from."""
    data_dir = Path(source.config.data.dir)
    tokenizer = Tokenizer.from_file(source.tokenizer)
    if not is_prepared(data_dir) or read_manifest(data_dir)["tokenizer"]["sha256"] != \
            tokenizer.sha256:
        return set(), f"the vocabulary alone ({data_dir}, the source's data, is not here)"
    languages = read_manifest(data_dir)["languages"]
    shards = [data_dir / lang / f"{split}.bin" for lang in languages for split in ("train", "valid")]
    return characters_outside(tokenizer, shards), f"the vocabulary and {data_dir}"


def with_grown_model(cfg: Config, grown: GrownVocabulary) -> Config:
    """``cfg`` with the grown vocabulary's size and ledger."""
    vocab_size = grown.first + grown.count + 1
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size),
                               vocab=grown.config)


def with_new_rows(weights: dict[str, torch.Tensor], grown: GrownVocabulary, source_tokenizer: Path,
                  init: str, std: float, seed: int) -> dict[str, torch.Tensor]:
    """The source's weights with rows and bias entries for the new pieces, before <mask>."""
    pieces = [p.piece for p in read_model(grown.tokenizer).pieces[grown.first - 1:]]
    spellings = old_spelling(source_tokenizer, pieces)
    generator = torch.Generator().manual_seed(seed)
    rows, bias = initial_rows(weights, spellings, init, std, generator)
    return {**weights, EMBEDDINGS: grow_rows(weights[EMBEDDINGS], rows),
            BIAS: grow_rows(weights[BIAS], bias)}


def old_language_contexts(cfg: Config, model: XmodForMaskedLM, data_dir: str, languages: list[str],
                          source_vocab_size: int) -> OldContexts:
    """Decoder inputs at masked positions of the old languages' training text (one micro-batch
    each, at most ``MAX_CONTEXTS`` in all): the sample the new pieces are kept out of."""
    masker = Masker(cfg.data.masking, source_vocab_size, mask_id=cfg.model.vocab_size - 1)
    shards = ShardSet(data_dir, "train", languages, cfg.data.verify_shards)
    batches = [batch for index, lang in enumerate(languages)
               for batch in validation_batches(
                   shards, index, language_index(cfg.model.languages, lang), masker,
                   cfg.train.micro_batch_size, cfg.data.seq_len, 1, cfg.train.seed)]
    old = decoder_inputs(model, batches)
    if len(old.targets) > MAX_CONTEXTS:
        keep = torch.randperm(len(old.targets), generator=torch.Generator().manual_seed(0))
        keep = keep[:MAX_CONTEXTS]
        old = OldContexts(old.inputs[keep], old.targets[keep], old.language[keep])
    return old


# ---- reports ----------------------------------------------------------------------------------

def report_old_languages(trainer: Trainer, grown: GrownVocabulary, old: list[str]) -> None:
    """Each old language's valid loss through the grown softmax against the old ids alone (the
    source model's softmax: its old-id logits are the source's, bit for bit)."""
    for lang in old:
        full = only_old = 0.0
        count = 0
        for batch, output in trainer.outputs(trainer.valid[lang]):
            logits = output.logits
            targets = batch.mlm_targets.to(logits.device)
            with_new, without = vocabulary_losses(logits, targets, grown.first, grown.count)
            full, only_old, count = full + float(with_new), only_old + float(without), \
                count + targets.numel()
        rise = (full - only_old) / only_old
        record = {"step": trainer.step, "split": "vocabulary", "language": lang,
                  "loss_grown": full / count, "loss_source": only_old / count, "rise": rise}
        trainer.metrics.log(record, f"{lang}: loss {only_old / count:.5f} through the source's "
                                    f"vocabulary, {full / count:.5f} through the grown one "
                                    f"({rise:+.4%}; at most {MAX_RISE:+.1%})")


def report_bits_per_byte(trainer: Trainer, tokenizer: Path, languages: list[str]) -> None:
    """Bits per UTF-8 byte of each language's masked valid targets: a measure that does not
    depend on the vocabulary, unlike perplexity."""
    sizes = torch.from_numpy(piece_bytes(Tokenizer.from_file(tokenizer)))
    for lang in languages:
        nats, size = 0.0, 0
        for batch, output in trainer.outputs(trainer.valid[lang]):
            nats += float(output.loss) * batch.mlm_targets.numel()
            size += int(sizes[batch.mlm_targets].sum())
        value = nats / math.log(2) / max(1, size)
        trainer.metrics.log({"step": trainer.step, "split": "bits_per_byte", "language": lang,
                             "bits_per_byte": value, "bytes": size},
                            f"{lang}: {value:.4f} bits per byte of its masked valid text "
                            f"({size:,} bytes)")
