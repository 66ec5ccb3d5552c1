"""A grown vocabulary, model side: old logits bit-identical, old rows frozen, the penalty exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import TIED, XmodForMaskedLM
from xmod_pretrain.training.config import OptimConfig
from xmod_pretrain.training.optim import build_optimizer
from xmod_pretrain.vocabulary.split_model import (
    ADDED_ROWS,
    BIAS,
    EMBEDDINGS,
    OldContexts,
    grow_rows,
    initial_rows,
    merge_added_rows,
    split_vocabulary,
    vocabulary_losses,
)

OLD, NEW = 53, 7  # the source's ids (its <mask> is 52) and the pieces appended
CFG = ModelConfig(vocab_size=OLD, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, languages=["en_XX", "yo_NG"], hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)


def grown_pair(old: OldContexts | None = None,
               allowance: float = 0.0) -> tuple[XmodForMaskedLM, XmodForMaskedLM]:
    """A source model and the same model grown by NEW rows, split, old weights frozen."""
    torch.manual_seed(0)
    source = XmodForMaskedLM(CFG).eval()
    weights = {k: v for k, v in source.state_dict().items() if k not in TIED}
    weights[EMBEDDINGS] = grow_rows(weights[EMBEDDINGS], torch.randn(NEW, 32))
    weights[BIAS] = grow_rows(weights[BIAS], torch.randn(NEW))
    grown = XmodForMaskedLM(dataclasses.replace(CFG, vocab_size=OLD + NEW))
    grown.load_state_dict(weights, strict=False)
    for name, param in grown.named_parameters():
        param.requires_grad = ".yo_NG." in name
    return source, split_vocabulary(grown, NEW, old, allowance=allowance).eval()


def to_grown_ids(ids: torch.Tensor) -> torch.Tensor:
    return torch.where(ids == OLD - 1, OLD + NEW - 1, ids)  # <mask> moved to the new last id


def test_old_ids_logits_are_the_source_models_bit_for_bit():
    source, grown = grown_pair()
    ids = torch.randint(0, OLD, (3, 12))
    ids[0, 3] = OLD - 1  # a <mask>
    for lang in (0, 1):
        logits = grown(to_grown_ids(ids), lang).logits
        assert logits.shape[-1] == OLD + NEW
        old = torch.cat([logits[..., :OLD - 1], logits[..., -1:]], dim=-1)
        assert torch.equal(old, source(ids, lang).logits)


def test_new_ids_read_the_added_rows():
    _, grown = grown_pair()
    embedding = grown.roberta.embeddings.word_embeddings
    ids = torch.tensor([[0, OLD - 1, OLD + NEW - 2, OLD + NEW - 1, 5]])
    rows = embedding(ids)[0]
    assert torch.equal(rows[1], embedding.added[0]) and torch.equal(rows[2], embedding.added[-1])
    assert torch.equal(rows[3], embedding.weight[-1]) and torch.equal(rows[4], embedding.weight[5])


def test_merged_weights_are_the_plain_grown_layout():
    _, grown = grown_pair()
    weights = {n: p.detach() for n, p in grown.named_parameters()}
    merged = merge_added_rows(weights)
    assert ADDED_ROWS not in merged and merged[EMBEDDINGS].shape == (OLD + NEW, 32)
    plain = XmodForMaskedLM(dataclasses.replace(CFG, vocab_size=OLD + NEW)).eval()
    plain.load_state_dict(merged, strict=False)
    ids = torch.randint(0, OLD + NEW, (2, 9))
    torch.testing.assert_close(plain(ids, 1).logits, grown(ids, 1).logits, rtol=0, atol=1e-5)


def test_adamw_with_weight_decay_moves_new_rows_only():
    source, grown = grown_pair()
    optimizer = build_optimizer(grown.named_parameters(), OptimConfig(lr=1e-2, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in grown.named_parameters()}
    grown.train()
    for _ in range(3):
        ids = torch.randint(0, OLD + NEW, (4, 10))
        loss = grown(ids, 1, mlm_targets=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    moved = {n for n, p in grown.named_parameters() if not torch.equal(p, before[n])}
    assert {ADDED_ROWS, "lm_head.added_bias"} <= moved
    assert all(".yo_NG." in n or n in (ADDED_ROWS, "lm_head.added_bias") for n in moved), moved
    assert torch.equal(grown.roberta.embeddings.word_embeddings.weight, before[EMBEDDINGS])


def test_new_rows_start_within_the_allowance_and_the_penalty_is_the_excess():
    torch.manual_seed(1)
    inputs, targets = torch.randn(40, 32) * 3, torch.randint(4, OLD - 1, (40,))
    language = torch.arange(40) % 2
    _, grown = grown_pair(OldContexts(inputs, targets, language), allowance=1e-3)
    decoder = grown.lm_head.decoder
    assert (decoder.old_loss_rise() <= decoder.old_allowance).all()
    assert (decoder.old_loss_rise(-0.01) > decoder.old_allowance).any()  # lowered no further
    with torch.no_grad():
        decoder.added_bias.add_(4.0)  # as training could: now the penalty bites
    logits = decoder(inputs)
    rises = decoder.old_loss_rise().detach()
    for lang in (0, 1):  # each language's mean rise, exactly as the report measures it
        full, old = vocabulary_losses(logits[language == lang], targets[language == lang],
                                      OLD - 1, NEW)
        assert float(rises[lang]) == pytest.approx(float(full - old) / 20, rel=1e-5)
    grown.train()
    ids = torch.randint(0, OLD, (2, 8))
    plain = F.cross_entropy(grown(ids, 1).logits.flatten(0, 1), ids.flatten())
    with_penalty = grown(ids, 1, mlm_targets=ids).loss
    excess = float(F.relu(rises - decoder.old_allowance).sum())
    assert excess > 0 and float(with_penalty - plain) == pytest.approx(excess, rel=1e-4)
    assert grown.eval()(ids, 1).logits is not None and decoder.penalty is None  # eval adds none


def test_initial_rows_mean_of_the_old_spelling_or_random():
    weights = {EMBEDDINGS: torch.randn(OLD, 32), BIAS: torch.randn(OLD)}
    spellings = [[5, 6, 7], [9]]
    rows, bias = initial_rows(weights, spellings, "mean", 0.02, torch.Generator())
    assert torch.allclose(rows[0], weights[EMBEDDINGS][[5, 6, 7]].mean(0))
    assert torch.equal(rows[1], weights[EMBEDDINGS][9]) and torch.equal(bias[1], weights[BIAS][9])
    rows, bias = initial_rows(weights, spellings, "random", 0.02, torch.Generator().manual_seed(0))
    assert rows.shape == (2, 32) and 0 < rows.std() < 0.05 and not bias.any()
