"""The prepared-data format: per-language token shards and ``manifest.json``.

    DIR/manifest.json
    DIR/sentencepiece.bpe.model
    DIR/<code>/train.bin    DIR/<code>/valid.bin

A shard is a flat little-endian uint32 array (``np.memmap``-able): each line's token ids followed
by ``</s>`` (id 2), no ``<s>``. The valid shard is the last lines of the language. ``data_prep``
writes this format (every file atomically, the manifest last, so a manifest never points at
partial shards); every reader comes through ``read_manifest``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xmod_core.atomic import file_sha256
from xmod_core.errors import UserError

FORMAT, VERSION = "xmod-shards", 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "sentencepiece.bpe.model"
SPLITS = ("train", "valid")  # a language's shards: <code>/<split>.bin
TOKEN_DTYPE = np.dtype("<u4")  # little-endian uint32, on every machine


class DataFormatError(UserError, ValueError):
    """A folder that is not prepared data of this format."""


class TokenizerMismatchError(DataFormatError):
    """Token ids and a SentencePiece model that do not belong together."""


def read_manifest(data_dir: str | Path) -> dict:
    """The manifest of a prepared folder. DataFormatError if it is missing or not this format;
    TokenizerMismatchError if the folder's SentencePiece model is not the one that encoded its
    shards (a replaced model file, or a manifest edited by hand). Every reader of prepared data
    comes through here, so no reader can pair shards with another tokenizer's pieces."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataFormatError(f"{path} does not exist: the folder is not prepared")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if (manifest.get("format"), manifest.get("version")) != (FORMAT, VERSION):
        raise DataFormatError(f"{path} is not an {FORMAT} v{VERSION} manifest")
    _check_folder_tokenizer(Path(data_dir), manifest)
    return manifest


def is_prepared(data_dir: str | Path) -> bool:
    """Whether ``data_dir`` holds a manifest (written last: the shards beside it are complete)."""
    return (Path(data_dir) / MANIFEST).is_file()


def short(sha256: str) -> str:
    """A hash as messages print it: 12 hex digits, like an abbreviated git commit."""
    return f"{sha256[:12]}.."


def _check_folder_tokenizer(data_dir: Path, manifest: dict) -> None:
    tokenizer = data_dir / manifest["tokenizer"]["file"]
    expected = manifest["tokenizer"]["sha256"]
    if not tokenizer.is_file():
        raise TokenizerMismatchError(f"{tokenizer} is missing but {data_dir / MANIFEST} names it: "
                                     "re-run prepare")
    actual = file_sha256(tokenizer)
    if actual != expected:
        raise TokenizerMismatchError(
            f"{tokenizer} has sha256 {short(actual)} but {data_dir / MANIFEST} says "
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


def read_tokens(data_dir: str | Path, language: str, split: str) -> np.ndarray:
    """A shard as a read-only memmap of token ids."""
    entry = read_manifest(data_dir)["languages"][language][split]
    return np.memmap(Path(data_dir) / entry["file"], dtype=TOKEN_DTYPE, mode="r")
