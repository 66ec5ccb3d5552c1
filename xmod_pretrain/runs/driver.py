"""Runs driven from Python, for the commands that drive several of them (transfer's seeds, the
curse's runs): a run's config composed as the command line composes it, and the run started in
this process (on every rank of a torchrun or srun job that calls it, as a training start is).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir

from xmod_pretrain.config import CONF_DIR, Config, register_configs, to_config
from xmod_pretrain.overrides import hydra_errors_as_config_errors
from xmod_pretrain.runs.launch import run
from xmod_pretrain.training.signals import STOP_SIGNALS


def compose_run(overrides: Sequence[str]) -> Config:
    """The config ``xmod_pretrain OVERRIDES`` trains: composed from conf/, every key known and
    every value checked, Hydra's refusals as one-line ConfigErrors."""
    register_configs()
    with hydra_errors_as_config_errors(), initialize_config_dir(config_dir=CONF_DIR,
                                                               version_base="1.3"):
        return to_config(compose("config", overrides=list(overrides)))


def run_in_process(cfg: Config, log: Path | None = None) -> None:
    """Start ``cfg``'s run here and return when it ends (a refusal or failure raises).

    The run installs stop handlers of its own; the caller's come back after it, so that a
    Ctrl-C between runs interrupts the caller rather than being recorded for a trainer that is
    gone. With ``log``, all the run writes to stdout and stderr (DeepSpeed's and torch's too)
    is appended to that file instead."""
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        with output_to(log):
            run(cfg)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """File descriptors 1 and 2 appended to ``log`` (nothing changes for None): the run's output
    comes from Python, from libraries that hold the original streams, and from native code."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "a", encoding="utf-8") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
