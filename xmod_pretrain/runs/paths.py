"""The paths a run stores, valid from any working directory and after the run moves.

The trainer stores absolute, resolved paths in a run's ``config.yaml``: ``run_dir``,
``data.dir``, ``init_from``, ``add_language.source_run`` and ``add_language.text``
(``resolve_paths``). Reading a run's config (``runs.load_config``) relocates them
(``relocate_paths``), with one rule for a run that moved and one for configs of older versions:

* ``run_dir`` becomes where the run is now.
* A stored absolute path that no longer exists is re-anchored: its place relative to the stored
  ``run_dir`` is applied to where the run is now (stored run_dir ``/old/repo/runs/demo``, data
  ``/old/repo/data/demo``, run now at ``/new/repo/runs/demo``: ``/new/repo/data/demo``), when
  that path exists; otherwise the stored path stays, for the error message to name.
* A relative path (saved by an older version, relative to the directory training ran in) is
  resolved against the directory the stored relative ``run_dir`` was relative to: the run's
  folder less as many trailing parts as that ``run_dir`` has (run now at ``/x/runs/demo``, stored
  run_dir ``runs/demo``: base ``/x``). With an absolute stored ``run_dir`` that directory is
  unknown, and a relative path stays relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from xmod_pretrain.config import Config

PathMap = Callable[[str], str]


def resolve_paths(cfg: Config) -> Config:
    """``cfg`` with every stored path absolute and resolved against the working directory: what
    the trainer writes, so that a run can be read from anywhere."""
    return _map_paths(cfg, lambda path: str(Path(path).resolve()), str(Path(cfg.run_dir).resolve()))


def relocate_paths(cfg: Config, run_dir: str | Path) -> Config:
    """``cfg``, read from the run now at ``run_dir``, with its paths relocated (module docstring)."""
    here = Path(run_dir).resolve()
    stored = Path(cfg.run_dir)
    if stored.is_absolute():
        return _map_paths(cfg, lambda path: _reanchor(path, stored, here), str(here))
    base = _base_of(stored, here)
    move = (lambda path: path) if base is None else (lambda path: _against(path, base))
    return _map_paths(cfg, move, str(here))


def _reanchor(path: str, stored_run: Path, run: Path) -> str:
    if not Path(path).is_absolute() or Path(path).exists() or stored_run == run:
        return path
    moved = Path(os.path.normpath(run / os.path.relpath(path, stored_run)))
    return str(moved) if moved.exists() else path


def _base_of(stored_run: Path, run: Path) -> Path | None:
    """The directory a relative ``run_dir`` was relative to; None if it cannot be told (``..``)."""
    parts = Path(os.path.normpath(stored_run)).parts
    if ".." in parts or len(parts) >= len(run.parts):
        return None
    return run.parents[len(parts) - 1] if parts else run


def _against(path: str, base: Path) -> str:
    return path if Path(path).is_absolute() else os.path.normpath(base / path)


def _map_paths(cfg: Config, move: PathMap, run_dir: str) -> Config:
    def optional(path: str | None) -> str | None:
        return None if path is None else move(path)

    add = cfg.add_language
    return dataclasses.replace(
        cfg, run_dir=run_dir, init_from=optional(cfg.init_from),
        data=dataclasses.replace(cfg.data, dir=move(cfg.data.dir)),
        add_language=dataclasses.replace(add, source_run=optional(add.source_run),
                                         text=optional(add.text)))
