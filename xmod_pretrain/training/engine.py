"""The DeepSpeed engine over the shared weights, configured from the typed config (the only
source of its settings). The language modules are not in it: training/language_store.py."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xmod_pretrain.config import Config
from xmod_pretrain.model.xmod import LanguageModel
from xmod_pretrain.training.clipping import GlobalClip
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.language_store import LanguageStore
from xmod_pretrain.training.optim import LanguageAdamW, build_optimizer, build_scheduler


def deepspeed_config(cfg: Config, world_size: int, trains_shared: bool = True) -> dict[str, Any]:
    """DeepSpeed's JSON config. Batch sizes come from train, so they cannot disagree: global
    batch = micro x accumulation x world. Clipping is ours (clipping.py): the norm that clips
    covers the language modules too, which DeepSpeed does not hold.

    With every shared weight frozen (add-language) DeepSpeed gets no optimizer; ZeRO-1/2 need
    one and would partition nothing, so they run as ZeRO-0 (ZeRO-3 still shards the weights)."""
    ds = cfg.deepspeed  # values checked at start (config.check_config)
    stage = ds.zero_stage if trains_shared or ds.zero_stage == 3 else 0
    zero: dict[str, Any] = {"stage": stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum_steps,
        "train_batch_size": cfg.train.micro_batch_size * cfg.train.grad_accum_steps * world_size,
        "gradient_clipping": 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.train.precision == "bf16"},
        # Our AdamW (torch's, fused) is what we pass in; DeepSpeed has not vetted it for ZeRO.
        "zero_allow_untested_optimizer": True,
        # Offload keeps the optimizer state in host memory; our AdamW steps it there.
        # DeepSpeedCPUAdam would need a C++ build at start; allow the client optimizer instead.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # we log ourselves; 0 would divide by zero in DeepSpeed
        "wall_clock_breakdown": False,
    }


@dataclass
class TrainingEngine:
    """What a training step runs through: DeepSpeed's engine over the shared weights, the
    language store over the modules, and the one clipping both apply."""

    deepspeed: Any                   # deepspeed.DeepSpeedEngine
    optimizer: LanguageAdamW | None  # inside it; None when no shared weight trains
    store: LanguageStore
    clip: GlobalClip

    @property
    def device(self) -> torch.device:
        return self.deepspeed.device

    @property
    def trains_shared(self) -> bool:
        """Whether DeepSpeed steps anything (add-language freezes every shared weight)."""
        return self.optimizer is not None

    def __call__(self, **inputs):
        """The model's forward, through the modules of language index ``inputs["lang"]``.
        Without an optimizer DeepSpeed's own forward refuses the backward that follows; the
        module it wraps still gathers ZeRO-3's shards."""
        self.store.ensure(self.deepspeed.module.language_code(inputs["lang"]))
        return (self.deepspeed if self.optimizer is not None else self.deepspeed.module)(**inputs)

    def begin_step(self, present: Collection[str], upcoming: Collection[str]) -> None:
        """Before a step's first micro-batch (``upcoming``: the next step's languages)."""
        self.store.begin_step(present, upcoming)

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of a micro-batch's loss, scaled for the accumulation as DeepSpeed does."""
        if self.optimizer is not None:
            self.deepspeed.backward(loss)
        else:
            (loss / self.deepspeed.gradient_accumulation_steps()).backward()

    def micro_step(self, present: Collection[str], last: bool) -> None:
        """After a micro-batch's backward; on the step's ``last`` one, the modules' gradients
        are reduced and measured before DeepSpeed steps (and clips by their norm too), and the
        ``present`` languages' modules step after it."""
        if last:
            self.store.reduce_gradients(present)
        if self.optimizer is not None:
            self.deepspeed.step()
        if last:
            self.store.step(present)

    def learning_rate(self) -> float:
        if self.optimizer is not None:
            return self.optimizer.param_groups[0]["lr"]
        return self.store.learning_rate()

    def trainable_count(self) -> int:
        shared = 0 if self.optimizer is None else optimizer_parameter_count(self.deepspeed)
        return shared + self.store.trainable_count()

    def parameter_count(self) -> int:
        return parameter_count(self.deepspeed.module) + self.store.count()


def build_training_engine(model: LanguageModel, cfg: Config, info: DistInfo) -> TrainingEngine:
    """The model's language modules detached into a store, DeepSpeed's engine over the rest."""
    modules = model.detach_language_modules()
    clip = GlobalClip(cfg.optim.clip_grad_norm)
    engine, optimizer = build_engine(model, cfg, info, clip)
    store = LanguageStore(modules, cfg.optim, schedule_steps(cfg), info, engine.device, clip)
    return TrainingEngine(engine, optimizer, store, clip)


def build_engine(model: nn.Module, cfg: Config, info: DistInfo,
                 clip: GlobalClip) -> tuple[Any, LanguageAdamW | None]:
    """``deepspeed.initialize`` over ``model``'s parameters (its language modules detached)
    with our AdamW groups and linear schedule. Returns the engine and our optimizer inside it
    (None when no shared weight trains). ``clip`` learns how to read the shared weights' norm."""
    import deepspeed

    optimizer = build_optimizer(model.named_parameters(), cfg.optim, clip)
    scheduler = None if optimizer is None else build_scheduler(optimizer, cfg.optim,
                                                               schedule_steps(cfg))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, info.world_size, trains_shared=optimizer is not None),
    )
    clip.device = engine.device
    if optimizer is not None:
        clip.shared_norm = (lambda: gradient_norm(engine)) if measures_own_norm(engine) \
            else (lambda: engine.optimizer._global_grad_norm)
    return engine, optimizer


def schedule_steps(cfg: Config) -> int:
    """The steps the learning rate schedule spans (both optimizers follow it)."""
    return cfg.optim.total_steps or cfg.train.max_steps


def measures_own_norm(engine) -> bool:
    """Whether the shared weights' gradient norm is ours to measure: DeepSpeed's ZeRO and bf16
    optimizers measure it over their partitions (reduced over ranks) before they call ours,
    and keep it in ``_global_grad_norm``; its plain fp32 path hands our optimizer the whole,
    already averaged gradients and measures nothing."""
    return not (engine.zero_optimization() or engine.bfloat16_enabled())


def gradient_norm(engine) -> torch.Tensor:
    """The 2-norm of the shared weights' gradients, which every rank holds whole (ZeRO-0 fp32,
    after DeepSpeed's reduction)."""
    norms = [torch.linalg.vector_norm(p.grad.float()) for p in engine.module.parameters()
             if p.grad is not None]
    if not norms:
        return torch.zeros((), device=engine.device)
    return torch.linalg.vector_norm(torch.stack(norms))


def optimizer_parameter_count(engine) -> int:
    """Elements this rank's optimizer was built over (without ZeRO's padding).

    Under ZeRO 1/2 DeepSpeed keeps the original parameters in ``bit16_groups``, under ZeRO-3 in
    ``fp16_groups``; without ZeRO the optimizer is ours. Frozen parameters appear in none.
    """
    optimizer = engine.optimizer
    for attr in ("bit16_groups", "fp16_groups"):
        groups = getattr(optimizer, attr, None)
        if groups is not None:
            return sum(_numel(p) for group in groups for p in group)
    inner = getattr(optimizer, "optimizer", optimizer)
    return sum(_numel(p) for group in inner.param_groups for p in group["params"])


def parameter_count(module: torch.nn.Module) -> int:
    """Elements of every parameter of ``module``, partitioned by ZeRO-3 or not."""
    return sum(_numel(p) for p in module.parameters())


def _numel(param) -> int:
    # ZeRO-3 replaces a partitioned parameter's data with an empty tensor; ds_numel keeps its size.
    return getattr(param, "ds_numel", param.numel())
