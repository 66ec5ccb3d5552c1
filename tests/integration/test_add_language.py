"""Post-hoc languages through the real CLI: exactness, frozen optimizer, bad input."""

from __future__ import annotations

import json
import lzma
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.commands import TRAIN, add_language, one_error_line, weights_of
from tests.support.corpora import documents, write_fineweb
from tests.support.launch import cli_here, read_metrics, run_training, tree_hash
from xmod_pretrain.checkpoint.language_files import language_manifest
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.model.xmod import XmodForMaskedLM, language_of_parameter
from xmod_pretrain.recipes.add_language.recipe import (
    BUNDLED_TEXT,
    AddLanguageError,
    build_grown_model,
    plan_add_language,
)
from xmod_pretrain.runs.records import load_config, open_run
from xmod_pretrain.training.distributed import DistInfo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def source_run(run_30_steps) -> Path:
    """The shared 30-step run (tests/support/runs.py); every test here only reads it."""
    return run_30_steps


def test_add_yoruba_trains_only_its_modules(source_run, tmp_path):
    before = tree_hash(source_run)
    out = tmp_path / "grown"
    proc = add_language("--lang", "yo_NG", "--from", str(source_run), "--out", str(out),
                        "--steps", "40", *TRAIN)
    assert tree_hash(source_run) == before  # the source run is never modified
    old, new = weights_of(source_run), weights_of(out)
    yo_keys = {k for k in new if language_of_parameter(k) == "yo_NG"}
    assert yo_keys and set(new) == set(old) | yo_keys
    for key, value in old.items():  # every other tensor, bit for bit
        assert torch.equal(value, new[key]), key
    # The optimizer held exactly the yo_NG modules.
    trainable = sum(new[k].numel() for k in yo_keys)
    assert f"optimizer: {trainable:,} trainable parameters" in proc.stdout
    # yo_NG's is the one language file the run wrote: the others are the source's, hard-linked.
    source_checkpoint, grown_checkpoint = latest_checkpoint(source_run), latest_checkpoint(out)
    source_files = language_manifest(source_checkpoint)
    grown_files = language_manifest(grown_checkpoint)
    assert set(grown_files) == {*source_files, "yo_NG"}
    for code, entry in source_files.items():
        linked = grown_checkpoint.parent / grown_files[code]["file"]
        assert linked.stat().st_ino == (source_checkpoint.parent / entry["file"]).stat().st_ino
    # Outputs of every existing language are bit-identical on the same inputs.
    old_model, new_model = _model(source_run), _model(out)
    ids = torch.randint(4, old_model.config.vocab_size - 1, (2, 24))
    for i, lang in enumerate(old_model.languages):
        assert torch.equal(old_model(ids, i).logits, new_model(ids, i).logits), lang
    # yo_NG perplexity falls, and beats the best existing language's modules on Yoruba.
    _, valid = read_metrics(out)
    assert valid[-1]["lang_loss"]["yo_NG"] < valid[0]["lang_loss"]["yo_NG"] - 0.05
    transfer = next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                    if r.get("split") == "transfer")
    assert transfer["own"] < transfer["via"][transfer["best_existing"]]
    assert "through" in proc.stdout and "yo_NG" in proc.stdout
    # Retrieval scores the added language through the best existing modules recorded here too.
    proc = subprocess.run([sys.executable, "-m", "xmod_pretrain", "transfer", "--from", str(out),
                           "--task", "udhr-retrieval", "--targets", "yo_NG", "de_DE"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "grown-udhr-retrieval" / "transfer.json").read_text())
    assert summary["best_existing"] == {"yo_NG": transfer["best_existing"]}
    assert {r["language"] for r in summary["rows"]
            if r["scored_by"] == "best existing modules"} == {"yo_NG"}
    assert f"yo_NG through {transfer['best_existing']}'s" in proc.stdout


def _model(run: Path) -> XmodForMaskedLM:
    ckpt = open_run(run)
    model = XmodForMaskedLM(ckpt.config.model)
    model.load_state_dict(ckpt.weights(), strict=False)
    return model.eval()


# With every shared weight frozen DeepSpeed holds no optimizer: ZeRO-1/2 have nothing to
# partition and run as ZeRO-0 (engine.deepspeed_config), so ZeRO-2 on two ranks stands for 0-2
# (one rank: test_add_yoruba_trains_only_its_modules); ZeRO-3 still shards the frozen weights,
# here on two ranks of different languages.
@pytest.mark.parametrize("stage,nproc", [(2, 2), (3, 2)])
def test_optimizer_holds_only_new_modules(source_run, tmp_path, stage, nproc):
    out = tmp_path / "grown"
    proc = add_language("--lang", "yo_NG", "--from", str(source_run), "--out", str(out),
                        "--steps", "2", f"deepspeed=zero{stage}", *TRAIN, nproc=nproc)
    new = weights_of(out)
    trainable = sum(v.numel() for k, v in new.items() if language_of_parameter(k) == "yo_NG")
    assert f"optimizer: {trainable:,} trainable parameters" in proc.stdout
    old = weights_of(source_run)
    assert all(torch.equal(v, new[k]) for k, v in old.items())


def test_init_copy_and_average(source_run, tmp_path):
    cfg = load_config(source_run / "config.yaml")
    cfg.run_dir = str(tmp_path / "x")
    cfg.add_language.source_run, cfg.add_language.languages = str(source_run), ["yo_NG"]
    plan = plan_add_language(cfg, DistInfo(0, 1, 0, 1))
    cfg.model = plan.model_cfg

    def grown_with(init: str) -> XmodForMaskedLM:
        cfg.add_language.init = init
        return build_grown_model(plan, cfg)

    a, b = plan.source.languages[:2]
    copy = grown_with(f"copy:{a}").state_dict()
    avg = grown_with(f"avg:{a}+{b}").state_dict()
    for key in (k for k in copy if language_of_parameter(k) == "yo_NG"):
        assert torch.equal(copy[key], copy[key.replace(".yo_NG.", f".{a}.")])
        mean = (avg[key.replace(".yo_NG.", f".{a}.")] + avg[key.replace(".yo_NG.", f".{b}.")]) / 2
        assert torch.allclose(avg[key], mean)
    with pytest.raises(AddLanguageError, match="has no sw_KE"):
        grown_with("copy:sw_KE")
    with pytest.raises(ValueError, match="add_language.init"):
        grown_with("copy:xx")


def test_two_languages_each_on_its_own_text(source_run, tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    for lang, source in (("yo_NG", "yo_NG"), ("pt_BR", "pt_XX")):
        with lzma.open(BUNDLED_TEXT / f"{source}.txt.xz", "rt", encoding="utf-8") as f:
            (texts / f"{lang}.txt").write_text(f.read(), encoding="utf-8")
    out = tmp_path / "grown"
    add_language("--lang", "yo_NG", "--lang", "pt_BR", "--from", str(source_run), "--out", str(out),
                 "--text", str(texts), "--steps", "10", *TRAIN)
    train, _ = read_metrics(out)
    assert set().union(*(r["lang_loss"] for r in train)) <= {"yo_NG", "pt_BR"}
    assert open_run(out).languages[-2:] == ["yo_NG", "pt_BR"]


@pytest.mark.parametrize("args,message", [
    (["--lang", "yoruba"], "not of the form xx_YY"),
    (["--lang", "en_XX"], "already in"),
    (["--lang", "yo_NG", "--text", "EMPTY"], "yo_NG"),
    (["--lang", "yo_NG", "--from", "MISSING"], "does not exist"),
])
def test_bad_input_is_refused_and_nothing_changes(source_run, tmp_path, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = [str(empty) if a == "EMPTY" else str(tmp_path / "nope") if a == "MISSING" else a
            for a in args]
    if "--from" not in args:
        args += ["--from", str(source_run)]
    before = tree_hash(source_run)
    proc = add_language(*args, "--out", str(tmp_path / "out"), *TRAIN, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert tree_hash(source_run) == before


def test_a_fineweb2_folder_of_flores_codes_pretrains_and_grows(tmp_path):
    """The long tail's path: +exp=demo on a folder in FineWeb-2's layout (xxx_Xxxx codes), then
    add-language --lang yor_Latn from the same folder; yo_NG, its other code, is answered with
    the model's own."""
    docs = {code: documents(code, count=60) for code in ("deu_Latn", "eng_Latn", "yor_Latn")}
    fineweb = write_fineweb(tmp_path / "fineweb-2", docs)
    run = tmp_path / "run"
    run_training(run, tmp_path / "data", "data.languages=[deu_Latn,eng_Latn]",
                 "model.languages=[deu_Latn,eng_Latn]", "data.vocab_size=600",
                 "train.max_steps=2", "train.eval_every=0", source=str(fineweb))
    assert open_run(run).config.model.languages == ["deu_Latn", "eng_Latn"]
    out = tmp_path / "grown"
    add_language("--lang", "yor_Latn", "--from", str(run), "--text", str(fineweb), "--out",
                 str(out), "--steps", "2", *TRAIN)
    assert open_run(out).config.model.languages == ["deu_Latn", "eng_Latn", "yor_Latn"]
    assert any(language_of_parameter(key) == "yor_Latn" for key in weights_of(out))
    refused = add_language("--lang", "de_DE", "--from", str(run), "--out", str(tmp_path / "x"),
                           check=False)
    assert refused.returncode == 1
    assert f"--lang de_DE is deu_Latn of {run}, the same language in the model's code form: " \
        "use --lang deu_Latn" in refused.stderr
    # Bundled text exists for yo_NG, which is yor_Latn: named, not "no text".
    line = one_error_line(cli_here("add-language", "--lang", "yor_Latn", "--from", str(run),
                                   "--out", str(tmp_path / "y")))
    assert "no bundled text for yor_Latn: the bundled text calls that language yo_NG; use " \
        "--lang yo_NG, or pass --text PATH" in line
    for command in (["save-language", "--lang", "en_XX", "--out", str(tmp_path / "m")],
                    ["evaluate", "--langs", "en_XX", "--out", str(tmp_path / "e")]):
        line = one_error_line(cli_here(*command, "--from", str(run)))
        assert re.search(r"has no language '?en_XX'?: this model calls that language eng_Latn; "
                         "use eng_Latn", line), line
