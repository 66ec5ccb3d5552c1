"""``data.shared_module``: the shared baseline's model has one module set, named by a code."""

from __future__ import annotations

import dataclasses

import pytest

from xmod_pretrain.config import Config
from xmod_pretrain.data.config import DataConfig
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import count_parameters
from xmod_pretrain.recipes.pretrain.recipe import resolve_model_config

MANIFEST = {"tokenizer": {"vocab_size": 300}, "languages": {"en_XX": {}, "de_DE": {}, "el_GR": {}}}
SMALL = ModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64)


def config(shared: str | None, languages: list[str] | None = None) -> Config:
    return Config(model=dataclasses.replace(SMALL, languages=languages or []),
                  data=DataConfig(shared_module=shared))


def test_one_module_set_with_the_active_parameters_of_xmod():
    shared = resolve_model_config(config("mul_XX"), MANIFEST)
    xmod = resolve_model_config(config(None), MANIFEST)
    assert shared.languages == ["mul_XX"] and xmod.languages == ["en_XX", "de_DE", "el_GR"]
    (shared_total, shared_active), (xmod_total, xmod_active) = map(count_parameters, (shared, xmod))
    assert shared_active == xmod_active == shared_total < xmod_total


@pytest.mark.parametrize("shared, languages, named", [
    ("shared", None, "'shared' in data.shared_module is not of the form xx_YY"),
    ("mul_XX", ["en_XX", "de_DE"], "model.languages lists ['en_XX', 'de_DE']"),
])
def test_refused(shared, languages, named):
    with pytest.raises(ValueError) as err:
        resolve_model_config(config(shared, languages), MANIFEST)
    assert named in str(err.value)
