"""Labelled examples as classifier micro-batches, and the fine-tuning sampler.

A row is ``<s> text </s>``, or ``<s> a </s></s> b </s>`` for a pair (RoBERTa's layout), cut to
``max_length`` tokens; a micro-batch is padded to its longest row. The sampler has the pre-training
sampler's interface (data.LanguageSampler), so the Trainer runs fine-tuning unchanged: the
micro-batch at (step, micro-step, rank) is a pure function of the seed, hence resumable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.recipes.transfer.tasks import Example
from xmod_pretrain.runs.inference import pad_rows


@dataclass
class ExampleBatch:
    """One language's labelled rows, ready for ``XmodForSequenceClassification`` (on the host)."""

    lang: int
    input_ids: torch.Tensor       # [B, S], right-padded with <pad>
    attention_mask: torch.Tensor  # [B, S], 1 keep, 0 pad
    labels: torch.Tensor          # [B] class ids

    def model_inputs(self) -> dict:
        return {"input_ids": self.input_ids, "lang": self.lang,
                "attention_mask": self.attention_mask, "labels": self.labels}

    @property
    def count(self) -> int:
        """Examples the batch's mean loss is over."""
        return len(self.labels)


def encode_rows(tokenizer: Tokenizer, examples: Sequence[Example], max_length: int) -> list[list[int]]:
    """Token ids of each example's row, special tokens included, at most ``max_length``."""
    firsts = tokenizer.encode_batch([e.text for e in examples])
    seconds = tokenizer.encode_batch([e.text_b or "" for e in examples])
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    rows = []
    for example, a, b in zip(examples, firsts, seconds):
        if example.text_b is None:
            rows.append([bos, *a[:max_length - 2], eos])
            continue
        budget = max_length - 4
        while len(a) + len(b) > budget:  # trim the longer side first, as transformers does
            a, b = (a[:-1], b) if len(a) >= len(b) else (a, b[:-1])
        rows.append([bos, *a, eos, eos, *b, eos])
    return rows


def collate(rows: Sequence[list[int]], labels: Sequence[int], lang: int, pad_id: int) -> ExampleBatch:
    input_ids, attention_mask = pad_rows(rows, pad_id)
    return ExampleBatch(lang=lang, input_ids=input_ids, attention_mask=attention_mask,
                        labels=torch.tensor(list(labels), dtype=torch.long))


def fixed_batches(rows: Sequence[list[int]], labels: Sequence[int], lang: int, pad_id: int,
                  batch_size: int) -> list[ExampleBatch]:
    """Every row once, in order: for validation and evaluation."""
    return [collate(rows[i:i + batch_size], labels[i:i + batch_size], lang, pad_id)
            for i in range(0, len(rows), batch_size)]


class ExampleSampler:
    """Training micro-batches of one language's examples, a fresh permutation each epoch.

    The global stream is the concatenation of per-epoch permutations drawn with
    ``(seed, epoch)``; the micro-batch at global position ``step * per_step + index`` takes the
    next ``batch_size`` examples of it, so any world size sees the same examples in the same
    order, and a resumed run continues where it stopped.
    """

    def __init__(self, rows: Sequence[list[int]], labels: Sequence[int], lang: int, pad_id: int,
                 batch_size: int, per_step: int, seed: int):
        self.rows, self.labels = list(rows), list(labels)
        self.lang, self.pad_id, self.batch_size = lang, pad_id, batch_size
        self.per_step, self.seed = per_step, seed  # micro-batches in one global step
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.per_step

    def step_languages(self, step: int, micro_steps: int, world_size: int) -> set[int]:
        return {self.lang}

    def micro_batch(self, step: int, micro_step: int, index: int) -> ExampleBatch:
        start = (step * self.per_step + index) * self.batch_size
        order = [self._example(start + k) for k in range(self.batch_size)]
        return collate([self.rows[i] for i in order], [self.labels[i] for i in order],
                       self.lang, self.pad_id)

    def _example(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.rows))
        return int(self._permutation(epoch)[offset])

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng((self.seed, epoch))
            self._cached = (epoch, rng.permutation(len(self.rows)))
        return self._cached[1]
