"""Corpora that ship as parquet, one folder per language: FineWeb-2's layout.

    fineweb-2/data/yor_Latn/train/000_00000.parquet    (as huggingface-cli download writes it)
    fineweb-2/data/yor_Latn/test/000_00000.parquet     (not read: the valid split is our own)
    fineweb-2/data/yor_Latn_removed/...                (FineWeb-2's filtered-out rows: skipped)

A language's folder is named by its code; its text is the ``text`` column of the parquet files
under its ``train/`` folder (under the folder itself, but for ``test/``, when it has none), in
name order. Each row is one document, kept whole: its lines go to the shards in order, each
ending in ``</s>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import DataPrepError
from data_prep.textio import Progress, TextBlock, packed_blocks, read_lines

log = logging.getLogger(__name__)

TEXT_COLUMN = "text"
TRAIN_FOLDER = "train"
TEST_FOLDER = "test"
REMOVED_SUFFIX = "_removed"  # FineWeb-2's configs of the rows its filters dropped
ROWS_PER_BATCH = 1024  # rows read at a time: memory stays flat whatever a file's size


@dataclass(frozen=True)
class ParquetSource:
    """One language's documents: the ``text`` column of parquet files."""

    language: str
    files: tuple[Path, ...]

    @property
    def total_bytes(self) -> None:
        """Unknown before reading: the files are compressed."""
        return None

    @property
    def size_hint(self) -> int:
        """The row groups' uncompressed bytes, from the files' footers."""
        total = 0
        for path in self.files:
            footer = _open(path).metadata
            total += sum(footer.row_group(i).total_byte_size for i in range(footer.num_row_groups))
        return total

    def blocks(self) -> Iterator[TextBlock]:
        """The language's documents in blocks of whole lines, file by file."""
        for path in self.files:
            yield from packed_blocks(self.language, str(path), _documents(path))

    def lines(self, progress: Progress | None = None) -> Iterator[str]:
        """The language's non-empty lines, NFC and whitespace-normalised, in file order."""
        return read_lines(self.blocks(), progress)


def _open(path: Path):
    import pyarrow.parquet as pq  # datasets' dependency; only parquet sources need it

    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataPrepError(f"{path} is not a parquet file: {e}") from None


def _documents(path: Path) -> Iterator[bytes]:
    import pyarrow as pa

    table = _open(path)
    columns = table.schema_arrow.names
    if TEXT_COLUMN not in columns:
        raise DataPrepError(f"{path} has no {TEXT_COLUMN!r} column (it has {', '.join(columns)})")
    kind = table.schema_arrow.field(TEXT_COLUMN).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataPrepError(f"{path}: its {TEXT_COLUMN!r} column holds {kind}, not text")
    for batch in table.iter_batches(batch_size=ROWS_PER_BATCH, columns=[TEXT_COLUMN]):
        for text in batch.column(0).to_pylist():
            if text:  # a null or empty row is no document
                yield f"{text}\n".encode("utf-8")


def language_folders(folder: Path) -> dict[str, list[Path]]:
    """{folder name: its parquet files} for the subfolders of ``folder`` (or of its ``data/``)
    that hold parquet files; empty when none does (the folder is not in this layout). Once one
    does, a language's folder without any is refused rather than passed over: a download that
    stopped half-way must not silently become a corpus without that language."""
    root = folder / "data" if (folder / "data").is_dir() else folder
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    removed = [sub for sub in subs if sub.name.endswith(REMOVED_SUFFIX)]
    if removed:
        log.info("skipping %d %s folder(s) in %s: the rows FineWeb-2's filters removed",
                 len(removed), REMOVED_SUFFIX, root)
    found = {sub.name: _parquet_files(sub) for sub in subs if sub not in removed}
    empty = [name for name, files in found.items() if not files]
    if empty and len(empty) < len(found):
        where = root / empty[0] / TRAIN_FOLDER
        raise DataPrepError(f"{root / empty[0]} holds no parquet file to train on (looked in "
                            f"{where}, or in the folder when it has no {TRAIN_FOLDER}/; "
                            f"{TEST_FOLDER}/ is never read)"
                            + (f", nor do {len(empty) - 1} other folder(s)" if len(empty) > 1
                               else "") + ": finish its download, or move it out of the corpus")
    return {name: files for name, files in found.items() if files}


def _parquet_files(language_folder: Path) -> list[Path]:
    """The parquet files of a language: under its ``train/``, or (a folder without one) under
    it, never under ``test/``: FineWeb-2's test split is not training text."""
    train = language_folder / TRAIN_FOLDER
    if train.is_dir():
        return sorted(train.rglob("*.parquet"))
    return sorted(path for path in language_folder.rglob("*.parquet")
                  if TEST_FOLDER not in path.relative_to(language_folder).parts)
