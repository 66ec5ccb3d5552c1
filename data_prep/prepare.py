"""Prepare training data: raw text per language -> tokenizer + uint32 token shards + manifest.

    python -m data_prep.prepare --source bundled --out data/demo
    python -m data_prep.prepare --source corpus/ --out data/big --vocab-size 250000 --workers 16
    python -m data_prep.prepare --source bundled:udhr --languages yo_NG \\
        --tokenizer runs/base/sentencepiece.bpe.model --out data/yo

The layout written (see shards.py) is what the trainer memory-maps. A SentencePiece model is
trained on the sources (XLM-R id layout, byte fallback) unless ``--tokenizer`` gives one, which a
language added to a trained model must reuse.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from itertools import groupby, islice
from pathlib import Path

from tqdm import tqdm

from data_prep.encode import Chunk, ParallelEncoder
from data_prep.errors import DataPrepError
from data_prep.shards import write_language, write_manifest
from data_prep.sources import LanguageSource, open_source
from data_prep.textio import LineTally, TextBlock
from xmod_core.atomic import write_bytes
from xmod_core.errors import UserError
from xmod_core.help import DefaultsHelpFormatter
from xmod_core.shards import MANIFEST, TOKENIZER_FILE
from xmod_core.tokenizer import Tokenizer, train_tokenizer

__all__ = ["DataPrepError", "prepare", "main"]

log = logging.getLogger(__name__)

# Lines SentencePiece trains on, shared equally by the languages (each contributes its first
# TOKENIZER_LINES / n lines). An equal share, rather than one proportional to corpus size, keeps
# small languages' scripts in the vocabulary (in the spirit of XLM-R's smoothed language
# sampling). 10M lines of ~100 bytes is ~1 GB of text, which SentencePiece holds in memory.
TOKENIZER_LINES = 10_000_000


def prepare(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    vocab_size: int = 8000,
    valid_fraction: float = 0.05,
    languages: Sequence[str] | None = None,
    workers: int = 2,
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Prepare ``out_dir`` from ``source``; return the path of its manifest.json.

    ``source``: ``bundled``, a folder of ``<xx_YY>.txt[.xz]``, a JSON file mapping languages to
    paths, or ``hf:NAME[:TEMPLATE]`` (see ``data_prep.sources.open_source``). ``languages``
    selects and orders them (None or empty: all, sorted). ``vocab_size`` counts the pieces of a
    newly trained SentencePiece model (ids = pieces + 2); ``tokenizer`` reuses a model instead.
    The last ``valid_fraction`` of each language's lines (at least one) form its valid shard.
    Raises DataPrepError for unusable input.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise DataPrepError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if workers < 1:
        raise DataPrepError(f"workers must be >= 1, got {workers}")
    sources = open_source(source, languages)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Withdraw an older manifest first: from here on its shards are being replaced.
    (out / MANIFEST).unlink(missing_ok=True)
    tok = _tokenizer(out, sources, vocab_size, tokenizer)
    entries = _encode_all(out, sources, tok, valid_fraction, workers)
    return write_manifest(out, tok, entries, str(source))


def _tokenizer(
    out: Path,
    sources: dict[str, LanguageSource],
    vocab_size: int,
    existing: str | os.PathLike | None,
) -> Tokenizer:
    """Copy ``existing`` into ``out``, or train a model there on the sources."""
    path = out / TOKENIZER_FILE
    if existing is not None:
        if not Path(existing).is_file():
            raise DataPrepError(f"tokenizer {existing} does not exist")
        try:
            Tokenizer.from_file(existing)  # refuse a model without XLM-R's layout before copying
        except ValueError as e:
            raise DataPrepError(f"tokenizer {existing}: {e}") from None
        if Path(existing).resolve() != path.resolve():
            write_bytes(path, Path(existing).read_bytes())
        return Tokenizer.from_file(path)
    start = time.perf_counter()
    try:
        tok = train_tokenizer(_sample(sources), path, vocab_size)
    except ValueError as e:
        raise DataPrepError(str(e)) from e
    log.info("trained tokenizer: %d pieces in %.1f s", vocab_size, time.perf_counter() - start)
    return tok


def _sample(sources: dict[str, LanguageSource]) -> Iterator[str]:
    per_language = TOKENIZER_LINES // len(sources)
    for src in sources.values():
        yield from islice(src.lines(), per_language)


def _encode_all(
    out: Path,
    sources: dict[str, LanguageSource],
    tok: Tokenizer,
    valid_fraction: float,
    workers: int,
) -> dict[str, dict]:
    entries = {}
    start = time.perf_counter()
    blocks = (block for src in sources.values() for block in src.blocks())
    with ParallelEncoder(tok.path, workers) as encoder:
        # One stream for all languages: the workers go on with the next language while this
        # process completes the last one's shards.
        encoded = groupby(encoder.encode(blocks), key=lambda pair: pair[0].language)
        for lang, pairs in encoded:
            with tqdm(total=sources[lang].total_bytes, desc=lang, unit="B", unit_scale=True) as bar:
                entries[lang] = write_language(out, lang, _chunks(pairs, bar), valid_fraction)
            log.info("%s: %s", lang, _counts(entries[lang]))
    log.info("encoded %d language(s) in %.1f s", len(entries), time.perf_counter() - start)
    return entries


def _chunks(pairs: Iterable[tuple[TextBlock, Chunk]], bar: tqdm) -> Iterator[Chunk]:
    """One language's chunks, refusing a text (file, stream) of it without a usable line."""
    tally = LineTally()
    for block, chunk in pairs:
        bar.update(block.size)
        tally.add(block, len(chunk[1]))
        yield chunk


def _counts(entry: dict) -> str:
    return ", ".join(f"{s} {e['tokens']:,} tokens / {e['lines']:,} lines" for s, e in entry.items())


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (1 on unusable input)."""
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain prepare",
        description="Raw text per language -> SentencePiece model + uint32 token shards. "
                    "The same command as python -m data_prep.prepare.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--source", required=True,
        help="bundled | FOLDER | FILE.json | hf:NAME[:TEMPLATE] | FILE (of the one --languages)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vocab-size", type=int, default=8000, help="pieces of a new tokenizer")
    parser.add_argument("--valid-fraction", type=float, default=0.05, help="held-out lines")
    parser.add_argument("--languages", nargs="+", default=None, help="languages, in this order")
    parser.add_argument("--workers", type=int, default=2, help="encoding processes")
    parser.add_argument("--tokenizer", default=None, help="reuse this SentencePiece model")
    parser.add_argument("--overwrite", action="store_true",
                        help="prepare into a non-empty --out, replacing its shards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from xmod_core.outputs import new_output_dir  # the rule every --out of the CLI follows

    try:
        with new_output_dir(args.out, args.overwrite, data=True) as out:
            manifest = prepare(
                args.source, out, args.vocab_size, args.valid_fraction,
                args.languages, args.workers, args.tokenizer,
            )  # fmt: skip
    except UserError as e:  # unusable input, or an --out that must not be written
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
