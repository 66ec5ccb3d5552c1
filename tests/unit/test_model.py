"""The X-MOD model against transformers' reference, plus its helpers and its errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import transformers

from xmod_core.languages import XMOD_BASE_LANGUAGES
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import (
    XmodForMaskedLM,
    count_parameters,
    language_of_parameter,
    model_flops_per_token,
)

LANGUAGES = ["en_XX", "de_DE", "yo_NG"]
TINY = ModelConfig(
    vocab_size=101,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    adapter_reduction_factor=2,
    languages=LANGUAGES,
)
# The flag sets of the released models, and one more that exercises the remaining branches.
BASE_FLAGS = dict(pre_norm=False, ln_before_adapter=True, adapter_layer_norm=False,
                  adapter_reuse_layer_norm=True)
LARGE_FLAGS = dict(pre_norm=True, ln_before_adapter=False, adapter_layer_norm=True,
                   adapter_reuse_layer_norm=False)
FLAG_SETS = {
    "base-postnorm": BASE_FLAGS,
    "large-prenorm": LARGE_FLAGS,
    "postnorm-adapter-ln-residual-before": dict(
        pre_norm=False, ln_before_adapter=False, adapter_layer_norm=True,
        adapter_reuse_layer_norm=False),
    "prenorm-no-adapter-ln": dict(
        pre_norm=True, ln_before_adapter=True, adapter_layer_norm=False,
        adapter_reuse_layer_norm=False),
}
BASE = ModelConfig(vocab_size=250002, languages=list(XMOD_BASE_LANGUAGES), **BASE_FLAGS)
LARGE = dataclasses.replace(
    BASE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    adapter_reduction_factor=4, **LARGE_FLAGS,
)
B, S = 3, 12


def reference_config(cfg: ModelConfig) -> transformers.XmodConfig:
    """transformers' XmodConfig for ``cfg``: its field names, plus XLM-R's single token type."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return transformers.XmodConfig(**fields, type_vocab_size=1, hidden_act="gelu")


def model_pair(flags: dict) -> tuple[XmodForMaskedLM, transformers.XmodForMaskedLM]:
    """Ours and transformers', in eval mode, with transformers' random weights loaded into ours."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, **flags)
    reference = transformers.XmodForMaskedLM(reference_config(cfg)).eval()
    # Non-zero biases and LayerNorm affines, so a misplaced bias or LayerNorm cannot hide.
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = XmodForMaskedLM(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def batch(padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """input_ids [B, S] without pad ids; with ``padded``, rows 1 and 2 end in padding."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY.vocab_size, (B, S), generator=g)
    if not padded:
        return ids, None
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, TINY.pad_token_id), mask


@pytest.mark.parametrize("flags", FLAG_SETS.values(), ids=FLAG_SETS.keys())
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
def test_masked_positions_match_transformers(flags: dict, padded: bool) -> None:
    ours, reference = model_pair(flags)
    ids, mask = batch(padded)
    positions = torch.tensor([0, 5, 11, 12, 18, 24, 26])  # flat indices into B * S
    targets = torch.randint(0, TINY.vocab_size, positions.shape, generator=torch.Generator())
    for lang in range(len(LANGUAGES)):
        with torch.no_grad():
            out = ours(ids, lang, positions, targets, attention_mask=mask)
            full = reference(ids, lang_ids=torch.full((B,), lang), attention_mask=mask).logits
        expected = full.reshape(B * S, -1)[positions]
        assert out.logits.shape == (len(positions), TINY.vocab_size)
        torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.loss, F.cross_entropy(expected, targets), atol=1e-5, rtol=0)


@pytest.mark.parametrize("flags", [BASE_FLAGS, LARGE_FLAGS], ids=["base", "large"])
def test_full_logits_match_transformers(flags: dict) -> None:
    ours, reference = model_pair(flags)
    ids, mask = batch(padded=True)
    with torch.no_grad():
        out = ours(ids, 1, attention_mask=mask)
        expected = reference(ids, lang_ids=torch.full((B,), 1), attention_mask=mask).logits
    assert out.loss is None and out.logits.shape == (B, S, TINY.vocab_size)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)


def test_state_dict_keys_and_tying_match_transformers() -> None:
    ours, reference = model_pair(LARGE_FLAGS)
    assert sorted(ours.state_dict()) == sorted(reference.state_dict())
    embeddings = ours.roberta.embeddings.word_embeddings.weight
    assert ours.lm_head.decoder.weight is embeddings
    assert ours.lm_head.decoder.bias is ours.lm_head.bias
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in reference.parameters())


def test_init_follows_transformers() -> None:
    model = XmodForMaskedLM(dataclasses.replace(TINY, initializer_range=0.5))
    emb = model.roberta.embeddings
    assert emb.word_embeddings.weight[TINY.pad_token_id].abs().sum() == 0
    assert emb.position_embeddings.weight[TINY.pad_token_id].abs().sum() == 0
    assert abs(emb.word_embeddings.weight.std().item() - 0.5) < 0.05
    assert model.lm_head.bias.abs().sum() == 0
    dense1 = model.roberta.encoder.layer[0].output.adapter_modules["de_DE"].dense1
    assert dense1.bias.abs().sum() == 0 and abs(dense1.weight.std().item() - 0.5) < 0.1


def test_gradient_reaches_only_the_batch_language() -> None:
    model = XmodForMaskedLM(TINY)  # training mode: dropout on, as in pre-training
    ids, _ = batch(padded=False)
    positions, targets = torch.tensor([1, 4, 20]), torch.tensor([5, 6, 7])
    model(ids, LANGUAGES.index("de_DE"), positions, targets).loss.backward()
    for name, p in model.named_parameters():
        language = language_of_parameter(name)
        if language is None or language == "de_DE":
            assert p.grad is not None, name
        else:
            assert p.grad is None, name


def test_language_parameters() -> None:
    model = XmodForMaskedLM(TINY)
    names = [n for n, _ in model.language_parameters("yo_NG")]
    # 2 layers x (dense1, dense2) x (weight, bias)
    assert len(names) == 8
    assert "roberta.encoder.layer.1.output.adapter_modules.yo_NG.dense2.bias" in names
    assert language_of_parameter("module._orig_mod." + names[0]) == "yo_NG"
    assert language_of_parameter("roberta.encoder.layer.0.output.adapter_layer_norm.weight") is None
    with pytest.raises(KeyError, match="en_XX"):
        model.language_parameters("fr_XX")


def test_bad_inputs_are_refused() -> None:
    model = XmodForMaskedLM(TINY)
    ids, _ = batch(padded=False)
    with pytest.raises(IndexError, match="0=en_XX, 1=de_DE, 2=yo_NG"):
        model(ids, 3)
    with pytest.raises(TypeError, match="Python int"):
        model(ids, torch.tensor(0))
    with pytest.raises(ValueError, match="38 positions"):
        model(torch.full((1, 39), 5), 0)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(vocab_size=None), "vocab_size"),
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(adapter_reduction_factor=3), "adapter_reduction_factor"),
        (dict(languages=[]), "languages is empty"),
        (dict(languages=["en_XX", "en_XX"]), "listed twice"),
        (dict(languages=["english"]), "english"),
    ],
)
def test_bad_config_is_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        XmodForMaskedLM(dataclasses.replace(TINY, **change))


@pytest.mark.parametrize(
    "cfg, total, active",
    [(BASE, 852.7e6, 285.4e6), (LARGE, 1.58e9, 572.8e6)],
    ids=["xmod-base", "xmod-large-prenorm"],
)
def test_count_parameters_of_released_sizes(cfg: ModelConfig, total: float, active: float) -> None:
    n_total, n_active = count_parameters(cfg)
    assert n_total == pytest.approx(total, rel=0.01)
    assert n_active == pytest.approx(active, rel=0.01)


def test_model_flops_per_token() -> None:
    h, f, v, s = 768, 3072, 250002, 512
    # 12 layers of q/k/v/out, FFN and a 384-wide module; attention; head on 15% of tokens.
    encoder = 6 * 12 * (4 * h * h + 2 * h * f + 2 * h * 384)
    expected = encoder + 12 * 12 * h * s + 6 * (h * h + h * v) * 0.15
    assert model_flops_per_token(BASE, s, 0.15) == pytest.approx(expected)


@pytest.mark.parametrize("field", ["num_attention_heads", "adapter_reduction_factor"])
def test_a_model_built_from_code_checks_its_shape_as_the_config_does(field):
    """One rule for both routes: a config file (model.*) and a ModelConfig made in code."""
    from xmod_pretrain.schema import ConfigError

    odd = dataclasses.replace(TINY, **{field: TINY.hidden_size - 1})
    with pytest.raises(ConfigError, match=f"ModelConfig.hidden_size={TINY.hidden_size} is not a "
                                          f"multiple of ModelConfig.{field}="):
        XmodForMaskedLM(odd)
