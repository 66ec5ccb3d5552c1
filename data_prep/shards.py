"""Writing the prepared-data format (``xmod_core.shards`` defines it and reads it): each
language's train and valid shards, then ``manifest.json``, every file atomically and the manifest
last, so a manifest never points at partial shards.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from data_prep.encode import Chunk
from data_prep.errors import DataPrepError
from xmod_core.atomic import atomic_path, write_text
from xmod_core.shards import FORMAT, MANIFEST, TOKEN_DTYPE, TOKENIZER_FILE, VERSION, read_tokens
from xmod_core.tokenizer import EOS_ID, Tokenizer


def valid_lines(n_lines: int, valid_fraction: float) -> int:
    """Lines held out for validation: ``valid_fraction`` of them, at least one."""
    return max(1, int(n_lines * valid_fraction))


def write_language(
    out_dir: Path, language: str, chunks: Iterable[Chunk], valid_fraction: float
) -> dict[str, dict]:
    """Write one language's train and valid shards from its token chunks; return its manifest
    entry. Tokens stream to one temporary file, whose tail then becomes the valid shard."""
    folder = out_dir / language
    folder.mkdir(parents=True, exist_ok=True)
    # Per-line token counts go to an anonymous scratch file: memory stays flat for any corpus.
    with atomic_path(folder / "train.bin") as stream, tempfile.TemporaryFile(dir=folder) as counts:
        n_lines = _write_stream(stream, counts, chunks)
        if n_lines < 2:
            raise DataPrepError(
                f"language {language}: {n_lines} usable line(s); a train and a valid split need 2"
            )
        n_valid = valid_lines(n_lines, valid_fraction)
        per_line = np.memmap(counts, dtype=np.uint32, mode="r")
        train_tokens = int(per_line[: n_lines - n_valid].sum(dtype=np.int64))
        total_tokens = int(per_line.sum(dtype=np.int64))
        del per_line
        _split_tail(stream, folder / "valid.bin", train_tokens)
    return {
        "train": _entry(language, "train", train_tokens, n_lines - n_valid),
        "valid": _entry(language, "valid", total_tokens - train_tokens, n_valid),
    }


def _write_stream(stream: Path, counts: BinaryIO, chunks: Iterable[Chunk]) -> int:
    n_lines = 0
    with open(stream, "wb") as tokens_out:
        for tokens, per_line in chunks:
            # Arrays are written through their buffers: no copy into bytes objects.
            tokens_out.write(np.ascontiguousarray(tokens, TOKEN_DTYPE))
            counts.write(np.ascontiguousarray(per_line, np.uint32))
            n_lines += len(per_line)
    counts.flush()
    return n_lines


def _split_tail(stream: Path, valid_path: Path, keep_tokens: int) -> None:
    """Move everything after the first ``keep_tokens`` tokens of ``stream`` into ``valid_path``."""
    cut = keep_tokens * TOKEN_DTYPE.itemsize
    with open(stream, "rb") as f, atomic_path(valid_path) as valid_tmp:
        f.seek(cut)
        with open(valid_tmp, "wb") as out:
            while block := f.read(1 << 24):
                out.write(block)
    os.truncate(stream, cut)


def _entry(language: str, split: str, tokens: int, lines: int) -> dict:
    return {"file": f"{language}/{split}.bin", "tokens": tokens, "lines": lines}


def write_manifest(
    out_dir: Path, tokenizer: Tokenizer, languages: dict[str, dict], source: str,
    tokenizer_sample: dict | None = None,
) -> Path:
    """Write ``manifest.json`` (atomically; call it last) and return its path.
    ``tokenizer_sample``: what each language gave a tokenizer trained here."""
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": TOKEN_DTYPE.name,  # uint32
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            **({"sample": tokenizer_sample} if tokenizer_sample else {}),
        },
        "languages": languages,
        "source": source,
    }
    path = out_dir / MANIFEST
    write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path


def decode_lines(out_dir: str | Path, language: str, split: str) -> list[str]:
    """The text lines of a shard, decoded with the folder's own tokenizer (for checks and demos)."""
    tokenizer = Tokenizer.from_file(Path(out_dir) / TOKENIZER_FILE)
    tokens = np.asarray(read_tokens(out_dir, language, split))
    ends = np.flatnonzero(tokens == EOS_ID)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]
