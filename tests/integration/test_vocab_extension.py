"""add-language --extend-vocab through the real CLI: old weights and logits kept under every ZeRO
stage, the old languages' loss guarantee, export and module files with the pieces, bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import tokenizers
import torch
import transformers

import xmod_pretrain
from tests.support.commands import TRAIN, add_language
from tests.support.hf import assert_same_logits, export_with_cli, udhr_lines
from tests.support.launch import cli_here, tree_hash
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.model.xmod import XmodForMaskedLM, language_of_parameter
from xmod_pretrain.runs.language_modules import run_identity
from xmod_pretrain.runs.records import open_run
from xmod_pretrain.vocabulary.growth import MAX_RISE
from xmod_pretrain.vocabulary.pieces import old_spelling, read_model
from xmod_pretrain.vocabulary.split_model import BIAS, EMBEDDINGS, split_vocabulary

pytestmark = pytest.mark.integration
ASKED = 100_000  # more than Tigrinya's UDHR supports: the run goes on with what it learns


@pytest.fixture(scope="module")
def source_run(run_30_steps) -> Path:
    """The shared 30-step run (tests/support/runs.py), test_add_language's source too; every
    test here only reads it."""
    return run_30_steps


@pytest.fixture(scope="module")
def grown(source_run, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("grown") / "run"
    proc = add_language("--lang", "ti_ET", "--from", str(source_run), "--out", str(out),
                        "--extend-vocab", str(ASKED), "--steps", "30", "optim.weight_decay=0.1",
                        *TRAIN)
    return out, proc


def new_ids(source: Path, run: Path) -> tuple[int, int]:
    """(first new id, count) of ``run``'s vocabulary grown from ``source``'s."""
    old, new = (open_run(r).config.model.vocab_size for r in (source, run))
    return old - 1, new - old


def assert_old_weights_kept(source: Path, run: Path) -> None:
    """Every tensor of the source bit for bit, its embedding rows and bias entries included;
    the new rows moved away from their start."""
    old, new = open_run(source).weights(), open_run(run).weights()
    first, count = new_ids(source, run)
    for key, value in old.items():
        if key in (EMBEDDINGS, BIAS):
            kept = torch.cat([new[key][:first], new[key][-1:]])
            assert torch.equal(kept, value), key
        else:
            assert torch.equal(value, new[key]), key
    spelled = old_spelling(open_run(source).tokenizer,
                           [p.piece for p in read_model(open_run(run).tokenizer).pieces[first - 1:]])
    start = torch.stack([old[EMBEDDINGS][ids].mean(0) for ids in spelled])
    assert not torch.equal(new[EMBEDDINGS][first:first + count], start)


def records(run: Path, split: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == split]


def test_grown_run_keeps_the_old_languages(source_run, grown):
    run, proc = grown
    assert_old_weights_kept(source_run, run)
    first, count = new_ids(source_run, run)
    assert f"(learned {count} of {ASKED}: the text supports no more)" in proc.stdout
    hidden = open_run(run).config.model.hidden_size
    ti = sum(v.numel() for k, v in open_run(run).weights().items()
             if language_of_parameter(k) == "ti_ET")
    assert f"optimizer: {ti + count * (hidden + 1):,} trainable parameters" in proc.stdout
    # The old languages' logits at old ids are the source model's, bit for bit, in the model
    # that trains (its old rows a tensor of their own).
    source = xmod_pretrain.load_run(source_run)[0].model
    model = XmodForMaskedLM(open_run(run).config.model)
    model.load_state_dict(open_run(run).weights(), strict=False)
    model = split_vocabulary(model, count).eval()
    ids = torch.randint(4, first, (2, 20))
    for index, lang in enumerate(source.languages):
        logits = model(ids, index).logits
        assert torch.equal(torch.cat([logits[..., :first], logits[..., -1:]], -1),
                           source(ids, index).logits), lang
    # Their loss through the grown softmax rose by at most 0.1%; Tigrinya is measured per byte.
    rises = {r["language"]: r["rise"] for r in records(run, "vocabulary")}
    assert set(rises) == set(source.languages)
    assert all(0 <= rise <= MAX_RISE for rise in rises.values()), rises
    assert records(run, "bits_per_byte")[0]["language"] == "ti_ET"
    # The run holds the grown tokenizer in both formats, giving the same ids.
    text = udhr_lines("ti_ET", 20) + udhr_lines("en_XX", 5)
    fast = tokenizers.Tokenizer.from_file(str(run / "vocabulary" / "tokenizer.json"))
    grown_tokenizer = Tokenizer.from_file(run / "vocabulary" / "sentencepiece.bpe.model")
    assert [e.ids[1:-1] for e in fast.encode_batch(text)] == grown_tokenizer.encode_batch(text)


# ZeRO-2 stands for ZeRO-1 too: one DeepSpeed optimizer, which partitions the gradients as well.
@pytest.mark.parametrize("stage,nproc", [(0, 1), (2, 2), (3, 2)])
def test_every_zero_stage_trains_the_new_rows_only(source_run, tmp_path, stage, nproc):
    out = tmp_path / "grown"
    add_language("--lang", "yo_NG", "--from", str(source_run), "--out", str(out),
                 "--extend-vocab", "16", "--steps", "3", f"deepspeed=zero{stage}",
                 "optim.weight_decay=0.1", *TRAIN, nproc=nproc)
    assert_old_weights_kept(source_run, out)


def test_export_gives_our_ids_and_logits(grown, tmp_path, caplog):
    run, _ = grown
    export_with_cli(run, tmp_path / "hf")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model, tokenizer = xmod_pretrain.load_run(run)
    text = udhr_lines("ti_ET", 20) + udhr_lines("en_XX", 5) + udhr_lines("yo_NG", 5)
    ids = tokenizer.encode_batch(text)
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert max(max(row) for row in ids) > new_ids(Path(open_run(run).config.add_language
                                                         .source_run), run)[0]
    batch = torch.tensor([row[:24] for row in ids if len(row) >= 24][:4])
    assert_same_logits(model, hf, batch, torch.ones_like(batch))


def test_a_run_grown_from_a_grown_run_keeps_its_base(grown, tmp_path):
    """add-language without --extend-vocab on a grown run: the new run keeps the vocabulary
    record, so its modules (the grown language's too) have the grown run's base identity."""
    run, _ = grown
    add_language("--lang", "yo_NG", "--from", str(run), "--out", str(tmp_path / "more"),
                 "--steps", "1", *TRAIN)
    more, original = open_run(tmp_path / "more"), open_run(run)
    assert more.config.vocab == original.config.vocab
    assert run_identity(more, more.weights()) == run_identity(original, original.weights())


def test_module_file_carries_the_pieces(source_run, grown, tmp_path):
    run, _ = grown
    saved = cli_here("save-language", "--lang", "ti_ET", "--from", str(run), "--out",
                     str(tmp_path / "m"))
    assert saved.returncode == 0, saved.stderr
    meta = json.loads((tmp_path / "m" / "ti_ET.json").read_text())
    first, count = new_ids(source_run, run)
    assert len(meta["pieces"]) == count
    before = tree_hash(source_run)
    loaded = cli_here("load-language", "--module",
                      str(tmp_path / "m" / "ti_ET.safetensors"), "--from", str(source_run),
                      "--out", str(tmp_path / "loaded"))
    assert loaded.returncode == 0, loaded.stderr
    assert tree_hash(source_run) == before
    loaded, original = open_run(tmp_path / "loaded"), open_run(run)
    text = udhr_lines("ti_ET", 30) + udhr_lines("en_XX", 10)
    assert Tokenizer.from_file(loaded.tokenizer).encode_batch(text) == \
        Tokenizer.from_file(original.tokenizer).encode_batch(text)
    weights, theirs = loaded.weights(), original.weights()
    assert set(weights) == set(theirs)
    assert all(torch.equal(weights[k], theirs[k]) for k in weights)
    assert run_identity(loaded, weights) == run_identity(open_run(source_run),
                                                         open_run(source_run).weights())
    # Its pieces are there now: the same file under another code is refused, nothing written.
    again = cli_here("load-language", "--module",
                     str(tmp_path / "m" / "ti_ET.safetensors"), "--from",
                     str(tmp_path / "loaded"), "--lang", "am_ET", "--out", str(tmp_path / "twice"))
    assert again.returncode == 1 and "spelled by" in again.stderr
    assert not (tmp_path / "twice").exists()


@pytest.mark.parametrize("args,message", [
    (["--extend-vocab", "0"], "add_language.extend_vocab=0 is not allowed"),
    (["--extend-vocab", "-3"], "add_language.extend_vocab=-3 is not allowed"),
    (["--extend-vocab", "8", "--lang", "sw_KE"], "one new language at a time"),
    (["--extend-vocab", "8", "--init-vocab", "zeros"], "invalid choice"),
])
def test_bad_requests_are_refused(source_run, tmp_path, args, message):
    proc = cli_here("add-language", "--lang", "yo_NG", "--from", str(source_run),
                    "--out", str(tmp_path / "out"), *args)
    assert proc.returncode != 0 and message in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


def test_text_in_a_covered_script_is_refused(source_run, tmp_path):
    text = tmp_path / "af.txt"
    text.write_text("\n".join(udhr_lines("en_XX", 40)) + "\n", encoding="utf-8")
    proc = cli_here("add-language", "--lang", "af_ZA", "--from", str(source_run),
                    "--out", str(tmp_path / "out"), "--text", str(text), "--extend-vocab", "16")
    assert proc.returncode == 1 and "af_ZA has no letters the vocabulary lacks" in proc.stderr
    assert not (tmp_path / "out" / "vocabulary").exists()
