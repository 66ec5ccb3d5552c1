"""save-language, load-language and remove-language on real training runs, through the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.launch import run_training
from xmod_pretrain.cli import main
from xmod_pretrain.language_modules import (
    LanguageModuleError,
    base_identity,
    load_language_module,
    remove_language,
    save_language_module,
)
from xmod_pretrain.model import TIED, XmodForMaskedLM, language_of_parameter
from xmod_pretrain.runs import open_run, sidecars

pytestmark = pytest.mark.integration
FAST = ("train.eval_every=0", "train.eval_batches=1")


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def base(tiny_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("base") / "run"
    run_training(run_dir, tiny_data, "train.max_steps=4", *FAST)
    return run_dir


@pytest.fixture(scope="module")
def base_digest(base) -> str:
    return tree_digest(base)


@pytest.fixture(scope="module")
def other_base(tiny_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("other") / "run"
    run_training(run_dir, tiny_data, "train.max_steps=1", "train.seed=2", *FAST)
    return run_dir


@pytest.fixture(scope="module")
def module_file(base, base_digest, tmp_path_factory) -> Path:
    tensors_path, _ = save_language_module(base, "de_DE", tmp_path_factory.mktemp("modules"))
    return tensors_path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``xmod_pretrain *argv`` run in this process."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


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


def test_cli_errors_name_the_problem_and_write_nothing(base, module_file, tmp_path, capsys):
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
        code, _, err = cli(capsys, *argv)
        assert code != 0, argv
        assert err.startswith(f"xmod_pretrain {argv[0]}: error: ")
        assert re.search(problem, err), (argv, err)
        assert not out.exists(), argv
    out.mkdir()
    (out / "keep").write_text("x")
    code, _, err = cli(capsys, "remove-language", "--lang", "de_DE", "--from", str(base),
                       "--out", str(out))
    assert code != 0 and "already exists and is not empty" in err
    assert [p.name for p in out.iterdir()] == ["keep"]
