"""Inference on a training run, without transformers::

    from xmod_pretrain import encode_padded, load_run

    model, tokenizer = load_run("runs/demo")
    input_ids, attention_mask = encode_padded(tokenizer, ["Debian ist ein freies Betriebssystem."])
    logits = model(input_ids, lang="de_DE", attention_mask=attention_mask)  # [B, S, vocab]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from xmod_core.languages import language_index
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.interop import run_weights
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.runs.records import open_run


class RunModel(nn.Module):
    """A run's X-MOD masked LM with languages named by code; frozen, in eval mode."""

    def __init__(self, model: XmodForMaskedLM) -> None:
        super().__init__()
        self.model = model

    @property
    def languages(self) -> tuple[str, ...]:
        """The run's languages in module order."""
        return self.model.languages

    def forward(self, input_ids: torch.Tensor, lang: str,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits [B, S, vocab] at every position of a batch in language ``lang``.

        An unknown ``lang`` raises KeyError listing the run's languages. Padding is read from the
        pad id, as in RoBERTa; pass ``attention_mask`` (1 keep, 0 pad) when rows are padded.
        """
        index = language_index(self.languages, lang)
        return self.model(input_ids, index, attention_mask=attention_mask).logits


def load_run(run_dir: str | Path, step: int | None = None,
             device: str | torch.device = "cpu") -> tuple[RunModel, Tokenizer]:
    """The model and tokenizer of a run's latest checkpoint (or that of ``step``).

    The weights come from the checkpoint's consolidated ``model.safetensors`` (any ZeRO stage),
    in fp32 on ``device``; gradients are off, as for any inference.
    """
    run = open_run(run_dir, step)
    weights = run_weights(run)  # checked against the saved model config
    model = RunModel(masked_lm(run.config.model, weights)).to(device).eval()
    return model, Tokenizer.from_file(run.tokenizer)


def masked_lm(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> XmodForMaskedLM:
    """A plain masked LM holding ``weights`` (each tied tensor once), in eval mode, no gradients."""
    with torch.device("meta"):  # no random init of weights about to be replaced
        model = XmodForMaskedLM(cfg)
    model.load_state_dict(weights, strict=False, assign=True)  # only the tied decoder is absent
    model.tie_weights()
    return model.requires_grad_(False).eval()


def encode_padded(tokenizer: Tokenizer, texts: Sequence[str],
                  max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, S] of ``<s> text </s>`` rows, right-padded with <pad>.

    ``max_length`` cuts each row's text so that the row, <s> and </s> included, fits.
    """
    limit = None if max_length is None else max_length - 2
    rows = [[tokenizer.bos_id, *ids[:limit], tokenizer.eos_id]
            for ids in tokenizer.encode_batch(texts)]
    return pad_rows(rows, tokenizer.pad_id)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, S] of token rows right-padded to the longest."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
    return input_ids, attention_mask
