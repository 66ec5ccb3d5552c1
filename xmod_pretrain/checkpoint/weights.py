"""A checkpoint's weights: consolidated on rank 0 (gathered under ZeRO-3), and the data-parallel
replicas checked to agree before a save."""

from __future__ import annotations

import hashlib

import torch

from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.vocabulary.split_model import merge_added_rows


def consolidated_weights(engine, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """Every weight of the model, whole, in fp32 on the CPU, on rank 0 (None elsewhere); each
    tied tensor once, a grown vocabulary's rows merged (``merge_added_rows`` of
    vocabulary/split_model.py).

    Without ZeRO-3 rank 0 holds every weight and copies them alone. Under ZeRO-3 each rank holds
    a slice: the ranks gather one parameter at a time (a collective, so every rank calls this)
    and only rank 0 keeps it, so the other ranks never hold more than one whole parameter.
    """
    import deepspeed

    module = engine.module
    if not engine.zero_optimization_partition_weights():
        if not info.is_main:
            return None
        return merge_added_rows({name: p.detach().to("cpu", torch.float32, copy=True)
                                 for name, p in module.named_parameters()})
    weights = {}
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            if info.is_main:
                weights[name] = p.detach().to("cpu", torch.float32, copy=True)
    return merge_added_rows(weights) if info.is_main else None


def check_replicas_agree(named: list[tuple[str, torch.Tensor]], info: DistInfo,
                         what: str = "weights") -> None:
    """Refuse to save if data-parallel ranks hold different weights (a silent divergence).

    The parameters are cut into ``world_size`` parts of about equal size; rank r hashes parts r
    and r + 1 (mod world size), so every part is hashed on two ranks and each rank reads 2 /
    world_size of the model, a parameter at a time. Digests are gathered and compared part by
    part. All ranks call it, with the same ``named`` (under ZeRO-3, whose ranks hold different
    slices by design, the language modules alone).
    """
    if info.world_size == 1:
        return
    import torch.distributed as dist

    parts = _parts(named, info.world_size)
    mine = {k: _digest(parts[k]) for k in {info.rank, (info.rank + 1) % info.world_size}}
    gathered: list[dict[int, str]] = [{}] * info.world_size
    dist.all_gather_object(gathered, mine)
    for part in range(info.world_size):
        digests = {rank: d[part] for rank, d in enumerate(gathered) if part in d}
        if len(set(digests.values())) != 1:
            names = f"{parts[part][0][0]} .. {parts[part][-1][0]}" if parts[part] else "?"
            raise RuntimeError(f"ranks hold different weights in {names} (sha256 by rank: "
                               f"{digests}); not saving")
    if info.is_main:
        print(f"{what} identical on all {info.world_size} ranks (each part hashed on two)",
              flush=True)


Slice = tuple[str, torch.Tensor, int, int]  # (name, parameter, first element, end element)


def _parts(named: list[tuple[str, torch.Tensor]], count: int) -> list[list[Slice]]:
    """The parameters, flattened and laid end to end in order, cut into ``count`` runs of equal
    element count (a large embedding is split across parts)."""
    total = sum(p.numel() for _, p in named)
    bounds = [total * k // count for k in range(count + 1)]
    parts: list[list[Slice]] = [[] for _ in range(count)]
    start = 0
    for name, p in named:
        end = start + p.numel()
        for k in range(count):
            lo, hi = max(start, bounds[k]), min(end, bounds[k + 1])
            if lo < hi:
                parts[k].append((name, p, lo - start, hi - start))
        start = end
    return parts


def _digest(part: list[Slice]) -> str:
    digest = hashlib.sha256()
    for _, p, lo, hi in part:  # one slice on the host at a time
        flat = p.detach().reshape(-1)[lo:hi]
        digest.update(flat.cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
