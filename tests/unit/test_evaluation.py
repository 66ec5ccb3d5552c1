"""The shared masked-LM loss against a hand-computed cross-entropy, and deterministic draws."""

from __future__ import annotations

import pytest
import torch

from xmod_core.shards import read_manifest
from xmod_pretrain.data.config import MaskingConfig
from xmod_pretrain.data.masking import Masker, MicroBatch
from xmod_pretrain.data.sampler import validation_batches
from xmod_pretrain.data.shards import ShardSet
from xmod_pretrain.evaluation.masked_lm import draw_batches, masked_lm_loss
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM

LANGUAGES = ["en_XX", "de_DE"]
SEQ_LEN = 32


def tiny_model(vocab_size: int) -> XmodForMaskedLM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
                      languages=LANGUAGES)
    return XmodForMaskedLM(cfg).eval()


def loss_forward(model: XmodForMaskedLM):
    def forward(batch: MicroBatch) -> torch.Tensor:
        return model(batch.input_ids, batch.lang, mlm_positions=batch.mlm_positions,
                     mlm_targets=batch.mlm_targets).loss
    return forward


def random_batch(lang: int, rows: int, targets: int, vocab: int, seed: int) -> MicroBatch:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (rows, SEQ_LEN), generator=gen)
    positions = torch.randperm(rows * SEQ_LEN, generator=gen)[:targets]
    return MicroBatch(lang, ids, positions, torch.randint(4, vocab, (targets,), generator=gen))


def hand_loss(model: XmodForMaskedLM, batches: list[MicroBatch], through: int | None) -> float:
    """Mean over every target of every batch of -log softmax(logits)[target], from full logits."""
    nll = []
    with torch.no_grad():
        for b in batches:
            logits = model(b.input_ids, b.lang if through is None else through).logits
            picked = logits.reshape(-1, logits.size(-1))[b.mlm_positions].double()
            log_probs = picked - picked.exp().sum(-1, keepdim=True).log()
            nll += (-log_probs[torch.arange(len(b.mlm_targets)), b.mlm_targets]).tolist()
    return sum(nll) / len(nll)


@pytest.mark.parametrize("through", [None, 1])
def test_token_weighted_loss_matches_hand_computed(through):
    model = tiny_model(101)
    # Batches with very different target counts: a mean of batch means would differ.
    batches = [random_batch(0, 2, 3, 101, 1), random_batch(0, 4, 60, 101, 2),
               random_batch(1, 1, 7, 101, 3)]
    got = masked_lm_loss(loss_forward(model), batches, through)
    assert got == pytest.approx(hand_loss(model, batches, through), abs=1e-5)
    unweighted = sum(masked_lm_loss(loss_forward(model), [b], through) for b in batches) / 3
    assert abs(got - unweighted) > 1e-4


@pytest.fixture(scope="module")
def valid_setup(tiny_data):
    vocab = read_manifest(tiny_data)["tokenizer"]["vocab_size"]
    shards = ShardSet(tiny_data, "valid", LANGUAGES)
    return shards, Masker(MaskingConfig(), vocab), tiny_model(vocab)


def draws(valid_setup, k: int) -> list[MicroBatch]:
    shards, masker, _ = valid_setup
    return draw_batches(shards, 1, 1, masker, batch_size=4, seq_len=SEQ_LEN, num_batches=2,
                        seed=7, draws=k)


def test_draw_zero_is_the_trainers_validation(valid_setup):
    shards, masker, _ = valid_setup
    trainer = validation_batches(shards, 1, 1, masker, 4, SEQ_LEN, 2, 7)
    for a, b in zip(draws(valid_setup, 1), trainer, strict=True):
        assert a.lang == b.lang
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.mlm_targets, b.mlm_targets)
        assert torch.equal(a.mlm_positions, b.mlm_positions)


def test_draws_are_deterministic_and_averaged(valid_setup):
    forward = loss_forward(valid_setup[2])
    first, again = draws(valid_setup, 3), draws(valid_setup, 3)
    assert masked_lm_loss(forward, first) == masked_lm_loss(forward, again)
    # Same windows, new masks: draw 1 is not draw 0.
    assert not torch.equal(first[0].mlm_positions, first[2].mlm_positions)
    per_draw = [first[2 * k: 2 * k + 2] for k in range(3)]
    counts = [sum(len(b.mlm_targets) for b in d) for d in per_draw]
    weighted = sum(masked_lm_loss(forward, d) * n for d, n in zip(per_draw, counts)) / sum(counts)
    assert masked_lm_loss(forward, first) == pytest.approx(weighted, rel=1e-9)
