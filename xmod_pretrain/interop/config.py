"""transformers' XmodConfig (config.json) to and from our ModelConfig.

XmodConfig's defaults are not XLM-R's (layer_norm_eps 1e-12, 512 positions), so an export writes
every field, and an import reads an omitted field as transformers would.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from xmod_core.errors import UserError
from xmod_core.languages import check_language_list, language_index
from xmod_core.tokenizer import BOS_ID, EOS_ID
from xmod_pretrain.model.config import ModelConfig

HF_CONFIG = "config.json"

# transformers' XmodConfig defaults for our fields: what a config.json means when it omits one.
# Some differ from ours (layer_norm_eps 1e-12, 512 positions), so export writes every field.
XMOD_CONFIG_DEFAULTS = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12, initializer_range=0.02,
    pad_token_id=1, adapter_reduction_factor=2, pre_norm=False, ln_before_adapter=True,
    adapter_layer_norm=False, adapter_reuse_layer_norm=True, languages=["en_XX"],
)

# XmodConfig settings our model implements one way only: (default when omitted, required value).
FIXED_SETTINGS = {
    "hidden_act": ("gelu", "gelu"), "type_vocab_size": (2, 1),
    "position_embedding_type": ("absolute", "absolute"), "tie_word_embeddings": (True, True),
    "is_decoder": (False, False), "add_cross_attention": (False, False),
}


class TransformersFolderError(UserError, FileNotFoundError, ValueError):
    """A folder that is not a transformers X-MOD model this code can read: a file is missing, or
    its config asks for something the model does not implement."""


def hf_config(cfg: ModelConfig, default_language: str | None = None) -> dict:
    """config.json for transformers' XmodConfig: every field explicit, XLM-R's special ids."""
    languages = list(cfg.languages)
    default = languages[language_index(languages, default_language or languages[0])]
    ours = {f.name: getattr(cfg, f.name) for f in fields(ModelConfig)}
    return {
        "architectures": ["XmodForMaskedLM"], "model_type": "xmod", **ours,
        "languages": languages, "default_language": default,
        **{key: required for key, (_, required) in FIXED_SETTINGS.items()},
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
    }


def model_config_from_hf(folder: str | Path) -> ModelConfig:
    """The ModelConfig of a transformers X-MOD folder's config.json, languages in its order.

    Omitted keys mean transformers' XmodConfig defaults, as they do for transformers. Settings
    our model has no switch for (a second token type, another activation) raise ValueError.
    """
    path = Path(folder) / HF_CONFIG
    if not path.is_file():
        raise TransformersFolderError(f"{folder} has no {HF_CONFIG}: not a transformers model folder")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") != "xmod":
        raise TransformersFolderError(f"{path}: model_type is {raw.get('model_type')!r}, not 'xmod'")
    for key, (default, required) in FIXED_SETTINGS.items():
        if raw.get(key, default) != required:
            raise TransformersFolderError(f"{path}: {key} is {raw.get(key, default)!r}; this model supports "
                             f"only {required!r}")
    values = {key: raw.get(key, default) for key, default in XMOD_CONFIG_DEFAULTS.items()}
    factor = values["adapter_reduction_factor"]
    if factor != int(factor):
        raise TransformersFolderError(f"{path}: adapter_reduction_factor {factor} is not a whole number")
    values["adapter_reduction_factor"] = int(factor)
    values["languages"] = check_language_list(values["languages"], str(path))
    return ModelConfig(**values)
