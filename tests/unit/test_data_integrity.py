"""Prepared data that cannot be mixed up: tokenizer hashes and shard contents are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xmod_core.atomic import file_sha256
from xmod_core.shards import (
    MANIFEST,
    TOKEN_DTYPE,
    TOKENIZER_FILE,
    TokenizerMismatchError,
    check_run_tokenizer,
    read_manifest,
)
from xmod_pretrain.data import shards as data_module
from xmod_pretrain.data.shards import DataError, ShardSet


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    """A private copy of the tiny prepared data, free to damage."""
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


def test_replaced_tokenizer_file_is_refused_naming_both_hashes(data_copy):
    tokenizer = data_copy / TOKENIZER_FILE
    recorded = file_sha256(tokenizer)
    tokenizer.write_bytes(tokenizer.read_bytes() + b"\0")
    with pytest.raises(TokenizerMismatchError) as err:
        read_manifest(data_copy)
    message = str(err.value)
    assert str(tokenizer) in message and str(data_copy / MANIFEST) in message
    assert recorded[:12] in message and file_sha256(tokenizer)[:12] in message
    assert "re-run prepare" in message


def test_edited_manifest_hash_is_refused(data_copy):
    manifest = json.loads((data_copy / MANIFEST).read_text())
    manifest["tokenizer"]["sha256"] = "cd34" * 16
    (data_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(TokenizerMismatchError, match="says cd34cd34cd34"):
        ShardSet(data_copy, "valid", ["en_XX"])


def test_run_tokenizer_must_be_the_datas(data_copy, tmp_path):
    check_run_tokenizer(data_copy / TOKENIZER_FILE, data_copy)  # the same model passes
    other = tmp_path / "run" / TOKENIZER_FILE
    other.parent.mkdir()
    other.write_bytes((data_copy / TOKENIZER_FILE).read_bytes()[::-1])
    with pytest.raises(TokenizerMismatchError) as err:
        check_run_tokenizer(other, data_copy)
    message = str(err.value)
    assert str(other) in message and str(data_copy / TOKENIZER_FILE) in message
    assert file_sha256(other)[:12] in message
    assert read_manifest(data_copy)["tokenizer"]["sha256"][:12] in message


def test_shard_of_partial_token_ids_is_refused_naming_it(data_copy):
    shard = data_copy / "de_DE" / "train.bin"
    with open(shard, "ab") as f:
        f.write(b"\x01\x02")
    with pytest.raises(DataError, match=f"{shard}: .* not a whole number of 4-byte token ids"):
        ShardSet(data_copy, "train", ["en_XX", "de_DE"], verify=False)


def test_id_outside_the_vocabulary_is_refused_with_its_position(data_copy, monkeypatch):
    monkeypatch.setattr(data_module, "SCAN_BLOCK_TOKENS", 100)  # the bad id in a later block
    shard = data_copy / "ru_RU" / "train.bin"
    vocab = read_manifest(data_copy)["tokenizer"]["vocab_size"]
    tokens = np.fromfile(shard, dtype=TOKEN_DTYPE)
    tokens[250] = vocab
    tokens.tofile(shard)
    with pytest.raises(DataError, match=f"{shard}: token id {vocab} at token 250, .* has "
                                        f"{vocab} ids"):
        ShardSet(data_copy, "train", ["en_XX", "ru_RU"])
    # data.verify_shards=false skips the scan (and only it)
    assert len(ShardSet(data_copy, "train", ["ru_RU"], verify=False).tokens[0]) == len(tokens)


# ---- paths a run stores ---------------------------------------------------------------------

def _config(run_dir: str, data_dir: str, source_run: str | None = None):
    from xmod_pretrain.config import Config
    from xmod_pretrain.data.config import DataConfig
    from xmod_pretrain.recipes.add_language.config import AddLanguageConfig

    return Config(run_dir=run_dir, data=DataConfig(dir=data_dir),
                  add_language=AddLanguageConfig(source_run=source_run))


def test_resolve_paths_makes_every_path_absolute(tmp_path, monkeypatch):
    from xmod_pretrain.runs.paths import resolve_paths

    monkeypatch.chdir(tmp_path)
    cfg = resolve_paths(_config("runs/demo", "data/demo", "runs/base"))
    assert (cfg.run_dir, cfg.data.dir, cfg.add_language.source_run) == (
        str(tmp_path / "runs/demo"), str(tmp_path / "data/demo"), str(tmp_path / "runs/base"))
    assert cfg.init_from is None and cfg.add_language.text is None  # unset stays unset


def test_a_moved_run_finds_its_data_where_it_moved_with_it(tmp_path):
    from xmod_pretrain.runs.paths import relocate_paths

    new = tmp_path / "new" / "repo"
    (new / "data" / "demo").mkdir(parents=True)
    kept = tmp_path / "shared"  # still where it was: not moved
    kept.mkdir()
    cfg = _config("/old/repo/runs/demo", "/old/repo/data/demo", str(kept))
    moved = relocate_paths(cfg, new / "runs" / "demo")
    assert moved.run_dir == str(new / "runs" / "demo")
    assert moved.data.dir == str(new / "data" / "demo")
    assert moved.add_language.source_run == str(kept)
    # gone from both places: the stored path stays, for the error to name
    assert relocate_paths(_config("/old/r/runs/x", "/old/r/gone"), new).data.dir == "/old/r/gone"


def test_relative_paths_of_older_runs_resolve_against_the_runs_base(tmp_path):
    from xmod_pretrain.runs.paths import relocate_paths

    cfg = relocate_paths(_config("runs/demo", "data/demo"), tmp_path / "runs" / "demo")
    assert cfg.data.dir == str(tmp_path / "data" / "demo")


# ---- first-use preparation ----------------------------------------------------------------------

def test_first_use_prepares_only_the_experiments_folder_or_a_named_source(tmp_path):
    from xmod_pretrain.data.shards import check_first_use

    typo = _config("runs/x", str(tmp_path / "dta"))
    with pytest.raises(DataError, match=f"data.dir={tmp_path / 'dta'} holds no manifest.json.*"
                                        "add data.source=bundled to prepare the bundled demo"):
        check_first_use(typo, ["+exp=demo", f"data.dir={tmp_path / 'dta'}"])
    check_first_use(typo, ["+exp=demo"])  # the experiment's own folder
    check_first_use(typo, [f"data.dir={tmp_path / 'dta'}", "data.source=bundled"])
