"""``xmod_pretrain curse`` end to end at a tiny size, and the shared baseline it trains
(``data.shared_module``): every language through one module set."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.support.launch import TINY_MODEL, cli_here, read_metrics
from xmod_pretrain.cli import main as cli_main
from xmod_pretrain.model.xmod import language_of_parameter
from xmod_pretrain.runs.records import open_run
from xmod_pretrain.training.distributed import WORLD_OF_ONE

pytestmark = pytest.mark.integration

ORDER = ("en_XX", "de_DE", "ru_RU")  # three of the tiny corpus's four languages
EVAL = ("en_XX", "de_DE")
NS = (2, 3)


def curse(out, data_dir, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "xmod_pretrain", "curse", "--out", str(out),
           f"data.dir={data_dir}", "data.source=null", *TINY_MODEL, "train.max_steps=3",
           "train.log_every=1", *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env,
                          check=False)


@pytest.fixture(scope="module")
def experiment(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("curse") / "curse"
    proc = curse(out, tiny_data, "--languages", *ORDER, "--eval-languages", *EVAL,
                 "--ns", *map(str, NS))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def module_languages(run_dir) -> dict[int, set[str]]:
    """Per layer, the languages that have module weights in the run's latest checkpoint."""
    layers: dict[int, set[str]] = {}
    for name in open_run(run_dir).weights():
        lang = language_of_parameter(name)
        if lang is not None:
            layer = int(name.split(".layer.")[1].split(".")[0])
            layers.setdefault(layer, set()).add(lang)
    return layers


def test_shared_run_has_one_module_set_and_validates_every_language(experiment):
    out, _ = experiment
    shared, xmod = module_languages(out / "shared-3"), module_languages(out / "xmod-3")
    assert len(shared) == 2 and all(langs == {"mul_XX"} for langs in shared.values())
    assert all(langs == set(ORDER) for langs in xmod.values())
    train, valid = read_metrics(out / "shared-3")
    assert set(valid[-1]["lang_loss"]) == set(ORDER) and valid[-1]["step"] == 3
    assert {lang for r in train for lang in r["lang_loss"]} == {"mul_XX"}  # one module trained


def test_shared_run_evaluates_through_its_module(experiment, capsys, tmp_path):
    """``evaluate`` on a shared run: each data language through mul_XX, and one draw gives the
    trainer's last validation."""
    run = experiment[0] / "shared-2"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["evaluate", "--from", str(run), "--draws", "1", "--out", str(tmp_path)])
    assert exit_.value.code == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "evaluation.json").read_text())["rows"]
    assert [(r["language"], r["modules"]) for r in rows] == [(lang, "mul_XX") for lang in ORDER[:2]]
    last = read_metrics(run)[1][-1]["lang_loss"]
    assert {r["language"]: r["loss"] for r in rows} == pytest.approx(last, abs=1e-5)


def test_outputs(experiment):
    out, stdout = experiment
    summary = json.loads((out / "curse.json").read_text())
    assert [(r["variant"], r["n"]) for r in summary["runs"]] == [
        (v, n) for n in NS for v in ("xmod", "shared")]
    for run in summary["runs"]:  # same active parameters per language, more in all for X-MOD
        assert run["step"] == 3 and set(run["lang_loss"]) == set(ORDER[:run["n"]])
    by = {(r["variant"], r["n"]): r for r in summary["runs"]}
    for n in NS:
        assert by["xmod", n]["active_parameters"] == by["shared", n]["active_parameters"]
        assert by["xmod", n]["parameters"] > by["shared", n]["parameters"]
    with open(out / "curse.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = {(r["variant"], int(r["n"]), r["language"]) for r in rows}
    assert cells == {(v, n, lang) for v in ("xmod", "shared") for n in NS
                     for lang in (*EVAL, "mean")}
    assert all(1 < float(r["ppl"]) < 1e5 for r in rows)
    for run in summary["runs"]:  # each run's output in its log, the driver's lines on stdout
        log = (out / f"{run['variant']}-{run['n']}" / "train.log").read_text()
        assert "done: step 3/3" in log and "MFU peak" in log and "starting DeepSpeed" in log
    assert "done: step" not in stdout and "starting DeepSpeed" not in stdout
    table = (out / "curse.md").read_text()
    assert "| n=2 | n=3 |" in table and table.count("| X-MOD |") == table.count("| shared |") == 3
    assert table in stdout
    png = out / "curse.png"
    assert png.stat().st_size > 20_000
    width, height = Image.open(png).size
    assert width >= 900 and height >= 350


def in_process(out, data_dir, *args: str) -> subprocess.CompletedProcess:
    """``xmod_pretrain curse`` run in this process: the experiment's runs are done, and only the
    transfers train here."""
    return cli_here("curse", "--out", str(out), f"data.dir={data_dir}", "data.source=null",
                    *TINY_MODEL, "train.max_steps=3", "train.log_every=1", *args)


def test_rerun_keeps_complete_runs(experiment, tiny_data):
    out, _ = experiment
    done = in_process(out, tiny_data, "--languages", *ORDER, "--eval-languages", *EVAL,
                      "--ns", *map(str, NS))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("kept") == 4 and "training:" not in done.stdout


def test_other_settings_are_refused(experiment, tiny_data):
    out, _ = experiment
    done = in_process(out, tiny_data, "--languages", *ORDER, "--eval-languages", *EVAL,
                      "--ns", *map(str, NS), "optim.lr=1e-4")
    assert done.returncode == 1
    assert "xmod-2 was trained with other settings (optim differ)" in done.stderr


@pytest.mark.parametrize("args, named", [
    (["--languages", "en_XX", "xx_YY"], "xx_YY not in the prepared data"),
    (["--languages", "en_XX", "de_DE", "--ns", "2", "5"], "between 1 and 2"),
    (["--languages", "en_XX", "de_DE", "--ns", "2", "--eval-languages", "ru_RU"],
     "ru_RU must be among"),
    (["--languages", "en_XX", "english"], "'english' in --languages is not of the form"),
    (["--languages", "en_XX", "de_DE", "--ns", "2", "data.languages=[en_XX]"], "sets run_dir"),
    (["--languages", "en_XX", "de_DE", "--ns", "2", "train.max_step=3"],
     "unknown config key(s) train.max_step (did you mean train.max_steps?)"),
    (["--languages", "en_XX", "de_DE", "--ns", "2", "--transfer", "3"], "not one of --ns"),
    (["--languages", "de_DE", "ru_RU", "en_XX", "--eval-languages", "de_DE", "--ns", "2",
      "--transfer", "2"], "lack en_XX"),
])
def test_bad_input_stops_before_training(tiny_data, tmp_path, args, named):
    done = in_process(tmp_path / "out", tiny_data, "--eval-languages", "en_XX", *args)
    assert done.returncode == 1 and named in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_transfer_comparison_of_the_two_runs(experiment, tiny_data):
    """--transfer fine-tunes both n=3 runs on en_XX and scores de_DE and ru_RU: X-MOD through
    each target's modules, the shared run through its one set (no ablation column to show)."""
    out, _ = experiment
    done = in_process(out, tiny_data, "--languages", *ORDER, "--eval-languages", *EVAL,
                      "--ns", *map(str, NS), "--transfer", "3", "--transfer-steps", "2",
                      "--seeds", "1")
    assert done.returncode == 0, done.stderr
    # The transfers joined a process group here and left it: no launcher variable stays behind
    # for a command this process starts next.
    assert not WORLD_OF_ONE.keys() & os.environ.keys()
    summary = json.loads((out / "curse_transfer.json").read_text())
    assert {(r["task"], r["variant"]) for r in summary["rows"]} == {
        (task, variant) for task in ("guide-topic", "udhr-retrieval")
        for variant in ("xmod", "shared")}
    for row in summary["rows"]:
        table = json.loads((out / "transfer" / f"{row['variant']}-3-{row['task']}"
                            / "transfer.json").read_text())["rows"]
        own = [r["accuracy"] for r in table if r["scored_by"] == "own modules"
               and r["language"] != "en_XX"]
        assert len(own) == 2 and row["accuracy"] == pytest.approx(sum(own) / 2)
        ablation = {r["language"] for r in table if r["scored_by"] == "en_XX modules"}
        assert ablation == (set() if row["variant"] == "shared" else {"de_DE", "ru_RU"})
    assert "| guide-topic | X-MOD |" in (out / "curse_transfer.md").read_text()
