"""A command that refuses writes nothing: the run directory hashes the same before and after,
and an output that did not exist is not left half-made. The commands run in this process
(``cli_here``): a refusal comes before any training, and the subprocess path is the other files'."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.commands import one_error_line
from tests.support.launch import cli_here, demo_args, tree_hash
from tests.support.runs import copy_run
from xmod_pretrain.checkpoint.layout import latest_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(run_2_steps, tmp_path_factory) -> Path:
    """A finished 2-step run with one checkpoint: a copy of the shared one (the trainer starts
    here take the run's lock), trained on ``shared_data``."""
    return copy_run(run_2_steps, tmp_path_factory.mktemp("trained") / "run")


@pytest.mark.parametrize("overrides,message", [
    (["model.hidden_size=32"], "was trained with another model (hidden_size 64 -> 32)"),
    (["train.resume=false", "train.max_steps=4"], "holds checkpoints and train.resume=false"),
])
def test_a_refused_resume_leaves_the_run_byte_identical(trained, shared_data, overrides, message):
    before = tree_hash(trained)
    proc = cli_here(*demo_args(trained, shared_data, *overrides))
    assert message in one_error_line(proc)
    assert tree_hash(trained) == before


def test_resume_true_on_a_new_run_dir_creates_nothing(tiny_data, tmp_path):
    proc = cli_here(*demo_args(tmp_path / "new", tiny_data, "train.resume=true"))
    assert "train.resume=true but" in one_error_line(proc)
    assert not (tmp_path / "new").exists()


def test_max_steps_already_reached_says_so_and_exits_0_without_validating(trained, shared_data):
    before = tree_hash(trained)
    proc = cli_here(*demo_args(trained, shared_data, "train.max_steps=2"))
    assert "is at step 2 and train.max_steps=2: nothing to train" in proc.stdout
    assert "valid @ step" not in proc.stdout  # no validation pass, no DeepSpeed start
    assert tree_hash(trained) == before


def test_add_language_refuses_an_existing_run_as_out(trained, tmp_path):
    other = tmp_path / "other"  # a pre-training run's top level: its config and the user's notes
    other.mkdir()
    (other / "config.yaml").write_bytes((trained / "config.yaml").read_bytes())
    (other / "notes.txt").write_text("mine")
    before_source, before_other = tree_hash(trained), tree_hash(other)
    proc = cli_here("add-language", "--lang", "yo_NG", "--from", str(trained),
                    "--out", str(other))
    assert "already holds a pretrain run, not an add-language run of yo_NG" in one_error_line(proc)
    assert tree_hash(trained) == before_source and tree_hash(other) == before_other


def test_add_language_refuses_an_out_inside_checkpoints(trained):
    before = tree_hash(trained)
    proc = cli_here("add-language", "--lang", "yo_NG", "--from", str(trained),
               "--out", str(trained / "checkpoints" / "step_zz"))
    assert "inside the checkpoints folder" in one_error_line(proc)
    assert tree_hash(trained) == before


def test_a_failed_add_language_leaves_no_half_made_run(trained, tmp_path):
    text = tmp_path / "yo.txt"
    text.write_text("\n\n")  # no usable line: preparation fails after the run dir was made
    out = tmp_path / "grown"
    proc = cli_here("add-language", "--lang", "yo_NG", "--from", str(trained),
                    "--out", str(out), "--text", str(text), "data.seq_len=64")
    assert "yo_NG" in one_error_line(proc)
    assert not out.exists()


def test_export_refuses_a_checkpoint_and_a_non_empty_folder(trained, tmp_path):
    checkpoint = latest_checkpoint(trained)
    before = tree_hash(trained)
    proc = cli_here("export", "--from", str(trained), "--out", str(checkpoint))
    assert "inside the checkpoints folder of a run" in proc.stderr and proc.returncode == 1
    assert tree_hash(trained) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    proc = cli_here("export", "--from", str(trained), "--out", str(mine))
    assert "not empty" in proc.stderr and proc.returncode == 1
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]
    proc = cli_here("export", "--from", str(trained), "--out", str(mine), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (mine / "model.safetensors").is_file() and (mine / "keep.txt").is_file()


def test_export_refuses_prepared_data_even_with_overwrite(trained, tiny_data):
    before = tree_hash(tiny_data)
    proc = cli_here("export", "--from", str(trained), "--out", str(tiny_data),
                    "--overwrite")
    assert proc.returncode == 1 and "holds prepared data (manifest.json)" in proc.stderr
    assert tree_hash(tiny_data) == before


def test_evaluate_refuses_another_run_as_out(trained, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    before = tree_hash(other)
    proc = cli_here("evaluate", "--from", str(trained), "--out", str(other))
    assert proc.returncode == 1 and "is another run: its report would show" in proc.stderr
    assert tree_hash(other) == before


@pytest.mark.parametrize("command", ["remove-language", "save-language"])
def test_language_commands_refuse_an_out_inside_checkpoints(trained, command):
    before = tree_hash(trained)
    proc = cli_here(command, "--lang", "de_DE", "--from", str(trained),
               "--out", str(trained / "checkpoints" / "step_zz"))
    assert proc.returncode == 1 and "inside the checkpoints folder" in proc.stderr
    assert tree_hash(trained) == before


def test_base_without_data_says_what_it_needs_and_writes_nothing(tmp_path):
    """``+exp=base`` on a new machine: one paragraph with the tokenizer, the prepare command and
    its cost, exit 1, and no run directory or data folder made."""
    run, data = tmp_path / "run", tmp_path / "xmod-base"
    line = one_error_line(cli_here("+exp=base", f"run_dir={run}", f"data.dir={data}"))
    for part in (f"no prepared data in {data} and data.source is null", "sentencepiece.bpe.model",
                 "models--FacebookAI--xlm-roberta-base",
                 f"xmod_pretrain prepare --source CORPUS --tokenizer sentencepiece.bpe.model "
                 f"--out {data}", "70 s a GB"):
        assert part in line, part
    assert not run.exists() and not data.exists()
