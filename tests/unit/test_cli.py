"""The console script's help and command dispatch, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from xmod_pretrain.cli import COMMANDS, LANGUAGE_COMMANDS, TOOLS, add_language_overrides

EXPECTED = ("train", "add-language", "prepare", "export", "evaluate", "report", "transfer",
            "save-language",
            "load-language", "remove-language")


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "xmod_pretrain", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_every_dispatched_command_is_listed():
    assert tuple(COMMANDS) == EXPECTED
    assert {"train", "add-language", *TOOLS, *LANGUAGE_COMMANDS} == set(COMMANDS)


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_lists_every_command(flag):
    proc = cli(flag)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(EXPECTED)
    assert "xmod_pretrain [train] [+exp=NAME]" in proc.stdout
    assert "COMMAND --help" in proc.stdout and "train --hydra-help" in proc.stdout


@pytest.mark.parametrize("command", EXPECTED)
def test_each_command_has_its_own_help(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout


def test_unknown_command_is_one_line_listing_the_commands():
    proc = cli("trian", "+exp=demo")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"xmod_pretrain: unknown command 'trian' (commands: {', '.join(EXPECTED)})"]


def test_add_language_steps_keep_the_experiments_warmup_share():
    """``--steps 20`` with the experiment's 20 warmup steps would be all warmup."""
    overrides = add_language_overrides(["--lang", "yo_NG", "--from", "runs/x", "--steps", "20"])
    assert "train.max_steps=20" in overrides and "optim.warmup_steps=2" in overrides
    mine = add_language_overrides(["--lang", "yo_NG", "--from", "runs/x", "--steps", "20",
                                   "optim.warmup_steps=5"])
    assert [o for o in mine if o.startswith("optim.warmup_steps=")] == ["optim.warmup_steps=5"]
