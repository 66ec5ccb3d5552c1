"""Runs that read from any directory, after a move, and never on data of another tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.launch import TINY_MODEL, cli_here
from xmod_core.atomic import file_sha256
from xmod_core.shards import MANIFEST

pytestmark = pytest.mark.integration


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The ``xmod_pretrain`` command run in ``cwd``."""
    return cli_here(*args, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return lines[0]


@pytest.fixture(scope="module")
def project(tiny_data, tmp_path_factory) -> Path:
    """A folder holding data/demo and runs/demo, trained with paths relative to it."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tiny_data, root / "data" / "demo")
    proc = cli("+exp=demo", "run_dir=runs/demo", "data.dir=data/demo", "data.source=null",
               *TINY_MODEL, "train.max_steps=3", "train.log_every=1", "train.eval_every=0",
               "train.save_every=0", cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def evaluate(run: Path, cwd: Path) -> subprocess.CompletedProcess:
    return cli("evaluate", "--from", str(run), "--draws", "1", "--batches", "1", "--out",
               str(cwd / "eval"), cwd=cwd)


def test_evaluate_from_elsewhere_and_after_the_project_moved(project, tmp_path):
    saved = (project / "runs" / "demo" / "config.yaml").read_text()
    assert f"dir: {project / 'data' / 'demo'}\n" in saved  # stored absolute
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = evaluate(project / "runs" / "demo", elsewhere)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = json.loads((elsewhere / "eval" / "evaluation.json").read_text())["rows"]
    assert {row["language"] for row in rows} == {"en_XX", "de_DE", "ru_RU", "el_GR"}

    moved = tmp_path / "moved"
    project.rename(moved)
    try:
        proc = evaluate(moved / "runs" / "demo", elsewhere)
        assert proc.returncode == 0, proc.stderr[-4000:]
        rows = json.loads((elsewhere / "eval" / "evaluation.json").read_text())["rows"]
        assert {row["data"] for row in rows} == {str(moved / "data" / "demo")}

        (moved / "data" / "demo").rename(moved / "data" / "gone")
        line = one_line_error(evaluate(moved / "runs" / "demo", elsewhere))
        # found in neither place: the path the run stored is the one named
        assert f"{project / 'data' / 'demo' / MANIFEST} does not exist" in line
        assert str(moved / "runs" / "demo") in line
        (moved / "data" / "gone").rename(moved / "data" / "demo")
    finally:
        moved.rename(project)


def test_resume_on_data_of_another_tokenizer_is_refused(project, tiny_corpus, tmp_path):
    from data_prep.prepare import prepare

    other = tmp_path / "other"  # the same vocabulary size, another tokenizer (other text)
    prepare(str(tiny_corpus), other, vocab_size=600, valid_fraction=0.1, workers=1,
            languages=["en_XX", "de_DE"])
    checkpoint_tokenizer = next((project / "runs" / "demo" / "checkpoints").glob("step_*"))
    checkpoint_tokenizer = checkpoint_tokenizer / "sentencepiece.bpe.model"
    assert file_sha256(checkpoint_tokenizer) != file_sha256(other / "sentencepiece.bpe.model")
    proc = cli("+exp=demo", "run_dir=runs/demo", f"data.dir={other}", "data.source=null",
               "model.languages=[de_DE,el_GR,en_XX,ru_RU]", *TINY_MODEL, "train.max_steps=5",
               cwd=project)
    line = one_line_error(proc)
    assert str(checkpoint_tokenizer) in line and str(other / "sentencepiece.bpe.model") in line
    assert file_sha256(checkpoint_tokenizer)[:12] in line
    assert file_sha256(other / "sentencepiece.bpe.model")[:12] in line


def test_a_mistyped_data_dir_is_not_prepared(tmp_path):
    proc = cli("+exp=demo", f"run_dir={tmp_path / 'run'}", f"data.dir={tmp_path / 'dta'}",
               *TINY_MODEL, cwd=tmp_path)
    line = one_line_error(proc)
    assert line == (f"xmod_pretrain: error: data.dir={tmp_path / 'dta'} holds no manifest.json: "
                    "it is not prepared data. Give the folder prepare wrote, or add "
                    "data.source=bundled to prepare the bundled demo corpus there")
    assert not (tmp_path / "dta").exists() and not (tmp_path / "run").exists()
