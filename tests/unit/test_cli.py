"""The console script's help and command dispatch, run as a user runs it (a subprocess), and
each command's help through the same dispatch in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xmod_pretrain.cli import COMMANDS, LANGUAGE_COMMANDS, TOOLS, main

# The tests run the console script in a subprocess, as a user does, but for each command's help.
pytestmark = pytest.mark.integration


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "xmod_pretrain", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help_lists_every_command(flag):
    proc = cli(flag)
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    assert "xmod_pretrain [train] [+exp=NAME]" in proc.stdout
    assert "COMMAND --help" in proc.stdout and "train --hydra-help" in proc.stdout


# Every command the help lists and every one dispatched to a module of its own: a dispatched
# command the listing lacks is refused as unknown here. The console script's own dispatch, in
# this process (the subprocess above shows ``python -m xmod_pretrain`` reaches it).
@pytest.mark.parametrize("command", dict.fromkeys([*COMMANDS, *TOOLS, *LANGUAGE_COMMANDS]))
def test_each_command_has_its_own_help(command, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["xmod_pretrain"])  # Hydra's help names the program from it
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code in (0, None), out
    assert out.startswith("usage:"), out


def test_unknown_command_is_one_line_listing_the_commands():
    proc = cli("trian", "+exp=demo")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"xmod_pretrain: unknown command 'trian' (commands: {', '.join(COMMANDS)})"]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """A refusal: exit status 1 and one line on stderr, no traceback."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xmod_pretrain: error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("args, names", [
    (["train.max_step=3"], "unknown config key(s) train.max_step (did you mean train.max_steps?)"),
    (["+train.max_step=3"], "unknown config key(s) train.max_step (did you mean train.max_steps?)"),
    (["train.lr=1"], "unknown config key(s) train.lr (did you mean optim.lr?)"),
    (["deepspeed=zero4"], "deepspeed=zero4: config group deepspeed has no option zero4 (did you "
                          "mean zero3?); its options: zero0, zero1, zero2, zero2_offload, zero3"),
    (["--cfg", "job", "train.max_step=3"], "train.max_step (did you mean train.max_steps?)"),
    (["--multirun", "train.max_step=1,2"], "train.max_step (did you mean train.max_steps?)"),
])
def test_an_unknown_key_or_group_option_is_one_line_naming_the_closest(args, names, tmp_path):
    """Not Hydra's lines and its hint to add ``+train.max_step``, which the schema refuses."""
    work = tmp_path / "work"  # the working directory, where --multirun makes its sweep folder
    work.mkdir()
    line = one_error_line(cli(*args[:-1], "+exp=demo", args[-1], f"run_dir={tmp_path / 'run'}",
                              cwd=work))
    assert names in line and "xmod_pretrain train --help lists every config group, key" in line
    assert not (tmp_path / "run").exists()


def test_a_misspelt_experiment_is_one_line_naming_the_closest():
    line = one_error_line(cli("+exp=dem"))
    assert line == ("xmod_pretrain: error: exp=dem: config group exp has no option dem (did you "
                    "mean demo?); its options: add_language, base, curse, demo, large, transfer "
                    "(xmod_pretrain train --help lists every config group, key and value)")


@pytest.mark.parametrize("override, line", [
    ("train.precision=fp17", "train.precision=fp17 is not allowed: one of fp32, bf16"),
    ("train.precision=bf15", "train.precision=bf15 is not allowed: one of fp32, bf16 "
                             "(did you mean bf16?)"),
    ("train.max_steps=abc", "train.max_steps=abc: Value 'abc' of type 'str' could not be "
                            "converted to Integer"),
    ("train.max_steps=[1", "cannot read the override 'train.max_steps=[1': no viable "
                           "alternative at input '[1' (Hydra's override grammar)"),
    ("run_dir=runs/${nme}", "run_dir: Interpolation key 'nme' not found"),
])
def test_a_bad_value_is_one_line_naming_the_key_and_what_is_allowed(override, line):
    assert one_error_line(cli("+exp=demo", override)) == f"xmod_pretrain: error: {line}"



def test_a_command_run_in_a_callers_process_group_leaves_it_joined(capsys):
    """In-process use (a notebook, a test): the caller's process group, which DeepSpeed caches
    its own groups on, outlives a command that succeeded; a command leaves only a group it
    joined itself."""
    import torch.distributed as dist

    from bench.common import single_process_group
    from xmod_pretrain.cli import main

    with single_process_group():
        main(["--help"])
        assert "commands:" in capsys.readouterr().out
        assert dist.is_initialized()
