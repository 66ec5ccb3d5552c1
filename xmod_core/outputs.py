"""Where a command may write its output, and the names of a run directory's layout.

A run directory holds ``config.yaml`` and ``checkpoints/`` (``step_XXXXXXXX`` folders and the
``latest`` pointer), and ``.lock`` while a trainer runs on it; the trainer alone writes into
``checkpoints/``. Every ``--out`` of every command (prepare, export, evaluate, the language
commands, add-language, a training ``run_dir``) is checked here, so no command writes into a run's
checkpoints, over a run, inside a run, or over prepared data.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xmod_core.errors import UserError, closest, did_you_mean
from xmod_core.shards import MANIFEST

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOCK_NAME = ".lock"


class OutputDirError(UserError, FileExistsError):
    """An output folder a command must not write to; nothing has been written."""


def inside_checkpoints(path: str | Path) -> Path | None:
    """The ``checkpoints/`` folder of a run that ``path`` is, or lies inside; None if none."""
    for folder in (Path(path).resolve(), *Path(path).resolve().parents):
        if folder.name == CHECKPOINTS and ((folder / LATEST).exists()
                                           or (folder.parent / CONFIG_FILE).is_file()
                                           or any(folder.glob("step_*"))):
            return folder
    return None


def closest_folders(path: str | Path) -> str:
    """`` (did you mean runs/demo?)`` for a folder that does not exist: the closest names of
    its siblings, or nothing."""
    path = Path(path)
    siblings = [p.name for p in path.parent.iterdir() if p.is_dir()] if path.parent.is_dir() else []
    return did_you_mean([str(path.parent / name) for name in closest(path.name, siblings, n=2)])


def is_run_dir(folder: str | Path) -> bool:
    """A run directory: its ``config.yaml`` beside ``checkpoints/``, or beside a trainer's
    ``.lock`` (a run under way, or one killed before its first checkpoint). Both are asked for:
    a project folder with a ``checkpoints/`` of its own is not a run."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() and ((folder / CHECKPOINTS).is_dir()
                                                 or (folder / LOCK_NAME).is_file())


def enclosing_run(path: str | Path, own_run: str | Path | None = None) -> Path | None:
    """The run directory ``path`` lies inside (an ancestor, not ``path`` itself), other than
    ``own_run`` (the run the output belongs to, e.g. add-language's ``run_dir/data``); None if
    none. A command that writes there changes a run it was not asked to write: the run's hash
    moves, and its own tools (cleanup, resume) meet files they did not make."""
    own = None if own_run is None else Path(own_run).resolve()
    for folder in Path(path).resolve().parents:
        if folder != own and is_run_dir(folder):
            return folder
    return None


def check_not_inside_run(path: str | Path, option: str = "--out",
                         own_run: str | Path | None = None) -> Path:
    """``path`` unless it lies inside another run (``enclosing_run``), or in any run's
    ``checkpoints/``; OutputDirError naming both otherwise."""
    path = Path(path)
    checkpoints = inside_checkpoints(path)
    if checkpoints is not None:
        raise OutputDirError(f"{option} {path} is inside the checkpoints folder of a run "
                             f"({checkpoints}): write outputs somewhere else")
    run = enclosing_run(path, own_run)
    if run is not None:
        raise OutputDirError(f"{option} {path} is inside the run {run}: a command never writes "
                             "into another run; pick a folder outside it")
    return path


def check_output_dir(out_dir: str | Path, overwrite: bool = False, option: str = "--out",
                     data: bool = False, own_run: str | Path | None = None) -> Path:
    """``out_dir`` if a command may write its output there: never inside a run (its
    ``checkpoints/``, where the trainer alone writes and its cleanup would delete what it does
    not recognise, or anywhere else in it but ``own_run``), never a run directory itself, never
    prepared data unless the command prepares data (``data``), and new or empty unless
    ``overwrite``. OutputDirError otherwise."""
    out_dir = check_not_inside_run(out_dir, option, own_run)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{option} {out_dir} is a file: name a directory")
    if is_run_dir(out_dir) or (out_dir / CHECKPOINTS).is_dir():
        raise OutputDirError(f"{option} {out_dir} is a run directory: write outputs somewhere else")
    if not data and (out_dir / MANIFEST).is_file():
        raise OutputDirError(f"{option} {out_dir} holds prepared data (manifest.json): write "
                             "outputs somewhere else")
    if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputDirError(f"{option} {out_dir} already exists and is not empty: pick a new "
                             "directory, or pass --overwrite")
    return out_dir


@contextmanager
def new_output_dir(out_dir: str | Path, overwrite: bool = False, option: str = "--out",
                   data: bool = False, own_run: str | Path | None = None,
                   resumable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """``check_output_dir``, then the block writes; if it fails and ``out_dir`` did not exist
    before, ``out_dir`` is removed again: a failed command leaves no half-made output. Unless
    ``resumable(out_dir)`` says it holds work the same command resumes (a preparation's record):
    an hour of finished languages is not thrown away for the one that failed."""
    out_dir = check_output_dir(out_dir, overwrite, option, data, own_run)
    made_here = not out_dir.exists()
    try:
        yield out_dir
    except BaseException:
        if made_here and not (resumable is not None and resumable(out_dir)):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def check_new_run_dir(out_dir: str | Path) -> Path:
    """``out_dir`` if a new run may be written there (absent or empty); OutputDirError if not."""
    return check_output_dir(out_dir)
