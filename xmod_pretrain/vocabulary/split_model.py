"""A vocabulary grown by appended pieces: the old rows frozen apart, the new rows trainable.

``extend_tokenizer`` appends N pieces after the old ones, so in the grown model's ids

    0 .. first-1   the old ids but <mask> (first = the old vocabulary size - 1)
    first .. first+N-1   the new pieces
    first+N        <mask> (the old last id, moved to the new last)

The old rows stay in a tensor of their own, ``weight`` ([first + 1, H], <mask> last, as in the
source model), which never trains; the new rows are ``added`` ([N, H]). A split, not a gradient
mask over one [first + N + 1, H] matrix: AdamW's weight decay and its moments would still move
masked rows (decay acts on the weight, not the gradient), ZeRO partitions and steps the whole
matrix, and the optimizer would hold state for 250k rows to train a few hundred. Here the
optimizer sees ``added`` and the bias entries ``lm_head.added_bias`` only, so every old row is
bit-identical under every ZeRO stage whatever the optimizer does, and the old ids' logits are the
source model's own computation (the same matrix product, bit for bit).

Checkpoints store the merged layout (``merge_added_rows``): ``model.safetensors`` is a plain
``XmodForMaskedLM`` of the grown vocabulary, as transformers and every tool here read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xmod_pretrain.model.xmod import XmodForMaskedLM

EMBEDDINGS = "roberta.embeddings.word_embeddings.weight"
BIAS = "lm_head.bias"
ADDED_ROWS = "roberta.embeddings.word_embeddings.added"
ADDED_BIAS = "lm_head.added_bias"


def grow_rows(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Old rows with ``new`` inserted before the last one (<mask>): the grown vocabulary's."""
    return torch.cat([old[:-1], new.to(old.dtype), old[-1:]])


class SplitEmbedding(nn.Module):
    """Word embeddings whose rows ``first .. first+N-1`` are ``added``; the rest is ``weight``."""

    def __init__(self, weight: torch.Tensor, added: torch.Tensor, padding_idx: int) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(weight, requires_grad=False)  # [first + 1, H], <mask> last
        self.added = nn.Parameter(added)                         # [N, H]
        # Plain ints: under ZeRO-3 a parameter's shape is empty outside its module's forward.
        self.first, self.count = weight.size(0) - 1, added.size(0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        offset = input_ids - self.first
        is_added = (offset >= 0) & (offset < self.count)
        # The new <mask> (first + N) is the old <mask> (first); an added id reads row 0 of the
        # old table, replaced below.
        old_ids = torch.where(offset >= self.count, input_ids - self.count, input_ids)
        old = F.embedding(old_ids.masked_fill(is_added, 0), self.weight, self.padding_idx)
        new = F.embedding(offset.clamp(0, self.count - 1), self.added)
        return torch.where(is_added.unsqueeze(-1), new, old)


@dataclass
class OldContexts:
    """Decoder inputs of old-language text at masked positions: what the new pieces must not
    take probability from."""

    inputs: torch.Tensor     # [M, H]
    targets: torch.Tensor    # [M] old ids
    language: torch.Tensor   # [M] index of each one's language among the sampled languages


class SplitDecoder(nn.Module):
    """The tied decoder over the split rows: logits of old ids as the source model computes
    them, those of the new pieces spliced in before <mask>.

    The new pieces also enter the softmax of the old languages' text, which raises the loss of an
    old target by ``log(1 + sum(exp(new logits)) / sum(exp(old logits)))``. Every old-language
    weight is frozen, so the decoder inputs of old-language text never change: on a fixed sample
    of them (``OldContexts``) the rise is exact and cheap to compute. Each training forward adds a
    hinge on it to the loss (``penalty``): ``penalty_weight`` times the sum over old languages of
    their mean rise beyond ``allowance`` (a share of their loss). Below it the new rows learn the
    new language freely; above it the penalty pushes them out of the old languages' way. They
    start below it: ``start_within_allowance`` lowers their bias entries as far as needed.
    """

    penalty: torch.Tensor | None = None

    def __init__(self, embedding: SplitEmbedding, bias: nn.Parameter, added_bias: nn.Parameter,
                 old: OldContexts | None = None, penalty_weight: float = 1.0,
                 allowance: float = 0.0) -> None:
        super().__init__()
        # Registered here too (as the tied decoder registers its weight), so that ZeRO-3 gathers
        # them for this module's forward.
        self.weight, self.added = embedding.weight, embedding.added
        self.bias, self.added_bias = bias, added_bias
        self.penalty_weight = penalty_weight
        # Buffers, not in the state_dict: rebuilt from the source run, as the frozen weights are.
        for name in ("old_contexts", "old_normaliser", "old_language", "old_allowance"):
            self.register_buffer(name, None, persistent=False)
        if old is not None:
            with torch.no_grad():
                logits = F.linear(old.inputs, self.weight, self.bias).float()
                loss = F.cross_entropy(logits, old.targets, reduction="none")
            self.old_contexts, self.old_language = old.inputs, old.language
            self.old_normaliser = torch.logsumexp(logits, dim=-1)
            self.old_allowance = allowance * _mean_by(loss, old.language)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        old = F.linear(x, self.weight, self.bias)
        new = F.linear(x, self.added, self.added_bias)
        self.penalty = None
        if self.training and self.old_contexts is not None and self.penalty_weight:
            excess = F.relu(self.old_loss_rise() - self.old_allowance)
            self.penalty = self.penalty_weight * excess.sum()
        return torch.cat([old[..., :-1], new, old[..., -1:]], dim=-1)

    def old_loss_rise(self, shift: float = 0.0) -> torch.Tensor:
        """Each sampled old language's mean loss rise (nats a target) from the new pieces, with
        their bias entries lowered by ``shift``."""
        new = F.linear(self.old_contexts, self.added, self.added_bias).float()
        excess = torch.logsumexp(new, dim=-1) - shift - self.old_normaliser.float()
        return _mean_by(F.softplus(excess), self.old_language)

    @torch.no_grad()
    def start_within_allowance(self) -> float:
        """Lower the new bias entries, all by one amount, until every old language's rise is
        within its allowance; return the amount. The new rows then start where the penalty is
        zero, whatever their initialisation made of them."""
        def within(shift: float) -> bool:
            return bool((self.old_loss_rise(shift) <= self.old_allowance).all())

        if within(0.0):
            return 0.0
        low, high = 0.0, 1.0
        while not within(high) and high < 1e4:  # exp underflows long before
            low, high = high, 2 * high
        for _ in range(30):  # the rise falls with the shift: bisect to 1e-9 of high
            middle = (low + high) / 2
            low, high = (low, middle) if within(middle) else (middle, high)
        self.added_bias.sub_(high)
        return high


def _mean_by(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` per group id (0 .. max)."""
    count = int(groups.max()) + 1
    sums = torch.zeros(count, device=values.device, dtype=values.dtype).index_add(0, groups, values)
    return sums / torch.bincount(groups, minlength=count).to(values.dtype)


def split_vocabulary(model: XmodForMaskedLM, count: int, old: OldContexts | None = None,
                     penalty_weight: float = 1.0, allowance: float = 0.0) -> XmodForMaskedLM:
    """Split ``model``'s last ``count`` rows before <mask> off into trainable ``added`` rows
    (and bias entries); the other rows become one frozen tensor. ``old``: old-language text the
    new pieces are kept out of (``SplitDecoder``). In place; returns ``model``."""
    embeddings, head = model.roberta.embeddings, model.lm_head
    whole, bias = embeddings.word_embeddings.weight.detach(), head.bias.detach()
    first = whole.size(0) - 1 - count
    split = SplitEmbedding(torch.cat([whole[:first], whole[-1:]]), whole[first:-1].clone(),
                           embeddings.padding_idx)
    embeddings.word_embeddings = split
    head.bias = nn.Parameter(torch.cat([bias[:first], bias[-1:]]), requires_grad=False)
    head.added_bias = nn.Parameter(bias[first:-1].clone())
    head.decoder = SplitDecoder(split, head.bias, head.added_bias, old, penalty_weight, allowance)
    if old is not None:
        head.decoder.start_within_allowance()
    return model


@torch.no_grad()
def decoder_inputs(model: XmodForMaskedLM, batches: list) -> OldContexts:
    """The decoder inputs at the masked positions of ``batches`` (eval mode), by batch order of
    language."""
    was_training = model.training
    model.eval()
    inputs, targets, language = [], [], []
    for batch in batches:
        hidden = model.encode(batch.input_ids, batch.lang)
        hidden = hidden.reshape(-1, hidden.size(-1)).index_select(0, batch.mlm_positions)
        inputs.append(model.lm_head.features(hidden))
        targets.append(batch.mlm_targets)
        language.append(torch.full_like(batch.mlm_targets, batch.lang))
    model.train(was_training)
    lang = torch.cat(language)
    _, dense = torch.unique(lang, return_inverse=True)  # model indices -> 0 .. languages - 1
    return OldContexts(torch.cat(inputs), torch.cat(targets), dense)


def merge_added_rows(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A split model's weights in the plain layout (the added rows and bias entries inserted
    before <mask>); other weights pass through unchanged."""
    if ADDED_ROWS not in weights:
        return weights
    merged = {k: v for k, v in weights.items() if k not in (ADDED_ROWS, ADDED_BIAS)}
    merged[EMBEDDINGS] = grow_rows(weights[EMBEDDINGS], weights[ADDED_ROWS])
    merged[BIAS] = grow_rows(weights[BIAS], weights[ADDED_BIAS])
    return merged


def initial_rows(weights: dict[str, torch.Tensor], spellings: list[list[int]], init: str,
                 std: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and bias entries for new pieces: ``mean`` of the old rows (and biases) each piece is
    spelled with by the old tokenizer (FOCUS/WECHSEL-style: the model starts from what it saw
    for that text), or ``random`` (N(0, std) rows and zero biases, the ablation)."""
    embeddings, bias = weights[EMBEDDINGS], weights[BIAS]
    if init == "random":
        rows = torch.randn(len(spellings), embeddings.size(1), generator=generator) * std
        return rows.to(embeddings.dtype), torch.zeros(len(spellings), dtype=bias.dtype)
    rows = torch.stack([embeddings[ids].mean(dim=0) for ids in spellings])
    return rows, torch.stack([bias[ids].mean() for ids in spellings])


@torch.no_grad()
def vocabulary_losses(logits: torch.Tensor, targets: torch.Tensor, first: int,
                      count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of ``targets`` (old ids) through the grown softmax and through the old
    ids alone (the source model's softmax: the new pieces' logits left out)."""
    logits = logits.float()
    old = torch.cat([logits[:, :first], logits[:, first + count:]], dim=-1)
    full = F.cross_entropy(logits, targets, reduction="sum")
    return full, F.cross_entropy(old, targets, reduction="sum")

