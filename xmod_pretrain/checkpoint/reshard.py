"""Resume on another number of ranks or another ZeRO stage.

A step's batches are a function of (seed, step, position in the global batch), so with the same
global batch a run continues exactly on any world size. What ties a checkpoint to the ranks that
wrote it is DeepSpeed's optimizer state for the shared weights: whole under ZeRO-0 (a torch
optimizer's state), cut into equal slices of each group's flat fp32 copy and Adam moments under
ZeRO-1/2, every parameter cut apart under ZeRO-3. A start on another layout rebuilds each shared
parameter's fp32 weight and moments whole from the checkpoint's files (``full_state``), then hands
them to the engine of this start (``load_full_state``): into its parameters, and through
DeepSpeed's ``safe_set_full_*`` into its fp32 copies and optimizer state. The language modules
are not concerned: each language's file holds its state whole.

DeepSpeed's universal checkpoint does this too, but it has no ZeRO-0 side, its converter writes
every parameter's state to disk once more, and it unpickles with ``weights_only=False``. The files
here are read weights-only, in the layouts DeepSpeed's ``zero_to_fp32`` documents, and every value
is copied, not recomputed: the continuation differs from the uninterrupted run only by the order
of its reductions over the new ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from xmod_pretrain.checkpoint.loading import deepspeed_safe_globals
from xmod_pretrain.training.module_pages import MOMENTS


@dataclass(frozen=True)
class Layout:
    """How a run's ranks hold the shared weights' state."""

    world_size: int
    zero_stage: int

    def __str__(self) -> str:
        ranks = f"{self.world_size} rank{'s' if self.world_size > 1 else ''}"
        return f"{ranks} under ZeRO-{self.zero_stage}"


@dataclass
class FullState:
    """Every trained shared parameter's state, whole: by name, its fp32 weight and moments."""

    tensors: dict[str, dict[str, torch.Tensor]]
    step: int                      # Adam steps taken (the same for every shared parameter)
    scheduler: dict                # DeepSpeed's LR scheduler state (world-size free)
    global_samples: int


def _load(path: Path) -> dict:
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def model_states_file(checkpoint: Path) -> Path:
    """DeepSpeed's model states: one file (ZeRO-0-2), or one a rank (ZeRO-3: rank 0's)."""
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (checkpoint / name).is_file():
            return checkpoint / name
    raise FileNotFoundError(f"{checkpoint} holds no DeepSpeed model states")


def saved_layout(checkpoint: Path) -> Layout:
    """The ranks and ZeRO stage that wrote ``checkpoint`` (read from DeepSpeed's own record)."""
    states = _load(model_states_file(checkpoint))
    return Layout(int(states["dp_world_size"]),
                  int(states["ds_config"].get("zero_optimization", {}).get("stage", 0)))


def optim_files(checkpoint: Path, world_size: int) -> list[Path]:
    files = [checkpoint / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
             for rank in range(world_size)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{checkpoint} lacks {', '.join(missing)}")
    return files


def full_state(checkpoint: Path, layout: Layout,
               names_by_group: list[list[str]]) -> FullState:
    """The checkpoint's shared optimizer state whole per parameter. ``names_by_group``: the
    names of the shared optimizer's groups, in order (a ZeRO-0 checkpoint's state is indexed by
    position in them; ZeRO-1-3 files name their parameters themselves)."""
    states = _load(model_states_file(checkpoint))
    if layout.zero_stage == 0:
        tensors, step = _from_torch_optimizer(states["optimizer"], names_by_group)
        for name, saved in tensors.items():  # the engine stepped the model's own fp32 weights
            saved["weight"] = states["module"][name].float()
    else:
        files = optim_files(checkpoint, layout.world_size)
        shards = [_load(f)["optimizer_state_dict"] for f in files]
        merge = _from_zero12 if layout.zero_stage <= 2 else _from_zero3
        tensors, step = merge(shards, states["param_shapes"])
    return FullState(tensors, step, states["lr_scheduler"], int(states["global_samples"]))


def _from_torch_optimizer(optimizer: dict, names_by_group: list[list[str]]
                          ) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    names = [name for group in names_by_group for name in group]
    tensors, steps = {}, set()
    for index, state in optimizer["state"].items():
        tensors[names[index]] = {key: state[key] for key in MOMENTS}
        steps.add(int(state["step"]))
    return tensors, _one_step(steps)


def _from_zero12(shards: list[dict], param_shapes: list[dict]
                 ) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """Each group's flat vector is the ranks' slices end to end; its parameters follow one
    another in it, each after its alignment padding."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    steps = set()
    for group, shapes in enumerate(param_shapes):
        inner = [shard["base_optimizer_state"]["state"][group] for shard in shards]
        flat = {"weight": torch.cat([s["single_partition_of_fp32_groups"][group] for s in shards])}
        flat |= {key: torch.cat([state[key] for state in inner]) for key in MOMENTS}
        steps |= {int(state["step"]) for state in inner}
        paddings = shards[0].get("param_alignment_paddings")
        offset = 0
        for index, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            # Views: the group's vectors are the parameters' memory, held once.
            tensors[name] = {key: vector[offset:offset + numel].view(shape)
                             for key, vector in flat.items()}
            offset += numel + (paddings[group][index] if paddings else 0)
    return tensors, _one_step(steps)


def _from_zero3(shards: list[dict], param_shapes: list[dict]
                ) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """Each rank's flat vector holds its slice of every parameter in turn, ceil(numel / ranks)
    elements each (the last rank's padded): a parameter is its ranks' slices end to end."""
    world = len(shards)
    flats, steps = [], set()
    for shard in shards:
        inner = shard["optimizer_state_dict"]["state"]
        groups = sorted(inner)
        flat = {"weight": torch.cat(shard["fp32_flat_groups"])}
        flat |= {key: torch.cat([inner[g][key] for g in groups]) for key in MOMENTS}
        steps |= {int(inner[g]["step"]) for g in groups}
        flats.append(flat)
    tensors = {}
    offset = 0
    for name, shape in ((n, s) for shapes in param_shapes for n, s in shapes.items()):
        numel = math.prod(shape)
        part = math.ceil(numel / world)
        tensors[name] = {key: torch.cat([f[key][offset:offset + part] for f in flats])[:numel]
                         .view(shape) for key in flats[0]}
        offset += part
    return tensors, _one_step(steps)


def _one_step(steps: set[int]) -> int:
    """Every shared parameter is stepped every step: one count for all (none: never stepped)."""
    if len(steps) > 1:
        raise ValueError(f"the shared weights' Adam step counts differ: {sorted(steps)}")
    return steps.pop() if steps else 0


@torch.no_grad()
def load_full_state(engine, named: list[tuple[str, torch.nn.Parameter]], state: FullState) -> None:
    """Give the engine of this start (any ranks, any stage) the checkpoint's shared state: the
    weights, the fp32 copies and moments ZeRO keeps, the step count and the LR schedule."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    stage = engine.zero_optimization_stage()
    missing = sorted({name for name, _ in named} - set(state.tensors))
    if missing:
        raise KeyError(f"no saved optimizer state for {', '.join(missing[:5])}")
    _set_weights(engine, named, state, stage)
    if stage == 0:  # the engine steps our torch optimizer itself
        for name, param in named:
            saved = state.tensors[name]
            engine.optimizer.state[param] = {
                "step": torch.tensor(float(state.step), device=param.device),
                **{key: saved[key].to(param.device, param.dtype) for key in MOMENTS}}
    else:
        _create_zero_optimizer_state(engine.optimizer, state.step)
        for name, param in named:
            saved = state.tensors[name]
            safe_set_full_fp32_param(param, saved["weight"].to(param.device))
            for key in MOMENTS:
                safe_set_full_optimizer_state(param, saved[key].to(param.device), key)
    engine.lr_scheduler.load_state_dict(state.scheduler)
    for group, lr in zip(engine.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
        group["lr"] = lr
    engine.global_steps, engine.global_samples = state.step, state.global_samples


def _create_zero_optimizer_state(optimizer, step: int) -> None:
    """Adam's state for each flat fp32 partition ZeRO steps (torch creates it at the first step,
    and a fresh engine has taken none), at ``step``, then linked to each parameter's fragment
    (ZeRO-1/2 link after their first step too), so that ``safe_set_full_*`` can fill it."""
    inner = optimizer.optimizer
    flats = getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3's
    if flats is None:
        flats = optimizer.single_partition_of_fp32_groups  # ZeRO-1/2's
    for flat in flats:
        state = inner.state[flat]
        state["step"] = torch.tensor(float(step), device=flat.device)
        for key in MOMENTS:
            state.setdefault(key, torch.zeros_like(flat))
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._lazy_init_hp_params_optimizer_state()


def _set_weights(engine, named: list[tuple[str, torch.nn.Parameter]], state: FullState,
                 stage: int) -> None:
    """The parameters the forward uses (ZeRO-3: gathered whole, set, partitioned again)."""
    if stage < 3:
        for name, param in named:
            param.copy_(state.tensors[name]["weight"].to(param.device, param.dtype))
        return
    import deepspeed

    params = [param for _, param in named]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        for name, param in named:
            param.copy_(state.tensors[name]["weight"].to(param.device, param.dtype))
