"""Choosing a checkpoint: the one a start resumes from, and the one a read-only tool reads.

Resume takes the checkpoint ``latest`` names, or the newest complete one without a pointer, and
verifies its checksums; a corrupt checkpoint is renamed ``corrupt-step_...`` (nothing is deleted)
and the next older one is used, ``latest`` rewritten to name it. A read-only tool (export,
evaluate) never writes: it skips a corrupt checkpoint and says so.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from xmod_core.atomic import fsync_dir, write_text
from xmod_core.outputs import CHECKPOINTS, LATEST
from xmod_pretrain.checkpoint.layout import (
    CORRUPT_PREFIX,
    POINTER_HELP,
    CheckpointCorrupt,
    CheckpointError,
    complete_checkpoints,
    read_latest,
    step_of,
)
from xmod_pretrain.checkpoint.verify import verify_checkpoint
from xmod_pretrain.training.distributed import DistInfo, from_rank0


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
    name, message = from_rank0((name, None if failure is None else str(failure)), info)
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


