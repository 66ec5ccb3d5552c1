"""Corpora laid out as the long tail's ship, written from the bundled text: FineWeb-2's folders
of parquet files, under FLORES-200 codes."""

from __future__ import annotations

import lzma
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

CORPUS = Path(__file__).resolve().parents[2] / "data_prep" / "corpus"
BUNDLED = {"yor_Latn": "udhr/yo_NG", "eng_Latn": "debian_ig/en_XX", "rus_Cyrl": "debian_ig/ru_RU",
           "deu_Latn": "debian_ig/de_DE"}


def documents(code: str, count: int = 40, lines_each: int = 4) -> list[str]:
    """``count`` documents of ``lines_each`` bundled lines of ``code``'s language."""
    with lzma.open(CORPUS / f"{BUNDLED[code]}.txt.xz", "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in islice(f, count * lines_each)]
    return ["\n".join(lines[i:i + lines_each]) for i in range(0, len(lines), lines_each)]


def write_parquet(path: Path, texts: list[str | None], **columns: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, **columns}), path)


def write_fineweb(root: Path, docs: dict[str, list[str]]) -> Path:
    """FineWeb-2 as huggingface-cli download writes it: data/<code>/train/*.parquet (two files a
    language, the second ending in a null row), a test/ split and a <code>_removed config beside,
    which are not to be read."""
    for code, texts in docs.items():
        half = len(texts) // 2
        write_parquet(root / "data" / code / "train" / "000_00000.parquet", texts[:half],
                      id=list(range(half)))
        write_parquet(root / "data" / code / "train" / "000_00001.parquet", texts[half:] + [None],
                      id=list(range(half, len(texts) + 1)))
        write_parquet(root / "data" / code / "test" / "000_00000.parquet", ["held out by them"])
        write_parquet(root / "data" / f"{code}_removed" / "train" / "0.parquet", ["filtered out"])
    return root
