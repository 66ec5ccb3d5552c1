"""Saving a run's checkpoint: atomic, published on a background thread, old ones pruned; and
restoring the engine from one.

A checkpoint is written under a temporary name, checksummed, fsynced, renamed into place, and only
then does ``latest`` move (itself written to a temporary file and renamed). A crash at any point
leaves ``latest`` on a complete checkpoint, and an older checkpoint is never touched by a newer
save. A save that runs out of disk removes its partial folder and raises CheckpointWriteError.
(layout.py names the files; resume.py chooses the checkpoint a start resumes from.)
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from xmod_core.atomic import fsync_dir, fsync_tree, write_text
from xmod_core.outputs import CHECKPOINTS, LATEST
from xmod_pretrain.checkpoint.language_files import (
    InheritedFiles,
    Manifest,
    language_manifest,
    link_language_files,
    read_language_files,
    remove_unnamed_files,
    write_language_files,
    write_manifest,
)
from xmod_pretrain.checkpoint.layout import (
    CHECKSUMS,
    TMP_PREFIX,
    TRAINER_STATE,
    WEIGHTS,
    CheckpointError,
    complete_checkpoints,
    latest_checkpoint,
    read_latest,
    step_tag,
)
from xmod_pretrain.checkpoint.loading import use_weights_only_loading
from xmod_pretrain.checkpoint.reshard import Layout, full_state, load_full_state, saved_layout
from xmod_pretrain.checkpoint.storage import (
    CheckpointWriteError,
    ignore_file_size_signal,
    save_safetensors,
    write_failure,
)
from xmod_pretrain.checkpoint.verify import write_checksums
from xmod_pretrain.checkpoint.weights import check_replicas_agree, consolidated_weights
from xmod_pretrain.training.distributed import DistInfo, barrier, from_rank0
from xmod_pretrain.training.language_store import LanguageStore
from xmod_pretrain.training.optim import parameter_names_by_group


class Checkpointer:
    """Saves and restores a run's engine state plus the sidecars that make it self-describing."""

    def __init__(self, run_dir: str | Path, info: DistInfo, keep: int, sidecars: dict[str, Any],
                 every: int = 0):
        """``sidecars`` maps a file name to its text (str) or to a file to copy (Path);
        ``every``: a training run's ``train.save_every`` (0: at the end only)."""
        self.root = Path(run_dir) / CHECKPOINTS
        self.info = info
        self.keep = keep
        self.every = every
        self.sidecars = sidecars
        self.publishing: tuple[Path, threading.Thread] | None = None  # rank 0's last save
        self.publish_failure: str | None = None
        self.manifest: Manifest = {}  # the language files of the last checkpoint saved or read
        # Another run's language files this run starts from, linked in at its first save.
        self.inherited: InheritedFiles | None = None
        ignore_file_size_signal()

    def due(self, step: int, stopping: bool) -> bool:
        """A training run saves every ``every`` steps, and when it stops on a signal (the end of
        the run saves when its last step was not saved: the Trainer knows that)."""
        return stopping or bool(self.every and step % self.every == 0)

    def save(self, engine, step: int, trainer_state: dict[str, Any],
             store: LanguageStore | None = None, engine_state: bool = True) -> Path:
        """Engine state + the language store's files + consolidated weights + sidecars,
        published atomically. All ranks call. ``engine_state=False`` for an engine without an
        optimizer (every shared weight frozen): it has nothing to resume that the weights do not
        hold, and DeepSpeed cannot save its ZeRO-3 kind.

        DeepSpeed's files are written here, by every rank. Rank 0 then copies the shared weights
        and the state of the languages that trained since the last save, and returns: its
        publishing thread writes those languages' files (checkpoint/language_files.py), then
        model.safetensors, the manifest and the sidecars, checksums and
        flushes everything, renames the folder into place and moves ``latest``, while training
        goes on. ``finish`` (which the next save calls first) waits for it. Out of space (or
        past a file-size limit), every rank raises CheckpointWriteError there or here, and
        ``latest`` stays where it was.
        """
        self.finish()
        tmp = self._fresh_tmp(step)
        barrier()
        failure = None if not engine_state else write_failure(tmp, lambda: engine.save_checkpoint(
            str(self.root), tag=tmp.name, save_latest=False))
        # The languages changed since the last save alone: the others were compared at the save
        # that wrote their files, and nothing has moved them since (every rank knows which).
        replicated = [] if store is None else store.changed_parameters()
        if engine.zero_optimization_partition_weights():  # ZeRO-3 ranks hold slices
            check_replicas_agree(replicated, self.info, "language modules")
        else:
            check_replicas_agree(list(engine.module.named_parameters()) + replicated, self.info)
        weights = consolidated_weights(engine, self.info)
        languages = None
        if store is not None:
            if self.info.is_main:  # host copies: training goes on
                languages = store.changed_state()
            store.mark_saved()
        failure = self._any_rank(failure)  # also the barrier before rank 0 publishes
        if failure is not None:
            self._abandon(tmp, failure)
        if self.info.is_main:
            self.publishing = (tmp, threading.Thread(
                target=self._publish_in_background,
                args=(tmp, step, weights, trainer_state, languages), name="checkpoint-publish"))
            self.publishing[1].start()
        return self.root / step_tag(step)

    def finish(self) -> None:
        """Wait until the last save is published; CheckpointWriteError on every rank if it
        failed. All ranks call it (rank 0 tells the others)."""
        failed = self.wait_here() if self.info.is_main else None
        failed = from_rank0(failed, self.info)
        if failed is not None:
            self._abandon(*failed)

    def wait_here(self) -> tuple[Path, str] | None:
        """Rank 0: wait for the publishing thread, telling no other rank (for a run that is
        failing anyway); (its folder, why) if it failed, else None."""
        if self.publishing is None:
            return None
        tmp, thread = self.publishing
        thread.join()
        self.publishing = None
        failure, self.publish_failure = self.publish_failure, None
        return None if failure is None else (tmp, failure)

    def _publish_in_background(self, tmp: Path, step: int, weights: dict[str, torch.Tensor],
                               trainer_state: dict[str, Any],
                               languages: dict[str, dict[str, torch.Tensor]] | None) -> None:
        try:
            self.publish_failure = write_failure(
                tmp, lambda: self._publish(tmp, step, weights, trainer_state, languages))
        except BaseException as err:  # not a disk error: reported as what it is
            self.publish_failure = f"publishing {tmp.name} failed: {type(err).__name__}: {err}"
        if self.publish_failure is None:
            print(f"saved checkpoint {self.root / step_tag(step)}", flush=True)

    def save_weights(self, weights: dict[str, torch.Tensor], step: int,
                     trainer_state: dict[str, Any]) -> Path:
        """A weights-only checkpoint (no optimizer state), from one process: what tools that
        rewrite a model without training it (pruning, importing a module) produce. Export,
        evaluation and add-language read it like any other checkpoint."""
        tmp = self._fresh_tmp(step)
        failure = write_failure(tmp, lambda: self._publish(tmp, step, weights, trainer_state))
        if failure is not None:
            self._abandon(tmp, failure)
        return self.root / step_tag(step)

    def remove_partial_saves(self) -> list[str]:
        """Remove what saves that died left (``.tmp-*``: a second Ctrl-C, a kill mid-save), which
        no later save of another step would clean up. Only the run lock's holder may call it: no
        save of this run is under way then. Returns the names removed."""
        partial = sorted(p for p in self.root.glob(f"{TMP_PREFIX}*") if p.is_dir())
        for path in partial:
            shutil.rmtree(path)
        files = remove_unnamed_files(self.root) if self.root.is_dir() else []
        return [path.name for path in partial] + [str(p.relative_to(self.root)) for p in files]

    def _fresh_tmp(self, step: int) -> Path:
        tmp = self.root / f"{TMP_PREFIX}{step_tag(step)}"
        if self.info.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a save that died earlier
            tmp.mkdir()
        return tmp

    def _any_rank(self, failure: str | None) -> str | None:
        """The first rank's failure, on every rank (each rank writes DeepSpeed files)."""
        if self.info.world_size == 1:
            return failure
        import torch.distributed as dist

        failures: list[str | None] = [None] * self.info.world_size
        dist.all_gather_object(failures, failure)
        return next((f for f in failures if f is not None), None)

    def _abandon(self, tmp: Path, failure: str) -> None:
        """Remove the partial checkpoint and raise CheckpointWriteError saying what stands."""
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            latest = latest_checkpoint(self.root.parent)
        except CheckpointError:
            latest = None
        stands = (f"{self.root / LATEST} stays on {latest.name}, the last complete checkpoint"
                  if latest else "the run has no complete checkpoint yet")
        raise CheckpointWriteError(f"{failure}: free space or raise the limit, then run the same "
                                   f"command to resume. Removed the partial {tmp.name}; {stands}")

    def _publish(self, tmp: Path, step: int, weights: dict[str, torch.Tensor],
                 trainer_state: dict[str, Any],
                 languages: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        """Complete ``tmp``, checksum and flush it, rename it into place, then move ``latest``."""
        save_safetensors(weights, tmp / WEIGHTS)
        if languages is not None:  # the files first: the manifest names them
            linked = ({} if self.inherited is None
                      else link_language_files(self.root, self.inherited))
            manifest = {**self.manifest, **linked,
                        **write_language_files(self.root, step, languages)}
            write_manifest(tmp, manifest)
        self._write_sidecars(tmp, trainer_state)
        write_checksums(tmp)  # inside tmp: part of the atomic write
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
        if languages is not None:
            self.manifest, self.inherited = manifest, None
        self._prune()
        remove_unnamed_files(self.root)

    def _write_sidecars(self, path: Path, trainer_state: dict[str, Any]) -> None:
        (path / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        for name, content in self.sidecars.items():
            if isinstance(content, Path):
                shutil.copyfile(content, path / name)
            else:
                (path / name).write_text(content, encoding="utf-8")

    def _prune(self) -> None:
        """Keep the newest ``keep`` checkpoints (0 keeps all).

        Only checkpoints this trainer wrote are candidates (``step_`` + 8 digits, a trainer state
        and a checksum list), oldest step first, and never the one ``latest`` names: anything
        else in ``checkpoints/`` may be a user's and is not ours to delete.
        """
        if self.keep <= 0:
            return
        named = read_latest(self.root)
        ours = [p for p in complete_checkpoints(self.root) if (p / CHECKSUMS).is_file()]
        for old in ours[: -self.keep]:
            if old.name != named:
                shutil.rmtree(old)

    def load(self, engine, path: Path, store: LanguageStore | None = None,
             engine_state: bool = True) -> tuple[dict[str, Any], str | None]:
        """Restore engine state (``engine_state``, as saved) and the language store's from
        ``path``. Returns its trainer state, and a line saying so when the checkpoint was
        written by other ranks or another ZeRO stage than this start's (reshard.py)."""
        moved = None
        if engine_state:
            saved = saved_layout(path)
            here = Layout(self.info.world_size, engine.zero_optimization_stage())
            if saved == here:
                use_weights_only_loading(engine)
                load_path, _ = engine.load_checkpoint(
                    str(path.parent), tag=path.name, load_optimizer_states=True,
                    load_lr_scheduler_states=True,
                )
                if load_path is None:
                    raise FileNotFoundError(f"DeepSpeed found no checkpoint to load in {path}")
            else:
                started = time.perf_counter()
                named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
                state = full_state(path, saved, parameter_names_by_group(named))
                load_full_state(engine, named, state)
                moved = (f"resuming {path.name} written by {saved} on {here}: optimizer state "
                         f"re-partitioned in {time.perf_counter() - started:.1f} s")
        if store is not None:
            self.manifest = language_manifest(path) or {}
            store.load_state(read_language_files(path, self.manifest, with_state=True))
        return json.loads((path / TRAINER_STATE).read_text(encoding="utf-8")), moved
