"""The DeepSpeed engine, configured from the typed config (the only source of its settings)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xmod_pretrain.config import Config
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.optim import LanguageAdamW, build_optimizer, build_scheduler


def deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """DeepSpeed's JSON config. Batch sizes and clipping come from train/optim, so they cannot
    disagree: global batch = micro x accumulation x world."""
    ds = cfg.deepspeed  # values checked at start (config.check_config)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum_steps,
        "train_batch_size": cfg.train.micro_batch_size * cfg.train.grad_accum_steps * world_size,
        "gradient_clipping": cfg.optim.clip_grad_norm,
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


def build_engine(model: nn.Module, cfg: Config, info: DistInfo) -> tuple[Any, LanguageAdamW]:
    """``deepspeed.initialize`` with our AdamW groups and linear schedule. Returns the engine and
    our optimizer inside it (the trainer tells it which languages each step holds)."""
    import deepspeed

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.optim.total_steps or cfg.train.max_steps)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, info.world_size),
    )
    if reduces_gradients_itself(cfg):
        engine.enable_backward_allreduce = False
    return engine, optimizer


def reduces_gradients_itself(cfg: Config) -> bool:
    """Whether the trainer, not DeepSpeed, averages the gradients over ranks: ZeRO-0 in fp32.

    NOTE: DeepSpeed's ZeRO-0 reduction first gives every parameter without a gradient a zero one
    (so ranks reduce equal buffers), then flattens, reduces and copies them all back, even on one
    rank: a cost that grows with the number of languages registered, not present. Our ranks
    already agree on which gradients exist (see anchor.py). ZeRO 1-3 reduce inside their
    optimizer, and bf16 ZeRO-0 reduces DeepSpeed's own fp32 accumulation buffers.
    """
    return cfg.deepspeed.zero_stage == 0 and cfg.train.precision == "fp32"


def all_reduce_gradients(engine) -> None:
    """Average over ranks the gradients that exist: the shared weights' and the step's
    languages' modules' (the same set, in the same order, on every rank)."""
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    engine.buffered_allreduce_fallback(grads=grads)


def reports_gradient_norm(engine) -> bool:
    """Whether DeepSpeed measures the global gradient norm (before clipping) at each step: its
    ZeRO and bf16 optimizers do; its plain fp32 path clips without keeping the norm."""
    return engine.zero_optimization() or engine.bfloat16_enabled()


def gradient_norm(engine) -> torch.Tensor:
    """The global 2-norm of the gradients the ranks hold whole (ZeRO-0 fp32, after the
    reduction), as a tensor: reading it waits on the device, so the caller does that on log
    steps only."""
    norms = [torch.linalg.vector_norm(p.grad.float()) for p in engine.module.parameters()
             if p.grad is not None]
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
