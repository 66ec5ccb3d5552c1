"""Command line: ``xmod_pretrain {train,prepare} ...``.

``xmod_pretrain train +exp=demo`` (or just ``xmod_pretrain +exp=demo``) is the same Hydra app as
``python -m xmod_pretrain +exp=demo``; ``prepare`` turns raw text into a tokenizer and shards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from xmod_pretrain.config import register_configs

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _train(cfg: DictConfig) -> None:
    from xmod_pretrain.train import run

    run(OmegaConf.to_object(cfg))


def train_main() -> None:
    """The Hydra app; any Hydra override may follow (``+exp=base train.max_steps=10``)."""
    register_configs()
    app = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(_train)
    app()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith(("+", "-")) and "=" not in argv[0] else "train"
    if command == "prepare":
        from data_prep.prepare import main as prepare_main

        sys.exit(prepare_main(argv[1:]))
    if command != "train":
        sys.exit(f"xmod_pretrain: unknown command {command!r} (commands: train, prepare)")
    if argv and argv[0] == "train":
        argv = argv[1:]
    sys.argv = [f"{sys.argv[0]} train", *argv]
    train_main()
