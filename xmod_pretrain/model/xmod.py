"""The X-MOD encoder and its tied masked-LM head, in one file.

X-MOD (Pfeiffer et al., 2022) is XLM-R (a RoBERTa encoder trained with masked-LM) plus one small
bottleneck module per language in every layer. Every weight is shared except the language modules;
a forward pass uses exactly one language's modules.

Parameter names are those of transformers' ``XmodForMaskedLM``, so a state_dict moves between
the two unchanged (``tests/unit/test_model.py`` checks the logits match). What differs from
transformers:

- A micro-batch holds one language, given as a plain Python int: the forward indexes that
  language's modules directly, with no host sync and no per-language loop. The encoder picks
  each layer's module and hands it to the layer, so a compiled layer (``compile_layers``) sees
  a module argument, not a language name to specialise on: one graph serves every language.
- During training the MLM head runs only on the masked positions (``mlm_positions``). Projecting
  every token onto XLM-R's 250k vocabulary would cost more than the whole encoder.
- Attention is ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where available).

One layer, post-norm (``pre_norm=False``), as in transformers' ``XmodLayer``::

    a   = LN_attn(x + Dropout(SelfAttn(x)))
    h   = a + Dropout(W2 · GELU(W1 · a))
    z   = LN_adapter(h) | LN_ffn(h) | h          (adapter_layer_norm, adapter_reuse_layer_norm)
    r   = z if ln_before_adapter else h
    out = LN_ffn(r + Dropout(U_lang · GELU(D_lang · z)))

Pre-norm moves LN_attn / LN_ffn in front of their blocks, drops the final LN_ffn, and adds one
LayerNorm at the end of the encoder.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from xmod_core.languages import check_language_list, language_index
from xmod_pretrain.model.config import ModelConfig, check_model_shape

# ``roberta.encoder.layer.3.output.adapter_modules.de_DE.dense1.weight`` -> ``de_DE``. A search,
# not a match, so prefixes added by wrappers (``module.``, ``_orig_mod.``) do not matter.
_LANGUAGE_PARAMETER = re.compile(r"(?:^|\.)adapter_modules\.([^.]+)\.")
_MODULE_PARAMETER = re.compile(
    r"^roberta\.encoder\.layer\.(\d+)\.output\.adapter_modules\.([^.]+)\.(.+)$")


class MaskedLMOutput(NamedTuple):
    """What ``XmodForMaskedLM.forward`` returns."""

    loss: torch.Tensor | None
    """Mean cross-entropy over the targets (a scalar, fp32), or None without targets."""
    logits: torch.Tensor
    """[M, V] at ``mlm_positions``, or [B, S, V] for every position when none are given."""


# State-dict keys that alias other tensors, and the tensor each is tied to (the decoder reads the
# word embeddings and lm_head.bias): present in state_dict() as in transformers, absent from
# model.safetensors, which stores each tied tensor once under the name it is tied to.
TIED = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias"}


def language_of_parameter(name: str) -> str | None:
    """The language code owning parameter ``name``, or None for a shared parameter."""
    found = _LANGUAGE_PARAMETER.search(name)
    return found.group(1) if found else None


def language_parameter(layer: int | str, language: str, name: str) -> str:
    """The state-dict name of ``name`` (``dense1.weight``) of ``language``'s module in ``layer``."""
    return f"roberta.encoder.layer.{layer}.output.adapter_modules.{language}.{name}"


def split_language_parameter(name: str) -> tuple[int, str, str] | None:
    """(layer, language, name within the module) of a module parameter's state-dict name (the
    inverse of ``language_parameter``); None for any other name."""
    found = _MODULE_PARAMETER.match(name)
    return (int(found[1]), found[2], found[3]) if found else None


def as_language(name: str, language: str) -> str:
    """A module parameter's name with its language replaced by ``language``."""
    layer, _, rest = split_language_parameter(name)
    return language_parameter(layer, language, rest)


def position_ids(input_ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """RoBERTa/fairseq positions: real tokens count from padding_idx + 1, padding keeps padding_idx.

    Positions come from the token ids, not from an attention mask, so a left- or right-padded row
    gives its real tokens the same positions as the unpadded row would.
    """
    is_token = input_ids.ne(padding_idx).long()
    return torch.cumsum(is_token, dim=1) * is_token + padding_idx


class Embeddings(nn.Module):
    """Word + token type + position embeddings, then LayerNorm and dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.padding_idx = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(
            cfg.max_position_embeddings, h, padding_idx=cfg.pad_token_id
        )
        # XLM-R has a single token type; the row exists only for checkpoint compatibility.
        self.token_type_embeddings = nn.Embedding(1, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # A 0-d index looks up the one token-type row as an [H] vector that broadcasts over [B, S].
        # The lookup goes through the module (not ``.weight[0]``) so ZeRO-3 gathers the weight.
        token_type = self.token_type_embeddings(input_ids.new_zeros(()))
        x = self.word_embeddings(input_ids) + token_type
        x = x + self.position_embeddings(position_ids(input_ids, self.padding_idx))
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention: query/key/value projections and fused attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.dropout_p = cfg.attention_probs_dropout_prob
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, h = x.shape
        # [B, S, H] -> [B, heads, S, H / heads], the layout scaled_dot_product_attention expects.
        q, k, v = (
            proj(x).view(b, s, self.num_heads, -1).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        return out.transpose(1, 2).reshape(b, s, h)


class AttentionOutput(nn.Module):
    """The attention's output projection and its LayerNorm (LN_attn)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)


class Attention(nn.Module):
    """Residual self-attention block, post- or pre-norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.self = SelfAttention(cfg)  # "attention.self" is the checkpoint name
        self.output = AttentionOutput(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        norm = self.output.LayerNorm
        attended = self.self(norm(x) if self.pre_norm else x, mask)
        x = x + self.output.dropout(self.output.dense(attended))
        return x if self.pre_norm else norm(x)


class Intermediate(nn.Module):
    """The FFN's first projection (hidden -> intermediate) and GELU."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, transformers' hidden_act="gelu"


class LanguageModule(nn.Module):
    """One language's bottleneck in one layer: dense1 (H -> H/r), GELU, dense2 (H/r -> H)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        bottleneck = cfg.hidden_size // cfg.adapter_reduction_factor
        self.dense1 = nn.Linear(cfg.hidden_size, bottleneck)
        self.dense2 = nn.Linear(bottleneck, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A trainer keeps the modules in fp32 when the shared weights run in bf16 (their
        # optimizer has no other master copy): they compute in their own dtype.
        dtype = self.dense1.weight.dtype
        return self.dense2(F.gelu(self.dense1(x.to(dtype)))).to(x.dtype)


class Output(nn.Module):
    """The FFN's second projection, its LayerNorm (LN_ffn) and the language modules."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.pre_norm = cfg.pre_norm
        self.ln_before_adapter = cfg.ln_before_adapter
        self.adapter_reuse_layer_norm = cfg.adapter_reuse_layer_norm
        self.dense = nn.Linear(cfg.intermediate_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        # Shared by all languages; None (no state_dict key) when the flag is off.
        self.adapter_layer_norm = (
            nn.LayerNorm(h, eps=cfg.layer_norm_eps) if cfg.adapter_layer_norm else None
        )
        self.adapter_modules = nn.ModuleDict({code: LanguageModule(cfg) for code in cfg.languages})

    def forward(self, ffn: torch.Tensor, residual: torch.Tensor,
                module: LanguageModule) -> torch.Tensor:
        h = residual + self.dropout(self.dense(ffn))
        h = self.language_module(h, module)
        return h if self.pre_norm else self.LayerNorm(h)

    def language_module(self, h: torch.Tensor, module: LanguageModule) -> torch.Tensor:
        """Residual bottleneck ``module`` (one of ``adapter_modules``); the three flags decide
        where its LayerNorm sits."""
        if self.adapter_layer_norm is not None:
            z = self.adapter_layer_norm(h)
        elif self.adapter_reuse_layer_norm:
            z = self.LayerNorm(h)
        else:
            z = h
        residual = z if self.ln_before_adapter else h
        return residual + self.dropout(module(z))


class Layer(nn.Module):
    """One transformer layer: attention, shared FFN, then the language module."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)

    def forward(self, x: torch.Tensor, module: LanguageModule,
                mask: torch.Tensor | None) -> torch.Tensor:
        """``module``: this layer's module of the micro-batch's language."""
        a = self.attention(x, mask)
        ffn = self.intermediate(self.output.LayerNorm(a) if self.pre_norm else a)
        return self.output(ffn, a, module)


class Encoder(nn.Module):
    """The layer stack; pre-norm models end with one more LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        # None (no state_dict key) for post-norm, as in transformers.
        self.LayerNorm = (
            nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_norm else None
        )

    def forward(self, x: torch.Tensor, language: str, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, layer.output.adapter_modules[language], mask)
        return x if self.LayerNorm is None else self.LayerNorm(x)


class Backbone(nn.Module):
    """Embeddings + encoder: transformers' ``XmodModel`` without its pooler."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(
        self, input_ids: torch.Tensor, language: str, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        # [B, S] (1 keep, 0 pad) -> boolean [B, 1, 1, S]: every query may look at the real keys.
        mask = None if attention_mask is None else attention_mask[:, None, None, :].bool()
        return self.encoder(self.embeddings(input_ids), language, mask)


class TiedDecoder(nn.Module):
    """Projection onto the vocabulary that owns no weights of its own.

    ``XmodForMaskedLM.tie_weights`` registers the word embeddings as its ``weight`` and
    ``lm_head.bias`` as its ``bias``: the checkpoint keys ``lm_head.decoder.weight|bias`` exist
    as in transformers, and no [V, H] matrix (768 MB for xmod-base in fp32) is ever allocated
    only to be thrown away.
    """

    weight: nn.Parameter
    bias: nn.Parameter
    penalty: torch.Tensor | None = None
    """A loss term of the last training forward that the masked-LM loss adds (none here; a grown
    vocabulary's decoder has one, ``vocabulary/split_model.SplitDecoder``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder tied to the word embeddings, plus a vocabulary bias."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.dense = nn.Linear(h, h)
        self.layer_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder = TiedDecoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the decoder projects onto the vocabulary: dense, GELU, LayerNorm."""
        return self.layer_norm(F.gelu(self.dense(x)))


class LanguageModel(nn.Module):
    """What every X-MOD model (masked LM, classifier) shares: ``roberta`` (the Backbone) with
    one module set per entry of ``languages``, chosen per forward by a Python int."""

    config: ModelConfig
    languages: tuple[str, ...]
    roberta: Backbone

    def encode(self, input_ids: torch.Tensor, lang: int,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's last hidden states [B, S, H] of a micro-batch of language index ``lang``."""
        language = self.language_code(lang)
        # Real tokens take positions pad+1 .. pad+S, so S is capped below the table size (512 for
        # XLM-R's 514); checked here because on an accelerator an index error is an opaque assert.
        if input_ids.size(1) > self.longest_sequence:
            raise ValueError(f"sequence length {input_ids.size(1)} exceeds "
                             f"{self.longest_sequence} positions")
        return self.roberta(input_ids, language, attention_mask)

    @property
    def longest_sequence(self) -> int:
        return self.config.max_position_embeddings - self.config.pad_token_id - 1

    def language_code(self, lang: int) -> str:
        """The code of language index ``lang``; a tensor or an index out of range is refused."""
        if not isinstance(lang, int):
            raise TypeError(
                f"lang must be a Python int (index into config.languages), got "
                f"{type(lang).__name__}; a tensor would make every layer wait on the device"
            )
        if not 0 <= lang < len(self.languages):
            listed = ", ".join(f"{i}={code}" for i, code in enumerate(self.languages))
            n = len(self.languages)
            raise IndexError(f"lang {lang} out of range; this model has {n} languages: {listed}")
        return self.languages[lang]

    def compile_layers(self, **options) -> None:
        """``torch.compile`` each transformer layer in place (``options`` go to it).

        Per layer, not the whole model: the layers share one graph (dynamo guards on their
        type, not their identity, and the language's module comes in as an argument), the
        language lookup and the embeddings stay eager, and the parameter names do not change
        (no ``_orig_mod.`` prefix). Training compiles once and validation (eval mode, no
        gradients) once more, for any number of languages.
        """
        for layer in self.roberta.encoder.layer:
            layer.compile(**options)

    def language_parameters(self, code: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every module of language ``code``, across all layers."""
        language_index(self.languages, code)  # unknown code: KeyError listing the known ones
        return [(n, p) for n, p in self.named_parameters() if language_of_parameter(n) == code]

    def detach_language_modules(self) -> dict[str, nn.Parameter]:
        """Take every language module out of this model's parameters and return them by their
        state-dict names; the layers still run them. A trainer that owns the modules itself
        (training/language_store.py) calls it before handing the model to DeepSpeed, whose
        groups, gathers and reductions then hold the shared weights only."""
        detached = {}
        for i, layer in enumerate(self.roberta.encoder.layer):
            output = layer.output
            modules = output._modules.pop("adapter_modules")
            output.__dict__["adapter_modules"] = modules  # still ``output.adapter_modules``
            for name, param in modules.named_parameters():
                detached[f"roberta.encoder.layer.{i}.output.adapter_modules.{name}"] = param
        return detached



def init_transformers_weights(model: nn.Module, std: float) -> None:
    """transformers' RoBERTa init of every submodule: Linear and Embedding weights N(0, std),
    zero biases and padding rows, LayerNorms at weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class XmodForMaskedLM(LanguageModel):
    """X-MOD encoder with a tied masked-LM head; state_dict keys equal transformers'.

    The state_dict holds ``lm_head.decoder.weight`` (the same tensor as
    ``roberta.embeddings.word_embeddings.weight``) and ``lm_head.decoder.bias`` (= ``lm_head.bias``)
    as transformers' does, while ``parameters()`` yields each tied tensor once.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_model_config(cfg)
        self.config = cfg
        self.languages: tuple[str, ...] = tuple(cfg.languages)
        self.roberta = Backbone(cfg)
        self.lm_head = LMHead(cfg)
        self.tie_weights()
        # Meta tensors hold no values (a meta build is for counting or for deferred
        # initialisation), and initialising two thousand of them on meta takes seconds.
        if not self.lm_head.bias.is_meta:
            self.init_weights()

    def tie_weights(self) -> None:
        """Share the decoder's weight with the word embeddings and its bias with ``lm_head.bias``.

        Called by the constructor; call it again after anything that re-creates parameters one by
        one (e.g. ``to_empty`` from the meta device), which would otherwise untie them.
        """
        self.lm_head.decoder.weight = self.roberta.embeddings.word_embeddings.weight
        self.lm_head.decoder.bias = self.lm_head.bias

    def init_weights(self) -> None:
        """transformers' RoBERTa/X-MOD init: N(0, initializer_range), zero biases and padding rows.

        The constructor calls it; call it yourself after ``to_empty`` + ``tie_weights`` when the
        model was built on the meta device.
        """
        init_transformers_weights(self, self.config.initializer_range)
        nn.init.zeros_(self.lm_head.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        lang: int,
        mlm_positions: torch.Tensor | None = None,
        mlm_targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> MaskedLMOutput:
        """Encode one single-language micro-batch and predict tokens.

        Args:
            input_ids: [B, S] token ids.
            lang: index into ``config.languages`` of the language of the whole micro-batch; a
                Python int, so choosing its modules never waits on the device.
            mlm_positions: [M] flat indices into the B * S positions (row * S + column). When
                given, the head runs on these M rows only and logits are [M, V]; when None, on
                every position and logits are [B, S, V].
            mlm_targets: token ids to predict, shaped like the logits without V ([M], or [B, S]
                without positions); -100 entries are ignored. M must be > 0 (else the mean is NaN).
            attention_mask: [B, S], 1 keep, 0 padding. None (no padding, as in training windows)
                skips masking altogether.
        """
        hidden = self.encode(input_ids, lang, attention_mask)  # [B, S, H]
        if mlm_positions is not None:
            hidden = hidden.reshape(-1, hidden.size(-1)).index_select(0, mlm_positions)  # [M, H]
        logits = self.lm_head(hidden)
        loss = None
        if mlm_targets is not None:
            # fp32 log-softmax over the vocabulary even when the model runs in bf16.
            loss = F.cross_entropy(logits.flatten(0, -2).float(), mlm_targets.flatten())
            if self.training and self.lm_head.decoder.penalty is not None:
                loss = loss + self.lm_head.decoder.penalty
        return MaskedLMOutput(loss=loss, logits=logits)


def check_model_config(cfg: ModelConfig) -> None:
    """Refuse configurations that would fail later with an unhelpful shape or index error."""
    if not isinstance(cfg.vocab_size, int):
        raise ValueError(
            f"ModelConfig.vocab_size must be an int before the model is built, got "
            f"{cfg.vocab_size!r} (None means: take it from the prepared tokenizer first)"
        )
    check_model_shape(cfg, "ModelConfig.")
    if not cfg.languages:
        raise ValueError("ModelConfig.languages is empty: X-MOD needs at least one language")
    check_language_list(cfg.languages, where="ModelConfig.languages")


def count_parameters(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active for one language) parameters; the tied decoder counts once.

    Built on the meta device, so no memory is allocated: xmod-base with 81 languages gives about
    852.7M in all and 285.4M active (shared weights plus one language's 7.09M).
    """
    with torch.device("meta"):
        model = XmodForMaskedLM(cfg)
    total = language = 0
    for name, p in model.named_parameters():  # named_parameters yields shared tensors once
        total += p.numel()
        if language_of_parameter(name) is not None:
            language += p.numel()
    # Every language's modules have the same size, so one language is the mean.
    return total, total - language + language // len(model.languages)


def model_flops_per_token(cfg: ModelConfig, seq_len: int, masked_fraction: float,
                          shared_trains: bool = True, modules_train: bool = True) -> float:
    """Training FLOPs (forward + backward) per input token, for MFU.

    A matmul with P weights costs 2P FLOPs per row forward and 4P backward (gradients of inputs
    and of weights), so 6P per token for training. Per token:

    - encoder matmuls, per layer: 4 H^2 (query, key, value, attention output)
      + 2 H F (FFN) + 2 H (H / r) (one language's module), each times 6;
    - attention itself, per layer: Q K^T and attention x V are 2 S H FLOPs each per token forward,
      so 6 x 2 S H = 12 S H for training;
    - MLM head (H^2 dense + H V decoder), 6 x (H^2 + H V), only on the masked share of tokens;
    - embedding lookups, biases, LayerNorms, softmax and GELU: not counted (no matmul);
    - frozen weights (``shared_trains`` / ``modules_train`` false: add-language, transfer) cost
      4P, not 6P: their inputs' gradients only.

    With H = hidden_size, F = intermediate_size, r = adapter_reduction_factor, S = seq_len,
    V = vocab_size, L = num_hidden_layers. xmod-base at S = 512 with 15% masked: 0.78 GFLOP per
    token (encoder matmuls 0.55, attention 0.06, head 0.17; a head on every token would be 1.16).
    """
    if not isinstance(cfg.vocab_size, int):
        raise ValueError(f"ModelConfig.vocab_size must be an int, got {cfg.vocab_size!r}")
    h, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    bottleneck = h // cfg.adapter_reduction_factor
    # A frozen weight still passes gradients to its input (4P) but computes none of its own.
    shared, module = (6 if shared_trains else 4), (6 if modules_train else 4)
    encoder = layers * (shared * (4 * h * h + 2 * h * f) + module * 2 * h * bottleneck)
    attention = 12 * layers * h * seq_len
    head = shared * (h * h + h * cfg.vocab_size) * masked_fraction
    return float(encoder + attention + head)
