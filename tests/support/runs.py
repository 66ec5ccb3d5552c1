"""Tiny trained runs built once per suite and shared by every test file and both xdist workers.

Each run is trained into a folder under the session's shared temporary folder (the parent of the
workers' own, the session's own under ``-n 0``), under a file lock: the first worker to ask
trains it, the other waits for it and reuses it. A run is complete when its marker file stands
beside it; a folder without one (a build that failed) is trained again. The runs are trained on
``shared_data``, a prepared copy of the tiny corpus made the same way (a run records its data
folder: a test that resumes a shared run's copy passes ``shared_data``).

A shared run is read, never written: a command that writes into a run (evaluate's report, a
resume, add-language's default ``--out`` beside it) gets a copy (``copy_run``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

DONE = ".complete"


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder every worker of this session sees: the parent of the workers' base folders
    (popen-gw0, popen-gw1) under xdist, the session's own base folder without it."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "xmod-shared"
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], None]) -> Path:
    """``root/name``, made by ``build(root/name)`` by the first worker that asks, and waited for
    by the others."""
    root = shared_root(tmp_path_factory)
    target, done = root / name, root / f"{name}{DONE}"
    with FileLock(str(root / f"{name}.lock"), timeout=1800):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # a build that failed half way
            build(target)
            done.touch()
    return target


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a shared run at ``dest`` (a folder that does not exist yet), for a test that
    writes into it or beside it."""
    shutil.copytree(run, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> Path:
    """``tiny_data`` as one folder for both workers: prepared shards + a 600-piece tokenizer of
    the tiny corpus (the same corpus, the same call)."""
    from data_prep.prepare import prepare
    from tests.conftest import write_tiny_corpus

    def build(out: Path) -> None:
        corpus = write_tiny_corpus(out.with_name(out.name + "-corpus"))
        prepare(str(corpus), out, vocab_size=600, valid_fraction=0.1, workers=1)

    return build_once(tmp_path_factory, "data", build)


def trained_run(tmp_path_factory, data: Path, name: str, *overrides: str) -> Path:
    from tests.support.launch import run_training  # not at conftest's import: no torch there

    return build_once(tmp_path_factory, name,
                      lambda folder: run_training(folder / "run", data, *overrides)) / "run"


@pytest.fixture(scope="session")
def run_30_steps(shared_data, tmp_path_factory) -> Path:
    """30 steps, no validation between: the source run of add-language (test_add_language,
    test_vocab_extension)."""
    return trained_run(tmp_path_factory, shared_data, "run_30_steps",
                       "train.max_steps=30", "train.eval_every=0")


@pytest.fixture(scope="session")
def run_2_steps(shared_data, tmp_path_factory) -> Path:
    """A finished 2-step run with one checkpoint (test_refused_starts, test_added_run_dirs)."""
    return trained_run(tmp_path_factory, shared_data, "run_2_steps",
                       "train.max_steps=2", "train.save_every=2", "train.eval_every=0")


@pytest.fixture(scope="session")
def run_4_steps(shared_data, tmp_path_factory) -> Path:
    """4 steps, a record each step, validation at steps 0, 2 and 4, one checkpoint at step 4
    (test_evaluate_cli, test_transfer_cli)."""
    return trained_run(tmp_path_factory, shared_data, "run_4_steps",
                       "train.max_steps=4", "train.log_every=1", "train.eval_every=2",
                       "train.save_every=4")
