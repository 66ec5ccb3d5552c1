"""The language modules of a run, owned by the trainer rather than by DeepSpeed.

DeepSpeed holds the shared weights (any ZeRO stage); the modules live here, whole on every rank,
with their own AdamW. A step touches only its present languages (the sampler tells every rank
which, with no communication): their gradients are averaged over ranks in one flat collective,
in the same order on every rank (sorted languages, then the model's parameter order, zeros where
this rank ran another language), their norm joins the shared weights' for clipping
(clipping.py), and only their groups are stepped. An absent language gets no gradient, no norm,
no byte of traffic and no optimizer work, so the step does not grow with the languages
registered; and since DeepSpeed never sees a module, ZeRO-3's collective gathers are the same on
ranks that run different languages.

A checkpoint holds each language's weights and AdamW state in a file of its own, written only
when the language trained since the last save (checkpoint/language_files.py): see
``changed_state`` and ``load_state``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from xmod_pretrain.checkpoint.language_files import STATE_SEPARATOR
from xmod_pretrain.model.xmod import language_of_parameter
from xmod_pretrain.training.clipping import GlobalClip, squared_norm
from xmod_pretrain.training.config import ModuleState, OptimConfig
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.module_pages import MOMENTS, ModulePages
from xmod_pretrain.training.optim import build_optimizer, lr_factor


class LanguageStore:
    """Every language's module parameters (by state-dict name) and their optimizer."""

    def __init__(self, named: dict[str, nn.Parameter], cfg: OptimConfig, schedule_steps: int,
                 info: DistInfo, device: torch.device, clip: GlobalClip):
        self.info, self.clip = info, clip
        paged = cfg.module_state == ModuleState.host
        if not paged:
            for param in named.values():
                param.data = param.data.to(device)
        self.named = named
        self.by_language: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, param in named.items():
            self.by_language.setdefault(language_of_parameter(name), []).append((name, param))
        self.optimizer = build_optimizer(named.items(), cfg, clip)
        # With host state, a language is on the device only while a step (or a validation)
        # runs it: see module_pages.py.
        self.pages = ModulePages(self.by_language, self.optimizer, device) if paged else None
        self.cfg, self.schedule_steps = cfg, schedule_steps
        self.steps_taken = 0  # what the learning rate schedule is a function of
        self.trainable = {lang: [p for _, p in params if p.requires_grad]
                          for lang, params in self.by_language.items()}
        # Languages whose state differs from the last checkpoint's: all of them until a save
        # or a resume, then the ones stepped since.
        self.changed: set[str] = set(self.by_language)

    def trainable_count(self) -> int:
        return sum(p.numel() for params in self.trainable.values() for p in params)

    def count(self) -> int:
        return sum(p.numel() for p in self.named.values())

    def module_bytes(self) -> dict[str, int]:
        """Bytes of module weights and AdamW moments on the device and in host buffers."""
        if self.pages is not None:
            return {"device": self.pages.device_bytes(), "host": self.pages.host_bytes()}
        state = {} if self.optimizer is None else self.optimizer.state
        tensors = [t for p in self.named.values()
                   for t in (p.data, *(state.get(p, {}).get(key) for key in MOMENTS))]
        return {"device": sum(t.numel() * t.element_size() for t in tensors if t is not None),
                "host": 0}

    # ---- a step ------------------------------------------------------------------------------

    def begin_step(self, present: Iterable[str], upcoming: Iterable[str]) -> None:
        """Before a step's first forward: with paged state, its languages on the device and the
        next step's (``upcoming``) sent ahead."""
        if self.pages is not None:
            self.pages.begin_step(present, upcoming)

    def ensure(self, language: str) -> None:
        """Before any forward through ``language``'s modules (validation, evaluation)."""
        if self.pages is not None:
            self.pages.ensure(language)

    def step_parameters(self, present: Iterable[str]) -> list[nn.Parameter]:
        """The trainable parameters of ``present``, in the order every rank uses."""
        return [p for lang in sorted(present) for p in self.trainable.get(lang, [])]

    @torch.no_grad()
    def reduce_gradients(self, present: Iterable[str]) -> None:
        """Average the present modules' gradients over ranks, as DeepSpeed averages the shared
        ones, and give this step's clipping their squared norm. All ranks call it."""
        params = self.step_parameters(present)
        for param in params:  # a language another rank ran
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        grads = [p.grad for p in params]
        if grads and self.info.world_size > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(self.info.world_size)
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()
        self.clip.begin_step(squared_norm(grads))

    def step(self, present: Iterable[str]) -> None:
        """Step the present languages (every language with ``update_absent_languages``) and
        the learning rate, then drop the gradients."""
        if self.optimizer is None:
            return
        self.optimizer.present = frozenset(present)
        stepped = list(self.trainable) if self.optimizer.update_absent else list(present)
        self.changed |= {lang for lang in stepped if self.trainable.get(lang)}
        # The stepped groups' learning rate only (a scheduler would set every group's).
        learning_rate = self.learning_rate()
        for group in self.optimizer.stepped_groups():
            group["lr"] = learning_rate
        self.optimizer.step()
        self.steps_taken += 1
        # Only the stepped languages hold gradients: the optimizer's own zero_grad would visit
        # every registered language's parameters.
        for param in self.step_parameters(stepped):
            param.grad = None

    # ---- checkpoints -------------------------------------------------------------------------

    def changed_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the languages changed since the last save, in sorted order."""
        return [item for lang in sorted(self.changed) for item in self.by_language[lang]]

    def changed_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Host copies of the languages changed since the last save: per language its weights
        and, once stepped, their AdamW moments and step count (``<name>::exp_avg``,
        ``<name>::exp_avg_sq``, ``<name>::step``). Only the rank that writes the files calls
        it; every rank then calls ``mark_saved``."""
        optimizer_state = {} if self.optimizer is None else self.optimizer.state
        saved: dict[str, dict[str, torch.Tensor]] = {}
        for lang in sorted(self.changed):
            tensors = saved.setdefault(lang, {})
            for name, param in self.by_language[lang]:
                tensors[name] = param.detach().to("cpu", torch.float32, copy=True)
                for key, value in optimizer_state.get(param, {}).items():
                    tensors[f"{name}{STATE_SEPARATOR}{key}"] = value.detach().to(
                        "cpu", copy=True).reshape(value.shape if key in MOMENTS else (1,))
        return saved

    def mark_saved(self) -> None:
        """A save holds every language's current state: none counts as changed. Every rank
        calls it at each save, so that all keep the same ``changed`` (the save's replica check
        compares the changed languages alone)."""
        self.changed = set()

    def saved_already(self, languages: Iterable[str]) -> None:
        """``languages`` are as a file holds them already (another run's: the checkpointer
        links it), so a save writes none of them until they change."""
        self.changed -= set(languages)

    @torch.no_grad()
    def load_state(self, saved: dict[str, dict[str, torch.Tensor]]) -> None:
        """Every language's weights and AdamW state as a checkpoint's files hold them; the
        store then equals that checkpoint (nothing changed since)."""
        missing = sorted(set(self.by_language) - set(saved))
        if missing:
            raise KeyError(f"the checkpoint has no state for {', '.join(missing)}")
        for lang, params in self.by_language.items():
            tensors = saved[lang]
            for name, param in params:
                param.copy_(tensors[name])
                moments = f"{name}{STATE_SEPARATOR}exp_avg"
                if self.optimizer is not None and param.requires_grad and moments in tensors:
                    self.optimizer.state[param] = {
                        key: tensors[f"{name}{STATE_SEPARATOR}{key}"].to(param.device).reshape(
                            param.shape if key in MOMENTS else ())
                        for key in (*MOMENTS, "step")}
        self.changed = set()

    def learning_rate(self) -> float:
        """The learning rate of the next step (as DeepSpeed's scheduler gives the shared one)."""
        return self.cfg.lr * lr_factor(self.steps_taken, self.cfg, self.schedule_steps)

    def resume_schedule(self, step: int) -> None:
        """Go on with the learning rate of optimizer step ``step`` (a function of the step)."""
        self.steps_taken = step
