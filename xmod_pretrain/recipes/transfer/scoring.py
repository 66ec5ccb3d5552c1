"""Scores of a transfer evaluation: accuracy with its interval, retrieval, and the baselines
that show what surface overlap alone achieves.

The interval of an accuracy is Wilson's 95% score interval over the test set's n examples: the
uncertainty from the finite test set, which seeds do not reduce (they share it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from xmod_pretrain.model.xmod import LanguageModel
from xmod_pretrain.recipes.transfer.batches import ExampleBatch
from xmod_pretrain.recipes.transfer.classifier import XmodForSequenceClassification

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(accuracy: float, n: int) -> tuple[float, float]:
    """Wilson's 95% score interval of a proportion ``accuracy`` over ``n`` trials."""
    if n == 0:
        return (0.0, 1.0)
    z2 = Z95 * Z95
    centre = (accuracy + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # The interval holds the estimate; clamping to it undoes rounding at 0 and 1.
    return (max(0.0, min(accuracy, centre - half)), min(1.0, max(accuracy, centre + half)))


@torch.no_grad()
def predictions(model: XmodForSequenceClassification, batches: Sequence[ExampleBatch],
                through: int | None = None) -> list[int]:
    """Predicted class of every row, each batch through its own language's modules or, with
    ``through``, those of that language index."""
    model.eval()
    out = []
    for batch in batches:
        lang = batch.lang if through is None else through
        logits = model(batch.input_ids, lang, attention_mask=batch.attention_mask).logits
        out += logits.argmax(-1).tolist()
    return out


def accuracy(predicted: Sequence[int], gold: Sequence[int]) -> float:
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


# ---- baselines ----------------------------------------------------------------------------


def bag_of_ids(rows: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """[N, V] presence of each token id in each row (special ids included: they are constant)."""
    features = torch.zeros(len(rows), vocab_size)
    for i, row in enumerate(rows):
        features[i, list(row)] = 1.0
    return features


def bag_of_ids_classifier(rows: Sequence[Sequence[int]], labels: Sequence[int], num_labels: int,
                          vocab_size: int, l2: float = 1e-3) -> torch.Tensor:
    """Weights [V + 1, K] of an L2-regularised multinomial logistic regression on token-id
    presence, fitted with L-BFGS: what shared surface tokens (names, commands, numbers) alone
    carry from the source language to the others."""
    x = torch.cat([bag_of_ids(rows, vocab_size), torch.ones(len(rows), 1)], dim=1)
    y = torch.tensor(list(labels))
    weights = torch.zeros(x.size(1), num_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weights, y) + l2 * weights[:-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach()


def bag_of_ids_predictions(weights: torch.Tensor, rows: Sequence[Sequence[int]]) -> list[int]:
    x = torch.cat([bag_of_ids(rows, weights.size(0) - 1), torch.ones(len(rows), 1)], dim=1)
    return (x @ weights).argmax(-1).tolist()


def majority_label(labels: Sequence[int]) -> int:
    """The source train split's most frequent class (ties: the lowest id)."""
    counts = Counter(labels)
    return max(sorted(counts), key=counts.get)


# ---- retrieval ----------------------------------------------------------------------------


@torch.no_grad()
def pooled_states(model: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  lang: int, layer: int) -> torch.Tensor:
    """[N, H] mean over real tokens of the hidden states after ``layer`` (0: the embeddings,
    -1: the last layer), the rows running through language index ``lang``'s modules."""
    model.eval()
    captured = {}
    layers = model.roberta.encoder.layer
    target = model.roberta.embeddings if layer == 0 else layers[layer if layer < 0 else layer - 1]
    hook = target.register_forward_hook(lambda _m, _i, out: captured.setdefault("h", out))
    try:
        model.encode(input_ids, lang, attention_mask)
    finally:
        hook.remove()
    mask = attention_mask.unsqueeze(-1).float()
    return (captured["h"] * mask).sum(1) / mask.sum(1)


def centred(vectors: torch.Tensor) -> torch.Tensor:
    """Rows minus their mean, unit length: removes the offset every text of one language shares,
    which otherwise dominates cross-language cosines."""
    return F.normalize(vectors - vectors.mean(0, keepdim=True), dim=-1)


def top1(queries: torch.Tensor, candidates: torch.Tensor) -> float:
    """Share of queries whose most similar candidate (cosine) is the one at the same index."""
    best = (centred(queries) @ centred(candidates).T).argmax(-1)
    return (best == torch.arange(len(queries))).float().mean().item()
