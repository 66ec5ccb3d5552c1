"""save-language, load-language and remove-language on real training runs, through the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_LANGUAGES
from tests.support.commands import TRAIN, add_language
from tests.support.hf import udhr_lines
from tests.support.launch import cli_here, read_metrics, run_training, tree_hash
from xmod_pretrain.checkpoint.language_files import language_manifest
from xmod_pretrain.checkpoint.layout import CheckpointCorrupt
from xmod_pretrain.model.xmod import TIED, XmodForMaskedLM, language_of_parameter
from xmod_pretrain.runs.language_modules import (
    LanguageModuleError,
    base_identity,
    load_language_module,
    remove_language,
    save_language_module,
)
from xmod_pretrain.runs.records import open_run, sidecars

pytestmark = pytest.mark.integration
FAST = ("train.eval_every=0", "train.eval_batches=1")


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def base(run_4_steps) -> Path:
    """The shared 4-step run (tests/support/runs.py), trained on ``shared_data``; every test here
    only reads it (``base_digest`` checks)."""
    return run_4_steps


@pytest.fixture(scope="module")
def base_digest(base) -> str:
    return tree_digest(base)


@pytest.fixture(scope="module")
def other_base(shared_data, tmp_path_factory) -> Path:
    """Another base on ``base``'s data: other weights, the same tokenizer and shapes."""
    run_dir = tmp_path_factory.mktemp("other") / "run"
    run_training(run_dir, shared_data, "train.max_steps=1", "train.seed=2", *FAST)
    return run_dir


@pytest.fixture(scope="module")
def module_file(base, base_digest, tmp_path_factory) -> Path:
    tensors_path, _ = save_language_module(base, "de_DE", tmp_path_factory.mktemp("modules"))
    return tensors_path


def test_module_file_is_small_and_self_describing(base, module_file):
    meta = json.loads(module_file.with_suffix(".json").read_text())
    source = open_run(base)
    assert meta["language"] == "de_DE" and meta["step"] == 4
    assert meta["source_run"] == str(source.path.resolve())
    weights = source.weights()
    assert meta["base_identity"] == base_identity(weights, source.config.model,
                                                  source.tokenizer_sha256())
    # 2 layers x (64x32 + 32 + 32x64 + 64) fp32 = 33,536 bytes of tensors, plus the header.
    assert module_file.stat().st_size < 40_000


def test_load_as_a_new_language_is_bit_exact(base, base_digest, module_file, tmp_path):
    out = load_language_module(base, module_file, tmp_path / "grown", lang="yo_NG")
    source, grown = open_run(base), open_run(out)
    assert grown.languages == [*source.languages, "yo_NG"]
    assert grown.step == source.step and grown.trainer_state["derived_from"]["language"] == "yo_NG"
    old, new = source.weights(), grown.weights()
    added = {n for n in new if language_of_parameter(n) == "yo_NG"}
    assert set(new) == set(old) | added and len(added) == 8
    for name in old:
        assert new[name].dtype == old[name].dtype and torch.equal(new[name], old[name]), name
    for name in added:
        assert torch.equal(new[name], old[name.replace(".yo_NG.", ".de_DE.")]), name
    # The sidecars are the trainer's, byte for byte: its own run's files, and the new run's.
    for run in (source, grown):
        written = sidecars(run.config, run.tokenizer)
        for name in ("config.yaml", "languages.json"):
            assert (run.path / name).read_text() == written[name], (run.path, name)
    assert (grown.path / "sentencepiece.bpe.model").read_bytes() == source.tokenizer.read_bytes()
    assert tree_digest(base) == base_digest


def test_overwrite_replaces_modules_in_place(base, module_file, tmp_path):
    out = load_language_module(base, module_file, tmp_path / "out", overwrite=True, lang="en_XX")
    source, replaced = open_run(base), open_run(out)
    assert replaced.languages == source.languages
    old, new = source.weights(), replaced.weights()
    for name in old:
        donor = name.replace(".en_XX.", ".de_DE.")  # the name itself outside en_XX's modules
        assert torch.equal(new[name], old[donor]), name


def test_load_into_another_base_is_refused(other_base, module_file, tmp_path):
    theirs = json.loads(module_file.with_suffix(".json").read_text())["base_identity"]
    other = open_run(other_base)
    ours = base_identity(other.weights(), other.config.model, other.tokenizer_sha256())
    with pytest.raises(LanguageModuleError, match="belongs to another base model") as err:
        load_language_module(other_base, module_file, tmp_path / "out", lang="yo_NG")
    assert theirs in str(err.value) and ours in str(err.value) and theirs != ours
    assert "architecture differs" not in str(err.value)  # same shapes, other weights
    assert not (tmp_path / "out").exists()


def test_remove_prunes_exactly_one_language(base, base_digest, tmp_path):
    out = remove_language(base, "de_DE", tmp_path / "pruned")
    source, pruned = open_run(base), open_run(out)
    assert pruned.languages == [lang for lang in source.languages if lang != "de_DE"]
    assert pruned.config == dataclasses.replace(
        source.config, run_dir=str(out),
        model=dataclasses.replace(source.config.model, languages=pruned.languages))
    old, new = source.weights(), pruned.weights()
    assert set(new) == {n for n in old if language_of_parameter(n) != "de_DE"}
    assert all(torch.equal(new[n], old[n]) for n in new)
    model = XmodForMaskedLM(pruned.config.model)
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert set(missing) == set(TIED) and not unexpected
    assert tree_digest(base) == base_digest


def test_remove_then_load_restores_the_run(base, module_file, tmp_path):
    pruned = remove_language(base, "de_DE", tmp_path / "pruned")
    restored = open_run(load_language_module(pruned, module_file, tmp_path / "restored"))
    assert restored.languages[-1] == "de_DE"
    old, new = open_run(base).weights(), restored.weights()
    assert set(new) == set(old) and all(torch.equal(new[n], old[n]) for n in old)


def test_save_language_reads_its_own_file_only(base, module_file, tmp_path):
    """Of a run's language files, save-language reads and verifies its language's alone: with
    another language's file damaged it writes the same module, where a full read refuses."""
    run = tmp_path / "run"
    shutil.copytree(base, run)
    checkpoint = open_run(run).path
    damaged = checkpoint.parent / language_manifest(checkpoint)["el_GR"]["file"]
    damaged.write_bytes(damaged.read_bytes()[:-8])
    with pytest.raises(CheckpointCorrupt, match="el_GR"):
        open_run(run)
    saved, _ = save_language_module(run, "de_DE", tmp_path / "mods")
    assert saved.read_bytes() == module_file.read_bytes()


def test_cli_round_trip(base, tmp_path):
    cmd = [sys.executable, "-c", "from xmod_pretrain.cli import main; main()"]
    proc = subprocess.run([*cmd, "save-language", "--lang", "el_GR", "--from", str(base),
                           "--out", str(tmp_path / "mods")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "el_GR.safetensors" in proc.stdout
    module = tmp_path / "mods" / "el_GR.safetensors"
    proc = subprocess.run([*cmd, "load-language", "--module", str(module), "--lang", "yo_NG",
                           "--from", str(base), "--out", str(tmp_path / "grown")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert open_run(tmp_path / "grown").languages[-1] == "yo_NG"


def test_cli_errors_name_the_problem_and_write_nothing(base, module_file, tmp_path):
    out, missing = tmp_path / "out", tmp_path / "none"
    cases = [
        (["remove-language", "--lang", "yo_NG", "--from", str(base), "--out", str(out)],
         "has no language 'yo_NG'; its 4: "),
        (["save-language", "--lang", "yo_NG", "--from", str(base), "--out", str(out)],
         "has no language 'yo_NG'"),
        (["load-language", "--module", str(module_file), "--from", str(base), "--out", str(out)],
         "already has de_DE: pass --overwrite"),
        (["remove-language", "--lang", "de_DE", "--from", str(missing), "--out", str(out)],
         "run directory .* does not exist"),
        (["save-language", "--lang", "de_DE", "--from", str(base), "--step", "9",
          "--out", str(out)],
         "no checkpoint of step 9 .*available steps: 4"),
    ]
    for argv, problem in cases:
        done = cli_here(*argv)
        assert done.returncode != 0, argv
        assert done.stderr.startswith(f"xmod_pretrain {argv[0]}: error: ")
        assert re.search(problem, done.stderr), (argv, done.stderr)
        assert not out.exists(), argv
    out.mkdir()
    (out / "keep").write_text("x")
    done = cli_here("remove-language", "--lang", "de_DE", "--from", str(base),
                    "--out", str(out))
    assert done.returncode != 0 and "already exists and is not empty" in done.stderr
    assert [p.name for p in out.iterdir()] == ["keep"]


@pytest.fixture(scope="module")
def chosen(tiny_data, tmp_path_factory) -> Path:
    """A run that trains three of its data's four languages: ru_RU has modules but no text."""
    run_dir = tmp_path_factory.mktemp("chosen") / "run"
    run_training(run_dir, tiny_data, "train.max_steps=2", "data.languages=[en_XX,de_DE,el_GR]",
                 *FAST)
    return run_dir


@pytest.fixture(scope="module")
def grown(base, tmp_path_factory) -> Path:
    """``base`` grown by ti_ET with vocabulary pieces of its own (add-language --extend-vocab)."""
    out = tmp_path_factory.mktemp("grown") / "run"
    add_language("--lang", "ti_ET", "--from", str(base), "--out", str(out), "--extend-vocab",
                 "32", "--steps", "2", *TRAIN)
    return out


def evaluated(run: Path, out: Path, *args: str) -> tuple[dict[str, float], dict[str, str]]:
    """({row: loss}, {skipped language: why}) of ``xmod_pretrain evaluate`` of ``run`` (one
    draw), written to ``out``; its stdout holds a line for each skipped language."""
    done = cli_here("evaluate", "--from", str(run), "--draws", "1", "--out", str(out),
                    *args)
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "evaluation.json").read_text())
    for lang, why in saved["skipped"].items():
        assert f"  skipped {lang}: {why}\n" in done.stdout
    return {row["name"]: row["loss"] for row in saved["rows"]}, saved["skipped"]


def test_remove_then_load_gives_a_data_language_its_place_back(chosen, tmp_path):
    module, _ = save_language_module(chosen, "de_DE", tmp_path / "mods")
    pruned = remove_language(chosen, "de_DE", tmp_path / "pruned")
    assert open_run(pruned).config.data.languages == ["en_XX", "el_GR"]
    back = open_run(load_language_module(pruned, module, tmp_path / "back"))
    assert back.config.data == open_run(chosen).config.data  # en_XX, de_DE, el_GR: its place
    # It trains and evaluates again, on the batches it had: the source run's numbers.
    assert evaluated(back.run_dir, tmp_path / "e1")[0] == \
        evaluated(chosen, tmp_path / "e2")[0]
    # Loaded into a run that did not lose it, it goes where the data folder's order puts it.
    fewer = remove_language(pruned, "el_GR", tmp_path / "fewer")
    again = open_run(load_language_module(fewer, module, tmp_path / "again"))
    assert again.config.data.languages == ["de_DE", "en_XX"]


def test_evaluate_says_which_languages_it_skips_and_why(chosen, tiny_data, tmp_path):
    rows, skipped = evaluated(chosen, tmp_path / "e")
    assert set(rows) == {"en_XX", "de_DE", "el_GR"}
    reason = (f"it is not in data.languages of {chosen} (en_XX, de_DE, el_GR), though "
              f"{tiny_data} holds its text")
    assert skipped == {"ru_RU": reason}
    done = cli_here("evaluate", "--from", str(chosen), "--langs", "ru_RU", "--out",
                    str(tmp_path / "e"))
    assert done.returncode == 1 and done.stderr == (
        f"xmod_pretrain evaluate: error: ru_RU cannot be evaluated from {chosen}'s data: "
        f"{reason}; pass --text ru_RU=PATH\n")
    module, _ = save_language_module(chosen, "de_DE", tmp_path / "mods")
    other = load_language_module(chosen, module, tmp_path / "other", lang="lb_LU")
    assert evaluated(other, tmp_path / "e")[1]["lb_LU"] == \
        f"no valid text for it in {tiny_data}"
    done = cli_here("evaluate", "--from", str(other), "--langs", "lb_LU", "--out",
                    str(tmp_path / "e"))
    assert done.returncode == 1 and f"lb_LU cannot be evaluated from {other}'s data: no valid " \
        f"text for it in {tiny_data}; pass --text lb_LU=PATH\n" in done.stderr


def test_a_grown_module_loaded_into_a_plain_run_evaluates(base, grown, shared_data, tmp_path):
    module, _ = save_language_module(grown, "ti_ET", tmp_path / "mods")
    loaded = load_language_module(base, module, tmp_path / "loaded")
    # The old languages from the plain run's data: their ids are the grown vocabulary's too.
    rows, skipped = evaluated(loaded, tmp_path / "e1", "--batches", "1")
    theirs = evaluated(grown, tmp_path / "e2", "--batches", "1")[0]
    assert rows == {lang: theirs[lang] for lang in TINY_LANGUAGES}
    assert skipped == {"ti_ET": f"no valid text for it in {shared_data}"}
    text = tmp_path / "ti.txt"
    text.write_text("\n".join(udhr_lines("ti_ET", 60)) + "\n", encoding="utf-8")
    rows = evaluated(loaded, tmp_path / "e3", "--text", f"ti_ET={text}")[0]
    assert set(rows) == {*TINY_LANGUAGES, "ti_ET"}


def test_remove_then_load_of_a_grown_language_round_trips(grown, tmp_path):
    module, _ = save_language_module(grown, "ti_ET", tmp_path / "mods")
    pruned = remove_language(grown, "ti_ET", tmp_path / "pruned")
    back = open_run(load_language_module(pruned, module, tmp_path / "back"))
    source = open_run(grown)
    assert back.tokenizer.read_bytes() == source.tokenizer.read_bytes()
    assert back.config.vocab == source.config.vocab and back.config.data == source.config.data
    old, new = source.weights(), back.weights()
    assert set(new) == set(old) and all(torch.equal(new[k], old[k]) for k in old)
    # Every language evaluates, the old ones from the plain data: the trainer's last validation.
    rows = evaluated(back.run_dir, tmp_path / "e")[0]
    assert rows == pytest.approx(read_metrics(grown)[1][-1]["lang_loss"], abs=1e-5)
    assert set(rows) == {*TINY_LANGUAGES, "ti_ET"}
    # The pieces are ti_ET's again: another code may not share them; nothing is written.
    before = tree_hash(back.run_dir)
    done = cli_here("load-language", "--module", str(module), "--from",
                    str(back.run_dir), "--lang", "am_ET", "--out", str(tmp_path / "twice"))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "already, as ti_ET's (ids " in done.stderr
    assert tree_hash(back.run_dir) == before and not (tmp_path / "twice").exists()
    # Orphaned by the removal, they go to whichever code the module is loaded under.
    renamed = open_run(load_language_module(pruned, module, tmp_path / "renamed", lang="am_ET"))
    assert renamed.config.vocab.added[-1].language == "am_ET"
    assert renamed.tokenizer.read_bytes() == source.tokenizer.read_bytes()
