"""Checkpoints: atomic save, ``latest`` pointer, checksums, retention, resume without unpickling.

Layout::

    run_dir/checkpoints/step_00000200/   DeepSpeed engine state (model, optimizer, LR schedule)
                        ├ model.safetensors    all weights, consolidated (ZeRO-3 too), fp32
                        ├ trainer_state.json   step, tokens seen, sampler position
                        ├ config.yaml          the resolved run config
                        ├ languages.json       module index order
                        ├ sentencepiece.bpe.model
                        └ checksums.json       {relative path: {sha256, size}} of every other file
    run_dir/checkpoints/latest           the name of the newest complete checkpoint

A checkpoint is written under a temporary name, checksummed, fsynced, renamed into place, and only
then does ``latest`` move (itself written to a temporary file and renamed). A crash at any point
leaves ``latest`` on a complete checkpoint, and an older checkpoint is never touched by a newer
save. A save that runs out of disk removes its partial folder and raises CheckpointWriteError.
Resume verifies the checksums; a corrupt checkpoint is renamed ``corrupt-step_...`` (nothing is
deleted) and the previous one is used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from xmod_core.atomic import file_sha256, follow_umask, fsync_dir, fsync_tree, write_text
from xmod_core.errors import UserError
from xmod_core.outputs import CHECKPOINTS, LATEST
from xmod_pretrain.training.distributed import DistInfo, barrier
from xmod_pretrain.recipes.vocabulary.split_model import merge_added_rows

TRAINER_STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"
CHECKSUMS = "checksums.json"
TMP_PREFIX = ".tmp-"  # DeepSpeed writes a checkpoint under this name before it is renamed
CORRUPT_PREFIX = "corrupt-"  # a checkpoint that failed verification, moved out of step_*
STEP_NAME = re.compile(r"step_(\d{8})")
POINTER_HELP = ("delete it to resume from the newest verified checkpoint, or write a checkpoint "
                "name into it (e.g. step_00000200)")


class CheckpointError(UserError):
    """A run's checkpoints are in a state no command should guess its way through."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint file differs from what its checksums.json recorded when it was written."""


class CheckpointWriteError(UserError):
    """A save failed for lack of space or a file-size limit; the previous checkpoint stands."""


def step_tag(step: int) -> str:
    return f"step_{step:08d}"


def step_of(name: str) -> int | None:
    """The step of a checkpoint name (``step_`` + 8 digits), None for any other name."""
    match = STEP_NAME.fullmatch(name)
    return int(match[1]) if match else None


def complete_checkpoints(root: Path) -> list[Path]:
    """The checkpoint folders in ``root`` (a run's ``checkpoints/``) that hold a trainer state,
    ascending by step. Anything else there (``step_3``, a user's folder) is not a checkpoint."""
    found = [p for p in root.glob("step_*")
             if step_of(p.name) is not None and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: step_of(p.name))


def read_latest(root: Path) -> str | None:
    """The checkpoint name ``root/latest`` holds; None when there is no pointer.

    Only a direct child of ``root`` is accepted: a pointer into another run, an absolute path or
    garbage would resume (or prune) the wrong thing, so it raises CheckpointError.
    """
    pointer = root / LATEST
    try:
        content = pointer.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    name = content.strip()
    if step_of(name) is None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise CheckpointError(f"{pointer} holds {shown!r}, which is not the name of a checkpoint "
                              f"in {root} (step_ and 8 digits): {POINTER_HELP}")
    return name


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names, or None when the run has no pointer; read only."""
    root = Path(run_dir) / CHECKPOINTS
    name = read_latest(root)
    if name is None:
        return None
    path = root / name
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"{root / LATEST} names {name}, which is missing or incomplete: "
                              f"{POINTER_HELP}")
    return path


# ---- checksums -------------------------------------------------------------------------------

def _hash_files(folder: Path, names: list[str]) -> list[str]:
    """sha256 of each file, several at a time: hashlib releases the GIL on large buffers."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda name: file_sha256(folder / name), names))


def write_checksums(folder: Path) -> None:
    """``folder/checksums.json``: sha256 and size of every file under ``folder``."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != CHECKSUMS)
    hashes = _hash_files(folder, names)
    listing = {name: {"sha256": digest, "size": (folder / name).stat().st_size}
               for name, digest in zip(names, hashes)}
    (folder / CHECKSUMS).write_text(json.dumps(listing, indent=1) + "\n", encoding="utf-8")


def verify_checkpoint(path: Path, files: Iterable[str] | None = None) -> None:
    """Check ``files`` of the checkpoint ``path`` (all it holds when None) against its
    checksums.json; CheckpointCorrupt names the first bad file (missing, wrong size, wrong hash).

    Cost: every byte is read and hashed, about 1-2 s per GB per core (sha256 at 0.5-1 GB/s) when
    the file is cached, the disk's read rate when not; files are hashed in parallel threads.
    Checkpoints written before checksums existed have no checksums.json and are accepted as they
    are.
    """
    listing_path = path / CHECKSUMS
    if not listing_path.is_file():
        return
    listing = _read_listing(listing_path)
    names = sorted(listing) if files is None else list(files)
    for name in names:  # sizes first: cheap, and they catch truncation
        _check_size(path, name, listing)
    for name, digest in zip(names, _hash_files(path, names)):
        if digest != listing[name]["sha256"]:
            raise _corrupt(path, name, f"its sha256 is {digest[:16]}..., not the "
                                       f"{listing[name]['sha256'][:16]}... recorded")


def _read_listing(listing_path: Path) -> dict[str, dict]:
    try:
        listing = json.loads(listing_path.read_text(encoding="utf-8"))
        if all(isinstance(v["sha256"], str) and isinstance(v["size"], int)
               for v in listing.values()):
            return listing
    except (ValueError, TypeError, KeyError, AttributeError):
        pass
    raise _corrupt(listing_path.parent, CHECKSUMS, "it is not a readable checksum list")


def _check_size(path: Path, name: str, listing: dict[str, dict]) -> None:
    if name not in listing:
        raise _corrupt(path, name, f"it is not listed in {CHECKSUMS}")
    file = path / name
    if not file.is_file():
        raise _corrupt(path, name, "it is missing")
    size, expected = file.stat().st_size, listing[name]["size"]
    if size != expected:
        raise _corrupt(path, name, f"it is {size} bytes, not the {expected} recorded")


def _corrupt(path: Path, name: str, problem: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(f"checkpoint file {path / name} is corrupt: {problem} in "
                             f"{CHECKSUMS}. Restore it from a copy, or use an earlier checkpoint "
                             "(resuming training moves this one aside and falls back by itself)")


# ---- choosing the checkpoint to resume from or read --------------------------------------------

def resume_checkpoint(run_dir: str | Path, info: DistInfo) -> Path | None:
    """The verified checkpoint training resumes from, None for a run without checkpoints.

    It is the one ``latest`` names or, without a pointer, the newest complete one. A checkpoint
    that fails verification is renamed ``corrupt-step_...`` and the next older one is tried;
    ``latest`` is rewritten to name the choice when it differs. Rank 0 alone inspects and
    repairs; every rank gets its answer, or its CheckpointError. All ranks call.
    """
    root = Path(run_dir) / CHECKPOINTS
    name, failure = None, None
    if info.is_main:
        try:
            name = _choose_and_repair(root)
        except CheckpointError as err:
            failure = err
    name, message = _from_rank0((name, None if failure is None else str(failure)), info)
    if failure is not None:
        raise failure
    if message is not None:
        raise CheckpointError(message)
    return None if name is None else root / name


def _choose_and_repair(root: Path) -> str | None:
    named = read_latest(root)
    found = complete_checkpoints(root)
    if named is None and not found:
        return None
    if named is not None and root / named not in found:
        raise CheckpointError(f"{root / LATEST} names {named}, which is missing or incomplete: "
                              f"{POINTER_HELP}")
    newest_first = [p for p in reversed(found)
                    if named is None or step_of(p.name) <= step_of(named)]
    chosen, corrupt = _first_verified(newest_first)
    if chosen is None:  # nothing moved: a rerun must not mistake the run for a new one
        raise CheckpointError(f"no checkpoint in {root} verifies; the newest: {corrupt[0][1]}")
    for path, err in corrupt:
        moved = _move_aside(path)
        _warn(f"warning: {err}. Moved {path.name} aside to {moved.name} (nothing deleted)")
    if chosen.name != named:
        write_text(root / LATEST, chosen.name + "\n")
        why = "was missing" if named is None else f"named {named}, which is corrupt"
        _warn(f"{root / LATEST} {why}: resuming from {chosen.name}, the newest verified "
              "checkpoint; latest now names it")
    return chosen.name


def _first_verified(paths: list[Path]) -> tuple[Path | None, list[tuple[Path, Exception]]]:
    """The first of ``paths`` that verifies, and the corrupt ones before it with their errors."""
    corrupt = []
    for path in paths:
        try:
            verify_checkpoint(path)
        except CheckpointCorrupt as err:
            corrupt.append((path, err))
            continue
        return path, corrupt
    return None, corrupt


def _move_aside(path: Path) -> Path:
    """Rename a corrupt checkpoint out of the step_* names, never over an earlier one."""
    target, n = path.with_name(CORRUPT_PREFIX + path.name), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{CORRUPT_PREFIX}{path.name}-{n}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def newest_verified(root: Path, files: Iterable[str]) -> Path | None:
    """For read-only tools when ``latest`` is missing: the newest complete checkpoint whose
    ``files`` verify, said on stderr; nothing is written. None when there is no checkpoint."""
    found = complete_checkpoints(root)
    for path in reversed(found):
        try:
            verify_checkpoint(path, files)
        except CheckpointCorrupt as err:
            _warn(f"warning: {err}; skipping it")
            continue
        _warn(f"{root / LATEST} is missing: reading {path.name}, the newest verified checkpoint")
        return path
    if found:
        raise CheckpointError(f"{root / LATEST} is missing and no checkpoint in {root} verifies: "
                              "restore one from a copy")
    return None


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _from_rank0(value: Any, info: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank."""
    if info.world_size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---- failed writes ---------------------------------------------------------------------------

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
ZIP_WRITER_ERRORS = ("inline_container", "PytorchStreamWriter")  # torch.save's out-of-space errors


def ignore_file_size_signal() -> None:
    """Past a ``ulimit -f`` limit the kernel sends SIGXFSZ, which kills the process; ignored, the
    write fails with EFBIG instead, which a save reports like a full disk."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def write_failure(tmp: Path, write: Callable[[], None]) -> str | None:
    """Run ``write`` (which fills ``tmp``); the reason it ran out of space or hit the file-size
    limit, None when it succeeded. Any other error propagates."""
    try:
        write()
    except (OSError, RuntimeError) as err:
        code, path = _disk_error(err, tmp)
        if code is None:
            raise
        if code == errno.EFBIG:
            return f"file size limit reached while writing {path}"
        quota = " (disk quota exceeded)" if code == errno.EDQUOT else ""
        return f"no space left on {mount_of(path)}{quota} while writing {path}"
    return None


def _disk_error(err: Exception, tmp: Path) -> tuple[int | None, Path]:
    """(errno, file) of a failed write; errno None when it is no disk error."""
    if isinstance(err, OSError):
        code = err.errno if err.errno in DISK_ERRNOS else None
        return code, Path(err.filename) if err.filename else _newest_file(tmp)
    if not any(s in str(err) for s in ZIP_WRITER_ERRORS):
        return None, tmp
    # torch's zip writer drops the errno: a file at the size limit tells EFBIG from ENOSPC.
    path = _newest_file(tmp)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    at_limit = limit != resource.RLIM_INFINITY and path.is_file() and path.stat().st_size >= limit
    return (errno.EFBIG if at_limit else errno.ENOSPC), path


def _newest_file(folder: Path) -> Path:
    """The file written last under ``folder`` (the one a failed write was filling)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else folder


def mount_of(path: Path) -> str:
    """``MOUNT_POINT (FSTYPE)`` of the filesystem holding ``path``, from /proc/self/mounts."""
    target = os.path.realpath(path)
    best, fstype = "", "?"
    try:
        lines = Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines()
    except OSError:
        return "the filesystem holding it"
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])  # \040: space
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):  # the deepest mount; the last one mounted wins
            best, fstype = mount, fields[2]
    return f"{best} ({fstype})"


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path,
                     metadata: dict[str, str] | None = None) -> None:
    """``save_file`` with an OSError naming ``path`` when the disk fills, and the umask's mode."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as err:  # SafetensorError: "... I/O error: ... (os error 28)"
        found = re.search(r"os error (\d+)", str(err))
        if found is None:
            raise
        code = int(found[1])
        raise OSError(code, os.strerror(code), str(path)) from err
    follow_umask(path)


def consolidated_weights(engine, info: DistInfo) -> dict[str, torch.Tensor] | None:
    """Every weight of the model, whole, in fp32 on the CPU, on rank 0 (None elsewhere); each
    tied tensor once, a grown vocabulary's rows merged (``grown_vocabulary.merge_added_rows``).

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


def check_replicas_agree(module: torch.nn.Module, info: DistInfo) -> None:
    """Refuse to save if data-parallel ranks hold different weights (a silent divergence).

    The parameters are cut into ``world_size`` parts of about equal size; rank r hashes parts r
    and r + 1 (mod world size), so every part is hashed on two ranks and each rank reads 2 /
    world_size of the model, a parameter at a time. Digests are gathered and compared part by
    part. All ranks call it; not under ZeRO-3, whose ranks hold different slices by design.
    """
    if info.world_size == 1:
        return
    import torch.distributed as dist

    parts = _parts(list(module.named_parameters()), info.world_size)
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
        print(f"weights identical on all {info.world_size} ranks (each part hashed on two)",
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
        self.root = Path(run_dir) / CHECKPOINTS
        self.info = info
        self.keep = keep
        self.sidecars = sidecars
        self.publishing: tuple[Path, threading.Thread] | None = None  # rank 0's last save
        self.publish_failure: str | None = None
        ignore_file_size_signal()

    def save(self, engine, step: int, trainer_state: dict[str, Any]) -> Path:
        """Engine state + consolidated weights + sidecars, published atomically. All ranks call.

        DeepSpeed's files are written here, by every rank. Rank 0 then copies the weights and
        returns: its publishing thread writes model.safetensors and the sidecars, checksums and
        flushes everything, renames the folder into place and moves ``latest``, while training
        goes on. ``finish`` (which the next save calls first) waits for it. Out of space (or
        past a file-size limit), every rank raises CheckpointWriteError there or here, and
        ``latest`` stays where it was.
        """
        self.finish()
        tmp = self._fresh_tmp(step)
        barrier()
        failure = write_failure(tmp, lambda: engine.save_checkpoint(
            str(self.root), tag=tmp.name, save_latest=False))
        if not engine.zero_optimization_partition_weights():
            check_replicas_agree(engine.module, self.info)
        weights = consolidated_weights(engine, self.info)
        failure = self._any_rank(failure)  # also the barrier before rank 0 publishes
        if failure is not None:
            self._abandon(tmp, failure)
        if self.info.is_main:
            self.publishing = (tmp, threading.Thread(
                target=self._publish_in_background, args=(tmp, step, weights, trainer_state),
                name="checkpoint-publish"))
            self.publishing[1].start()
        return self.root / step_tag(step)

    def finish(self) -> None:
        """Wait until the last save is published; CheckpointWriteError on every rank if it
        failed. All ranks call it (rank 0 tells the others)."""
        failed = self.wait_here() if self.info.is_main else None
        failed = _from_rank0(failed, self.info)
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
                               trainer_state: dict[str, Any]) -> None:
        try:
            self.publish_failure = write_failure(
                tmp, lambda: self._publish(tmp, step, weights, trainer_state))
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
        return [path.name for path in partial]

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
                 trainer_state: dict[str, Any]) -> None:
        """Complete ``tmp``, checksum and flush it, rename it into place, then move ``latest``."""
        save_safetensors(weights, tmp / WEIGHTS)
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
        self._prune()

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
