"""Where a command may write its output, and the names of a run directory's layout.

A run directory holds ``config.yaml`` and ``checkpoints/`` (``step_XXXXXXXX`` folders and the
``latest`` pointer); the trainer alone writes into ``checkpoints/``. Every ``--out`` of every
command (prepare, export, evaluate, the language commands, add-language) is checked here, so no
command writes into a run's checkpoints, over a run, or over prepared data.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xmod_core.errors import UserError
from xmod_core.shards import MANIFEST

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
LATEST = "latest"


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


def check_output_dir(out_dir: str | Path, overwrite: bool = False, option: str = "--out",
                     data: bool = False) -> Path:
    """``out_dir`` if a command may write its output there: never inside a run's ``checkpoints/``
    (the trainer alone writes there, and its cleanup would delete what it does not recognise), never
    a run directory itself, never prepared data unless the command prepares data (``data``), and
    new or empty unless ``overwrite``. OutputDirError otherwise."""
    out_dir = Path(out_dir)
    checkpoints = inside_checkpoints(out_dir)
    if checkpoints is not None:
        raise OutputDirError(f"{option} {out_dir} is inside the checkpoints folder of a run "
                             f"({checkpoints}): write outputs somewhere else")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{option} {out_dir} is a file: name a directory")
    if (out_dir / CHECKPOINTS).is_dir():
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
                   data: bool = False) -> Iterator[Path]:
    """``check_output_dir``, then the block writes; if it fails and ``out_dir`` did not exist
    before, ``out_dir`` is removed again: a failed command leaves no half-made output."""
    out_dir = check_output_dir(out_dir, overwrite, option, data)
    made_here = not out_dir.exists()
    try:
        yield out_dir
    except BaseException:
        if made_here:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def check_new_run_dir(out_dir: str | Path) -> Path:
    """``out_dir`` if a new run may be written there (absent or empty); OutputDirError if not."""
    return check_output_dir(out_dir)
