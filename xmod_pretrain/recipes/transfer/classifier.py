"""An X-MOD sequence classifier: the encoder of model/xmod.py with transformers' classification head.

Parameter names are those of transformers' ``XmodForSequenceClassification`` (``roberta.*`` and
``classifier.dense`` / ``classifier.out_proj``; no pooler), so an exported folder loads with
``AutoModelForSequenceClassification``. Fine-tuning for cross-lingual transfer freezes what
transformers' ``freeze_embeddings_and_language_adapters`` freezes and trains the rest through the
source language's modules; evaluation switches the modules to each target language.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import (
    Backbone,
    LanguageModel,
    check_model_config,
    init_transformers_weights,
)

CLASSIFIER_PREFIX = "classifier."  # the head's parameters; everything else is ``roberta.*``


class ClassifierOutput(NamedTuple):
    loss: torch.Tensor | None  # mean cross-entropy over the batch (fp32), None without labels
    logits: torch.Tensor       # [B, num_labels]


class ClassificationHead(nn.Module):
    """transformers' ``XmodClassificationHead``: the ``<s>`` state -> dropout -> dense -> tanh ->
    dropout -> out_proj."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


class XmodForSequenceClassification(LanguageModel):
    """The X-MOD encoder plus a classification head on the ``<s>`` token."""

    def __init__(self, cfg: ModelConfig, num_labels: int, dropout: float | None = None) -> None:
        super().__init__()
        check_model_config(cfg)
        self.config = cfg
        self.languages = tuple(cfg.languages)
        self.num_labels = num_labels
        self.roberta = Backbone(cfg)
        # transformers' default: classifier_dropout None -> hidden_dropout_prob.
        self.classifier = ClassificationHead(
            cfg.hidden_size, num_labels, cfg.hidden_dropout_prob if dropout is None else dropout)
        if not self.classifier.dense.weight.is_meta:
            init_transformers_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, lang: int,
                attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> ClassifierOutput:
        """Classify a micro-batch of language index ``lang`` (a Python int, as in model/xmod.py)."""
        logits = self.classifier(self.encode(input_ids, lang, attention_mask))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return ClassifierOutput(loss=loss, logits=logits)


def freeze_embeddings_and_language_adapters(model: LanguageModel) -> None:
    """Freeze exactly what transformers' method of that name freezes: the embeddings, every
    language module, and the adapter LayerNorm where the model has one. The shared encoder
    (attention, FFN, their LayerNorms) and the head stay trainable."""
    for param in model.roberta.embeddings.parameters():
        param.requires_grad = False
    for layer in model.roberta.encoder.layer:
        if layer.output.adapter_layer_norm is not None:
            for param in layer.output.adapter_layer_norm.parameters():
                param.requires_grad = False
        for param in layer.output.adapter_modules.parameters():
            param.requires_grad = False


def load_encoder(model: XmodForSequenceClassification, weights: dict[str, torch.Tensor]) -> None:
    """Copy the ``roberta.*`` tensors of a masked LM's (or a classifier's) weights into
    ``model``; the masked-LM head is not used, and the classifier keeps its own init."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}
    missing = sorted(set(own) - set(weights))
    if missing:
        raise KeyError(f"the pre-trained weights lack {len(missing)} encoder tensors, e.g. "
                       f"{', '.join(missing[:3])}")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(weights[name])
