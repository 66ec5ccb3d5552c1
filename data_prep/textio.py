"""Reading raw text files line by line: strict UTF-8 with exact error offsets, xz, NFC."""

from __future__ import annotations

import lzma
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from data_prep.errors import DataPrepError

Progress = Callable[[int], object]
"""Called with the number of raw bytes consumed, for progress bars."""


def normalize_line(text: str) -> str:
    """NFC, with every run of whitespace (Unicode's, line separators included) made one space.

    SentencePiece collapses whitespace runs anyway; doing it here makes the prepared text exactly
    what the tokenizer sees, so decoding a shard gives back these lines.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def is_text_file(path: Path) -> bool:
    """Whether ``path`` is named like a corpus file: ``*.txt`` or ``*.txt.xz``."""
    return path.name.endswith((".txt", ".txt.xz"))


def text_file_stem(path: Path) -> str:
    """``en_XX`` for ``en_XX.txt`` and ``en_XX.txt.xz``."""
    return path.name.removesuffix(".xz").removesuffix(".txt")


def read_lines(path: Path, language: str, progress: Progress | None = None) -> Iterator[str]:
    """Non-empty normalised lines of a UTF-8 text file (``.xz``: decompressed on the fly).

    Raises DataPrepError naming the file and the byte offset of the first invalid byte (in the
    decompressed text for ``.xz``), or naming the language when the file has no usable line.
    """
    compressed = path.name.endswith(".xz")
    offset = 0
    found = 0
    with (lzma.open(path, "rb") if compressed else open(path, "rb")) as f:
        for raw in f:  # splitting bytes at b"\n" is safe: it never occurs inside a UTF-8 sequence
            text = _decode(raw, path, offset, compressed)
            if offset == 0:
                text = text.removeprefix("\ufeff")  # a byte-order mark is not text
            offset += len(raw)
            if progress is not None:
                progress(len(raw))
            line = normalize_line(text)
            if line:
                found += 1
                yield line
    if not found:
        raise DataPrepError(f"language {language}: {path} has no usable line (empty or blank)")


def _decode(raw: bytes, path: Path, offset: int, compressed: bool) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = " of the decompressed text" if compressed else ""
        raise DataPrepError(
            f"{path} is not UTF-8: invalid byte 0x{raw[e.start]:02x} at byte offset "
            f"{offset + e.start}{where} ({e.reason})"
        ) from None
