"""The language sampler: which language each micro-batch draws, and its sequences.

Determinism: every micro-batch is a pure function of (seed, step, global micro-batch index), where
the global index runs over ``world_size x grad_accum_steps`` micro-batches of a step. The sampler's
whole state is the step counter, and the data a step sees does not depend on how the global batch
is split over ranks and accumulation.
"""

from __future__ import annotations

import numpy as np

from xmod_pretrain.data.config import DataConfig
from xmod_pretrain.data.masking import Masker, MicroBatch, to_micro_batch
from xmod_pretrain.data.shards import ShardSet


def language_probabilities(sizes: np.ndarray, alpha: float) -> np.ndarray:
    """Temperature-smoothed sampling, p_l ∝ n_l^alpha (XLM, XLM-R, X-MOD)."""
    weights = np.power(sizes, alpha)
    return weights / weights.sum()


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
