"""data_prep: sources -> shards -> text round trips, manifest, errors, CLI, the bundled corpus."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import unicodedata
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from data_prep import textio
from data_prep.build_bundle import IG_LANGUAGES, UDHR_FILES, fetch_archive, topic_of_page
from data_prep.html_text import clean_lines, html_paragraphs
from data_prep.prepare import DataPrepError, prepare
from data_prep.shards import decode_lines, valid_lines
from data_prep.textio import normalize_lines
from data_prep.untranslated import UntranslatedFilter
from xmod_core.languages import REGION_CODE, XMOD_BASE_LANGUAGES
from xmod_core.shards import read_manifest, read_tokens

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "data_prep" / "corpus"
VALID_FRACTION = 0.1
# Lines a reader must normalise: outer and inner whitespace runs, tabs, CRLF, NFD, blank lines.
AWKWARD = [
    "  leading and trailing spaces  ",
    "tabs\tand  double  spaces",
    "windows line end\r",
    "",
    "   ",
    unicodedata.normalize("NFD", "Ẹ̀tọ́ ọmọnìyàn: déjà vu, naïve Ångström"),
]


def bundle_lines(part: str, lang: str, limit: int | None = None) -> list[str]:
    with lzma.open(CORPUS / part / f"{lang}.txt.xz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in islice(f, limit)]


def expected(raw_lines: list[str]) -> list[str]:
    """What the shards must decode to: NFC, whitespace runs collapsed, blank lines gone."""
    normal = (" ".join(unicodedata.normalize("NFC", line).split()) for line in raw_lines)
    return [line for line in normal if line]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """A folder with en_XX.txt (awkward lines included), de_DE.txt.xz and ru_RU.txt."""
    folder = tmp_path_factory.mktemp("raw")
    text = {
        "en_XX": bundle_lines("debian_ig", "en_XX", 120)[:60] + AWKWARD
        + bundle_lines("debian_ig", "en_XX", 120)[60:],
        "de_DE": bundle_lines("debian_ig", "de_DE", 100),
        "ru_RU": bundle_lines("debian_ig", "ru_RU", 100),
    }
    (folder / "en_XX.txt").write_bytes("\n".join(text["en_XX"]).encode("utf-8"))  # no final \n
    (folder / "de_DE.txt.xz").write_bytes(lzma.compress("\n".join(text["de_DE"]).encode() + b"\n"))
    (folder / "ru_RU.txt").write_text("\n".join(text["ru_RU"]) + "\n", encoding="utf-8")
    (folder / "README.md").write_text("not a corpus file: ignored\n")
    return folder, text


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(str(raw[0]), out, vocab_size=600, valid_fraction=VALID_FRACTION, workers=2)
    return out


def tokenizer_of(out: Path) -> Path:
    return out / "sentencepiece.bpe.model"


def shard_bytes(out: Path, lang: str) -> tuple[bytes, bytes]:
    return tuple((out / lang / f"{split}.bin").read_bytes() for split in ("train", "valid"))


# --- round trips and format -------------------------------------------------------------------


def test_round_trip_text_to_shards_to_text(raw, prepared):
    for lang, lines in raw[1].items():
        train, valid = decode_lines(prepared, lang, "train"), decode_lines(prepared, lang, "valid")
        want = expected(lines)
        assert train + valid == want
        assert len(valid) == valid_lines(len(want), VALID_FRACTION)  # the last lines, >= 1


def test_manifest_matches_files(prepared):
    manifest = read_manifest(prepared)
    sp_file = tokenizer_of(prepared)
    assert manifest["format"] == "xmod-shards" and manifest["version"] == 1
    assert manifest["dtype"] == "uint32"
    assert manifest["tokenizer"]["file"] == sp_file.name
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256(sp_file.read_bytes()).hexdigest()
    assert manifest["tokenizer"]["vocab_size"] == 602
    assert list(manifest["languages"]) == ["de_DE", "en_XX", "ru_RU"]  # sorted by default
    for lang, splits in manifest["languages"].items():
        assert sorted(os.listdir(prepared / lang)) == ["done.json", "train.bin", "valid.bin"]
        for split, entry in splits.items():
            assert entry["file"] == f"{lang}/{split}.bin"
            tokens = np.fromfile(prepared / entry["file"], dtype="<u4")
            assert len(tokens) == entry["tokens"] == len(read_tokens(prepared, lang, split))
            assert np.count_nonzero(tokens == 2) == entry["lines"] and tokens[-1] == 2
            assert 0 not in tokens and tokens.max() < 602  # no <s>; ids within the vocabulary
    assert not [p for p in prepared.iterdir() if p.name.startswith(".")]


def test_workers_and_reused_tokenizer_give_identical_shards(raw, prepared, tmp_path):
    prepare(
        raw[0], tmp_path, valid_fraction=VALID_FRACTION, workers=1,
        tokenizer=tokenizer_of(prepared),
    )  # fmt: skip
    assert tokenizer_of(tmp_path).read_bytes() == tokenizer_of(prepared).read_bytes()
    for lang in raw[1]:
        assert shard_bytes(tmp_path, lang) == shard_bytes(prepared, lang)


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_do_not_depend_on_blocks_or_workers(raw, prepared, tmp_path, monkeypatch, workers):
    # Blocks are cut in this process, so tiny ones reach the workers too: many blocks per file
    # (.txt ranges and .xz bytes), spread over the workers, must give the one-block shards.
    monkeypatch.setattr(textio, "BLOCK_BYTES", 300)
    prepare(
        raw[0], tmp_path, valid_fraction=VALID_FRACTION, workers=workers,
        tokenizer=tokenizer_of(prepared),
    )  # fmt: skip
    for lang in raw[1]:
        assert shard_bytes(tmp_path, lang) == shard_bytes(prepared, lang)


def test_block_normalisation_is_line_by_line_normalisation():
    whitespace = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    odd = [
        "a line that ends in an e",  # which must not compose with the next line's accent
        "\u0301a line that starts with a combining accent",
        f"every{whitespace.replace(chr(10), '')}whitespace character",
        "no\u00a0break, soft\u00adhyphen, zero\u200bwidth",
        "",
        "a\u2028line separator",
    ]
    single_spaced = [line for line in expected(odd + AWKWARD) if line]
    for lines in (odd + AWKWARD, odd, single_spaced, [line + "\r" for line in single_spaced]):
        text = "\n".join(lines)
        assert normalize_lines(text, text.encode()) == expected(lines)


def test_byte_order_mark_is_dropped(raw, prepared, tmp_path):
    text = (raw[0] / "ru_RU.txt").read_bytes()
    folder = folder_with(tmp_path, {"ru_RU.txt": b"\xef\xbb\xbf" + text})
    prepare(folder, tmp_path / "out", languages=["ru_RU"], valid_fraction=VALID_FRACTION,
            tokenizer=tokenizer_of(prepared))
    assert shard_bytes(tmp_path / "out", "ru_RU") == shard_bytes(prepared, "ru_RU")


def test_languages_select_and_order(raw, prepared, tmp_path):
    manifest = prepare(
        raw[0], tmp_path, languages=["ru_RU", "en_XX"], valid_fraction=VALID_FRACTION,
        tokenizer=tokenizer_of(prepared),
    )  # fmt: skip
    assert list(json.loads(manifest.read_text())["languages"]) == ["ru_RU", "en_XX"]
    assert not (tmp_path / "de_DE").exists()


def test_json_source_with_several_files(raw, prepared, tmp_path):
    en = raw[1]["en_XX"]
    (tmp_path / "a.txt").write_text("\n".join(en[:70]) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(en[70:]) + "\n", encoding="utf-8")
    spec = tmp_path / "sources.json"
    spec.write_text(json.dumps({"en_XX": ["a.txt", "b.txt"], "ru_RU": str(raw[0] / "ru_RU.txt")}))
    prepare(spec, tmp_path / "out", valid_fraction=VALID_FRACTION, tokenizer=tokenizer_of(prepared))
    for lang in ("en_XX", "ru_RU"):
        assert shard_bytes(tmp_path / "out", lang) == shard_bytes(prepared, lang)


def test_datasets_text_builder_source_offline(raw, prepared, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no network, even by accident
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # its lock files
    source = f"hf:text:{raw[0]}/{{lang}}.txt"
    out = tmp_path / "out"
    manifest = prepare(
        source, out, languages=["ru_RU", "en_XX"], valid_fraction=VALID_FRACTION,
        tokenizer=tokenizer_of(prepared),
    )  # fmt: skip
    assert json.loads(manifest.read_text())["source"] == source
    for lang in ("ru_RU", "en_XX"):
        assert shard_bytes(out, lang) == shard_bytes(prepared, lang)
    with pytest.raises(DataPrepError, match="fr_XX.txt"):
        prepare(source, tmp_path / "x", languages=["fr_XX"], tokenizer=tokenizer_of(prepared))


def test_new_language_with_reused_tokenizer_is_lossless(prepared, tmp_path):
    # The add-a-language path: Yoruba (unseen script details) through the run's own tokenizer.
    prepare("bundled:udhr", tmp_path, languages=["yo_NG"], tokenizer=tokenizer_of(prepared))
    tokens = np.concatenate([read_tokens(tmp_path, "yo_NG", s) for s in ("train", "valid")])
    assert 3 not in tokens  # byte fallback: no <unk>
    lines = decode_lines(tmp_path, "yo_NG", "train") + decode_lines(tmp_path, "yo_NG", "valid")
    assert lines == bundle_lines("udhr", "yo_NG")


# --- refusing bad input -----------------------------------------------------------------------


def folder_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    good = "\n".join(bundle_lines("debian_ig", "en_XX", 20)).encode()
    (folder / "en_XX.txt").write_bytes(good)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("fr_XX.txt", b"good line\nbad \xff line\n",
         r"fr_XX\.txt is not UTF-8: invalid byte 0xff at byte offset 14"),
        ("fr_XX.txt.xz", lzma.compress(b"ok\n\xe2\x82 cut\n"),
         r"fr_XX\.txt\.xz is not UTF-8: .* offset 3 of the decompressed"),
        ("fr_XX.txt", b" \n\t\n\n", r"language fr_XX: .*fr_XX\.txt has no usable line"),
        ("fr_XX.txt", b"only one line\n", r"language fr_XX: 1 usable line"),
        ("english.txt", b"some text\nmore\n",
         r"'english' in .*english\.txt is not of the form xx_YY"),
        ("en_XX.txt.xz", lzma.compress(b"again\n"),
         r"language en_XX twice in .*en_XX\.txt and en_XX\.txt\.xz"),
        ("fr_XX.txt", b"\xef\xbb\xbfok\n" + b"good line\n" * 100 + b"\xc3\x28\n",
         r"fr_XX\.txt is not UTF-8: invalid byte 0xc3 at byte offset 1006 "),
        ("fr_XX.txt.xz", lzma.compress(b"good line\n" * 100 + b"end \xe2\x82"),
         r"fr_XX\.txt\.xz is not UTF-8: .* offset 1004 of the decompressed text \(unexpected end"),
    ],
    ids=["utf8", "utf8-xz", "empty", "one-line", "bad-code", "twice", "late", "late-xz"],
)  # fmt: skip
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_files_are_refused(tmp_path, prepared, monkeypatch, name, data, message, workers):
    monkeypatch.setattr(textio, "BLOCK_BYTES", 64)  # errors in later blocks give file offsets
    folder = folder_with(tmp_path, {name: data})
    with pytest.raises(DataPrepError, match=message):
        prepare(folder, tmp_path / "out", tokenizer=tokenizer_of(prepared), workers=workers)


def test_bad_bytes_found_while_training_the_tokenizer(tmp_path):
    folder = folder_with(tmp_path, {"fr_XX.txt": b"fine\n\xc3\x28 broken\n"})
    with pytest.raises(DataPrepError, match=r"fr_XX\.txt is not UTF-8: .* offset 5"):
        prepare(folder, tmp_path / "out", vocab_size=300)


def test_bad_arguments_are_refused(raw, tmp_path):
    spec = tmp_path / "dup.json"
    spec.write_text('{"en_XX": "a.txt", "en_XX": "b.txt"}')
    cases = [
        ({"source": tmp_path / "nowhere"}, r"source .*nowhere does not exist"),
        ({"languages": ["en_XX", "en_XX"]}, r"'en_XX' is listed twice"),
        ({"languages": ["en_XX", "english"]}, r"'english' in --languages is not of the form"),
        ({"languages": ["fr_XX"]}, r"fr_XX not in source .*; it has: de_DE, en_XX, ru_RU"),
        ({"source": spec}, r"language en_XX twice in .*dup\.json"),
        ({"source": "hf:text:/x/{lang}.txt"}, r"pass --languages"),
        ({"valid_fraction": 1.0}, r"valid_fraction"),
        ({"vocab_size": 0}, r"--vocab-size must be a positive number of pieces, got 0"),
        ({"tokenizer": tmp_path / "none.model"}, r"tokenizer .*none\.model does not exist"),
        ({"tokenizer": spec}, r"dup\.json is not a SentencePiece model"),
    ]
    for change, message in cases:
        kwargs = {"source": raw[0], "out_dir": tmp_path / "out", **change}
        with pytest.raises(DataPrepError, match=message):
            prepare(**kwargs)


def test_a_failed_run_leaves_no_manifest(raw, prepared, tmp_path):
    out = tmp_path / "out"
    prepare(raw[0], out, languages=["en_XX"], tokenizer=tokenizer_of(prepared))
    folder = folder_with(tmp_path, {"ru_RU.txt": b"\xff"})
    with pytest.raises(DataPrepError):  # another request, started again in its place
        prepare(folder, out, tokenizer=tokenizer_of(prepared), restart=True)
    assert not (out / "manifest.json").exists()  # the old one is withdrawn, no new one written
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "data_prep.prepare", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.integration  # the prepare command in a subprocess
def test_cli(tmp_path, prepared):
    folder = folder_with(tmp_path, {"fr_XX.txt": b"abc\n\x80\n"})
    failed = run_cli("--source", str(folder), "--out", str(tmp_path / "bad"))
    assert failed.returncode == 1
    assert "fr_XX.txt is not UTF-8: invalid byte 0x80 at byte offset 4" in failed.stderr
    missing = run_cli("--source", str(tmp_path / "missing"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 1 and "missing does not exist" in missing.stderr
    ok = run_cli(
        "--source", "bundled", "--languages", "zh_CN", "el_GR", "--out", str(tmp_path / "good"),
        "--tokenizer", str(tokenizer_of(prepared)), "--valid-fraction", "0.2",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    entry = read_manifest(tmp_path / "good")["languages"]["zh_CN"]
    assert entry["valid"]["lines"] == int(0.2 * (entry["train"]["lines"] + entry["valid"]["lines"]))


@pytest.mark.integration  # the prepare command in a subprocess
def test_a_vocabulary_the_text_cannot_fill_is_refused_naming_the_largest(tmp_path):
    """A small corpus with the default 8000 pieces: one line naming the option and the most
    SentencePiece can make from the text, exit 1, and no output folder left behind."""
    folder = folder_with(tmp_path, {"en_XX.txt": "".join(
        f"line {i} of a small corpus, with a few words\n" for i in range(60)).encode()})
    failed = run_cli("--source", str(folder), "--out", str(tmp_path / "out"))
    assert failed.returncode == 1
    found = re.search(r"a vocabulary of 8000 pieces is more than this text supports \(at most "
                      r"(\d+)\): lower the vocabulary size \(prepare --vocab-size", failed.stderr)
    assert found and "Traceback" not in failed.stderr, failed.stderr
    assert not (tmp_path / "out").exists()
    largest = run_cli("--source", str(folder), "--out", str(tmp_path / "out"),
                      "--vocab-size", found[1])
    assert largest.returncode == 0, largest.stderr


@pytest.mark.integration  # the prepare command in a subprocess
def test_prepare_help_shows_the_defaults_and_the_console_command():
    shown = run_cli("--help").stdout
    assert "xmod_pretrain prepare" in shown and "(default: 8000)" in shown


# --- the bundled corpus -----------------------------------------------------------------------


def test_bundle_holds_19_languages_yoruba_and_tigrinya():
    ig = {p.name.removesuffix(".txt.xz") for p in (CORPUS / "debian_ig").glob("*.txt.xz")}
    udhr = {p.name.removesuffix(".txt.xz") for p in (CORPUS / "udhr").glob("*.txt.xz")}
    assert ig == set(IG_LANGUAGES.values()) and len(ig) == 19
    assert ig <= set(XMOD_BASE_LANGUAGES)
    assert udhr == ig | {"yo_NG", "ti_ET"} == set(UDHR_FILES)
    assert all(REGION_CODE.match(code) for code in udhr)
    sizes = {p: p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()}
    assert 1_000_000 < sum(sizes.values()) < 4_000_000  # a few MB in the repository
    for part, minimum in (("debian_ig", 750), ("guide_topic", 150), ("udhr", 80)):
        for code in ig:
            lines = bundle_lines(part, code)
            assert len(lines) >= minimum
            assert all(line and unicodedata.is_normalized("NFC", line) for line in lines)


def test_guide_topic_test_pages_are_held_out_of_the_pretraining_text():
    splits = json.loads((CORPUS / "guide_topic" / "splits.json").read_text(encoding="utf-8"))
    for part in ("debian_ig", "guide_topic"):
        index = json.loads((CORPUS / part / "pages.json").read_text(encoding="utf-8"))
        for code in IG_LANGUAGES.values():
            pages = {page for page, _ in index[code]}
            assert sum(n for _, n in index[code]) == len(bundle_lines(part, code))
            in_test = {page for page in pages if splits.get(page) == "test"}
            assert in_test == (pages & set(splits) if part == "guide_topic" else set())
    chapters = {split: {topic_of_page(page) for page, s in splits.items() if s == split}
                for split in ("train", "dev", "test")}
    assert chapters["train"] == chapters["dev"] == chapters["test"] and len(chapters["test"]) == 13


def test_bundle_carries_its_licences():
    licences = (CORPUS / "LICENSES.md").read_text(encoding="utf-8")
    assert "GNU GPL, version 2" in licences and "Bruce Perens" in licences  # the guide's notice
    assert "(The MIT License)" in licences and "Titus Wormer" in licences  # udhr's licence
    assert "GNU GENERAL PUBLIC LICENSE" in (CORPUS / "GPL-2").read_text(encoding="utf-8")
    assert "python -m data_prep.build_bundle" in (CORPUS / "README.md").read_text(encoding="utf-8")


def test_html_paragraphs_split_blocks_and_skip_code_and_navigation():
    page = """<html><head><title>1.1. What is Debian?</title></head><body>
    <div class="navheader"><table><tr><th>Chapter 1. Welcome</th></tr></table></div>
    <div class="toc"><dl><dt>1.1. What is Debian?</dt></dl></div>
    <h2>1.1. What is Debian?</h2>
    <p>Debian is an   all-volunteer <a href="x">organization</a>
       dedicated to free software &amp; more.</p>
    <pre class="screen"># apt-get install foo</pre>
    <ul><li><p>Cafe\u0301 first item of a list</p></li><li>short</li></ul>
    <p>Debian is an all-volunteer organization dedicated to free software &amp; more.</p>
    <div class="navfooter"><a href="next.html">Next</a></div></body></html>"""
    paragraphs = html_paragraphs(page)
    assert paragraphs == [
        "1.1. What is Debian?",
        "Debian is an all-volunteer organization dedicated to free software & more.",
        "Caf\u00e9 first item of a list",  # NFC
        "short",
        "Debian is an all-volunteer organization dedicated to free software & more.",
    ]
    # "short" is under 20 characters; the last paragraph repeats the second.
    assert clean_lines(paragraphs, min_chars=20) == paragraphs[:3]


def test_fetch_refuses_an_archive_with_the_wrong_checksum(tmp_path):
    (tmp_path / "pkg.deb").write_bytes(b"not the package")
    with pytest.raises(DataPrepError, match=r"pkg\.deb: sha256 .* expected 00"):
        fetch_archive(tmp_path, "pkg.deb", "00" * 32, ["false"])


def test_untranslated_paragraphs_are_found():
    english = [
        "Pass the nomodeset option on the kernel command line. This might help boot into a "
        "“fallback graphics” mode.",
        "As another example, a graphics card could give the following output: “04:00.0 VGA "
        "compatible controller [0300]: Advanced Micro Devices [AMD] nee ATI RV710 [Radeon HD "
        "4350] [1002:954f]”.",
    ]
    found = UntranslatedFilter(english).is_untranslated
    assert found(english[1])  # copied word for word
    # English prose with only the quotation marks localised (as in the Russian guide).
    assert found(english[0].replace("“", "«").replace("”", "»"))
    # A real translation quoting English command output stays.
    assert not found(
        "Als weiteres Beispiel könnte eine Grafikkarte folgende Ausgabe erzeugen: „04:00.0 VGA "
        "compatible controller [0300]: Advanced Micro Devices [AMD] nee ATI RV710 [Radeon HD "
        "4350] [1002:954f]“."
    )
