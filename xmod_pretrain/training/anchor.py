"""Hand DeepSpeed the same gradients, in the same order, on ranks that ran different languages.

With ``data.language_per=rank`` each rank's micro-batch runs one language's modules, so the
autograd graphs differ between ranks. DeepSpeed assumes they do not:
NOTE: ZeRO-1/2 mis-reduce a parameter that has a gradient on one rank and none on another, and
ZeRO-2 reduces gradients in buckets filled in the order the backward produces them, so two
ranks whose modules' gradients arrive in different orders add up different parameters' slices
(tested: 2 ranks then drift from 1 rank with accumulation on exactly the module weights).

The anchor is a zero that depends on every module parameter of the languages in the global step
(the same list, in the same order, on every rank), added to the embeddings' output. Each of those
parameters then gets a gradient on every rank (zeros where this rank ran another language), and
since the anchor sits below the whole encoder, autograd can finish none of them before the
encoder's backward is done: they all arrive last, in the anchor's order, whatever the language.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from xmod_pretrain.model.xmod import LanguageModel


class LanguageAnchor:
    """Attach once to the model; tell it each step's languages with ``set_languages``."""

    def __init__(self, model: LanguageModel):
        self.modules = model.trainable_language_parameters()
        self.params: list[nn.Parameter] = []
        model.roberta.embeddings.register_forward_hook(self._add_zero)

    def set_languages(self, languages: Iterable[str]) -> None:
        """The step's languages (any order: sorted here, so all ranks build the same anchor)."""
        self.params = [p for lang in sorted(languages) for p in self.modules.get(lang, [])]

    def _add_zero(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.params or not torch.is_grad_enabled():
            return output  # evaluation: nothing is reduced
        return output + torch.stack([p.sum() for p in self.params]).sum() * 0.0
