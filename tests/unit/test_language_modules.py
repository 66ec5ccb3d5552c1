"""Reading runs, writing derived runs, base identity and module files, on runs built in-process."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.support.launch import tree_hash
from xmod_pretrain.config import Config
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM, language_of_parameter
from xmod_pretrain.recipes.add_language.recipe import never_trained
from xmod_pretrain.runs.language_modules import (
    LanguageModuleError,
    base_identity,
    load_language_module,
    module_tensors,
    read_module,
    remove_language,
    run_key,
    save_language_module,
)
from xmod_pretrain.runs.records import (
    RunFormatError,
    RunNotFoundError,
    default_source_run,
    open_run,
    write_run,
)

TINY = ModelConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=32, max_position_embeddings=40,
                   languages=["en_XX", "de_DE", "el_GR"])


def weights_of(cfg: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """What a checkpoint's model.safetensors holds: every parameter once."""
    torch.manual_seed(seed)
    return {n: p.detach().clone() for n, p in XmodForMaskedLM(cfg).named_parameters()}


def make_run(root: Path, cfg: ModelConfig = TINY, seed: int = 0, step: int = 3) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = root.parent / f"{root.name}.spm"
    tokenizer.write_bytes(b"a tokenizer")
    write_run(root, Config(model=cfg), tokenizer, weights_of(cfg, seed), step, {"step": step})
    return root


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "src")


def test_open_run_reads_back_what_write_run_wrote(run):
    ckpt = open_run(run)
    assert ckpt.path == run / "checkpoints" / "step_00000003" and ckpt.step == 3
    assert ckpt.languages == TINY.languages and ckpt.config.model == TINY
    assert ckpt.config.run_dir == str(run)  # a derived run names itself
    assert (run / "config.yaml").read_text() == (ckpt.path / "config.yaml").read_text()
    weights = ckpt.weights()
    for name, tensor in weights_of(TINY).items():
        assert torch.equal(weights[name], tensor), name


def test_open_run_errors_name_the_problem(run, tmp_path):
    with pytest.raises(RunNotFoundError, match="run directory .*nowhere does not exist"):
        open_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunNotFoundError, match="empty has no checkpoint"):
        open_run(tmp_path / "empty")
    with pytest.raises(RunNotFoundError, match="no checkpoint of step 7 .*available steps: 3"):
        open_run(run, step=7)
    # Without checksums.json (a checkpoint from before them) an edit is read, and caught here.
    (run / "checkpoints" / "step_00000003" / "checksums.json").unlink()
    (run / "checkpoints" / "step_00000003" / "languages.json").write_text('["en_XX"]')
    with pytest.raises(RunFormatError, match="languages.json lists"):
        open_run(run)
    (run / "checkpoints" / "step_00000003" / "sentencepiece.bpe.model").unlink()
    with pytest.raises(RunNotFoundError, match="missing sentencepiece.bpe.model"):
        open_run(run, step=3)


def test_write_run_refuses_a_non_empty_directory_and_fills_an_empty_one(run, tmp_path):
    with pytest.raises(FileExistsError, match="is a run directory"):
        make_run(run)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_run(tmp_path / "other")
    (tmp_path / "fresh").mkdir()
    assert open_run(make_run(tmp_path / "fresh")).step == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["fresh", "other", "src"]


def test_default_source_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunNotFoundError, match="no run given and runs/demo has no checkpoint"):
        default_source_run()
    make_run(tmp_path / "runs" / "demo")
    assert default_source_run() == Path("runs/demo")


def test_base_identity_covers_everything_but_the_language_modules():
    weights, sha = weights_of(TINY), "0" * 64
    identity = base_identity(weights, TINY, sha)
    # The same base: other module values, fewer languages, training-only fields, tied keys present.
    modules_changed = {n: (t + 1 if language_of_parameter(n) else t) for n, t in weights.items()}
    fewer = {n: t for n, t in weights.items() if language_of_parameter(n) != "de_DE"}
    with_tied = {**weights, "lm_head.decoder.weight": weights["lm_head.bias"]}
    same = [
        base_identity(modules_changed, TINY, sha),
        base_identity(fewer, dataclasses.replace(TINY, languages=["en_XX", "el_GR"]), sha),
        base_identity(weights, dataclasses.replace(TINY, hidden_dropout_prob=0.0), sha),
        base_identity(with_tied, TINY, sha),
    ]
    assert same == [identity] * len(same)
    # A different base: one shared value, one architecture flag, the tokenizer, a dtype.
    nudged = dict(weights)
    nudged["lm_head.bias"] = weights["lm_head.bias"].clone()
    nudged["lm_head.bias"][7] += 1e-7
    as_double = {n: t.double() if n == "lm_head.bias" else t for n, t in weights.items()}
    different = {
        base_identity(nudged, TINY, sha),
        base_identity(weights, dataclasses.replace(TINY, pre_norm=True), sha),
        base_identity(weights, TINY, "1" * 64),
        base_identity(as_double, TINY, sha),
    }
    assert identity not in different and len(different) == 4


def test_module_keys_round_trip():
    weights = weights_of(TINY)
    tensors = module_tensors(weights, "de_DE")
    assert sorted(tensors) == [f"layer.{i}.dense{d}.{p}" for i in range(2) for d in (1, 2)
                               for p in ("bias", "weight")]
    assert {run_key(k, "de_DE") for k in tensors} == {
        n for n in weights if language_of_parameter(n) == "de_DE"}


def test_save_then_load_under_a_new_code(run, tmp_path):
    tensors_path, meta_path = save_language_module(run, "de_DE", tmp_path / "mods")
    meta = json.loads(meta_path.read_text())
    assert meta["language"] == "de_DE" and meta["step"] == 3
    assert meta["architecture"]["hidden_size"] == 16
    out = load_language_module(run, tensors_path, tmp_path / "grown", lang="yo_NG")
    grown, source = open_run(out).weights(), open_run(run).weights()
    assert open_run(out).languages == [*TINY.languages, "yo_NG"]
    for name, tensor in source.items():
        assert torch.equal(grown[name], tensor), name
        if language_of_parameter(name) == "de_DE":
            assert torch.equal(grown[name.replace(".de_DE.", ".yo_NG.")], tensor), name
    assert len(grown) == len(source) + 8


def test_save_refuses_existing_files(run, tmp_path):
    save_language_module(run, "de_DE", tmp_path / "mods")
    with pytest.raises(FileExistsError, match="de_DE.safetensors already exists"):
        save_language_module(run, "de_DE", tmp_path / "mods")


def test_a_changed_module_file_is_refused(run, tmp_path):
    tensors_path, meta_path = save_language_module(run, "de_DE", tmp_path / "mods")
    tensors_path.write_bytes(tensors_path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(LanguageModuleError, match="does not match the sha256"):
        read_module(tensors_path)
    meta_path.unlink()
    with pytest.raises(FileNotFoundError, match="de_DE.json is missing"):
        read_module(tensors_path)


def test_load_names_the_architecture_that_differs(run, tmp_path):
    wide = make_run(tmp_path / "wide", dataclasses.replace(TINY, hidden_size=32,
                                                          adapter_reduction_factor=4))
    tensors_path, _ = save_language_module(wide, "de_DE", tmp_path / "mods")
    with pytest.raises(LanguageModuleError) as err:
        load_language_module(run, tensors_path, tmp_path / "out", lang="yo_NG")
    message = str(err.value)
    assert "belongs to another base model" in message
    assert "hidden_size 32 in the module, 16 in the run" in message
    assert "adapter_reduction_factor 4 in the module, 2 in the run" in message
    assert not (tmp_path / "out").exists()


def test_remove_refuses_the_last_language(tmp_path):
    single = make_run(tmp_path / "one", dataclasses.replace(TINY, languages=["en_XX"]))
    with pytest.raises(LanguageModuleError, match="en_XX is the only language"):
        remove_language(single, "en_XX", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_remove_drops_the_language_from_an_explicit_data_list(tmp_path):
    tokenizer = tmp_path / "spm"
    tokenizer.write_bytes(b"t")
    config = Config(model=TINY)
    config.data.languages = ["en_XX", "de_DE"]
    write_run(tmp_path / "src", config, tokenizer, weights_of(TINY), 1, {"step": 1})
    pruned = open_run(remove_language(tmp_path / "src", "de_DE", tmp_path / "out")).config
    assert pruned.data.languages == ["en_XX"] and pruned.model.languages == ["en_XX", "el_GR"]


def test_add_language_says_which_existing_modules_were_never_trained(tmp_path):
    """data.languages chooses what trains; the model holds every language of its data folder, so
    a language left out has a module nobody trained, which add-language's refusal says."""
    config = Config(model=TINY)
    config.data.languages = ["en_XX", "de_DE"]
    tokenizer = tmp_path / "spm"
    tokenizer.write_bytes(b"t")
    write_run(tmp_path / "src", config, tokenizer, weights_of(TINY), 1, {"step": 1})
    run = open_run(tmp_path / "src")
    assert never_trained(run, ["el_GR"]) == (
        ", though its pre-training never trained el_GR: a model takes every language of its "
        "data folder, and data.languages only chose which to train")
    assert never_trained(run, ["de_DE"]) == ""
    assert never_trained(open_run(make_run(tmp_path / "all")), ["el_GR"]) == ""


def load_cli(capsys, run: Path, module: Path, out: Path) -> tuple[int, str]:
    """(exit status, stderr) of ``xmod_pretrain load-language`` run in this process."""
    from xmod_pretrain.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["load-language", "--module", str(module), "--from", str(run), "--lang", "yo_NG",
              "--out", str(out)])
    return exit_.value.code, capsys.readouterr().err


def resave(tensors_path: Path, meta: dict) -> None:
    """Write ``meta`` as the module's .json, its sha256 that of the .safetensors as it is now."""
    meta = {**meta, "sha256": hashlib.sha256(tensors_path.read_bytes()).hexdigest()}
    tensors_path.with_suffix(".json").write_text(json.dumps(meta))


def edited(meta: dict, **changes) -> dict:
    """``meta`` with ``changes``; a change to None removes the key."""
    return {k: v for k, v in {**meta, **changes}.items() if v is not None}


@pytest.mark.parametrize("edit, problem", [
    (lambda p, m: p.write_text('{\n'), "is not valid JSON (Expecting"),
    (lambda p, m: p.write_bytes(b'{"language": "\xff"}'), "is not UTF-8 text (byte 14)"),
    (lambda p, m: p.write_text("[1, 2]"), "holds a JSON list, not the object"),
    (lambda p, m: p.write_text(json.dumps(edited(m, sha256=None, source_run=None))),
     "is not a module description: source_run missing; sha256 missing"),
    (lambda p, m: p.write_text(json.dumps(edited(m, architecture="wide"))),
     "architecture is not a dict"),
    (lambda p, m: p.write_text(json.dumps(edited(m, pieces=[["ሀ"]]))),
     "pieces are not [text, score] pairs"),
    (lambda p, m: p.write_text(json.dumps(edited(m, language="german"))),
     "language code 'german' is not of the form xx_YY"),
], ids=["not-json", "not-utf8", "a-list", "keys-missing", "wrong-type", "bad-pieces",
        "bad-language"])
def test_a_malformed_module_json_is_one_line_naming_it(run, tmp_path, capsys, edit, problem):
    tensors_path, meta_path = save_language_module(run, "de_DE", tmp_path / "mods")
    before = tree_hash(run)
    edit(meta_path, json.loads(meta_path.read_text()))
    code, err = load_cli(capsys, run, tensors_path, tmp_path / "out")
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"xmod_pretrain load-language: error: {meta_path}"), err
    assert problem in err and "save the module again with save-language" in err, err
    assert tree_hash(run) == before and not (tmp_path / "out").exists()


def test_a_damaged_module_tensor_file_is_one_line_naming_it(run, tmp_path, capsys):
    tensors_path, meta_path = save_language_module(run, "de_DE", tmp_path / "mods")
    meta = json.loads(meta_path.read_text())
    tensors_path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}")  # a header, no tensors
    resave(tensors_path, meta)  # damaged before its .json was written: the sha256 agrees
    code, err = load_cli(capsys, run, tensors_path, tmp_path / "out")
    assert code == 1 and err.count("\n") == 1, err
    assert f"{tensors_path} is not a readable safetensors file" in err, err
    # Pieces in the .json without their rows (or rows of another width) in the tensor file.
    save_file(module_tensors(open_run(run).weights(), "de_DE"), str(tensors_path))
    resave(tensors_path, {**meta, "pieces": [["ሀ", -3.5]]})
    code, err = load_cli(capsys, run, tensors_path, tmp_path / "out")
    assert code == 1 and err.count("\n") == 1, err
    assert f"{tensors_path} holds no rows for the 1 vocabulary pieces of {meta_path}, not " \
           "vocabulary.embeddings [1, 16], vocabulary.bias [1]" in err, err
    assert not (tmp_path / "out").exists()
