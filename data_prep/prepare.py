"""Prepare training data: raw text per language -> tokenizer + uint32 token shards + manifest.

    python -m data_prep.prepare --source bundled --out data/demo
    python -m data_prep.prepare --source corpus/ --out data/big --vocab-size 250000 --workers 16
    python -m data_prep.prepare --source bundled:udhr --languages yo_NG \\
        --tokenizer runs/base/sentencepiece.bpe.model --out data/yo
    python -m data_prep.prepare --source fineweb-2/ --out data/big --tokenizer-only
    sbatch --array=0-15 slurm/prepare.sh --source fineweb-2/ --out data/big  # --task I/16 each
    python -m data_prep.prepare --add-language yor_Latn --source fineweb-2/ --out data/big

The layout written (see shards.py) is what the trainer memory-maps. A SentencePiece model is
trained on a language-balanced sample of the sources (XLM-R id layout, byte fallback) unless
``--tokenizer`` gives one, which a language added to a trained model must reuse. What a
preparation was asked and which languages it finished is recorded beside the shards (record.py):
a killed one resumes, and array tasks share one folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from tqdm import tqdm

from data_prep import record, stopping, tokenizer_sample
from data_prep.encode import Chunk, ChunkOf, ParallelEncoder
from data_prep.errors import DataPrepError
from data_prep.shards import write_language, write_manifest
from data_prep.sources import LanguageSource, open_source, source_name
from data_prep.textio import LineTally, TextBlock, UnreadableText
from xmod_core.atomic import file_sha256, temporary_name, write_bytes, write_text
from xmod_core.errors import UserError
from xmod_core.help import DefaultsHelpFormatter
from xmod_core.languages import check_language_code, same_language
from xmod_core.shards import MANIFEST, TOKENIZER_FILE, read_manifest
from xmod_core.tokenizer import Tokenizer, train_tokenizer

__all__ = ["DataPrepError", "Task", "add_language", "prepare", "main"]

log = logging.getLogger(__name__)

DEFAULT_VALID_FRACTION = 0.05


@dataclass(frozen=True)
class Task:
    """Task ``index`` of ``count`` (a Slurm array's): it prepares every count-th language."""

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Task:
        index, _, count = spec.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            raise DataPrepError(f"--task {spec!r}: expected INDEX/COUNT with 0 <= INDEX < COUNT, "
                                "e.g. 0/4 ($SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)")
        return cls(int(index), int(count))

    def share(self, languages: list[str]) -> list[str]:
        return languages[self.index :: self.count]


ALL = Task(0, 1)


@dataclass(frozen=True)
class Sampling:
    """How a new tokenizer's text is sampled: ``gb`` of it, shared by the languages with
    exponent ``alpha`` (``data_prep.tokenizer_sample``)."""

    gb: float = tokenizer_sample.DEFAULT_GB
    alpha: float = tokenizer_sample.DEFAULT_ALPHA

    def __post_init__(self) -> None:
        if not self.gb > 0:
            raise DataPrepError(f"--tokenizer-sample-gb must be > 0, got {self.gb}")
        if not self.alpha >= 0:
            raise DataPrepError(f"--alpha must be >= 0, got {self.alpha}")


def prepare(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    vocab_size: int = 8000,
    valid_fraction: float = DEFAULT_VALID_FRACTION,
    languages: Sequence[str] | None = None,
    workers: int = 2,
    tokenizer: str | os.PathLike | None = None,
    task: Task = ALL,
    tokenizer_only: bool = False,
    sampling: Sampling = Sampling(),
    restart: bool = False,
) -> Path | None:
    """Prepare ``out_dir`` from ``source``; return the path of its manifest.json, or None when
    languages are left to other tasks (or ``tokenizer_only``).

    ``source``: ``bundled``, a folder of ``<code>.txt[.xz]`` or of ``<code>/`` parquet folders,
    a JSON file mapping languages to paths, or ``hf:NAME[:TEMPLATE]`` (see
    ``data_prep.sources.open_source``). ``languages`` selects and orders them (None or empty:
    all, sorted). ``vocab_size`` counts the pieces of a newly trained SentencePiece model (ids =
    pieces + 2), trained on a language-balanced sample (``sampling``); ``tokenizer`` reuses a
    model instead. The last ``valid_fraction`` of each language's lines (at least one) form its
    valid shard. A folder holding an unfinished
    preparation of the same request resumes it (``data_prep.record``): finished languages are
    kept (one of another request is refused, or with ``restart`` started again). ``task``
    prepares its share of the languages only; the task that finds every language done writes the
    manifest. Raises DataPrepError for unusable input.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise DataPrepError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    if workers < 1:
        raise DataPrepError(f"workers must be >= 1, got {workers}")
    if tokenizer is None and vocab_size < 1:
        raise DataPrepError(f"--vocab-size must be a positive number of pieces, got {vocab_size}")
    sources = open_source(source, languages)
    given = _given_tokenizer(tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    asked = record.request(str(source), list(sources), vocab_size, valid_fraction,
                           given and file_sha256(given), dataclasses.asdict(sampling))
    if not record.start(out, asked, restart):
        # A new preparation: an older manifest is withdrawn first (its shards are replaced).
        (out / MANIFEST).unlink(missing_ok=True)
    tok = _tokenizer(out, sources, vocab_size, given, task, sampling)
    if tokenizer_only:
        return None
    mine = task.share(list(sources))
    todo = {lang: sources[lang] for lang in mine if not record.done_entry(out, lang, tok.sha256)}
    if len(todo) < len(mine):
        log.info("resuming: %d of %d language(s) done already", len(mine) - len(todo), len(mine))
    try:
        _encode_all(out, todo, tok, valid_fraction, workers)
    except DataPrepError as e:  # a language's bad text: those done before it are kept
        raise DataPrepError(f"{e}{record.kept(out)}") from None
    return _manifest_when_done(out, tok, [*sources, *record.added(out)], asked["source"])


def add_language(
    source: str | os.PathLike, out_dir: str | os.PathLike, language: str, workers: int = 2
) -> Path:
    """Append ``language``'s shards from ``source`` to the prepared folder ``out_dir``, encoded
    with its tokenizer, and rewrite its manifest (atomically); return the manifest's path."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    if language in manifest["languages"]:
        raise DataPrepError(f"{language} is prepared in {out} already")
    other = same_language(language, list(manifest["languages"]))
    if other is not None:
        raise DataPrepError(f"{out} has {language}'s language as {other} already: a second code "
                            "would give it a second module")
    sources = open_source(source, [language])
    tok = Tokenizer.from_file(out / TOKENIZER_FILE)
    asked = json.loads((out / record.REQUEST_FILE).read_text(encoding="utf-8")) \
        if (out / record.REQUEST_FILE).is_file() else {}
    valid_fraction = asked.get("valid_fraction", DEFAULT_VALID_FRACTION)
    _encode_all(out, sources, tok, valid_fraction, workers)
    record.add(out, language, source_name(source))
    entries = {**manifest["languages"], language: record.done_entry(out, language, tok.sha256)}
    return write_manifest(out, tok, entries, manifest["source"], _sample_record(out))


def _manifest_when_done(
    out: Path, tok: Tokenizer, languages: list[str], source: str
) -> Path | None:
    entries = {lang: record.done_entry(out, lang, tok.sha256) for lang in languages}
    left = [lang for lang, entry in entries.items() if entry is None]
    if left:
        log.info("%d language(s) left to other tasks: %s", len(left), ", ".join(left))
        return None
    return write_manifest(out, tok, entries, source, _sample_record(out))


def _sample_record(out: Path) -> dict | None:
    """What each language gave the tokenizer trained here; None for a given tokenizer."""
    path = out / record.SAMPLE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _given_tokenizer(existing: str | os.PathLike | None) -> Path | None:
    """``existing``, checked to be a SentencePiece model in XLM-R's layout; None for none."""
    if existing is None:
        return None
    if not Path(existing).is_file():
        raise DataPrepError(f"tokenizer {existing} does not exist")
    try:
        Tokenizer.from_file(existing)
    except ValueError as e:
        raise DataPrepError(f"tokenizer {existing}: {e}") from None
    return Path(existing)


def _tokenizer(
    out: Path,
    sources: dict[str, LanguageSource],
    vocab_size: int,
    given: Path | None,
    task: Task,
    sampling: Sampling,
) -> Tokenizer:
    """The folder's tokenizer: ``given`` copied in, the one an earlier start of this request
    trained, or one trained now on the sources (by a preparation of all languages only: tasks
    must share one, trained first with --tokenizer-only)."""
    path = out / TOKENIZER_FILE
    if given is not None:
        if given.resolve() != path.resolve():
            write_bytes(path, given.read_bytes())
        return Tokenizer.from_file(path)
    if path.is_file() and (out / record.SAMPLE_FILE).is_file():
        return Tokenizer.from_file(path)  # a resumed start's: the request matched
    if task != ALL:
        raise DataPrepError(f"--task {task.index}/{task.count}: {path} is not trained yet; run "
                            "the same prepare command with --tokenizer-only first (one process), "
                            "or pass --tokenizer")
    start = time.perf_counter()
    try:
        tok = train_on_sample(out, sources, vocab_size, sampling)
    except ValueError as e:
        raise DataPrepError(str(e)) from e
    log.info("trained tokenizer: %d pieces in %.1f s", vocab_size, time.perf_counter() - start)
    return tok


def train_on_sample(out: Path, sources: dict[str, LanguageSource], vocab_size: int,
           sampling: Sampling) -> Tokenizer:
    """A tokenizer trained on a sample of the sources (``data_prep.tokenizer_sample``); what
    each language gave goes to record.SAMPLE_FILE beside it, and from there into the manifest."""
    budget = int(sampling.gb * 1e9)
    share = tokenizer_sample.shares({lang: src.size_hint for lang, src in sources.items()},
                                    budget, sampling.alpha)
    given: dict[str, int] = {}
    text = stopping.checked(tokenizer_sample.sample(
        {lang: src.lines() for lang, src in sources.items()}, share, given))
    tok = train_tokenizer(text, out / TOKENIZER_FILE, vocab_size)
    write_text(out / record.SAMPLE_FILE, json.dumps(
        {"alpha": sampling.alpha, "budget_bytes": budget, "bytes": given}, indent=2) + "\n")
    return tok


def _encode_all(
    out: Path,
    sources: dict[str, LanguageSource],
    tok: Tokenizer,
    valid_fraction: float,
    workers: int,
) -> None:
    """Encode each language into its shards and mark it done."""
    if not sources:
        return
    for lang in sources:  # what a killed start of this language left; no other task writes here
        for stale in (out / lang).glob(temporary_name("*")):
            stale.unlink()
    start = time.perf_counter()
    blocks = (block for src in sources.values() for block in _blocks_of(src))
    with ParallelEncoder(tok.path, workers) as encoder:
        # One stream for all languages: the workers go on with the next language while this
        # process completes the last one's shards. groupby sees a language end at the next
        # one's first block, before waiting for its chunk: a language is done (and kept) even
        # when the next one's first block fails.
        encoded = groupby(encoder.encode(blocks), key=lambda pair: pair[0].language)
        for lang, pairs in encoded:
            with tqdm(total=sources[lang].total_bytes, desc=lang, unit="B", unit_scale=True) as bar:
                entry = write_language(out, lang, _chunks(pairs, bar), valid_fraction)
            record.mark_done(out, lang, entry, tok.sha256)
            log.info("%s: %s", lang, _counts(entry))
    log.info("encoded %d language(s) in %.1f s", len(sources), time.perf_counter() - start)


def _blocks_of(source: LanguageSource) -> Iterator[TextBlock | UnreadableText]:
    """``source``'s blocks; an error reading them ends them as a block that raises it."""
    try:
        yield from source.blocks()
    except DataPrepError as e:
        yield UnreadableText(source.language, e)


def _chunks(pairs: Iterable[tuple[TextBlock, ChunkOf]], bar: tqdm) -> Iterator[Chunk]:
    """One language's chunks, refusing a text (file, stream) of it without a usable line."""
    tally = LineTally()
    for block, chunk_of in stopping.checked(pairs):
        chunk = chunk_of()
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
    parser.add_argument("--tokenizer-sample-gb", type=float, default=tokenizer_sample.DEFAULT_GB,
                        help="text a new tokenizer trains on, shared by the languages")
    parser.add_argument("--alpha", type=float, default=tokenizer_sample.DEFAULT_ALPHA,
                        help="the tokenizer sample's language exponent: p ~ n^alpha "
                             "(0 uniform, 1 proportional to the data)")
    parser.add_argument("--overwrite", action="store_true",
                        help="prepare into a non-empty --out, replacing its shards")
    parser.add_argument("--task", default=None, metavar="INDEX/COUNT",
                        help="prepare every COUNT-th language from the INDEX-th (a Slurm array "
                             "task); the last task to finish writes the manifest")
    parser.add_argument("--tokenizer-only", action="store_true",
                        help="train (or copy) the tokenizer and stop: the step before --task")
    parser.add_argument("--add-language", default=None, metavar="LANG",
                        help="append LANG from --source to the prepared folder --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with stopping.stop_on_signals():
            manifest = _run(args)
    except UserError as e:  # unusable input, or an --out that must not be written
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM
        kept = "" if args.add_language else record.kept(Path(args.out))
        what = "terminated" if isinstance(stop, stopping.Terminated) else "interrupted"
        print(f"{parser.prog}: {what}{kept}", file=sys.stderr)
        return stopping.exit_status(stop)
    if manifest is not None:
        print(f"wrote {manifest}")
    elif args.tokenizer_only:
        print(f"wrote {Path(args.out) / TOKENIZER_FILE}; prepare the languages with the same "
              "arguments and --task INDEX/COUNT (sbatch slurm/prepare.sh), or without --task")
    else:
        print(f"task {args.task} done; the task that finishes last writes the manifest")
    return 0


def _run(args: argparse.Namespace) -> Path | None:
    from xmod_core.outputs import check_not_inside_run, new_output_dir  # every --out's rules

    if args.add_language:
        extra = [name for name, value in (("--languages", args.languages), ("--task", args.task),
                                          ("--tokenizer", args.tokenizer),
                                          ("--tokenizer-only", args.tokenizer_only)) if value]
        if extra:
            raise DataPrepError(f"--add-language takes the folder's tokenizer and adds one "
                                f"language: drop {', '.join(extra)}")
        check_language_code_arg(args.add_language)
        return add_language(args.source, check_not_inside_run(args.out), args.add_language,
                            args.workers)
    task = Task.parse(args.task) if args.task else ALL
    out = Path(args.out)
    resumable = not args.overwrite and record.started(out)
    with new_output_dir(out, args.overwrite or resumable, data=True,
                        resumable=record.worth_resuming) as out:
        if args.overwrite:
            record.forget(out)
        return prepare(args.source, out, args.vocab_size, args.valid_fraction, args.languages,
                       args.workers, args.tokenizer, task, args.tokenizer_only,
                       Sampling(args.tokenizer_sample_gb, args.alpha))


def check_language_code_arg(code: str) -> None:
    try:
        check_language_code(code, "--add-language")
    except ValueError as e:
        raise DataPrepError(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
