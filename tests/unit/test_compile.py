"""torch.compile per layer: one graph for every language, the eager model's numbers, the
checkpoint's names."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from xmod_core.languages import XMOD_BASE_LANGUAGES
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM

# xmod-base's 81 languages, the last replaced by one added after pre-training.
LANGUAGES = [*XMOD_BASE_LANGUAGES[:80], "yo_NG"]


def tiny(languages: list[str], dropout: float = 0.1) -> ModelConfig:
    return ModelConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, languages=languages,
                       hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 119, (2, 12), generator=g)
    positions = torch.tensor([1, 7, 13, 20])
    return {"input_ids": ids, "mlm_positions": positions,
            "mlm_targets": ids.flatten()[positions]}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_81_languages_train_through_one_graph_and_keep_their_names():
    model = XmodForMaskedLM(tiny(LANGUAGES)).train()
    names = list(model.state_dict())
    model.compile_layers(backend="eager")  # dynamo's guards, without inductor's compile time
    for lang in range(len(LANGUAGES)):
        model(lang=lang, **batch(lang)).loss.backward()
    assert counters["stats"]["unique_graphs"] <= 2  # measured: 1
    assert not counters["recompiles"], dict(counters["recompiles"])
    with torch.no_grad():
        model.eval()
        for lang in range(len(LANGUAGES)):
            model(lang=lang, **batch(lang))
    assert counters["stats"]["unique_graphs"] <= 2 + 1  # validation: one more, for all
    assert list(model.state_dict()) == names  # no _orig_mod. prefix: checkpoints unchanged


@pytest.mark.parametrize("backend", ["aot_eager",
                                     pytest.param("inductor", marks=pytest.mark.integration)])
def test_compiled_losses_and_gradients_equal_eager(backend):
    torch.manual_seed(0)
    eager = XmodForMaskedLM(tiny(LANGUAGES[:3], dropout=0.0)).train()
    compiled = copy.deepcopy(eager)
    compiled.compile_layers(backend=backend)
    for lang in range(3):
        losses = []
        for model in (eager, compiled):
            model.zero_grad()
            loss = model(lang=lang, **batch(lang)).loss
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
