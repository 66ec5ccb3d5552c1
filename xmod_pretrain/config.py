"""Typed configuration: dataclass schemas registered with Hydra's ConfigStore.

Hydra composes ``conf/`` against these schemas, so a misspelt key or a value of the wrong type
fails at start with a message that names it. The YAML is converted once, with
``OmegaConf.to_object``, into these dataclasses; the rest of the code never sees a DictConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


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
    language_per: str = "rank"
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
    precision: str = "fp32"
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


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "xmod-pretrain"
    wandb_mode: str = "offline"
    """offline (no network needed; ``wandb sync`` later) or online."""


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


@dataclass
class Config:
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


def register_configs() -> None:
    """Register the schema; conf/config.yaml names ``schema`` first in its defaults list, so every
    group file merges into a typed node."""
    ConfigStore.instance().store(name="schema", node=Config)
