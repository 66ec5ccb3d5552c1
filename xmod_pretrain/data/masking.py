"""BERT's masking of a micro-batch, and the micro-batch the model is called with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xmod_core.tokenizer import EOS_ID, UNK_ID
from xmod_pretrain.data.config import MaskingConfig


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
