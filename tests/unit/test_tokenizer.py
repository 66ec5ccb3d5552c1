"""Tokenizer: XLM-R id layout checked against SentencePiece itself, byte fallback, training."""

from __future__ import annotations

import io
import lzma
import re
import unicodedata
from itertools import islice
from pathlib import Path

import pytest
import sentencepiece as spm

from xmod_core.tokenizer import Tokenizer, VocabularyTooLarge, VocabularyTooSmall, train_tokenizer

CORPUS = Path(__file__).resolve().parents[2] / "data_prep" / "corpus"


def corpus_lines(part: str, lang: str, limit: int | None = None) -> list[str]:
    with lzma.open(CORPUS / part / f"{lang}.txt.xz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in islice(f, limit)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    """A 2,000-piece model on the first 150 lines of each of the 19 Debian languages."""
    lines = [
        line
        for path in sorted((CORPUS / "debian_ig").glob("*.txt.xz"))
        for line in corpus_lines("debian_ig", path.name.removesuffix(".txt.xz"), 150)
    ]
    return train_tokenizer(iter(lines), tmp_path_factory.mktemp("tok") / "sp.model", 2000)


@pytest.fixture(scope="module")
def sp(tok) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tok.path))


def test_special_ids_follow_xlmr(tok, sp):
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.vocab_size == len(sp) + 2 == 2002
    assert tok.mask_id == len(sp) + 1 == tok.vocab_size - 1
    assert tok.special_ids == {0, 1, 2, 3, tok.mask_id}


def test_pieces_are_shifted_by_one(tok, sp):
    text = "Debian ist ein freies Betriebssystem. Το Debian είναι ελεύθερο. 自由なソフト"
    pieces = sp.encode(text)
    assert pieces and min(pieces) >= 3
    assert tok.encode(text) == [p + 1 for p in pieces]
    for token in (4, 100, tok.mask_id - 1):
        assert tok.decode([token]) == sp.decode([token - 1])


def test_encode_batch_matches_encode_and_normalises_to_nfc(tok):
    texts = corpus_lines("udhr", "vi_VN", 20)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    decomposed = unicodedata.normalize("NFD", texts[3])
    assert decomposed != texts[3] and tok.encode(decomposed) == tok.encode(texts[3])


def test_decode_drops_specials_and_refuses_unknown_ids(tok):
    text = "Installing Debian GNU/Linux"
    ids = tok.encode(text)
    assert tok.decode([tok.bos_id, *ids, tok.mask_id, tok.eos_id, tok.pad_id]) == text
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])


def test_yoruba_byte_fallback_no_unk_and_exact_round_trip(tok, sp):
    yoruba = corpus_lines("udhr", "yo_NG")
    encoded = tok.encode_batch(yoruba)
    assert sum(ids.count(tok.unk_id) for ids in encoded) == 0
    assert [tok.decode(ids) for ids in encoded] == yoruba
    # Meaningful only if Yoruba needs the fallback: some characters must come out as bytes.
    assert any(sp.is_byte(i - 1) for ids in encoded for i in ids)


def test_unk_maps_to_3_and_decodes_visibly(tmp_path):
    # Without byte fallback (as in some external models) an unseen character is SentencePiece's
    # unk, piece 0, which must become id 3.
    model = io.BytesIO()
    lines = corpus_lines("debian_ig", "en_XX", 200)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=300, minloglevel=2
    )
    (tmp_path / "plain.model").write_bytes(model.getvalue())
    plain = Tokenizer.from_file(tmp_path / "plain.model")
    ids = plain.encode("Debian ẹ̀")
    assert ids[-1] == plain.unk_id and ids[0] != plain.unk_id
    assert plain.decode(ids) == "Debian " + sp_unk_surface(tmp_path / "plain.model")


def sp_unk_surface(path: Path) -> str:
    return spm.SentencePieceProcessor(model_file=str(path)).decode([0])


def pieces(path: Path) -> list[str]:
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return [sp.id_to_piece(i) for i in range(len(sp))]


def test_from_file_refuses_other_layouts(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines("debian_ig", "en_XX", 200)),
        model_writer=model, vocab_size=300, pad_id=3, minloglevel=2,
    )  # fmt: skip
    (tmp_path / "padded.model").write_bytes(model.getvalue())
    with pytest.raises(ValueError, match="pad_id=-1"):
        Tokenizer.from_file(tmp_path / "padded.model")


def test_training_is_deterministic_and_files_equal_lines(tmp_path):
    lines = corpus_lines("debian_ig", "en_XX", 300) + corpus_lines("debian_ig", "de_DE", 300)
    (tmp_path / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    a = train_tokenizer(iter(lines), tmp_path / "a.model", 500)
    b = train_tokenizer((line for line in lines), tmp_path / "b.model", 500)
    c = train_tokenizer([tmp_path / "text.txt"], tmp_path / "c.model", 500)
    assert a.sha256 == b.sha256
    assert a.path == tmp_path / "a.model" and a.vocab_size == 502
    # The file-trained model records its input path, so compare its pieces, not its bytes.
    assert pieces(c.path) == pieces(a.path)


def test_training_errors(tmp_path):
    class Broken(Exception):
        pass

    def lines():
        yield from corpus_lines("debian_ig", "en_XX", 50)
        raise Broken("line 51 is unreadable")

    with pytest.raises(Broken, match="line 51"):
        train_tokenizer(lines(), tmp_path / "x.model", 300)
    with pytest.raises(VocabularyTooLarge, match=r"a vocabulary of 5000 pieces is more than this "
                                                 r"text supports \(at most \d+\)"):
        train_tokenizer(iter(corpus_lines("debian_ig", "en_XX", 20)), tmp_path / "x.model", 5000)
    # A script of many characters (Chinese) needs a piece for each: the fewest is named.
    chinese = corpus_lines("debian_ig", "zh_CN", 200)
    with pytest.raises(VocabularyTooSmall, match=r"a vocabulary of 300 pieces is fewer than this "
                                                 r"text's characters need \((\d+), each a piece "
                                                 r"of its own\): raise the vocabulary size") as e:
        train_tokenizer(iter(chinese), tmp_path / "x.model", 300)
    fewest = int(re.search(r"to (\d+) or more", str(e.value))[1])
    train_tokenizer(iter(chinese), tmp_path / "fits.model", fewest)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "x.model", 300)
    assert not (tmp_path / "x.model").exists()
