"""Reading raw text: strict UTF-8 with exact error offsets, xz, NFC, in blocks of whole lines.

A text (a file, or a stream's rows) is cut into ``TextBlock``s of about ``BLOCK_BYTES``; a block
is decoded and normalised as a whole, which is several times faster than line by line, and it is
what data_prep's worker processes take, so that reading and normalising scale with them.
"""

from __future__ import annotations

import lzma
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.errors import DataPrepError

Progress = Callable[[int], object]
"""Called with the number of raw bytes consumed, for progress bars."""

BLOCK_BYTES = 1 << 20  # a block's raw bytes (more, to end on a whole line)
BYTE_ORDER_MARK = b"\xef\xbb\xbf"
SPACE, NEWLINE = ord(" "), ord("\n")


@dataclass(frozen=True)
class TextBlock:
    """Whole lines of one language's text: their UTF-8 bytes, or where in a file to read them.

    ``offset`` counts bytes from the start of the text (decompressed, for ``.xz``); ``last`` marks
    the text's final block, after which the text must have had a usable line.
    """

    language: str
    origin: str  # the file, or the stream, for messages
    offset: int
    size: int
    data: bytes | None = None  # None: read ``size`` bytes at ``offset`` of the file ``origin``
    decompressed: bool = False
    last: bool = False

    def lines(self) -> list[str]:
        """The block's non-empty normalised lines (see ``normalize_lines``).

        Raises DataPrepError naming the origin and the byte offset of the first invalid byte.
        """
        raw, offset = self._raw(), self.offset
        if offset == 0 and raw.startswith(BYTE_ORDER_MARK):  # a byte-order mark is not text
            raw, offset = raw[len(BYTE_ORDER_MARK) :], offset + len(BYTE_ORDER_MARK)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = " of the decompressed text" if self.decompressed else ""
            raise DataPrepError(
                f"{self.origin} is not UTF-8: invalid byte 0x{raw[e.start]:02x} at byte offset "
                f"{offset + e.start}{where} ({e.reason})"
            ) from None
        return normalize_lines(text, raw)

    def _raw(self) -> bytes:
        if self.data is not None:
            return self.data
        with open(self.origin, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


@dataclass(frozen=True)
class UnreadableText:
    """A language's text that could not be read where it is read, in this process (a parquet
    file without text, say): a last block of the language that raises the error when encoded,
    in its turn, so the languages before it are finished first."""

    language: str
    error: DataPrepError
    size: int = 0

    def lines(self) -> list[str]:
        raise self.error


class LineTally:
    """Counts the usable lines of each text as its blocks pass, refusing a text without one."""

    def __init__(self) -> None:
        self._found = 0

    def add(self, block: TextBlock, lines: int) -> None:
        """Count ``block``'s lines; DataPrepError if it ends a text that had none."""
        self._found += lines
        if not block.last:
            return
        if not self._found:
            raise DataPrepError(
                f"language {block.language}: {block.origin} has no usable line (empty or blank)"
            )
        self._found = 0


def normalize_lines(text: str, raw: bytes) -> list[str]:
    """The lines of ``text`` (split at ``\\n``; ``raw``: its UTF-8), each NFC with every run of
    whitespace (Unicode's, line separators included) made one space; blank lines dropped.

    SentencePiece collapses whitespace runs anyway; doing it here makes the prepared text exactly
    what the tokenizer sees, so decoding a shard gives back these lines.
    """
    # NFC of the block is NFC of each line: "\n" composes with nothing. For NFC text (the usual
    # case) it is one quick check.
    lines = unicodedata.normalize("NFC", text).split("\n")
    if not _single_spaced(raw):
        return [line for line in map(_collapse, lines) if line]
    # Every whitespace character but " " is unprintable, so a printable line of single-spaced
    # text is normal already; only the others need splitting into words.
    normal = (line if line.isprintable() else _collapse(line) for line in lines)
    return [line for line in normal if line]


def _collapse(line: str) -> str:
    return " ".join(line.split())


def _single_spaced(raw: bytes) -> bool:
    """Whether no space in ``raw`` starts or ends a line or follows another (vectorised: this
    is the check that lets most lines skip splitting into words)."""
    codes = np.frombuffer(raw, np.uint8)
    if not len(codes):
        return True
    space = codes == SPACE
    edge = space | (codes == NEWLINE)
    return not (
        space[0] or space[-1] or (space[1:] & edge[:-1]).any() or (space[:-1] & edge[1:]).any()
    )


def is_text_file(path: Path) -> bool:
    """Whether ``path`` is named like a corpus file: ``*.txt`` or ``*.txt.xz``."""
    return path.name.endswith((".txt", ".txt.xz"))


def text_file_stem(path: Path) -> str:
    """``en_XX`` for ``en_XX.txt`` and ``en_XX.txt.xz``."""
    return path.name.removesuffix(".xz").removesuffix(".txt")


def file_blocks(path: Path, language: str) -> Iterator[TextBlock]:
    """The blocks of a UTF-8 text file (``.xz``: decompressed here, the blocks carry the bytes;
    otherwise they carry only their position); at least one, even for an empty file."""
    if path.name.endswith(".xz"):
        with lzma.open(path, "rb") as f:
            yield from packed_blocks(language, str(path), _line_runs(f), decompressed=True)
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = 0
        while True:
            f.seek(min(start + BLOCK_BYTES, size))
            end = f.tell() + len(f.readline())  # through the end of that line
            yield TextBlock(language, str(path), start, end - start, last=end >= size)
            if end >= size:
                return
            start = end


def _line_runs(f: lzma.LZMAFile) -> Iterator[bytes]:
    while run := f.read(BLOCK_BYTES) + f.readline():
        yield run


def packed_blocks(
    language: str, origin: str, runs: Iterable[bytes], decompressed: bool = False
) -> Iterator[TextBlock]:
    """``runs`` (each of whole lines) gathered into blocks of ``BLOCK_BYTES`` or more that carry
    their bytes; the last one, which may be empty, marked."""
    pending: list[bytes] = []
    offset = size = 0
    for run in runs:
        pending.append(run)
        size += len(run)
        if size >= BLOCK_BYTES:
            yield TextBlock(language, origin, offset, size, b"".join(pending), decompressed)
            pending, offset, size = [], offset + size, 0
    yield TextBlock(language, origin, offset, size, b"".join(pending), decompressed, last=True)


def read_lines(blocks: Iterable[TextBlock], progress: Progress | None = None) -> Iterator[str]:
    """The non-empty normalised lines of ``blocks``, in order.

    Raises DataPrepError naming the file and the byte offset of the first invalid byte (in the
    decompressed text for ``.xz``), or naming the language when a text has no usable line.
    """
    tally = LineTally()
    for block in blocks:
        lines = block.lines()
        if progress is not None:
            progress(block.size)
        tally.add(block, len(lines))
        yield from lines
