"""Shared fixtures: a tiny real corpus cut from the bundled one, prepared once per session."""

from __future__ import annotations

import lzma
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "data_prep" / "corpus" / "debian_ig"
TINY_LANGUAGES = ("en_XX", "de_DE", "ru_RU", "el_GR")

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
