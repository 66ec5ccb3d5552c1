"""Training data: memory-mapped shards, the language sampler and the masking collator.

Shards are flat uint32 token streams, one per language and split (``<dir>/<lang>/train.bin``),
each line's tokens followed by ``</s>``; ``manifest.json`` beside them holds the counts and the
tokenizer hash (see data_prep/). A sequence is a window of ``seq_len - 2`` consecutive tokens
(lines run on across ``</s>``, RoBERTa's "full-sentences") wrapped in ``<s> ... </s>``.

Determinism: every micro-batch is a pure function of (seed, step, global micro-batch index), where
the global index runs over ``world_size x grad_accum_steps`` micro-batches of a step. The sampler's
whole state is the step counter, and the data a step sees does not depend on how the global batch
is split over ranks and accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from xmod_core.errors import UserError
from xmod_core.shards import MANIFEST, TOKEN_DTYPE, TOKENIZER_FILE, is_prepared, read_manifest
from xmod_core.tokenizer import BOS_ID, EOS_ID, UNK_ID
from xmod_pretrain.config import Config, DataConfig, MaskingConfig, RunKind

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


def language_probabilities(sizes: np.ndarray, alpha: float) -> np.ndarray:
    """Temperature-smoothed sampling, p_l ∝ n_l^alpha (XLM, XLM-R, X-MOD)."""
    weights = np.power(sizes, alpha)
    return weights / weights.sum()


@dataclass
class MicroBatch:
    """One language's masked sequences, ready for the model (all on the host)."""

    lang: int
    input_ids: torch.Tensor  # [B, S] with masking applied
    mlm_positions: torch.Tensor  # [M] flat indices into B*S
    mlm_targets: torch.Tensor  # [M] original token ids there

    def model_inputs(self) -> dict:
        """The model's keyword arguments (what the Trainer moves to the device and calls with)."""
        return {"input_ids": self.input_ids, "lang": self.lang,
                "mlm_positions": self.mlm_positions, "mlm_targets": self.mlm_targets}

    @property
    def count(self) -> int:
        """Targets the batch's mean loss is over."""
        return len(self.mlm_targets)


class Masker:
    """BERT masking: choose ``prob`` of non-special tokens; 80% <mask>, 10% random, 10% kept."""

    def __init__(self, cfg: MaskingConfig, vocab_size: int, mask_id: int | None = None):
        """Random replacements are the ids of ``vocab_size`` below its last one (<mask>);
        ``mask_id`` is written for <mask> (default: that last id). A grown vocabulary masks its
        old languages as the source model did, with <mask> at its new id."""
        self.cfg = cfg
        self.mask_id = vocab_size - 1 if mask_id is None else mask_id
        self.first_normal_id = UNK_ID + 1
        self.vocab_size = vocab_size

    def __call__(self, tokens: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """Return (masked input ids, flat positions, targets) for int64 tokens [B, S]."""
        flat = tokens.reshape(-1)
        candidates = flat > EOS_ID  # <s>, <pad>, </s> are never predicted
        chosen = candidates & (rng.random(flat.shape) < self.cfg.prob)
        if not chosen.any():  # a loss needs at least one target
            chosen[rng.choice(np.flatnonzero(candidates))] = True
        positions = np.flatnonzero(chosen)
        targets = flat[positions].copy()
        action = rng.random(len(positions))
        to_mask = action < self.cfg.mask_frac
        to_random = (action >= self.cfg.mask_frac) & (action < self.cfg.mask_frac + self.cfg.random_frac)
        inputs = flat.copy()
        inputs[positions[to_mask]] = self.mask_id
        inputs[positions[to_random]] = rng.integers(
            self.first_normal_id, self.vocab_size - 1, size=int(to_random.sum())
        )
        return inputs.reshape(tokens.shape), positions, targets


def to_micro_batch(lang: int, arrays: tuple[np.ndarray, ...]) -> MicroBatch:
    inputs, positions, targets = (torch.from_numpy(a) for a in arrays)
    return MicroBatch(lang=lang, input_ids=inputs, mlm_positions=positions, mlm_targets=targets)


class LanguageSampler:
    """Draws one-language micro-batches, deterministic from (seed, step, micro-batch index).

    ``language_per="rank"``: every global micro-batch draws its own language, so ranks differ.
    ``language_per="step"``: the language is drawn per micro-step and shared by all ranks.
    """

    def __init__(self, shards: ShardSet, cfg: DataConfig, masker: Masker, micro_batch_size: int,
                 seed: int, lang_ids: list[int]):
        """``lang_ids[d]`` is the model's index of the shards' d-th language."""
        self.shards = shards
        self.cfg = cfg
        self.masker = masker
        self.batch_size = micro_batch_size
        self.seed = seed
        self.lang_ids = lang_ids
        self.probabilities = language_probabilities(shards.sizes(), cfg.alpha)

    def language(self, step: int, micro_step: int, index: int) -> int:
        """Shard language of global micro-batch ``index`` (drawn at ``micro_step`` of ``step``)."""
        key = micro_step if self.cfg.language_per == "step" else index
        rng = np.random.default_rng([self.seed, step, key, 0])
        return int(rng.choice(len(self.probabilities), p=self.probabilities))

    def step_languages(self, step: int, micro_steps: int, world_size: int) -> set[int]:
        """Model indices of the languages of every micro-batch of ``step``, on all ranks: what
        each rank can tell without asking the others."""
        ranks = 1 if self.cfg.language_per == "step" else world_size  # "step": all ranks alike
        return {self.lang_ids[self.language(step, micro, micro * world_size + rank)]
                for micro in range(micro_steps) for rank in range(ranks)}

    def micro_batch(self, step: int, micro_step: int, index: int) -> MicroBatch:
        lang = self.language(step, micro_step, index)
        rng = np.random.default_rng([self.seed, step, index, 1])
        starts = rng.integers(0, len(self.shards.tokens[lang]), size=self.batch_size)
        tokens = self.shards.windows(lang, starts, self.cfg.seq_len)
        return to_micro_batch(self.lang_ids[lang], self.masker(tokens, rng))


def validation_batches(shards: ShardSet, lang: int, lang_id: int, masker: Masker, batch_size: int,
                       seq_len: int, num_batches: int, seed: int) -> list[MicroBatch]:
    """Fixed valid micro-batches of shard language ``lang`` (model index ``lang_id``):
    consecutive windows, fixed masking."""
    body = seq_len - 2
    batches = []
    for b in range(num_batches):
        starts = (np.arange(batch_size) + b * batch_size) * body
        if starts[0] >= len(shards.tokens[lang]) and b > 0:
            break  # the valid shard is used up; do not repeat it
        tokens = shards.windows(lang, starts, seq_len)
        rng = np.random.default_rng([seed, lang, b, 2])
        batches.append(to_micro_batch(lang_id, masker(tokens, rng)))
    return batches
