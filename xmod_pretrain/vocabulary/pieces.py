"""Vocabulary extension: new SentencePiece pieces for a new language, old text untouched.

A language whose characters the tokenizer never learned is encoded through byte fallback, two to
four ids a character. ``learn_pieces`` learns a unigram model on the new language's text alone and
keeps the pieces that contain a character no old piece has; ``extend_tokenizer`` appends them
after every old piece, so every old id keeps its meaning and ``<mask>`` moves to the new last id
(XLM-R's layout: ``Tokenizer.mask_id`` is always the last id).

Why old text tokenizes exactly as before. A unigram tokenizer picks the best-scoring segmentation
among the pieces that match the text. An appended piece contains a character no old piece has, so
it can match only text holding that character, and such a character is kept out of the extension
when the old languages' data holds it (``protected``: the byte-fallback runs of the source run's
shards, decoded). Without a match no old line gains a candidate; the one remaining coupling is
SentencePiece's penalty for byte-fallback characters (the lowest piece score minus 10), which stays
put because appended scores are raised to at least the old lowest score. So every old line has the
same lattice and the same segmentation; ``tests/unit/test_vocab_extension.py`` checks it on every
bundled line of the 19 pre-training languages. Only letters and combining marks (Unicode categories
L and M) are taken: a punctuation mark the old vocabulary lacks (``‐``, U+2010) turns up in any
language's text, a new script's letters do not.
"""

from __future__ import annotations

import io
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from xmod_core.atomic import write_bytes
from xmod_core.errors import UserError
from xmod_core.tokenizer import (
    BYTE,
    NORMAL,
    PIECE_OFFSET,
    SP_UNK_ID,
    SPACE,
    UNK_ID,
    Tokenizer,
    read_model,
)

# Trainer options of the old model that decide how text splits into pieces: the new pieces must
# split text the same way (whitespace as a prefix, no piece across scripts or digits).
_SPLIT_OPTIONS = ("split_by_whitespace", "split_by_unicode_script", "split_by_number",
                  "split_digits", "treat_whitespace_as_suffix", "max_sentencepiece_length")


class ExtensionError(UserError, ValueError):
    """A vocabulary extension that cannot be made; nothing has been written."""


@dataclass
class LearnedPieces:
    """What ``learn_pieces`` found: the pieces to append, best first, and why not more."""

    language: str
    requested: int
    pieces: list[tuple[str, float]]
    """(piece, score) to append, in id order."""
    new_characters: list[str]
    """Letters and marks of the text that no old piece has: what the pieces are built from."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Characters the old vocabulary lacks that no piece may contain, each with the reason."""


def vocabulary_characters(model: model_pb2.ModelProto) -> set[str]:
    """Every character of every ordinary piece: what the tokenizer spells without bytes."""
    return {char for piece in model.pieces if piece.type == NORMAL for char in piece.piece}


def lowest_score(model: model_pb2.ModelProto) -> float:
    """The lowest ordinary score; SentencePiece's byte-fallback penalty is this minus 10."""
    return min(piece.score for piece in model.pieces if piece.type == NORMAL)


def characters_outside(tokenizer: Tokenizer, shards: Iterable[Path]) -> set[str]:
    """The characters of token shards (uint32 ids in ``tokenizer``'s layout) that were encoded as
    UTF-8 bytes: every character of the text the vocabulary lacks."""
    model = read_model(tokenizer.path)
    byte_value = np.full(tokenizer.vocab_size, -1, np.int16)
    for index, piece in enumerate(model.pieces):
        if piece.type == BYTE:  # "<0xE1>"
            byte_value[index + PIECE_OFFSET] = int(piece.piece[3:5], 16)
    found: set[str] = set()
    for path in shards:
        ids = np.memmap(path, np.dtype("<u4"), mode="r") if path.stat().st_size else np.empty(0)
        values = byte_value[np.asarray(ids, np.int64)]
        where = np.flatnonzero(values >= 0)
        if not len(where):
            continue
        # A newline between runs of byte ids that are not adjacent keeps characters apart.
        breaks = np.flatnonzero(np.diff(where) > 1) + 1
        data = np.insert(values[where].astype(np.uint8), breaks, ord("\n")).tobytes()
        found |= set(data.decode("utf-8", errors="replace"))
    return found - {"\n", "\ufffd"}


def _is_letter_or_mark(char: str) -> bool:
    return unicodedata.category(char)[0] in "LM"


def learn_pieces(lines: list[str], language: str, old: model_pb2.ModelProto, count: int,
                 protected: set[str], seed: int = 0) -> LearnedPieces:
    """Up to ``count`` pieces from ``lines`` (NFC text of ``language``) that contain a letter or
    mark no piece of ``old`` has and none of ``protected`` (characters of the old languages).

    A unigram model is learned on the lines alone, with the old model's splitting rules, at a
    size that grows until it holds ``count`` such pieces or the text supports no more; the best
    ``count`` by score are kept. Raise ExtensionError when the text has no such character.
    """
    vocabulary = vocabulary_characters(old)
    chars = Counter(char for line in lines for char in line if not char.isspace())
    missing = [char for char, _ in chars.most_common() if char not in vocabulary]
    left_out = {char: "not a letter or mark" for char in missing if not _is_letter_or_mark(char)}
    left_out |= {char: "in the old languages' data" for char in missing
                 if char in protected and char not in left_out}
    new = [char for char in missing if char not in left_out]
    if not new:
        raise ExtensionError(
            f"--extend-vocab: the text of {language} has no letters the vocabulary lacks "
            f"({len(chars)} distinct characters, {len(missing)} outside the vocabulary"
            f"{': ' + ' '.join(missing[:20]) if missing else ''}"
            f"{' (' + '; '.join(sorted(set(left_out.values()))) + ')' if left_out else ''}), so "
            "new pieces would only compete with old ones on the old languages' text: drop "
            "--extend-vocab to add it on the existing vocabulary")
    allowed = set(new)

    def qualifies(piece: str) -> bool:
        outside = set(piece) - vocabulary - {SPACE}
        return bool(outside) and outside <= allowed

    floor = lowest_score(old)
    size = 2 * count + len(chars)
    while True:
        learned = _train_unigram(lines, old, size, seed)
        pieces = [(p.piece, p.score) for p in learned.pieces
                  if p.type == NORMAL and qualifies(p.piece)]
        if len(pieces) >= count or len(learned.pieces) < size:  # enough, or the text's most
            break
        size *= 2
    pieces.sort(key=lambda item: -item[1])
    # Not below the old lowest score: that would lower the byte-fallback penalty for all text.
    kept = [(piece, max(score, floor)) for piece, score in pieces[:count]]
    return LearnedPieces(language, count, kept, new, left_out)


def _train_unigram(lines: list[str], old: model_pb2.ModelProto, size: int,
                   seed: int) -> model_pb2.ModelProto:
    """A unigram model of ``lines`` with at most ``size`` pieces (fewer when the text runs out)."""
    trainer = old.trainer_spec
    options = {name: getattr(trainer, name) for name in _SPLIT_OPTIONS}
    out = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, model_type="unigram", vocab_size=size,
        hard_vocab_limit=False, character_coverage=1.0, byte_fallback=False,
        normalization_rule_name="identity", add_dummy_prefix=old.normalizer_spec.add_dummy_prefix,
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, num_threads=2, minloglevel=2, **options)
    model = model_pb2.ModelProto()
    model.ParseFromString(out.getvalue())
    return model


def extend_tokenizer(old_path: str | Path, pieces: list[tuple[str, float]],
                     out_path: str | Path) -> Tokenizer:
    """Write ``old_path``'s model with ``pieces`` appended (ordinary pieces, in order) to
    ``out_path``; old piece ``i`` keeps id ``i + 1`` and ``<mask>`` becomes the new last id."""
    model = read_model(old_path)
    existing = {piece.piece for piece in model.pieces}
    clash = [text for text, _ in pieces if text in existing]
    if clash:
        raise ExtensionError(f"{old_path} has the pieces {', '.join(clash[:10])} already")
    for text, score in pieces:
        model.pieces.add(piece=text, score=score, type=NORMAL)
    write_bytes(Path(out_path), model.SerializeToString())
    return Tokenizer.from_file(out_path)


def old_spelling(old_path: str | Path, pieces: list[str]) -> list[list[int]]:
    """The ids the old tokenizer spells each piece's text with (no dummy prefix added, spaces
    kept): the old model's view of a new piece, to initialise its embedding from."""
    model = read_model(old_path)
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    sp = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    spelled = sp.encode([piece.replace(SPACE, " ") for piece in pieces])
    return [[p + PIECE_OFFSET if p != SP_UNK_ID else UNK_ID for p in ids] for ids in spelled]


def piece_bytes(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes of the text each id stands for (``▁`` a space, a byte piece one byte, the
    specials none): the denominator of bits per byte."""
    model = read_model(tokenizer.path)
    sizes = np.zeros(tokenizer.vocab_size, np.int64)
    for index, piece in enumerate(model.pieces):
        if piece.type == NORMAL:
            sizes[index + PIECE_OFFSET] = len(piece.piece.replace(SPACE, " ").encode("utf-8"))
        elif piece.type == BYTE:
            sizes[index + PIECE_OFFSET] = 1
    return sizes


def tokens_per_character(tokenizer: Tokenizer, lines: list[str]) -> float:
    """Ids per character of ``lines`` (no </s>), spaces included."""
    ids = sum(len(ids) for ids in tokenizer.encode_batch(lines))
    return ids / max(1, sum(len(line) for line in lines))
