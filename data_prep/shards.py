"""The prepared-data format: per-language uint32 token shards and ``manifest.json``.

    out_dir/manifest.json
    out_dir/sentencepiece.bpe.model
    out_dir/<xx_YY>/train.bin   out_dir/<xx_YY>/valid.bin

A shard is a flat little-endian uint32 array (``np.memmap``-able): each line's token ids followed
by ``</s>`` (id 2), no ``<s>``. The valid shard is the last lines of the language. Every file is
written atomically and the manifest last, so a manifest never points at partial shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from data_prep.encode import TOKEN_DTYPE, Chunk
from data_prep.errors import DataPrepError
from xmod_pretrain.atomic import atomic_path, write_text
from xmod_pretrain.tokenizer import EOS_ID, Tokenizer

FORMAT, VERSION = "xmod-shards", 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "sentencepiece.bpe.model"


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
    out_dir: Path, tokenizer: Tokenizer, languages: dict[str, dict], source: str
) -> Path:
    """Write ``manifest.json`` (atomically; call it last) and return its path."""
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": "uint32",
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
        },
        "languages": languages,
        "source": source,
    }
    path = out_dir / MANIFEST
    write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path


class TokenizerMismatchError(DataPrepError):
    """Token ids and a SentencePiece model that do not belong together."""


def read_manifest(out_dir: str | Path) -> dict:
    """The manifest of a prepared folder. DataPrepError if it is missing or not this format;
    TokenizerMismatchError if the folder's SentencePiece model is not the one that encoded its
    shards (a replaced model file, or a manifest edited by hand). Every reader of prepared data
    comes through here, so no reader can pair shards with another tokenizer's pieces."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataPrepError(f"{path} does not exist: the folder is not prepared")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise DataPrepError(f"{path} is not an {FORMAT} v{VERSION} manifest")
    _check_folder_tokenizer(Path(out_dir), manifest)
    return manifest


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in blocks (an XLM-R model is 5 MB: about 10 ms)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def short(sha256: str) -> str:
    """A hash as messages print it: 12 hex digits, like an abbreviated git commit."""
    return f"{sha256[:12]}.."


def _check_folder_tokenizer(out_dir: Path, manifest: dict) -> None:
    tokenizer = out_dir / manifest["tokenizer"]["file"]
    expected = manifest["tokenizer"]["sha256"]
    if not tokenizer.is_file():
        raise TokenizerMismatchError(f"{tokenizer} is missing but {out_dir / MANIFEST} names it: "
                                     "re-run prepare")
    actual = file_sha256(tokenizer)
    if actual != expected:
        raise TokenizerMismatchError(
            f"{tokenizer} has sha256 {short(actual)} but {out_dir / MANIFEST} says "
            f"{short(expected)}: the shards were encoded with another tokenizer; re-run prepare")


def check_run_tokenizer(tokenizer: str | Path, data_dir: str | Path) -> None:
    """Refuse to pair a model's SentencePiece model (a checkpoint's, a source run's, an
    ``init_from`` folder's) with prepared data encoded by another one: the ids would mean
    other pieces, and a tokenizer of the same size would train or score without any error."""
    data_dir = Path(data_dir)
    expected = read_manifest(data_dir)["tokenizer"]["sha256"]
    actual = file_sha256(Path(tokenizer))
    if actual != expected:
        raise TokenizerMismatchError(
            f"{tokenizer} has sha256 {short(actual)} but the shards of {data_dir} were encoded "
            f"with {data_dir / TOKENIZER_FILE} (sha256 {short(expected)}): the model and the data "
            "use different tokenizers; use data prepared with the model's tokenizer "
            f"(xmod_pretrain prepare --tokenizer {tokenizer} ...)")


def read_tokens(out_dir: str | Path, language: str, split: str) -> np.ndarray:
    """A shard as a read-only uint32 memmap."""
    entry = read_manifest(out_dir)["languages"][language][split]
    return np.memmap(Path(out_dir) / entry["file"], dtype=TOKEN_DTYPE, mode="r")


def decode_lines(out_dir: str | Path, language: str, split: str) -> list[str]:
    """The text lines of a shard, decoded with the folder's own tokenizer (for checks and demos)."""
    tokenizer = Tokenizer.from_file(Path(out_dir) / TOKENIZER_FILE)
    tokens = np.asarray(read_tokens(out_dir, language, split))
    ends = np.flatnonzero(tokens == EOS_ID)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return [tokenizer.decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]
