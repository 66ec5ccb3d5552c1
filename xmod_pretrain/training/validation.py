"""Validation during training: the recipe's fixed batches of every language, scored at the
start, every ``train.eval_every`` steps and at the end; each table is compared with the first."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmod_pretrain.training.config import TrainConfig
from xmod_pretrain.training.metrics import MetricsLogger, loss_table, perplexity


class Validator:
    """When validation is due, and what it reports."""

    def __init__(self, valid: dict[str, list[Any]], cfg: TrainConfig, metrics: MetricsLogger):
        self.valid, self.every, self.max_steps = valid, cfg.eval_every, cfg.max_steps
        self.metrics = metrics

    def due(self, step: int) -> bool:
        """Every ``eval_every`` steps before the last (the end validates anyway)."""
        return bool(self.every) and step % self.every == 0 and step < self.max_steps

    def run(self, step: int, evaluate: Callable[[list[Any]], float],
            first: dict[str, float] | None) -> dict[str, float]:
        """The loss of every language's batches (``evaluate`` scores a list of them); rank 0
        prints the table, beside ``first`` (the run's first validation) when there is one."""
        losses = {lang: evaluate(batches) for lang, batches in self.valid.items()}
        record = {"step": step, "split": "valid", "lang_loss": losses,
                  "lang_ppl": {lang: perplexity(v) for lang, v in losses.items()}}
        self.metrics.log(record, loss_table(losses, f"valid @ step {step}", start=first))
        return losses
