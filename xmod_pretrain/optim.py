"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn

from xmod_pretrain.config import OptimConfig


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and LayerNorm weights (all 1-D tensors) get no weight decay, as in RoBERTa."""
    return param.ndim < 2


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Two AdamW groups over the trainable parameters: with and without weight decay."""
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    # foreach: one fused kernel launch per group instead of one per tensor.
    return torch.optim.AdamW(
        parameter_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, foreach=True
    )


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Linear warmup from 0 to 1 over warmup_steps, then linear decay to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    remaining = max(max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / remaining, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
