"""Prepared shards as the trainer reads them: memory-mapped, their sizes and token ids checked.

Shards are flat uint32 token streams, one per language and split (``<dir>/<lang>/train.bin``),
each line's tokens followed by ``</s>``; ``manifest.json`` beside them holds the counts and the
tokenizer hash (see data_prep/). A sequence is a window of ``seq_len - 2`` consecutive tokens
(lines run on across ``</s>``, RoBERTa's "full-sentences") wrapped in ``<s> ... </s>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from xmod_core.errors import UserError
from xmod_core.shards import MANIFEST, TOKEN_DTYPE, TOKENIZER_FILE, is_prepared, read_manifest
from xmod_core.tokenizer import BOS_ID, EOS_ID
from xmod_pretrain.config import Config, RunKind

# Token ids checked per np.max: 256 MB of uint32, large enough that the call overhead vanishes,
# small enough that the slice's pages are not held by this process for long.
SCAN_BLOCK_TOKENS = 1 << 26
# Data smaller than this is checked without a progress bar (it takes well under a second).
SCAN_PROGRESS_BYTES = 1 << 30


class DataError(UserError, ValueError):
    """Prepared data that cannot be used as asked (inconsistent, unknown language)."""


def check_first_use(cfg: Config, overrides: Sequence[str]) -> None:
    """Refuse to prepare a ``data.dir`` named on the command line without ``data.source``.

    The trainer prepares a missing ``data.dir`` from ``data.source`` on first use. The rule:
    it does so for the folder the experiment names (``data/demo``), or when the command line
    names ``data.source`` too; a ``data.dir`` given alone must hold prepared data. Otherwise a
    mistyped path would quietly become a run on the demo corpus. ``overrides`` are Hydra's
    command-line overrides (``data.dir=...``)."""
    data = cfg.data
    if data.source is None or cfg.recipe != RunKind.pretrain or is_prepared(data.dir):
        return  # nothing would be prepared here (add-language prepares its own data.dir)
    named = {override.lstrip("+~").partition("=")[0] for override in overrides}
    if "data.dir" in named and "data.source" not in named:
        text = "the bundled demo corpus" if data.source == "bundled" else data.source
        raise DataError(
            f"data.dir={data.dir} holds no {MANIFEST}: it is not prepared data. Give the folder "
            f"prepare wrote, or add data.source={data.source} to prepare {text} there")


class ShardSet:
    """Read-only token streams of one split (train or valid), one memmap per language."""

    def __init__(self, data_dir: str | Path, split: str, languages: list[str],
                 verify: bool = True):
        """``verify``: scan every token id against the vocabulary (see ``check_token_ids``);
        a shard's length is always checked."""
        manifest = read_manifest(data_dir)
        known = manifest["languages"]
        missing = [lang for lang in languages if lang not in known]
        if missing:
            raise DataError(
                f"language(s) {', '.join(missing)} not in {Path(data_dir) / MANIFEST}; "
                f"it has: {', '.join(known)}"
            )
        self.languages = list(languages)
        paths = [Path(data_dir) / known[lang][split]["file"] for lang in self.languages]
        self.tokens = [open_shard(path, known[lang][split]["tokens"])
                       for path, lang in zip(paths, self.languages)]
        if verify:
            check_token_ids(dict(zip(paths, self.tokens)), manifest["tokenizer"]["vocab_size"],
                            Path(data_dir) / TOKENIZER_FILE)

    def sizes(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens], dtype=np.float64)

    def windows(self, lang: int, starts: np.ndarray, seq_len: int) -> np.ndarray:
        """Sequences [len(starts), seq_len] of language ``lang``: <s> + window + </s>.

        Windows wrap around the end of the stream, so a language smaller than one window works.
        """
        stream = self.tokens[lang]
        body = seq_len - 2
        index = (starts[:, None] + np.arange(body)[None, :]) % len(stream)
        out = np.empty((len(starts), seq_len), dtype=np.int64)
        out[:, 0] = BOS_ID
        out[:, 1:-1] = stream[index]
        out[:, -1] = EOS_ID
        return out


def open_shard(path: Path, tokens: int) -> np.ndarray:
    """A shard as a read-only memmap, refused (DataError naming it) unless it holds whole token
    ids, ``tokens`` of them as the manifest says: a truncated or foreign file fails here, not as
    a numpy error or a short epoch."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: re-run prepare")
    size, width = path.stat().st_size, TOKEN_DTYPE.itemsize
    if size % width:
        raise DataError(f"{path}: {size} bytes is not a whole number of {width}-byte token ids "
                        "(truncated, or not a shard): re-run prepare")
    if size // width != tokens or size == 0:
        raise DataError(f"{path}: {size // width} tokens on disk, manifest says {tokens}")
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def check_token_ids(shards: dict[Path, np.ndarray], vocab_size: int, tokenizer: Path) -> None:
    """Refuse (DataError naming the file and position) a shard holding an id >= ``vocab_size``,
    which would otherwise index past the embedding at whichever step first draws it.

    The ids are read in blocks of ``SCAN_BLOCK_TOKENS`` with ``np.max``, on one core: measured
    5-12 GB/s from the page cache and 1.0-1.7 GB/s from a cold (virtio) disk, 2 GB of shards, on
    the development machine. The disk's read rate bounds it: about 10-17 min a TB, paid by every
    process at start. A tqdm bar shows the progress above 1 GB; a multi-TB corpus checked once
    can skip the scan with ``data.verify_shards=false``.
    """
    total = sum(stream.nbytes for stream in shards.values())
    with tqdm(total=total, desc="checking token ids", unit="B", unit_scale=True,
              disable=total < SCAN_PROGRESS_BYTES) as bar:
        for path, stream in shards.items():
            for start in range(0, len(stream), SCAN_BLOCK_TOKENS):
                block = stream[start:start + SCAN_BLOCK_TOKENS]
                if int(block.max()) >= vocab_size:
                    at = start + int(np.argmax(block >= vocab_size))
                    raise DataError(
                        f"{path}: token id {int(stream[at])} at token {at:,}, but {tokenizer} has "
                        f"{vocab_size} ids: the shard was not encoded with that tokenizer, or is "
                        "damaged; re-run prepare")
                bar.update(block.nbytes)
