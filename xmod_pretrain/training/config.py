"""The training loop's schemas: the optimizer and its schedule, DeepSpeed, the loop, logging."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from xmod_pretrain.schema import ConfigError, Schema, at_least, one_of, optional, positive, share


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class ModuleState(str, Enum):
    device = "device"
    host = "host"


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class OptimConfig(Schema):
    lr: float = 6e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    """Not applied to biases, LayerNorm weights or embeddings' LayerNorm."""
    warmup_steps: Optional[int] = 100
    """Linear warmup from 0 to lr, then linear decay to min_lr_ratio * lr at the schedule's end.
    None: ``warmup_fraction`` of the schedule."""
    warmup_fraction: Optional[float] = None
    """The warmup as a share of the schedule's steps (transformers' ``warmup_ratio``), rounded to
    whole steps, when ``warmup_steps`` is None: a run of any length warms up alike."""
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
    module_state: ModuleState = ModuleState.device
    """Where the language modules' weights and AdamW moments live. device: all of them on the
    accelerator. host: in (pinned) host memory, with only the step's languages on the
    accelerator and the next step's copied there while the step runs; device memory for the
    modules is then a step's languages, whatever the number registered. Numbers are the same."""

    RULES = (
        ("lr", positive, "> 0"),
        ("betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two values in [0, 1)"),
        ("eps", positive, "> 0"),
        ("weight_decay", at_least(0), ">= 0"),
        ("warmup_steps", optional(at_least(0)), "null (from warmup_fraction) or >= 0"),
        ("warmup_fraction", optional(lambda v: 0 <= v < 1), "null or in [0, 1)"),
        ("min_lr_ratio", share, "in [0, 1]"),
        ("total_steps", optional(at_least(1)), "null (train.max_steps) or >= 1"),
        ("clip_grad_norm", at_least(0), ">= 0 (0 disables)"),
    )

    def check_together(self, prefix: str) -> None:
        if self.warmup_steps is None and self.warmup_fraction is None:
            raise ConfigError(f"{prefix}warmup_steps=null needs {prefix}warmup_fraction (the "
                              "warmup as a share of the schedule), or give the steps")
        if self.module_state == ModuleState.host and self.update_absent_languages:
            raise ConfigError(f"{prefix}module_state=host keeps only a step's languages on the "
                              f"device, and {prefix}update_absent_languages=true steps every "
                              f"language every step: set one of them back")

    def warmup(self, schedule_steps: int) -> int:
        """Warmup steps of a schedule ``schedule_steps`` long."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_fraction * schedule_steps)


@dataclass
class DeepSpeedConfig(Schema):
    zero_stage: int = 2
    offload_optimizer: bool = False
    """Keep optimizer state in host memory (ZeRO 1-3)."""
    offload_param: bool = False
    """Keep parameters in host memory (ZeRO-3 only)."""
    dist_timeout_s: int = 600
    """Collective timeout: a rank whose peer died exits after this long instead of hanging."""

    RULES = (
        ("zero_stage", one_of(0, 1, 2, 3), "0, 1, 2 or 3"),
        ("dist_timeout_s", positive, "> 0"),
    )

    def check_together(self, prefix: str) -> None:
        if self.offload_param and self.zero_stage != 3:
            raise ConfigError(f"{prefix}offload_param=true needs {prefix}zero_stage=3 "
                              f"(it is {self.zero_stage})")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ConfigError(f"{prefix}offload_optimizer=true needs {prefix}zero_stage >= 1")


@dataclass
class TrainConfig(Schema):
    seed: int = 1
    micro_batch_size: int = 8
    """Sequences per micro-batch; one micro-batch holds one language."""
    grad_accum_steps: int = 1
    global_batch_size: Optional[int] = None
    """Sequences an optimizer step averages over all ranks (ranks x micro_batch_size x
    grad_accum_steps). Given, it decides grad_accum_steps for the ranks of each start, so that a
    run resumed on fewer or more ranks (another Slurm node count) continues the same schedule of
    batches. None: grad_accum_steps as given."""
    allow_batch_change: bool = False
    """Resume a run with another global batch than its checkpoint's. False refuses it, since the
    run would then not be the one that was started; true warns once and goes on."""
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

    RULES = (
        ("seed", at_least(0), ">= 0"),
        ("micro_batch_size", positive, ">= 1"),
        ("grad_accum_steps", positive, ">= 1"),
        ("global_batch_size", optional(positive), "null (from grad_accum_steps) or >= 1"),
        ("max_steps", at_least(0), ">= 0 (0: validate and save the initial weights only)"),
        ("log_every", positive, ">= 1"),
        ("eval_every", at_least(0), ">= 0 (0: at the start and the end only)"),
        ("eval_batches", positive, ">= 1"),
        ("save_every", at_least(0), ">= 0 (0: at the end only)"),
        ("keep_checkpoints", at_least(0), ">= 0 (0 keeps all)"),
        ("threads", at_least(0), ">= 0 (0: cores / local processes)"),
        ("peak_tflops", optional(positive), "null (datasheet or measured) or > 0"),
    )


    def for_ranks(self, world_size: int) -> TrainConfig:
        """This config on ``world_size`` ranks: grad_accum_steps from global_batch_size when it
        is given (a ConfigError when the ranks' micro-batches do not divide it)."""
        if self.global_batch_size is None:
            return self
        per_step = world_size * self.micro_batch_size
        accum, rest = divmod(self.global_batch_size, per_step)
        if rest or not accum:
            raise ConfigError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"{world_size} rank(s) x train.micro_batch_size={self.micro_batch_size} = "
                f"{per_step}: change one of them")
        if self.grad_accum_steps not in (1, accum):
            raise ConfigError(
                f"train.grad_accum_steps={self.grad_accum_steps} and train.global_batch_size="
                f"{self.global_batch_size} disagree on {world_size} rank(s) (it gives {accum}): "
                "give one of them")
        return dataclasses.replace(self, grad_accum_steps=accum)


@dataclass
class LoggingConfig(Schema):
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

    RULES = (
        ("loss_spike_factor", lambda v: v == 0 or v > 1, "0 (off) or > 1"),
        ("spike_window", positive, ">= 1"),
    )
