"""``xmod_pretrain evaluate`` and ``report`` on a real tiny run (one run for the module)."""

from __future__ import annotations

import csv
import json
import lzma
import shutil

import pytest
from PIL import Image

from tests.conftest import BUNDLE, TINY_LANGUAGES
from tests.support.launch import cli_here, read_metrics
from tests.support.runs import copy_run

pytestmark = pytest.mark.integration

FIGURES = ("loss.png", "lang_loss.png", "lr.png", "tokens_per_s.png", "valid_loss.png")


@pytest.fixture(scope="module")
def run(run_4_steps, tmp_path_factory):
    """The shared 4-step run (a record each step, validation every 2, a checkpoint at 4), copied:
    evaluate writes its table into the run."""
    return copy_run(run_4_steps, tmp_path_factory.mktemp("evaluate") / "run")


def image_size(path) -> tuple[int, int]:
    assert path.stat().st_size > 5_000, path
    return Image.open(path).size


def test_evaluate_prints_and_writes_table(run):
    done = cli_here("evaluate", "--from", str(run), "--draws", "2")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for lang in TINY_LANGUAGES:
        assert f"  {lang} " in out
    assert "mean" in out and "2 mask draw(s)" in out
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["step"] == 4 and saved["draws"] == 2
    with open(run / "evaluation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [r["name"] for r in saved["rows"]]
    for a, b in zip(rows, saved["rows"]):
        assert float(a["loss"]) == pytest.approx(b["loss"], rel=1e-12)
        assert float(a["ppl"]) == pytest.approx(b["ppl"], rel=1e-12)
        assert int(a["targets"]) == b["targets"]
    width, height = image_size(run / "evaluation.png")
    assert width >= 600 and height >= 300


def test_one_draw_reproduces_the_trainers_validation(run, tmp_path):
    """Same batches, same loss function: plain model == the DeepSpeed engine's last validation."""
    done = cli_here("evaluate", "--from", str(run), "--draws", "1", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "evaluation.json").read_text())["rows"]
    last = read_metrics(run)[1][-1]
    assert last["step"] == 4
    assert {r["name"]: r["loss"] for r in rows} == pytest.approx(last["lang_loss"], abs=1e-5)


def test_text_and_adapter_of(run, tmp_path, tiny_corpus):
    german = tmp_path / "de.txt"
    german.write_text("".join((tiny_corpus / "de_DE.txt").read_text().splitlines(True)[-40:]))
    yoruba = tmp_path / "yo.txt"
    with lzma.open(BUNDLE.parent / "udhr" / "yo_NG.txt.xz", "rt", encoding="utf-8") as f:
        yoruba.write_text(f.read())
    done = cli_here("evaluate", "--from", str(run), "--langs", "de_DE", "--draws", "1",
                    "--text", f"de_DE={german}", "--text", f"yo_NG={yoruba}",
                    "--adapter-of", "yo_NG=en_XX", "--adapter-of", "de_DE=ru_RU",
                    "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "out" / "evaluation.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["de_DE", "yo_NG via en_XX", "de_DE via ru_RU"]
    assert rows[0]["data"] == str(german) and rows[1]["data"] == str(yoruba)
    assert "yo_NG via en_XX" in done.stdout


@pytest.mark.parametrize("args, named", [
    (["--langs", "fr_XX"], "fr_XX"),
    (["--adapter-of", "en_XX=yo_NG"], "yo_NG"),
    (["--text", "yo_NG=EMPTY"], "is empty"),
    (["--text", "yo_NG=EMPTY", "--adapter-of", "yo_NG=en_XX"], "is empty"),
])
def test_evaluate_refuses_bad_input(run, tmp_path, args, named):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    args = [a.replace("EMPTY", str(empty)) for a in args]
    done = cli_here("evaluate", "--from", str(run), "--out", str(tmp_path), *args)
    assert done.returncode != 0 and named in done.stderr, done.stderr


def test_evaluate_missing_run(tmp_path):
    done = cli_here("evaluate", "--from", str(tmp_path / "nope"))
    assert done.returncode != 0 and str(tmp_path / "nope") in done.stderr


def test_report_draws_curves_and_page(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("evaluation.*"))
    assert cli_here("report", "--from", str(copy)).returncode == 0
    page = (copy / "report" / "index.html").read_text()
    for name in FIGURES:
        width, height = image_size(copy / "report" / name)
        assert width >= 600 and height >= 300
        assert f'src="{name}"' in page
    for lang in TINY_LANGUAGES:
        assert lang in page
    assert "validation at step 4" in page  # no evaluation.json: the last valid record


def test_report_shows_the_latest_evaluation(run):
    if not (run / "evaluation.json").is_file():
        assert cli_here("evaluate", "--from", str(run), "--draws", "1").returncode == 0
    assert cli_here("report", "--from", str(run)).returncode == 0
    page = (run / "report" / "index.html").read_text()
    assert 'src="evaluation.png"' in page and "xmod_pretrain evaluate" in page


def test_report_without_metrics(tmp_path):
    done = cli_here("report", "--from", str(tmp_path))
    assert done.returncode != 0 and "metrics.jsonl" in done.stderr
