"""Checkpoints: atomic save, ``latest`` pointer, retention, resume without unpickling code.

Layout::

    run_dir/checkpoints/step_00000200/   DeepSpeed engine state (model, optimizer, LR schedule)
                        ├ model.safetensors    all weights, consolidated (ZeRO-3 too), fp32
                        ├ trainer_state.json   step, tokens seen, sampler position
                        ├ config.yaml          the resolved run config
                        ├ languages.json       module index order
                        └ sentencepiece.bpe.model
    run_dir/checkpoints/latest           the name of the newest complete checkpoint

A checkpoint is written under a temporary name, fsynced, renamed into place, and only then does
``latest`` move (itself written to a temporary file and renamed). A crash at any point leaves
``latest`` on a complete checkpoint, and an older checkpoint is never touched by a newer save.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from xmod_pretrain.atomic import fsync_dir, fsync_tree, write_text
from xmod_pretrain.distributed import DistInfo, barrier

LATEST = "latest"
TRAINER_STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"
TMP_PREFIX = ".tmp-"  # DeepSpeed writes a checkpoint under this name before it is renamed


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names, or None when the run has none."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Every weight of the model, whole, on the CPU in fp32; each tied tensor once.

    Under ZeRO-3 each rank holds a slice of every parameter: all ranks gather them together
    (a collective, so every rank must call this), and the result is meant for rank 0.
    """
    import deepspeed

    module = engine.module
    params = list(module.parameters())
    gather = engine.zero_optimization_partition_weights()
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
        return {name: p.detach().to("cpu", torch.float32).clone()
                for name, p in module.named_parameters()}


def check_replicas_agree(weights: dict[str, torch.Tensor], info: DistInfo) -> None:
    """Refuse to save if data-parallel ranks hold different weights (a silent divergence).

    Each rank hashes its full weights; the hashes are gathered and compared. All ranks call it.
    """
    if info.world_size == 1:
        return
    import torch.distributed as dist

    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(weights[name].numpy().tobytes())
    hashes: list[str] = [""] * info.world_size
    dist.all_gather_object(hashes, digest.hexdigest())
    if len(set(hashes)) != 1:
        raise RuntimeError(f"ranks hold different weights (sha256 per rank: {hashes}); not saving")
    if info.is_main:
        print(f"weights identical on all {info.world_size} ranks (sha256 {hashes[0][:12]})",
              flush=True)


def _safe_globals() -> list:
    """The non-tensor types DeepSpeed puts in its checkpoint files, allowed for unpickling."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [OrderedDict, LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def use_weights_only_loading(engine) -> None:
    """Make DeepSpeed load its checkpoint files with ``torch.load(weights_only=True)``.

    NOTE: DeepSpeed's own engine calls ``torch.load(weights_only=False)``, which would run any code
    pickled into a checkpoint file. Ours only rebuilds tensors, containers and the few plain
    DeepSpeed types listed in ``_safe_globals``.
    """
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    safe = WeightsOnlyCheckpointEngine()
    safe.zipfile_serialization = engine.checkpoint_engine.zipfile_serialization
    engine.checkpoint_engine = safe
    if hasattr(engine.optimizer, "checkpoint_engine"):
        engine.optimizer.checkpoint_engine = safe


class Checkpointer:
    """Saves and restores a run's engine state plus the sidecars that make it self-describing."""

    def __init__(self, run_dir: str | Path, info: DistInfo, keep: int, sidecars: dict[str, Any]):
        """``sidecars`` maps a file name to its text (str) or to a file to copy (Path)."""
        self.root = Path(run_dir) / "checkpoints"
        self.info = info
        self.keep = keep
        self.sidecars = sidecars

    def save(self, engine, step: int, trainer_state: dict[str, Any]) -> Path:
        """Engine state + consolidated weights + sidecars, published atomically. All ranks call."""
        tmp = self._fresh_tmp(step)
        barrier()
        engine.save_checkpoint(str(self.root), tag=tmp.name, save_latest=False)
        weights = full_state_dict(engine)
        check_replicas_agree(weights, self.info)
        barrier()
        if self.info.is_main:
            self._publish(tmp, step, weights, trainer_state)
        barrier()
        return self.root / step_tag(step)

    def save_weights(self, weights: dict[str, torch.Tensor], step: int,
                     trainer_state: dict[str, Any]) -> Path:
        """A weights-only checkpoint (no optimizer state), from one process: what tools that
        rewrite a model without training it (pruning, importing a module) produce. Export,
        evaluation and add-language read it like any other checkpoint."""
        tmp = self._fresh_tmp(step)
        self._publish(tmp, step, weights, trainer_state)
        return self.root / step_tag(step)

    def _fresh_tmp(self, step: int) -> Path:
        tmp = self.root / f"{TMP_PREFIX}{step_tag(step)}"
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a save that died earlier
            tmp.mkdir()
        return tmp

    def _publish(self, tmp: Path, step: int, weights: dict[str, torch.Tensor],
                 trainer_state: dict[str, Any]) -> None:
        """Complete ``tmp``, flush it, rename it into place, then move ``latest`` to it."""
        save_file(weights, str(tmp / WEIGHTS))
        self._write_sidecars(tmp, trainer_state)
        fsync_tree(tmp)
        final = self.root / step_tag(step)
        if final.exists():  # the same step saved before (a re-run): swap, never half-delete
            old = self.root / f"{TMP_PREFIX}old-{final.name}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        fsync_dir(self.root)
        write_text(self.root / LATEST, final.name + "\n")
        self._prune()

    def _write_sidecars(self, path: Path, trainer_state: dict[str, Any]) -> None:
        (path / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        for name, content in self.sidecars.items():
            if isinstance(content, Path):
                shutil.copyfile(content, path / name)
            else:
                (path / name).write_text(content, encoding="utf-8")

    def _prune(self) -> None:
        """Keep the newest ``keep`` checkpoints (0 keeps all)."""
        if self.keep <= 0:
            return
        done = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in done[: -self.keep]:
            shutil.rmtree(old)

    def load(self, engine, path: Path) -> dict[str, Any]:
        """Restore engine state from ``path``; return its trainer state."""
        use_weights_only_loading(engine)
        load_path, _ = engine.load_checkpoint(
            str(path.parent), tag=path.name, load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint to load in {path}")
        return json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
