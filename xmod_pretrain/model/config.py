"""The model's schema: X-MOD's architecture, in transformers' ``XmodConfig`` names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from xmod_pretrain.schema import ConfigError, Schema, at_least, optional, positive


@dataclass
class ModelConfig(Schema):
    """X-MOD architecture. Field names follow transformers' ``XmodConfig`` so export is a copy."""

    vocab_size: Optional[int] = None
    """Embedding rows; None takes the prepared tokenizer's size (pieces + 2, XLM-R layout)."""
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int = 1
    adapter_reduction_factor: int = 2
    """Language module bottleneck = hidden_size / adapter_reduction_factor."""
    pre_norm: bool = False
    """False: post-norm (xmod-base). True: pre-norm with a final encoder LayerNorm (xmod-large)."""
    ln_before_adapter: bool = True
    """The module's residual starts after its LayerNorm (True) or before it (False)."""
    adapter_layer_norm: bool = False
    """A LayerNorm of its own in front of the language modules, shared by all languages."""
    adapter_reuse_layer_norm: bool = True
    """Reuse the FFN output LayerNorm in front of the modules (when adapter_layer_norm is off)."""
    languages: list[str] = field(default_factory=list)
    """Module index order. Empty: the prepared data's languages, in manifest order."""

    RULES = (
        ("vocab_size", optional(at_least(6)), "null (from the tokenizer) or >= 6"),
        ("hidden_size", positive, "> 0"),
        ("num_hidden_layers", positive, "> 0"),
        ("num_attention_heads", positive, "> 0"),
        ("intermediate_size", positive, "> 0"),
        ("max_position_embeddings", at_least(5), ">= 5"),
        ("hidden_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("attention_probs_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("layer_norm_eps", positive, "> 0"),
        ("initializer_range", at_least(0), ">= 0"),
        ("adapter_reduction_factor", positive, "> 0"),
    )

    def check_together(self, prefix: str) -> None:
        check_model_shape(self, prefix)


def check_model_shape(model: ModelConfig, key: str = "model.") -> None:
    """The sizes a model can be built with (the config's check, and the model's before it is
    built from a config made in code): a ConfigError naming the keys (``key`` their prefix)."""
    for divisor in ("num_attention_heads", "adapter_reduction_factor"):
        value = getattr(model, divisor)
        if value < 1 or model.hidden_size % value:
            raise ConfigError(f"{key}hidden_size={model.hidden_size} is not a multiple of "
                              f"{key}{divisor}={value}")
