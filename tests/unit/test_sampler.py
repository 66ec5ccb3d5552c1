"""The language sampler and the masking collator on real prepared shards."""

from __future__ import annotations

import numpy as np
import pytest

from xmod_core.shards import TOKEN_DTYPE, read_manifest
from xmod_core.tokenizer import BOS_ID, EOS_ID
from xmod_pretrain.data.config import DataConfig, MaskingConfig
from xmod_pretrain.data.masking import Masker
from xmod_pretrain.data.sampler import LanguageSampler, language_probabilities, validation_batches
from xmod_pretrain.data.shards import ShardSet


def make_sampler(data_dir, alpha=0.7, language_per="rank", batch=4, seed=1, lang_ids=None):
    manifest = read_manifest(data_dir)
    langs = list(manifest["languages"])
    cfg = DataConfig(dir=str(data_dir), alpha=alpha, language_per=language_per, seq_len=32)
    masker = Masker(cfg.masking, manifest["tokenizer"]["vocab_size"])
    shards = ShardSet(data_dir, "train", langs)
    return LanguageSampler(shards, cfg, masker, batch, seed, lang_ids or list(range(len(langs))))


def test_probabilities_follow_alpha():
    sizes = np.array([1000.0, 100.0, 10.0])
    assert np.allclose(language_probabilities(sizes, 1.0), sizes / sizes.sum())
    assert np.allclose(language_probabilities(sizes, 0.0), 1 / 3)
    p = language_probabilities(sizes, 0.3)
    assert np.isclose(p[0] / p[1], 10**0.3)


def test_empirical_language_frequencies_match_alpha(tiny_data):
    sampler = make_sampler(tiny_data, alpha=0.5)
    draws = np.array([sampler.language(step, 0, 0) for step in range(4000)])
    freq = np.bincount(draws, minlength=len(sampler.probabilities)) / len(draws)
    assert np.abs(freq - sampler.probabilities).max() < 0.03
    uniform = make_sampler(tiny_data, alpha=0.0)
    assert np.allclose(uniform.probabilities, 0.25)


def test_micro_batch_is_one_language_from_its_shard(tiny_data):
    sampler = make_sampler(tiny_data)
    langs_seen = set()
    for step in range(20):
        batch = sampler.micro_batch(step, 0, step % 3)
        assert batch.input_ids.shape == (4, 32)
        assert (batch.input_ids[:, 0] == BOS_ID).all() and (batch.input_ids[:, -1] == EOS_ID).all()
        # Unmasking the targets must give windows of that language's shard, every row of them.
        tokens = batch.input_ids.reshape(-1).clone()
        tokens[batch.mlm_positions] = batch.mlm_targets
        rows = tokens.reshape(4, 32)[:, 1:-1].numpy().astype(TOKEN_DTYPE)
        assert all(_contains(sampler.shards.tokens[batch.lang], row) for row in rows)
        langs_seen.add(batch.lang)
    assert len(langs_seen) > 1


def _contains(stream: np.ndarray, window: np.ndarray) -> bool:
    doubled = np.concatenate([stream, stream[: len(window)]])  # windows may wrap
    starts = np.flatnonzero(doubled[: len(stream)] == window[0])
    return any(np.array_equal(doubled[s : s + len(window)], window) for s in starts)


def test_deterministic_and_resumable(tiny_data):
    a, b = make_sampler(tiny_data), make_sampler(tiny_data)
    # A fresh sampler asked for step 7 (as after a resume) gives what a running one gives.
    for step in (0, 7, 7, 123):
        x, y = a.micro_batch(step, 1, 3), b.micro_batch(step, 1, 3)
        assert x.lang == y.lang
        assert np.array_equal(x.input_ids, y.input_ids)
        assert np.array_equal(x.mlm_positions, y.mlm_positions)
    other_seed = make_sampler(tiny_data, seed=2)
    assert not np.array_equal(other_seed.micro_batch(0, 0, 0).input_ids, a.micro_batch(0, 0, 0).input_ids)


def test_languages_per_rank_or_shared(tiny_data):
    per_rank = make_sampler(tiny_data, language_per="rank", alpha=0.0)
    shared = make_sampler(tiny_data, language_per="step", alpha=0.0)
    steps = range(50)
    # 'rank': the two ranks of a micro-step draw independently, so they differ sometimes.
    assert any(per_rank.language(s, 0, 0) != per_rank.language(s, 0, 1) for s in steps)
    # 'step': every rank of a micro-step has the same language.
    assert all(shared.language(s, 0, 0) == shared.language(s, 0, 1) for s in steps)


def test_model_language_ids_are_used(tiny_data):
    sampler = make_sampler(tiny_data, lang_ids=[10, 11, 12, 13])
    assert {sampler.micro_batch(s, 0, 0).lang for s in range(40)} <= {10, 11, 12, 13}


def test_masking_statistics():
    vocab = 1000
    masker = Masker(MaskingConfig(prob=0.15, mask_frac=0.8, random_frac=0.1), vocab)
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, vocab - 1, size=(64, 128))
    tokens[:, 0], tokens[:, -1] = BOS_ID, EOS_ID
    inputs, positions, targets = masker(tokens, rng)
    flat_in, flat_tok = inputs.reshape(-1), tokens.reshape(-1)
    n_candidates = 64 * 126
    assert abs(len(positions) / n_candidates - 0.15) < 0.01
    assert np.array_equal(targets, flat_tok[positions])
    assert not np.isin(positions % 128, [0, 127]).any()  # specials are never chosen
    masked = flat_in[positions] == vocab - 1
    kept = flat_in[positions] == flat_tok[positions]
    assert abs(masked.mean() - 0.8) < 0.03
    assert abs(kept.mean() - 0.1) < 0.03  # random replacements rarely hit the same token
    untouched = np.ones(flat_in.shape, bool)
    untouched[positions] = False
    assert np.array_equal(flat_in[untouched], flat_tok[untouched])
    random_ids = flat_in[positions][~masked & ~kept]
    assert (random_ids >= 4).all() and (random_ids < vocab - 1).all()


def test_validation_batches_are_fixed(tiny_data):
    manifest = read_manifest(tiny_data)
    langs = list(manifest["languages"])
    masker = Masker(MaskingConfig(), manifest["tokenizer"]["vocab_size"])
    valid = ShardSet(tiny_data, "valid", langs)
    one = validation_batches(valid, 1, 5, masker, 4, 32, 3, seed=1)
    two = validation_batches(valid, 1, 5, masker, 4, 32, 3, seed=1)
    assert len(one) == 3 and all(b.lang == 5 for b in one)
    assert all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(one, two))


def test_unknown_language_is_named(tiny_data):
    with pytest.raises(ValueError, match="yo_NG"):
        ShardSet(tiny_data, "train", ["en_XX", "yo_NG"])


@pytest.mark.parametrize("language_per", ["rank", "step"])
def test_step_languages_are_those_of_every_rank(tiny_data, language_per):
    """What each rank computes alone is the union of all ranks' micro-batch languages."""
    sampler = make_sampler(tiny_data, language_per=language_per, lang_ids=[10, 11, 12, 13])
    world, accum = 3, 2
    for step in range(20):
        drawn = {sampler.micro_batch(step, micro, micro * world + rank).lang
                 for micro in range(accum) for rank in range(world)}
        assert sampler.step_languages(step, accum, world) == drawn
