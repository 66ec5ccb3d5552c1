"""Shared fixtures: a tiny real corpus cut from the bundled one, prepared once per session."""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "data_prep" / "corpus" / "debian_ig"
TINY_LANGUAGES = ("en_XX", "de_DE", "ru_RU", "el_GR")

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# DeepSpeed's CPU op, built for this install if it is not yet (the first start's 40 s or more).
BUILD_CPU_OP = """
import torch
import xmod_pretrain.training.distributed as d
if not torch.cuda.is_available() and not d.cpu_comm_build_is_current(d.use_own_extensions_dir()):
    d.init_distributed(600)
"""


def pytest_configure(config: pytest.Config) -> None:
    """Build DeepSpeed's CPU op once, before any test starts a trainer. Left to the tests, the
    first trainer of each xdist worker builds it at once into one folder: torch's lock file makes
    one wait, silently, for the other's build (minutes of a test's timeout on a busy machine),
    and a test that kills a trainer during its build leaves the lock behind, on which every
    later start waits for ever."""
    if not hasattr(config, "workerinput"):  # the controller (or -n 0); workers start after it
        subprocess.run([sys.executable, "-c", BUILD_CPU_OP], check=True, timeout=900)


# The order files are handed to the xdist workers (--dist loadfile, --no-loadscope-reorder in
# pyproject): files that launch processes first, then files of in-process engines and benchmarks,
# then pure unit tests. A long file started last would keep one worker busy while the other idles;
# ending on many short files lets both finish together.
TIERS = ("integration", "slow")


def file_tier(items: list[pytest.Item]) -> int:
    """The first of TIERS that marks any test of the file, len(TIERS) for pure unit tests."""
    marks = {mark.name for item in items for mark in item.iter_markers()}
    return next((i for i, name in enumerate(TIERS) if name in marks), len(TIERS))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    by_file: dict[Path, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    tiers = {path: file_tier(file_items) for path, file_items in by_file.items()}
    items.sort(key=lambda item: tiers[item.path])  # stable: files stay whole and in their order


def write_tiny_corpus(folder: Path, lines_per_language: int = 400) -> Path:
    """The first lines of four bundled languages (three scripts) as <lang>.txt files."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in TINY_LANGUAGES:
        with lzma.open(BUNDLE / f"{lang}.txt.xz", "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(lines_per_language)]
        (folder / f"{lang}.txt").write_text("".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus, tmp_path_factory) -> Path:
    """Prepared shards + a 600-piece tokenizer for the tiny corpus."""
    from data_prep.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    prepare(str(tiny_corpus), out, vocab_size=600, valid_fraction=0.1, workers=1)
    return out


# Trained runs built once per suite, across both xdist workers (tests/support/runs.py).
from tests.support.runs import (  # noqa: E402,F401
    run_2_steps,
    run_4_steps,
    run_30_steps,
    shared_data,
)
