"""Reading a finished run, and writing a run derived from one.

Every tool that reads a run (export, add-language, the language-module commands) opens it with
``open_run``; every tool that writes a run without training it (pruning a language, importing a
module) writes it with ``write_run``, whose sidecars are the ones the trainer writes (``sidecars``).
A start records its request in the run directory before its first long step (``record_start``),
and a command that writes a run of its own kind resumes only a run of the same request
(``check_own_run_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from xmod_core.atomic import fsync_dir, write_text
from xmod_core.errors import UserError
from xmod_core.outputs import (
    CHECKPOINTS,
    CONFIG_FILE,
    LOCK_NAME,
    check_new_run_dir,
    check_not_inside_run,
    closest_folders,
)
from xmod_core.shards import TOKENIZER_FILE
from xmod_pretrain.checkpoint.checkpointer import Checkpointer
from xmod_pretrain.checkpoint.choice import newest_verified
from xmod_pretrain.checkpoint.language_files import language_manifest, read_language_files
from xmod_pretrain.checkpoint.layout import (
    TMP_PREFIX,
    TRAINER_STATE,
    WEIGHTS,
    complete_checkpoints,
    latest_checkpoint,
    step_of,
    step_tag,
)
from xmod_pretrain.checkpoint.verify import verify_checkpoint, verify_language_files
from xmod_pretrain.config import Config, without_retired_keys
from xmod_pretrain.runs.paths import relocate_paths, resolve_paths
from xmod_pretrain.training.distributed import DistInfo

LANGUAGES_FILE = "languages.json"
DEFAULT_RUN = Path("runs/demo")  # the demo's run_dir (conf/exp/demo.yaml: name demo)
CHECKPOINT_FILES = (WEIGHTS, CONFIG_FILE, LANGUAGES_FILE, TOKENIZER_FILE, TRAINER_STATE)


class RunNotFoundError(UserError, FileNotFoundError):
    """The run, its checkpoint, the requested step or a file of the checkpoint is missing."""


class RunFormatError(UserError, ValueError):
    """A checkpoint whose files disagree with each other."""


@dataclass
class RunCheckpoint:
    """One checkpoint of a run, with what is needed to rebuild and describe its model."""

    run_dir: Path
    path: Path
    """The checkpoint folder, ``run_dir/checkpoints/step_XXXXXXXX``."""
    config: Config
    """The resolved config the run was trained (or derived) with."""
    languages: list[str]
    """Module index order; equal to ``config.model.languages``."""
    tokenizer: Path
    trainer_state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.trainer_state["step"])

    def weights(self, languages: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Every weight (fp32, each tied tensor once), read with safetensors: no unpickling.
        A training checkpoint keeps the language modules in files of their own, which its
        manifest names; a weights-only one holds them in ``model.safetensors``. With
        ``languages``, a training checkpoint's files of those languages only are read (the
        shared weights and their modules: what one language's work needs)."""
        weights = load_file(str(self.path / WEIGHTS))
        manifest = language_manifest(self.path)
        if manifest and languages is not None:
            manifest = {code: entry for code, entry in manifest.items() if code in languages}
        if manifest:
            for tensors in read_language_files(self.path, manifest, with_state=False).values():
                weights.update(tensors)
        return weights

    def tokenizer_sha256(self) -> str:
        return hashlib.sha256(self.tokenizer.read_bytes()).hexdigest()


def load_config(path: str | Path) -> Config:
    """A run's saved ``config.yaml`` (at its top or in a checkpoint) as the typed Config, with
    defaults for keys added since it was saved, and its paths relocated to where the run is now
    (see ``paths.relocate_paths``): a run reads the same from any directory, and after it moved."""
    saved = without_retired_keys(OmegaConf.load(path))
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), saved))
    return relocate_paths(config, run_of_config(Path(path)))


def run_of_config(path: Path) -> Path:
    """The run directory a ``config.yaml`` belongs to: its folder, or the run of its checkpoint."""
    folder = path.resolve().parent
    return folder.parent.parent if folder.parent.name == CHECKPOINTS else folder


def open_run(run_dir: str | Path, step: int | None = None,
             languages: Collection[str] | None = None) -> RunCheckpoint:
    """The checkpoint ``latest`` names in ``run_dir`` (the newest verified one, said on stderr,
    when the pointer is missing), or the one of ``step``. Nothing is written. With
    ``languages``, only their language files are verified (for ``weights(languages)``: a
    thousand languages' files are not hashed to read one).

    Raises RunNotFoundError naming the path when the run, a checkpoint, the step or one of the
    checkpoint's files is missing, CheckpointCorrupt naming the file that differs from the
    checkpoint's checksums, CheckpointError for a bad ``latest``, and RunFormatError when its
    files disagree.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunNotFoundError(f"run directory {run_dir} does not exist{closest_folders(run_dir)}")
    path = _checkpoint_dir(run_dir, step)
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise RunNotFoundError(f"checkpoint {path} is missing {', '.join(missing)}")
    verify_checkpoint(path, CHECKPOINT_FILES)
    verify_language_files(path, languages)
    config = load_config(path / CONFIG_FILE)
    languages = json.loads((path / LANGUAGES_FILE).read_text(encoding="utf-8"))
    if languages != config.model.languages:
        raise RunFormatError(f"{path / LANGUAGES_FILE} lists {languages} but {CONFIG_FILE} has "
                             f"model.languages {config.model.languages}")
    state = json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    return RunCheckpoint(run_dir=run_dir, path=path, config=config, languages=languages,
                         tokenizer=path / TOKENIZER_FILE, trainer_state=state)


def _checkpoint_dir(run_dir: Path, step: int | None) -> Path:
    if step is None:
        path = latest_checkpoint(run_dir) or newest_verified(run_dir / CHECKPOINTS,
                                                              CHECKPOINT_FILES)
        if path is None:
            raise RunNotFoundError(f"{run_dir} has no checkpoint (no step_* folder with a "
                                   f"{TRAINER_STATE} in {run_dir / CHECKPOINTS})")
        return path
    path = run_dir / CHECKPOINTS / step_tag(step)
    if not path.is_dir():
        steps = available_steps(run_dir)
        listed = ", ".join(map(str, steps)) if steps else "none"
        raise RunNotFoundError(f"{run_dir} has no checkpoint of step {step} ({path}); "
                               f"available steps: {listed}")
    return path


def available_steps(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints in ``run_dir``, ascending."""
    return [step_of(p.name) for p in complete_checkpoints(Path(run_dir) / CHECKPOINTS)]


def default_source_run() -> Path:
    """``runs/demo`` when it holds a checkpoint: the run tools read when none is named."""
    if not available_steps(DEFAULT_RUN):
        raise RunNotFoundError(f"no run given and {DEFAULT_RUN} has no checkpoint; run the demo "
                               "(python -m xmod_pretrain +exp=demo) or pass --from")
    return DEFAULT_RUN


def config_text(config: Config) -> str:
    """A run's ``config.yaml``."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def sidecars(config: Config, tokenizer: Path) -> dict[str, str | Path]:
    """The files every checkpoint carries beside its weights, as ``Checkpointer`` takes them."""
    return {
        CONFIG_FILE: config_text(config),
        LANGUAGES_FILE: json.dumps(config.model.languages, indent=1) + "\n",
        TOKENIZER_FILE: tokenizer,
    }


def write_run(out_dir: str | Path, config: Config, tokenizer: Path,
              weights: dict[str, torch.Tensor], step: int, trainer_state: dict[str, Any]) -> Path:
    """Write a new run holding one weights-only checkpoint; return the checkpoint folder.

    ``config.run_dir`` becomes ``out_dir`` and every path is stored absolute (``resolve_paths``),
    so the run describes where it lives and reads the same from anywhere. The run is built
    beside ``out_dir`` under a temporary name and renamed into place, so ``out_dir`` appears
    complete or not at all; an existing non-empty ``out_dir`` is refused.
    """
    out_dir = check_new_run_dir(out_dir)
    config = resolve_paths(dataclasses.replace(config, run_dir=str(out_dir)))
    tmp = out_dir.with_name(f"{TMP_PREFIX}{out_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = sidecars(config, tokenizer)
        Checkpointer(tmp, DistInfo(0, 1, 0, 1), keep=0, sidecars=files).save_weights(
            weights, step, trainer_state)
        # The trainer keeps the resolved config at the top of a run as well.
        (tmp / CONFIG_FILE).write_text(files[CONFIG_FILE], encoding="utf-8")
        os.replace(tmp, out_dir)  # replaces an empty out_dir too (rename(2) allows that)
        fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / CHECKPOINTS / step_tag(step)


# ---- the run directory a start writes ----------------------------------------------------------

class RunDirError(UserError, FileExistsError):
    """The run directory holds another run or something else; nothing has been written."""


def record_start(cfg: Config, info: DistInfo) -> None:
    """Rank 0 writes the requested config as ``run_dir/config.yaml`` when the run has none yet
    (the recipe's checks have passed; the trainer later rewrites it with the model complete).
    A start killed before its first checkpoint, while it prepares data or learns a vocabulary,
    then leaves a folder that says which run it is, and the same command recognises it
    (``check_own_run_dir``). Every rank has checked the run directory before (the caller's
    barrier): a rank still checking would see the file half-made."""
    path = Path(cfg.run_dir) / CONFIG_FILE
    if info.is_main and not path.exists():
        write_text(path, config_text(cfg))


def check_own_run_dir(cfg: Config, info: DistInfo | None, option: str, kind: str,
                      request: Callable[[Config], dict[str, Any]]) -> None:
    """A command's run directory (``option``, e.g. ``--out``) must be new, empty, or a start
    of this same request, which the command then resumes; a start that never reached a
    checkpoint (killed while preparing its data) is started again, with a line saying so.
    ``request`` reads the settings that make the run what it is (its source, languages,
    vocabulary) from a config; ``kind`` describes the run (``an add-language run of yo_NG``);
    ``info`` None checks without a word (a command's check before its runs start).
    RunDirError otherwise, naming what differs, before anything is written."""
    run_dir = check_not_inside_run(cfg.run_dir, option)
    if not run_dir.is_dir() or not [p for p in run_dir.iterdir() if p.name != LOCK_NAME]:
        return
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise RunDirError(f"{option} {run_dir} already holds something else (no {CONFIG_FILE}: "
                          f"not {kind}): pick a new directory")
    before = load_config(saved)
    if before.recipe != cfg.recipe:
        raise RunDirError(f"{option} {run_dir} already holds a {before.recipe.value} run, "
                          f"not {kind}: pick a new directory")
    was, now = request(before), request(cfg)
    differ = [f"{key} {_shown(was.get(key))} (asked: {_shown(value)})"
              for key, value in now.items() if was.get(key) != value]
    if differ:
        raise RunDirError(f"{option} {run_dir} holds another run than {kind}: its "
                          f"{'; '.join(differ)}. Pick another {option}, or repeat that run's "
                          "command to resume it")
    if info is not None and info.is_main and not available_steps(run_dir):
        print(f"{option} {run_dir} holds a start of {kind} that never reached a checkpoint: "
              "starting it again", file=sys.stderr, flush=True)


def same_path(path: str | None) -> str | None:
    """A stored or asked path in the form two requests compare in."""
    return None if path is None else str(Path(path).resolve())


def _shown(value: Any) -> str:
    return "none" if value is None else ", ".join(value) if isinstance(value, list) else str(value)
