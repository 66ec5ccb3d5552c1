"""The optimizers (AdamW that can leave absent languages alone and clips by the step's global
norm), their groups and the LR schedule."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from xmod_pretrain.model.xmod import language_of_parameter
from xmod_pretrain.training.clipping import GlobalClip
from xmod_pretrain.training.config import OptimConfig


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and LayerNorm weights (all 1-D tensors) get no weight decay, as in RoBERTa."""
    return param.ndim < 2


def parameter_groups(named: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig) -> list[dict]:
    """AdamW groups over the trainable parameters of ``named``: with and without weight decay,
    for the shared weights (``language`` None) and for each language's modules apart
    (``language`` its code), so that the optimizer can skip a language."""
    return [{"params": [param for _, param in members], "language": language,
             "weight_decay": 0.0 if plain else cfg.weight_decay}
            for (language, plain), members in _buckets(named).items()]


def parameter_names_by_group(named: Iterable[tuple[str, nn.Parameter]]) -> list[list[str]]:
    """The names in each of ``parameter_groups``' groups, in order (how a torch optimizer's
    saved state, indexed by position, maps back to parameters)."""
    return [[name for name, _ in members] for members in _buckets(named).values()]


def _buckets(named: Iterable[tuple[str, nn.Parameter]]
             ) -> dict[tuple[str | None, bool], list[tuple[str, nn.Parameter]]]:
    buckets: dict[tuple[str | None, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, param in named:
        if param.requires_grad:
            key = (language_of_parameter(name), no_decay(name, param))
            buckets.setdefault(key, []).append((name, param))
    return buckets


class LanguageAdamW(torch.optim.AdamW):
    """AdamW whose step leaves the modules of absent languages untouched and scales the
    gradients it steps by the step's clipping coefficient (clipping.py).

    Two of them train a run: DeepSpeed's over the shared weights (each group with ``language``
    None) and the language store's over the modules. Before each optimizer step the trainer
    sets the store's ``present``: the languages of every micro-batch of the global step, on any
    rank (each rank computes the same set from the deterministic sampler, so no communication is
    needed). Groups of other languages are skipped: no weight decay, no momentum drift, and no
    cost. Their Adam step counts stay behind with them, so a language that returns resumes its
    own bias correction.

    ``update_absent=True`` is fairseq's behaviour instead: every module is stepped every step,
    with a zero gradient when its language was absent.
    """

    def __init__(self, groups: list[dict], *, update_absent: bool, clip: GlobalClip | None,
                 **defaults):
        super().__init__(groups, **defaults)
        self.update_absent = update_absent
        self.clip = clip
        self.present: frozenset[str] = frozenset()
        self._indexed: list[dict] = []
        self._groups_of: dict[str | None, list[dict]] = {}

    def groups_of(self, languages: Iterable[str | None]) -> list[dict]:
        """The groups of ``languages`` (None: the shared weights'), found without a pass over
        every group: a step's cost must not grow with the languages registered."""
        if self._indexed is not self.param_groups:  # built anew, e.g. by load_state_dict
            self._indexed, self._groups_of = self.param_groups, {}
            for group in self.param_groups:
                self._groups_of.setdefault(group.get("language"), []).append(group)
        return [group for lang in languages for group in self._groups_of.get(lang, [])]

    def stepped_groups(self) -> list[dict]:
        """The shared groups and the present languages' (every group with update_absent)."""
        if self.update_absent:
            return self.param_groups
        return self.groups_of([None, *sorted(self.present)])

    def add_param_group(self, param_group: dict) -> None:
        """torch's, less its check of the new group against every earlier one: that check is
        quadratic in the groups (a minute for 2,000 languages' 4,000 groups). The groups come
        from ``parameter_groups``, which puts each parameter in one bucket."""
        earlier, self.param_groups = self.param_groups, []
        try:
            super().add_param_group(param_group)
        finally:
            earlier.extend(self.param_groups)
            self.param_groups = earlier
            self._indexed = []  # groups_of indexes anew

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        if self.update_absent:
            _zero_missing_gradients(p for g in self.param_groups for p in g["params"])
        every_group = self.param_groups
        self.param_groups = self.stepped_groups()
        try:
            # DeepSpeed hands each of its groups (flat partitions under ZeRO) in a call of its own.
            if self.clip is not None:
                self.clip.apply(p.grad for g in self.param_groups for p in g["params"]
                                if p.grad is not None)
            return super().step(closure)
        finally:
            self.param_groups = every_group


def _zero_missing_gradients(params: Iterable[nn.Parameter]) -> None:
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)


def build_optimizer(named: Iterable[tuple[str, nn.Parameter]], cfg: OptimConfig,
                    clip: GlobalClip | None = None) -> LanguageAdamW | None:
    """AdamW over the trainable parameters of ``named``; None when none trains. Without
    ``clip`` it does not clip (an optimizer stepped alone, as the benchmarks' plain step)."""
    groups = parameter_groups(named, cfg)
    if not groups:
        return None
    # fused: one pass over each tensor for the whole update (CPU and CUDA); 15% off the small
    # benchmark config's step on CPU against foreach, whose every op is a pass of its own.
    return LanguageAdamW(groups, update_absent=cfg.update_absent_languages, clip=clip,
                         lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Linear warmup from 0 to 1 over the warmup steps, then linear decay to min_lr_ratio."""
    warmup = cfg.warmup(max_steps)
    if step < warmup:
        return (step + 1) / warmup
    remaining = max(max_steps - warmup, 1)
    progress = min((step - warmup) / remaining, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * (1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """DeepSpeed's scheduler of the shared weights' groups (the language store sets the
    learning rate of the groups it steps itself: LambdaLR visits every group each step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
