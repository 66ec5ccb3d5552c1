"""A run's checkpoints on disk: their names, the ``latest`` pointer, and which are complete.

Layout::

    run_dir/checkpoints/step_00000200/   DeepSpeed engine state (model, optimizer, LR schedule)
                        ├ model.safetensors    the shared weights, consolidated (ZeRO-3 too), fp32
                        ├ languages.manifest.json  each language's file in languages/ below
                        ├ trainer_state.json   step, tokens seen, first validation
                        ├ config.yaml          the resolved run config
                        ├ languages.json       module index order
                        ├ sentencepiece.bpe.model
                        └ checksums.json       {relative path: {sha256, size}} of every other file
    run_dir/checkpoints/latest           the name of the newest complete checkpoint
    run_dir/checkpoints/languages/<code>/step_00000200-<token>.safetensors
                                         a language's module weights and AdamW state, written
                                         when it trained since the last save (language_files.py)

checkpointer.py writes a checkpoint, verify.py checks it, choice.py chooses which one a start
resumes from or a tool reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from xmod_core.errors import UserError
from xmod_core.outputs import CHECKPOINTS, LATEST

TRAINER_STATE = "trainer_state.json"
WEIGHTS = "model.safetensors"
DEEPSPEED_STATE = "mp_rank_00_model_states.pt"  # DeepSpeed's: a checkpoint a run can resume
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
