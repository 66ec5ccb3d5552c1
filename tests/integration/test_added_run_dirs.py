"""Where add-language (and every other command) writes: the README's two add-language commands
in order write runs of their own, an ``--out`` holding another request's run is refused before
any write, a start killed while preparing its text is started again by the same command, and no
command writes inside a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.commands import TRAIN, add_language, one_error_line, weights_of
from tests.support.launch import TINY_MODEL, cli_here, tree_hash
from tests.support.runs import copy_run
from xmod_pretrain.checkpoint.layout import latest_checkpoint

pytestmark = pytest.mark.integration
UDHR_YORUBA = Path(__file__).resolve().parents[2] / "data_prep" / "corpus" / "udhr" / "yo_NG.txt.xz"


@pytest.fixture(scope="module")
def source(run_2_steps, tmp_path_factory) -> Path:
    """A finished 2-step run: a copy of the shared one, in a folder of its own, since
    add-language's default --out is beside it."""
    return copy_run(run_2_steps, tmp_path_factory.mktemp("source") / "run")


@pytest.fixture(scope="module")
def added(source) -> Path:
    """The README's first command: ``add-language --lang yo_NG``, into its default --out."""
    add_language("--lang", "yo_NG", "--from", str(source), "--steps", "2", *TRAIN)
    return Path(f"{source}+yo_NG")


def test_the_readmes_commands_in_order_write_runs_of_their_own(source, added):
    before = tree_hash(added)
    add_language("--lang", "yo_NG", "--from", str(source), "--extend-vocab", "16",
                 "--steps", "2", *TRAIN)
    grown = Path(f"{source}+yo_NG+vocab16")
    assert latest_checkpoint(grown) is not None
    assert (grown / "vocabulary" / "tokenizer.json").is_file()
    assert tree_hash(added) == before  # nothing of the second run in the first


def test_an_out_holding_another_request_is_refused_naming_what_differs(source, added):
    before = tree_hash(added)
    proc = cli_here("add-language", "--lang", "yo_NG", "--from", str(source),
                    "--extend-vocab", "16", "--out", str(added), "--steps", "2", *TRAIN)
    line = one_error_line(proc)
    assert f"--out {added} holds another run than an add-language run of yo_NG" in line
    assert "--extend-vocab none (asked: 16)" in line
    assert tree_hash(added) == before


def test_the_same_command_resumes_its_run(source, added):
    """Repeating the first command with more steps continues it (the request is the same)."""
    weights = weights_of(added)
    proc = add_language("--lang", "yo_NG", "--from", str(source), "--steps", "3", *TRAIN)
    assert "resumed from" in proc.stdout
    assert "never reached a checkpoint" not in proc.stderr
    assert weights_of(added).keys() == weights.keys()


def inside(run: Path) -> Path:
    return run / "sub"


@pytest.mark.parametrize("command", [
    lambda run, data: ["add-language", "--lang", "yo_NG", "--from", str(run),
                       "--out", str(inside(run))],
    lambda run, data: ["export", "--from", str(run), "--out", str(inside(run))],
    lambda run, data: ["remove-language", "--lang", "de_DE", "--from", str(run),
                       "--out", str(inside(run))],
    lambda run, data: ["prepare", "--source", str(data), "--out", str(inside(run))],
    lambda run, data: ["+exp=demo", f"run_dir={inside(run)}", f"data.dir={data}",
                       "data.source=null", *TINY_MODEL],
], ids=["add-language", "export", "remove-language", "prepare", "train"])
def test_no_command_writes_inside_a_run(source, tiny_data, command):
    before = tree_hash(source)
    line = one_error_line(cli_here(*command(source, tiny_data)))
    assert f"{inside(source)} is inside the run {source}" in line
    assert tree_hash(source) == before


def test_evaluate_writes_into_its_own_run_only(source, added):
    before = tree_hash(added)
    line = one_error_line(cli_here("evaluate", "--from", str(source),
                                   "--out", str(inside(added))))
    assert f"{inside(added)} is inside the run {added}" in line
    assert tree_hash(added) == before


def test_a_start_killed_while_preparing_its_text_is_started_again(source, tmp_path):
    """kill -9 during the text preparation leaves a run with no checkpoint; the same command
    says so and trains it, where it refused the folder as "something else" before."""
    text = tmp_path / "yo_NG.txt"  # large enough that preparing it takes a few seconds
    lines = subprocess.run(["xz", "-dc", str(UDHR_YORUBA)], capture_output=True, text=True,
                           check=True).stdout
    text.write_text(lines * 2000, encoding="utf-8")
    out = tmp_path / "grown"
    args = ["--lang", "yo_NG", "--from", str(source), "--out", str(out), "--text", str(text),
            "--steps", "2", *TRAIN]
    proc = subprocess.Popen([sys.executable, "-c", "from xmod_pretrain.cli import main; main()",
                             "add-language", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stdout:
            if line.startswith("preparing yo_NG"):
                break
        while not any((out / "data").glob("*")):  # inside data_prep: the folder is half-made
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert (out / "config.yaml").is_file() and not (out / "data" / "manifest.json").exists()
    again = add_language(*args)
    assert "holds a start of an add-language run of yo_NG" in again.stderr
    assert "never reached a checkpoint: starting it again" in again.stderr
    assert latest_checkpoint(out) is not None


def test_a_mistyped_from_is_refused_with_the_closest_name(source):
    typo = source.with_name("rnu")
    line = one_error_line(cli_here("add-language", "--lang", "yo_NG", "--from", str(typo)))
    assert f"--from {typo} does not exist (did you mean {source}?)" in line
    assert not Path(f"{typo}+yo_NG").exists()


@pytest.mark.parametrize("command", [["export", "--out", "x"], ["evaluate"], ["report"],
                                     ["save-language", "--lang", "de_DE", "--out", "x"]])
def test_every_command_names_the_closest_run_to_a_mistyped_from(source, command):
    typo = source.with_name("rnu")
    line = one_error_line(cli_here(command[0], "--from", str(typo), *command[1:]))
    assert f"run directory {typo} does not exist (did you mean {source}?)" in line
