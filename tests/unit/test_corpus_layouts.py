"""The long tail's corpora as they ship: FLORES-200 / FineWeb-2 language codes, FineWeb-2's
folders of parquet files, CC-100's ``.txt.xz`` files of blank-line-separated documents."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.prepare import DataPrepError, Sampling, prepare
from data_prep.shards import decode_lines
from data_prep.tokenizer_sample import sample, shares
from tests.support.corpora import documents, write_fineweb, write_parquet
from xmod_core.languages import (
    SAME_LANGUAGE,
    XMOD_BASE_LANGUAGES,
    LanguageCodeError,
    check_language_code,
    check_language_list,
    language_index,
)
from xmod_core.tokenizer import train_tokenizer

LANGUAGES = ("yor_Latn", "eng_Latn", "rus_Cyrl")


@pytest.fixture(scope="module")
def fineweb(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    docs = {code: documents(code) for code in LANGUAGES}
    return write_fineweb(tmp_path_factory.mktemp("fineweb-2"), docs), docs


def document_lines(texts: list[str]) -> list[str]:
    return [" ".join(line.split()) for text in texts for line in text.split("\n") if line.strip()]


def test_both_code_forms_are_accepted_and_a_malformed_one_names_both():
    for code in ("en_XX", "yo_NG", "yor_Latn", "tir_Ethi", "quz_Latn"):
        assert check_language_code(code) == code
    for bad in ("yoruba", "yo", "yor_latn", "yo_Latn", "YOR_Latn", "yor_LATN", "yor-Latn"):
        with pytest.raises(LanguageCodeError) as err:
            check_language_code(bad, "--lang")
        assert f"{bad!r} in --lang is not of the form xx_YY" in str(err.value)
        assert "or xxx_Xxxx (ISO 639-3 language, ISO 15924 script" in str(err.value)


def test_every_xmod_base_language_has_one_flores_code_of_its_own():
    assert set(XMOD_BASE_LANGUAGES) <= set(SAME_LANGUAGE)
    flores = list(SAME_LANGUAGE.values())
    assert len(set(flores)) == len(flores)
    for ours, theirs in SAME_LANGUAGE.items():
        assert check_language_code(ours) and check_language_code(theirs)


def test_a_code_in_the_other_form_is_answered_with_the_models_own():
    with pytest.raises(KeyError, match="this model calls that language yo_NG; use yo_NG"):
        language_index(["en_XX", "yo_NG"], "yor_Latn")
    with pytest.raises(KeyError, match="this model calls that language eng_Latn; use eng_Latn"):
        language_index(["eng_Latn", "yor_Latn"], "en_XX")
    with pytest.raises(KeyError, match="this model has 2: en_XX, yo_NG"):
        language_index(["en_XX", "yo_NG"], "tir_Ethi")


def test_a_fineweb2_folder_prepares_each_document_whole_and_in_order(fineweb, tmp_path):
    root, docs = fineweb
    manifest = json.loads(prepare(root, tmp_path, vocab_size=600, workers=2).read_text())
    assert list(manifest["languages"]) == sorted(LANGUAGES)  # no <code>_removed
    for code, texts in docs.items():
        shards = decode_lines(tmp_path, code, "train") + decode_lines(tmp_path, code, "valid")
        assert shards == document_lines(texts)  # the test/ split's row is not among them
    # The same folder's data/ given directly is the same source.
    again = prepare(root / "data", tmp_path / "again", languages=["yor_Latn"],
                    tokenizer=tmp_path / "sentencepiece.bpe.model")
    assert (tmp_path / "again" / "yor_Latn" / "train.bin").read_bytes() == \
        (tmp_path / "yor_Latn" / "train.bin").read_bytes()
    assert json.loads(again.read_text())["languages"].keys() == {"yor_Latn"}


def test_parquet_without_a_text_column_or_with_a_bad_folder_name_is_refused(tmp_path):
    bad = tmp_path / "bad" / "yor_Latn" / "train" / "0.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(pa.table({"content": ["a document"]}), bad)
    with pytest.raises(DataPrepError, match=rf"{bad} has no 'text' column \(it has content\)"):
        prepare(tmp_path / "bad", tmp_path / "out", vocab_size=600, workers=1)
    pq.write_table(pa.table({"text": [1, 2]}), bad)
    with pytest.raises(DataPrepError, match=rf"{bad}: its 'text' column holds int64, not text"):
        prepare(tmp_path / "bad", tmp_path / "out", vocab_size=600, workers=1)
    write_parquet(tmp_path / "named" / "yoruba" / "0.parquet", ["a document"])
    with pytest.raises(DataPrepError, match=r"'yoruba' in .*named/yoruba is not of the form"):
        prepare(tmp_path / "named", tmp_path / "out2", vocab_size=600, workers=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataPrepError, match="no <code>/ folder of parquet files"):
        prepare(tmp_path / "empty", tmp_path / "out3", vocab_size=600, workers=1)


def test_a_language_folder_without_training_parquet_is_refused_not_passed_over(tmp_path):
    """A download that stopped half-way: an empty language folder beside full ones, or one with
    FineWeb-2's test split alone, whose rows are not training text."""
    write_parquet(tmp_path / "corpus" / "eng_Latn" / "train" / "0.parquet", ["a document"])
    (tmp_path / "corpus" / "yor_Latn" / "train").mkdir(parents=True)
    with pytest.raises(DataPrepError, match=r"corpus/yor_Latn holds no parquet file .*finish its "
                                            "download, or move it out of the corpus"):
        prepare(tmp_path / "corpus", tmp_path / "out", vocab_size=600, workers=1)
    (tmp_path / "corpus" / "yor_Latn" / "train").rmdir()
    write_parquet(tmp_path / "corpus" / "yor_Latn" / "test" / "0.parquet", ["held out by them"])
    with pytest.raises(DataPrepError, match=r"corpus/yor_Latn holds no parquet file"):
        prepare(tmp_path / "corpus", tmp_path / "out", vocab_size=600, workers=1)


def test_a_later_languages_unreadable_parquet_keeps_the_languages_before_it(tmp_path):
    """A parquet file is read in this process, not in the encoding workers: its error still
    comes after the languages before it are finished and marked done."""
    write_parquet(tmp_path / "corpus" / "eng_Latn" / "train" / "0.parquet", documents("eng_Latn"))
    (tmp_path / "corpus" / "yor_Latn").mkdir()
    pq.write_table(pa.table({"text": [1]}), tmp_path / "corpus" / "yor_Latn" / "0.parquet")
    tokenizer = train_tokenizer(iter(document_lines(documents("eng_Latn"))), tmp_path / "t.model",
                                600)
    with pytest.raises(DataPrepError, match="'text' column holds int64"):
        prepare(tmp_path / "corpus", tmp_path / "out", tokenizer=tokenizer.path, workers=2)
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("*/done.json")) == ["eng_Latn"]


def test_one_language_under_both_code_forms_is_refused(tmp_path, fineweb):
    """en_XX beside eng_Latn would give one language two modules, trained and evaluated apart."""
    with pytest.raises(LanguageCodeError, match="en_XX and eng_Latn are one language, listed "
                                                "twice in model.languages: keep one"):
        check_language_list(["en_XX", "de_DE", "eng_Latn"], "model.languages")
    for code in ("eng_Latn", "en_XX"):
        write_parquet(tmp_path / "both" / code / "train" / "0.parquet", ["a document"])
    with pytest.raises(DataPrepError, match="en_XX and eng_Latn are one language"):
        prepare(tmp_path / "both", tmp_path / "out", vocab_size=600, workers=1)
    (tmp_path / "yo.txt").write_text("a line\n")
    (tmp_path / "text").mkdir()
    for name in ("eng_Latn.txt", "en_XX.txt.xz"):
        (tmp_path / "text" / name).write_bytes(lzma.compress(b"a line\n")
                                               if name.endswith(".xz") else b"a line\n")
    with pytest.raises(DataPrepError, match="en_XX and eng_Latn are one language"):
        prepare(tmp_path / "text", tmp_path / "out", vocab_size=600, workers=1)
    listing = tmp_path / "both.json"
    listing.write_text(json.dumps({"yor_Latn": "yo.txt", "yo_NG": "yo.txt"}))
    with pytest.raises(DataPrepError, match="yor_Latn and yo_NG are one language"):
        prepare(listing, tmp_path / "out", vocab_size=600, workers=1)
    # A code the source has under the other form: named, not listed among 3 others.
    with pytest.raises(DataPrepError, match="language en_XX not in source .*: it names that "
                                            "language eng_Latn; use eng_Latn"):
        prepare(fineweb[0], tmp_path / "out", languages=["en_XX"], vocab_size=600, workers=1)


def test_a_json_source_that_is_no_object_of_files_is_refused_naming_it(tmp_path, fineweb):
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps(["yo.txt.xz"]))
    with pytest.raises(DataPrepError, match=r"list\.json must be a non-empty JSON object of "
                                            r"language -> path\(s\), e\.g\. \{"):
        prepare(listing, tmp_path / "out", vocab_size=600, workers=1)
    folder = fineweb[0] / "data" / "yor_Latn"
    listing.write_text(json.dumps({"yor_Latn": str(folder)}))
    with pytest.raises(DataPrepError, match=rf"{folder} of language yor_Latn is a folder: a JSON "
                                            "source lists text files"):
        prepare(listing, tmp_path / "out", vocab_size=600, workers=1)


def test_cc100_files_of_blank_line_separated_documents_through_a_json_list(fineweb, tmp_path):
    """CC-100 ships <iso>.txt.xz (yo.txt.xz, en.txt.xz): a JSON list gives each its code."""
    _, docs = fineweb
    cc100 = tmp_path / "cc100"
    cc100.mkdir()
    for code, iso in (("yor_Latn", "yo"), ("eng_Latn", "en")):
        (cc100 / f"{iso}.txt.xz").write_bytes(lzma.compress("\n\n".join(docs[code]).encode()))
    listing = tmp_path / "cc100.json"
    listing.write_text(json.dumps({"yor_Latn": "cc100/yo.txt.xz", "eng_Latn": "cc100/en.txt.xz"}))
    prepare(listing, tmp_path / "out", vocab_size=600, workers=1)
    for code in ("yor_Latn", "eng_Latn"):
        lines = decode_lines(tmp_path / "out", code, "train") + \
            decode_lines(tmp_path / "out", code, "valid")
        assert lines == document_lines(docs[code])  # the blank lines between documents dropped


# --- the tokenizer's sample --------------------------------------------------------------------


def test_sample_shares_follow_the_sizes_to_the_power_alpha_and_fill_the_budget():
    sizes = {"big": 10**9, "mid": 10**7, "small": 1000, "stream": None}
    uniform = shares({"a": 10**9, "b": 10**7}, 1000, alpha=0)
    assert uniform == {"a": 500, "b": 500}
    proportional = shares({"a": 9 * 10**6, "b": 10**6}, 1000, alpha=1)
    assert proportional == {"a": 900, "b": 100}
    smoothed = shares(sizes, 10**6, alpha=0.3)
    assert smoothed["small"] == 1000  # all it has; the rest goes to the others
    assert smoothed["stream"] == smoothed["mid"]  # unknown: the median's share
    assert smoothed["big"] / smoothed["mid"] == pytest.approx(100**0.3, rel=1e-3)
    assert sum(smoothed.values()) == pytest.approx(10**6, abs=len(sizes))


def test_sample_gives_each_languages_first_lines_up_to_its_share():
    lines = {"a": iter(["x" * 9] * 10), "b": iter(["y" * 4] * 10)}
    given: dict[str, int] = {}
    taken = list(sample(lines, {"a": 25, "b": 0}, given))
    assert taken == ["x" * 9] * 3 and given == {"a": 30, "b": 0}


def test_a_trained_tokenizers_sample_is_in_the_manifest(fineweb, tmp_path):
    root, docs = fineweb
    out = tmp_path / "data"
    manifest = json.loads(prepare(root, out, vocab_size=600, workers=1,
                                  sampling=Sampling(gb=20e-6, alpha=0.5)).read_text())
    sample_record = manifest["tokenizer"]["sample"]
    assert sample_record["alpha"] == 0.5 and sample_record["budget_bytes"] == 20_000
    given = sample_record["bytes"]
    assert set(given) == set(LANGUAGES) and all(n > 0 for n in given.values())
    assert 20_000 <= sum(given.values()) < 20_000 + 3 * 1000  # each stops within a line
