"""Typed configuration: dataclass schemas registered with Hydra's ConfigStore.

Hydra composes ``conf/`` against these schemas, so a misspelt key or a value of the wrong type
fails at start with a message that names it. The YAML is converted once, with
``OmegaConf.to_object``, into these dataclasses; the rest of the code never sees a DictConfig.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from operator import attrgetter
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from xmod_core.errors import UserError, closest, did_you_mean

# The YAML tree these schemas type: package data, so an installed wheel finds it (the checkout's
# top-level conf/ links here).
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


# String choices are enums, so Hydra refuses a value outside them when it composes the config
# ("Invalid value 'fp16', expected one of [fp32, bf16]"); as str enums they compare equal to
# their names and are written to YAML and JSON as them.


class RunKind(str, Enum):
    """The kind of run, and so the recipe that builds its parts (xmod_pretrain/recipes/)."""

    pretrain = "pretrain"
    add_language = "add_language"
    transfer = "transfer"


class LanguagePer(str, Enum):
    rank = "rank"
    step = "step"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class ModelConfig:
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


@dataclass
class MaskingConfig:
    """BERT/RoBERTa masking of non-special tokens."""

    prob: float = 0.15
    """Share of non-special tokens chosen for prediction."""
    mask_frac: float = 0.8
    """Of the chosen: replaced by <mask>."""
    random_frac: float = 0.1
    """Of the chosen: replaced by a random token. The rest (0.1) keep their token."""


@dataclass
class DataConfig:
    dir: str = "data/demo"
    """Prepared data: manifest.json, the SentencePiece model and per-language uint32 shards."""
    source: Optional[str] = "bundled"
    """Raw text to prepare ``dir`` from when it has no manifest yet: ``bundled`` (the demo corpus
    shipped in data_prep/corpus), a folder of <lang>.txt files, a JSON manifest {lang: path}, or
    ``hf:NAME`` (a datasets source streamed per language). None: ``dir`` must exist already."""
    languages: list[str] = field(default_factory=list)
    """Train on these languages only; empty: every language of the manifest."""
    vocab_size: int = 8000
    """SentencePiece pieces when a tokenizer is trained; ids are pieces + 2 (XLM-R layout)."""
    valid_fraction: float = 0.05
    """Share of each language's lines (the last ones) held out as its valid shard."""
    seq_len: int = 128
    """Tokens per sequence, <s> and </s> included."""
    alpha: float = 0.7
    """Language sampling p_l ∝ n_l^alpha. 1 follows the data sizes, 0 is uniform. XLM-R used 0.3
    (Conneau et al., 2020); 0.7 keeps more of the natural distribution."""
    language_per: LanguagePer = LanguagePer.rank
    """``rank``: each data-parallel rank draws its own micro-batch language. ``step``: all ranks
    share one language per micro-step (required by ZeRO-3, which gathers weights collectively)."""
    shared_module: Optional[str] = None
    """A language code (``mul_XX``, say) naming ONE module set that every data language runs
    through: the shared baseline of X-MOD's comparison, with the same active parameters per
    language as X-MOD but nothing of its own. Validation still reports each data language.
    None: each language its own modules (X-MOD)."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    prepare_workers: int = 2
    """Processes that encode text into shards."""
    verify_shards: bool = True
    """Scan every token id at start and refuse a shard holding an id outside the vocabulary
    (which would fail at whichever step first draws it). Costs a read of all shards by every
    process: 1-1.7 GB/s from a cold disk, 5-12 GB/s from the page cache (about 10-17 min a TB
    cold). false skips the scan (a multi-TB corpus already checked once); shard sizes are always
    checked."""


@dataclass
class OptimConfig:
    lr: float = 6e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    """Not applied to biases, LayerNorm weights or embeddings' LayerNorm."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr, then linear decay to min_lr_ratio * lr at max_steps."""
    min_lr_ratio: float = 0.0
    total_steps: Optional[int] = None
    """Length of the schedule; None: train.max_steps. Set it to stop a run early (max_steps
    below it) and continue later on the same schedule, as fairseq's --total-num-update."""
    clip_grad_norm: float = 1.0
    """Global gradient norm clip; 0 disables."""
    update_absent_languages: bool = False
    """False: a step updates the shared weights and the modules of the languages present in it
    (on any rank) only; absent modules keep their weights and Adam state exactly, and the step
    costs the same with 4 or 200 languages. True: fairseq's and DeepSpeed's behaviour, every
    module stepped every step (a zero gradient when absent, so momentum and weight decay move it)."""


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    offload_optimizer: bool = False
    """Keep optimizer state in host memory (ZeRO 1-3)."""
    offload_param: bool = False
    """Keep parameters in host memory (ZeRO-3 only)."""
    dist_timeout_s: int = 600
    """Collective timeout: a rank whose peer died exits after this long instead of hanging."""


@dataclass
class TrainConfig:
    seed: int = 1
    micro_batch_size: int = 8
    """Sequences per micro-batch; one micro-batch holds one language."""
    grad_accum_steps: int = 1
    max_steps: int = 1000
    """Optimizer steps to train to; 0 validates and saves the initial weights (an init_from import)."""
    precision: Precision = Precision.fp32
    """fp32 or bf16 (bf16 needs an accelerator that has it)."""
    log_every: int = 10
    eval_every: int = 200
    """Per-language validation every N steps (and always at the start and the end); 0: ends only."""
    eval_batches: int = 4
    """Validation micro-batches per language."""
    save_every: int = 200
    """Checkpoint every N steps (and at the end); 0: at the end only."""
    keep_checkpoints: int = 2
    resume: Optional[bool] = None
    """None: resume when run_dir holds a checkpoint. True: require one. False: start fresh."""
    dry_run: bool = False
    """Build the model on the meta device, print its size and the resolved config, exit."""
    threads: int = 0
    """torch intra-op threads per process; 0: cores / local processes."""
    compile: Optional[bool] = None
    """``torch.compile`` each transformer layer (one graph for every language). None: on for
    CUDA with ZeRO 0-2, off elsewhere (on this project's 2-core CPU the compile takes longer
    than it saves: bench/README.md). ZeRO-3 gathers parameters in module hooks and is not
    compiled."""
    tf32: bool = True
    """fp32 matmuls and convolutions on CUDA run on tensor cores in tf32 (10-bit mantissa
    inputs, fp32 accumulation), as torchtitan and transformers' Trainer allow; no effect in bf16
    or on a CPU."""
    peak_tflops: Optional[float] = None
    """The peak of one rank MFU divides by, in TFLOP/s: for an accelerator the datasheet table
    lacks, or to compare runs against one fixed figure. None: the table's dense figure for a
    known accelerator, else a matmul measured at start (one second)."""


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "xmod-pretrain"
    wandb_mode: WandbMode = WandbMode.offline
    """offline (no network needed; ``wandb sync`` later) or online."""
    tensorboard: bool = False
    """TensorBoard event files in ``run_dir/tensorboard`` (the same scalars wandb gets); needs
    the ``tensorboard`` package (``pip install 'xmod-pretrain[tensorboard]'``)."""
    loss_spike_factor: float = 2.0
    """Warn when a log line's loss exceeds this many times the median of the last
    ``spike_window`` log lines; 0 disables."""
    spike_window: int = 20


@dataclass
class AddLanguageConfig:
    """Post-hoc mode (``xmod_pretrain add-language``): grow a trained run by new languages,
    training only their modules while every other weight stays frozen."""

    source_run: Optional[str] = None
    """The run to grow (read only), or a transformers X-MOD folder; None: ``init_from``."""
    languages: list[str] = field(default_factory=list)
    """The languages to add, each trained only on its own text; empty: ordinary pre-training."""
    text: Optional[str] = None
    """Their raw text: a file (one language), a folder of <xx_YY>.txt, a JSON manifest, or any
    data_prep source. None: the bundled UDHR text (yo_NG and the demo languages)."""
    init: str = "random"
    """New modules start as ``random``, ``copy:LANG`` (a copy of LANG's) or ``avg:L1+L2``."""
    overwrite: bool = False
    """Retrain a language the run already has (its modules restart from ``init``)."""
    extend_vocab: Optional[int] = None
    """Learn up to this many SentencePiece pieces from the new language's text and append them
    to the vocabulary (``--extend-vocab``; one new language at a time); None: the source's
    vocabulary as it is. Only the new rows, their bias entries and the modules train."""
    init_vocab: str = "mean"
    """New rows start as ``mean`` (of the old rows the old tokenizer spells each piece with) or
    ``random`` (N(0, model.initializer_range), zero bias)."""
    vocab_penalty: float = 100.0
    """Weight of the training loss term that keeps the new pieces out of the old languages'
    softmax: each old language's loss rise on a fixed sample of its text beyond 0.05%
    (``recipes/vocabulary/split_model.SplitDecoder``); 0: none."""


@dataclass
class AddedPieces:
    """Ids ``first_id .. first_id + count - 1``: pieces learned for ``language``."""

    language: str
    first_id: int
    count: int


@dataclass
class VocabularyConfig:
    """Pieces appended to the pre-training vocabulary (``add-language --extend-vocab``); written
    by the run that appends them, never set by hand. What a run shares with its base, and what a
    language's module file carries, is told apart by it."""

    base_size: Optional[int] = None
    """Ids of the pre-training tokenizer; None: no pieces were appended."""
    base_tokenizer_sha256: Optional[str] = None
    added: list[AddedPieces] = field(default_factory=list)


@dataclass
class TransferConfig:
    """Cross-lingual transfer (``xmod_pretrain transfer``): fine-tune a classifier on the source
    language with the embeddings and every language module frozen, pick its checkpoint on the
    source dev split, and evaluate it zero-shot on every target through the target's modules."""

    source_run: Optional[str] = None
    """The pre-trained model (read only): a run, or a transformers X-MOD folder."""
    task: Optional[str] = None
    """guide-topic, udhr-retrieval, a folder / JSON manifest of JSONL files, or hf:NAME[:CONFIG]
    (transfer/tasks.py)."""
    source: str = "en_XX"
    """The language fine-tuned on (its train split), whose dev split picks the checkpoint."""
    targets: list[str] = field(default_factory=list)
    """Languages evaluated zero-shot; empty: every language with test data."""
    epochs: float = 3.0
    """Passes over the source train split (sets train.max_steps; a checkpoint each epoch)."""
    steps: Optional[int] = None
    """Optimizer steps instead of ``epochs`` (a checkpoint every steps / epochs of them)."""
    warmup_fraction: float = 0.1
    """Share of the steps warming up (sets optim.warmup_steps, as the length is known late)."""
    classifier_dropout: Optional[float] = None
    """Dropout of the head; None: model.hidden_dropout_prob, as in transformers."""
    layer: int = -1
    """udhr-retrieval: the hidden layer mean-pooled (0 = embeddings, -1 = the last)."""


@dataclass
class Config:
    recipe: RunKind = RunKind.pretrain
    """pretrain, add_language (``xmod_pretrain add-language`` sets it, with add_language.*) or
    transfer (``xmod_pretrain transfer``, with transfer.*)."""
    name: str = "default"
    run_dir: str = "runs/${name}"
    """Checkpoints, metrics.jsonl, the resolved config. Named, never timestamped, so every rank
    and every requeue of a job agree on it."""
    init_from: Optional[str] = None
    """A transformers X-MOD folder (config.json, weights, sentencepiece.bpe.model) to start from:
    its architecture, language order, every weight and its tokenizer replace ``model``."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    add_language: AddLanguageConfig = field(default_factory=AddLanguageConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    vocab: VocabularyConfig = field(default_factory=VocabularyConfig)


def quoted(value: object) -> str:
    """``value`` as a quoted Hydra override value: paths and ``hf:x:{iso}`` hold characters
    (``:``, braces, spaces) that the override grammar would read otherwise. The grammar's
    escapes: a quote, and backslashes before a quote or the closing quote, are backslashed."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\" + m[2] if m[2] else ""), str(value))
    return f"'{escaped}'"


def register_configs() -> None:
    """Register the schema; conf/config.yaml names ``schema`` first in its defaults list, so every
    group file merges into a typed node."""
    ConfigStore.instance().store(name="schema", node=Config)


# ---- value checks ---------------------------------------------------------------------------
# The schema types every key; these rules bound the values, so that a zero batch or a negative
# alpha stops the run within a second of starting, naming the key, rather than minutes later in
# DeepSpeed or at step 1 (or never: max_steps=-5 used to "finish" with rc 0).


class ConfigError(UserError, ValueError):
    """A config value out of its range; the message names the key, the value and what is allowed."""


def _positive(v: Any) -> bool:
    return v > 0 and math.isfinite(v)


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low and math.isfinite(v)


def _fraction(v: float) -> bool:  # an open unit interval
    return 0 < v < 1


def _share(v: float) -> bool:  # a closed unit interval
    return 0 <= v <= 1


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model.vocab_size", lambda v: v is None or v >= 6, "null (from the tokenizer) or >= 6"),
    ("model.hidden_size", _positive, "> 0"),
    ("model.num_hidden_layers", _positive, "> 0"),
    ("model.num_attention_heads", _positive, "> 0"),
    ("model.intermediate_size", _positive, "> 0"),
    ("model.max_position_embeddings", _at_least(5), ">= 5"),
    ("model.hidden_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.attention_probs_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.layer_norm_eps", _positive, "> 0"),
    ("model.initializer_range", _at_least(0), ">= 0"),
    ("model.adapter_reduction_factor", _positive, "> 0"),
    ("data.vocab_size", _at_least(4), ">= 4"),
    ("data.valid_fraction", _fraction, "in (0, 1)"),
    ("data.seq_len", _at_least(3), ">= 3 (<s>, one token, </s>)"),
    ("data.alpha", _at_least(0), ">= 0 (0 uniform, 1 proportional to the data)"),
    ("data.masking.prob", _fraction, "in (0, 1)"),
    ("data.masking.mask_frac", _share, "in [0, 1]"),
    ("data.masking.random_frac", _share, "in [0, 1]"),
    ("data.prepare_workers", _positive, ">= 1"),
    ("optim.lr", _positive, "> 0"),
    ("optim.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values in [0, 1)"),
    ("optim.eps", _positive, "> 0"),
    ("optim.weight_decay", _at_least(0), ">= 0"),
    ("optim.warmup_steps", _at_least(0), ">= 0"),
    ("optim.min_lr_ratio", _share, "in [0, 1]"),
    ("optim.total_steps", lambda v: v is None or v >= 1, "null (train.max_steps) or >= 1"),
    ("optim.clip_grad_norm", _at_least(0), ">= 0 (0 disables)"),
    ("deepspeed.zero_stage", _one_of(0, 1, 2, 3), "0, 1, 2 or 3"),
    ("deepspeed.dist_timeout_s", _positive, "> 0"),
    ("train.seed", _at_least(0), ">= 0"),
    ("train.micro_batch_size", _positive, ">= 1"),
    ("train.grad_accum_steps", _positive, ">= 1"),
    ("train.max_steps", _at_least(0), ">= 0 (0: validate and save the initial weights only)"),
    ("train.log_every", _positive, ">= 1"),
    ("train.eval_every", _at_least(0), ">= 0 (0: at the start and the end only)"),
    ("train.eval_batches", _positive, ">= 1"),
    ("train.save_every", _at_least(0), ">= 0 (0: at the end only)"),
    ("train.keep_checkpoints", _at_least(0), ">= 0 (0 keeps all)"),
    ("train.threads", _at_least(0), ">= 0 (0: cores / local processes)"),
    ("train.peak_tflops", lambda v: v is None or v > 0, "null (datasheet or measured) or > 0"),
    ("logging.loss_spike_factor", lambda v: v == 0 or v > 1, "0 (off) or > 1"),
    ("logging.spike_window", _positive, ">= 1"),
    ("add_language.extend_vocab", lambda v: v is None or v >= 1,
     "null (the source's vocabulary) or >= 1 pieces"),
    ("add_language.init_vocab", _one_of("mean", "random"), "mean or random"),
    ("add_language.vocab_penalty", _at_least(0), ">= 0 (0: none)"),
    ("transfer.epochs", _positive, "> 0"),
    ("transfer.warmup_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("transfer.steps", lambda v: v is None or v >= 1, "null (from transfer.epochs) or >= 1"),
    ("transfer.classifier_dropout", lambda v: v is None or 0 <= v < 1, "null or in [0, 1)"),
)


# Where a refusal of a key or a group option sends the user.
LISTS_KEYS = "xmod_pretrain train --help lists every config group, key and value"


def schema_keys() -> list[str]:
    """Every key of the schema, dotted: ``train``, ``train.max_steps``, ..."""
    from omegaconf import DictConfig, OmegaConf

    def walk(node: DictConfig, prefix: str) -> list[str]:
        keys = []
        for key in node:
            keys.append(f"{prefix}{key}")
            if isinstance(node[key], DictConfig):
                keys += walk(node[key], f"{prefix}{key}.")
        return keys

    return walk(OmegaConf.structured(Config), "")


def closest_keys(key: str) -> list[str]:
    """Keys of the schema a mistyped ``key`` may mean: the same name in another group
    (``train.lr``: ``optim.lr``), else the most alike (``train.max_step``: ``train.max_steps``)."""
    keys = schema_keys()
    name = key.rsplit(".", 1)[-1]
    return [k for k in keys if k.rsplit(".", 1)[-1] == name and k != key] or closest(key, keys)


def unknown_keys_error(keys: list[str]) -> ConfigError:
    named = ", ".join(f"{key}{did_you_mean(closest_keys(key))}" for key in keys)
    return ConfigError(f"unknown config key(s) {named}: no such setting ({LISTS_KEYS})")


def node_error(err: Any) -> ConfigError:
    """OmegaConf's refusal of a value (a wrong type, a choice outside an enum, an interpolation
    that does not resolve) as one line naming the key: its own message runs over several lines."""
    from omegaconf.nodes import EnumNode

    if isinstance(err.child_node, EnumNode):
        choices = [choice.name for choice in err.child_node.enum_type]
        return ConfigError(f"{err.full_key}={err.value} is not allowed: one of "
                           f"{', '.join(choices)}{did_you_mean(closest(str(err.value), choices))}")
    value = "" if err.value is None else f"={err.value}"
    return ConfigError(f"{err.full_key or 'the config'}{value}: {str(err).splitlines()[0]}")


def check_known_keys(composed: Any) -> None:
    """Refuse keys the schema does not have. Hydra refuses ``train.max_step=3`` itself, but
    ``+train.max_step=3`` adds the key to a typed node, where it would be ignored."""
    from omegaconf import DictConfig, OmegaConf

    def unknown(node: DictConfig, schema: DictConfig, prefix: str) -> list[str]:
        found = []
        for key in node:
            if key not in schema:
                found.append(f"{prefix}{key}")
            elif isinstance(schema[key], DictConfig) and isinstance(node[key], DictConfig):
                found += unknown(node[key], schema[key], f"{prefix}{key}.")
        return found

    extra = unknown(composed, OmegaConf.structured(Config), "")
    if extra:
        raise unknown_keys_error(extra)


def to_config(composed: Any) -> Config:
    """A composed Hydra config as the typed Config, every key known and every value checked."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_known_keys(composed)
    try:
        config = OmegaConf.to_object(composed)
    except OmegaConfBaseException as err:  # run_dir=runs/${nme}: an interpolation of no key
        raise node_error(err) from None
    check_config(config)
    return config


def check_config(cfg: Config) -> None:
    """Raise ConfigError for the first value out of range, then for combinations that cannot
    work together. Cheap: it runs before any data, model or process-group work."""
    for key, ok, allowed in RULES:
        value = attrgetter(key)(cfg)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")
    _check_combinations(cfg)


def check_model_shape(model: ModelConfig, key: str = "model.") -> None:
    """The sizes a model can be built with (the config's check, and the model's before it is
    built from a config made in code): a ConfigError naming the keys (``key`` their prefix)."""
    for divisor in ("num_attention_heads", "adapter_reduction_factor"):
        value = getattr(model, divisor)
        if value < 1 or model.hidden_size % value:
            raise ConfigError(f"{key}hidden_size={model.hidden_size} is not a multiple of "
                              f"{key}{divisor}={value}")


def _check_combinations(cfg: Config) -> None:
    model, data, ds = cfg.model, cfg.data, cfg.deepspeed
    if cfg.recipe == RunKind.pretrain and cfg.add_language.languages:
        raise ConfigError(f"recipe={cfg.recipe.value} with add_language.languages="
                          f"{cfg.add_language.languages}: adding languages is recipe=add_language "
                          "with the languages named (xmod_pretrain add-language --lang xx_YY)")
    if cfg.add_language.extend_vocab is not None and len(cfg.add_language.languages) > 1:
        raise ConfigError(f"add_language.extend_vocab with {len(cfg.add_language.languages)} "
                          "languages: the vocabulary grows for one new language at a time")
    masking = data.masking
    if masking.mask_frac + masking.random_frac > 1:
        raise ConfigError(f"data.masking.mask_frac + data.masking.random_frac = "
                          f"{masking.mask_frac + masking.random_frac} is not allowed: <= 1")
    check_model_shape(model)
    total = cfg.optim.total_steps
    if total is not None and total < cfg.train.max_steps:
        raise ConfigError(f"optim.total_steps={total} is below train.max_steps="
                          f"{cfg.train.max_steps}: the steps after {total} would train at learning "
                          "rate 0; raise it, or set it to null (the schedule spans train.max_steps)")
    # Real tokens take positions pad+1 .. pad+seq_len (RoBERTa's layout; model.position_ids).
    longest = model.max_position_embeddings - model.pad_token_id - 1
    if data.seq_len > longest:
        raise ConfigError(f"data.seq_len={data.seq_len} is not allowed: model.max_position_embeddings="
                          f"{model.max_position_embeddings} gives at most {longest} positions")
    if cfg.train.compile and ds.zero_stage == 3:
        raise ConfigError("train.compile=true with deepspeed.zero_stage=3 is not supported: "
                          "ZeRO-3 gathers each parameter in module hooks that a compiled layer "
                          "would bypass; use ZeRO 0-2 to compile, or train.compile=false")
    if ds.offload_param and ds.zero_stage != 3:
        raise ConfigError("deepspeed.offload_param=true needs deepspeed.zero_stage=3 "
                          f"(it is {ds.zero_stage})")
    if ds.offload_optimizer and ds.zero_stage == 0:
        raise ConfigError("deepspeed.offload_optimizer=true needs deepspeed.zero_stage >= 1")
