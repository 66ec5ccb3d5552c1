"""The exported tokenizer.json gives exactly our Tokenizer's ids, byte fallback included."""

from __future__ import annotations

import lzma
import unicodedata
from itertools import islice
from pathlib import Path

import pytest
import sentencepiece as spm
import transformers

from xmod_core.tokenizer import Tokenizer, read_model, train_tokenizer
from xmod_pretrain.interop import write_tokenizer_files

CORPUS = Path(__file__).resolve().parents[2] / "data_prep" / "corpus"
TRAIN_LINES = 150  # per Debian language; the lines after them are held out

# Characters the tokenizers below never saw: Yoruba (NFC and NFD), CJK, emoji, controls.
UNSEEN = [
    "Ẹ̀tọ́ gbogbo ènìyàn", unicodedata.normalize("NFD", "Ẹ̀tọ́ àti ọ̀wọ̀"),
    "人人生而自由，在尊严和权利上一律平等。", "すべての人間は、生まれながらにして自由", "모든 인간은",
    "😀 👍🏽 🇳🇬 👨‍👩‍👧", "x😀y", "\u200b", "a\u200db", "ﬁ Ａ ① ²", "\x00\x07", "\U0010fffd",
]
EDGE_CASES = [
    "", " ", "   ", "a  b", "  leading", "trailing  ", " both ends ",
    "tab\there", "new\nline", "cr\r\nlf", "\t", "ideographic\u3000space", "no\u00a0break",
    "▁", "▁▁", " ▁ ", "x▁", "▁x", "a ▁b", "a▁▁b",            # SentencePiece's own space symbol
    "<0x41>", "literal <0xE1> bytes", "<0x4", "0x41>",            # byte pieces' names as text
    *UNSEEN,
]


def corpus_lines(part: str, lang: str, start: int = 0, stop: int | None = None) -> list[str]:
    with lzma.open(CORPUS / part / f"{lang}.txt.xz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in islice(f, start, stop)]


def debian_languages() -> list[str]:
    return sorted(p.name.removesuffix(".txt.xz") for p in (CORPUS / "debian_ig").glob("*.txt.xz"))


def sample_texts() -> list[str]:
    """All of the UDHR (20 languages, Yoruba unseen in training), held-out Debian text, edge cases."""
    udhr = sorted(p.name.removesuffix(".txt.xz") for p in (CORPUS / "udhr").glob("*.txt.xz"))
    texts = [line for lang in udhr for line in corpus_lines("udhr", lang)]
    texts += [line for lang in debian_languages()
              for line in corpus_lines("debian_ig", lang, TRAIN_LINES, 2 * TRAIN_LINES)]
    return texts + EDGE_CASES


def export_tokenizer(sp_path: Path, folder: Path):
    write_tokenizer_files(sp_path, folder, model_max_length=512)
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> Tokenizer:
    """Ours as data_prep trains it (byte fallback, identity normaliser), on 19 languages."""
    lines = [line for lang in debian_languages()
             for line in corpus_lines("debian_ig", lang, 0, TRAIN_LINES)]
    # Below full character coverage, rarer CJK characters are left to byte fallback too.
    return train_tokenizer(iter(lines), tmp_path_factory.mktemp("sp") / "sp.model", 2000,
                           character_coverage=0.995)


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory):
    return export_tokenizer(ours.path, tmp_path_factory.mktemp("hf"))


def hf_ids(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, add_special_tokens=False)["input_ids"]


def assert_same_ids(ours: Tokenizer, texts: list[str], got: list[list[int]]) -> int:
    """Every row equals ours, or is a float32 tie of SentencePiece; return the number of ties.

    SentencePiece sums piece scores along the whole line in float32, so on a long line two
    segmentations of a word whose scores differ by ~1e-5 tie, and it keeps the first it found;
    ``tokenizers`` sums in float64 and keeps the better one. Such a row must spell the same
    text with a total score that is better, by less than float32 can resolve at that magnitude.
    """
    scores = {i + 1: p.score for i, p in enumerate(read_model(ours.path).pieces)}
    ties = 0
    for text, expected, row in zip(texts, ours.encode_batch(texts), got):
        if row == expected:
            continue
        ours_total, hf_total = (sum(scores[i] for i in ids) for ids in (expected, row))
        assert ours.decode(row) == ours.decode(expected), text
        assert 0 < hf_total - ours_total < 1e-6 * abs(ours_total), (text, expected, row)
        ties += 1
    return ties


def test_ids_match_ours_on_every_text(ours, exported):
    texts = sample_texts()
    assert len(texts) > 3000
    ties = assert_same_ids(ours, texts, hf_ids(exported, texts))
    assert ties < len(texts) / 500
    edge = EDGE_CASES + corpus_lines("udhr", "yo_NG")  # short lines: no ties, exactly ours
    assert hf_ids(exported, edge) == ours.encode_batch(edge)


def test_unseen_characters_go_through_byte_fallback(ours, exported):
    """Yoruba's tone marks, CJK and emoji outside the vocabulary become bytes, never <unk>."""
    texts = corpus_lines("udhr", "yo_NG") + UNSEEN
    ids = hf_ids(exported, texts)
    byte_ids = {exported.convert_tokens_to_ids(f"<0x{b:02X}>") for b in range(256)}
    assert all(exported.unk_token_id not in row for row in ids)
    assert sum(i in byte_ids for row in ids for i in row) > 100
    assert ids == ours.encode_batch(texts)
    # Decoding puts the bytes back together: Yoruba round-trips through transformers as well.
    yoruba = corpus_lines("udhr", "yo_NG")
    assert exported.batch_decode(ids[:len(yoruba)]) == yoruba


def test_special_tokens_follow_xlmr(ours, exported):
    assert len(exported) == ours.vocab_size
    assert (exported.bos_token_id, exported.pad_token_id, exported.eos_token_id,
            exported.unk_token_id, exported.mask_token_id) == (0, 1, 2, 3, ours.mask_id)
    assert exported.cls_token_id == 0 and exported.sep_token_id == 2
    text = "Debian ist ein freies Betriebssystem."
    assert exported(text)["input_ids"] == [0, *ours.encode(text), 2]
    a, b = "erste Zeile", "zweite Zeile"
    assert exported(a, b)["input_ids"] == [0, *ours.encode(a), 2, 2, *ours.encode(b), 2]
    # As in XLM-R, <mask> in a prompt is the mask token and takes the space before it.
    assert exported("Das ist <mask>")["input_ids"] == [0, *ours.encode("Das ist"), ours.mask_id, 2]
    batch = exported(["kurz", "ein etwas längerer Satz"], padding=True)
    assert batch["input_ids"][0][-1] == 1 and batch["attention_mask"][0][-1] == 0


def test_xlmr_style_model_without_byte_fallback(tmp_path):
    """A model like XLM-R's own: NFKC character map, no byte pieces, <unk> for unseen characters."""
    lines = [line for lang in ("de_DE", "el_GR", "en_XX", "ru_RU")
             for line in corpus_lines("debian_ig", lang, 0, TRAIN_LINES)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp_path / "xlmr"), vocab_size=800,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="nmt_nfkc",
        character_coverage=0.999, minloglevel=2)
    ours = Tokenizer.from_file(tmp_path / "xlmr.model")
    exported = export_tokenizer(ours.path, tmp_path / "hf")
    texts = sample_texts()
    assert sum(row.count(ours.unk_id) for row in ours.encode_batch(texts)) > 100  # unknown chars
    assert assert_same_ids(ours, texts, hf_ids(exported, texts)) < len(texts) / 500


def test_refuses_a_model_it_cannot_reproduce(tmp_path):
    lines = corpus_lines("debian_ig", "en_XX", 0, TRAIN_LINES)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp_path / "bpe"), vocab_size=300,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    with pytest.raises(ValueError, match="not a unigram model"):
        write_tokenizer_files(tmp_path / "bpe.model", tmp_path / "hf", model_max_length=512)
