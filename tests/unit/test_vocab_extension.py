"""Vocabulary extension, tokenizer side: old text unchanged, new ids after the old, bad input.

A tokenizer of the 19 pre-training languages (the demo's recipe: 8000 pieces on the bundled
Debian Installation Guide) grows for Yoruba (Latin with tone marks) and Tigrinya (Ge'ez script).
"""

from __future__ import annotations

import lzma
import unicodedata
from pathlib import Path

import pytest

from data_prep.sources import CORPUS_DIR, open_source
from xmod_core.tokenizer import Tokenizer, read_model, train_tokenizer
from xmod_pretrain.interop.tokenizer import build_tokenizer
from xmod_pretrain.vocabulary.pieces import (
    ExtensionError,
    characters_outside,
    extend_tokenizer,
    learn_pieces,
    old_spelling,
    piece_bytes,
    tokens_per_character,
    vocabulary_characters,
)

# The module fixture trains the 19-language, 8000-piece tokenizer (about 15 s).
pytestmark = pytest.mark.slow

PRETRAINING = sorted(p.name.split(".")[0] for p in (CORPUS_DIR / "debian_ig").glob("*.txt.xz"))


def bundled_lines(folder: str, lang: str) -> list[str]:
    with lzma.open(CORPUS_DIR / folder / f"{lang}.txt.xz", "rt", encoding="utf-8") as f:
        return [unicodedata.normalize("NFC", line) for line in f.read().splitlines() if line.strip()]


def udhr(lang: str) -> list[str]:
    return list(open_source("bundled:udhr", [lang])[lang].lines())


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Tokenizer, set[str]]:
    """The 19-language tokenizer and the characters its training text spells with bytes."""
    folder = tmp_path_factory.mktemp("base")
    lines = [line for lang in PRETRAINING for line in bundled_lines("debian_ig", lang)]
    tok = train_tokenizer(iter(lines), folder / "sp.model", 8000)
    ids, _ = tok.encode_flat(lines)
    (folder / "all.bin").write_bytes(ids.astype("<u4").tobytes())
    return tok, characters_outside(tok, [folder / "all.bin"])


@pytest.fixture(scope="module")
def grown(base, tmp_path_factory) -> dict[str, Tokenizer]:
    tok, protected = base
    out = {}
    for lang, count in (("yo_NG", 64), ("ti_ET", 256)):
        learned = learn_pieces(udhr(lang), lang, read_model(tok.path), count, protected)
        out[lang] = extend_tokenizer(tok.path, learned.pieces,
                                     tmp_path_factory.mktemp(lang) / "sp.model")
    return out


def test_old_languages_text_tokenizes_exactly_as_before(base, grown):
    tok, _ = base
    lines = [line for folder in ("debian_ig", "guide_topic", "udhr") for lang in PRETRAINING
             if (CORPUS_DIR / folder / f"{lang}.txt.xz").is_file()
             for line in bundled_lines(folder, lang)]
    assert len(PRETRAINING) == 19 and len(lines) > 26_000
    before = tok.encode_batch(lines)
    for lang, new in grown.items():
        changed = sum(a != b for a, b in zip(before, new.encode_batch(lines)))
        assert changed == 0, f"{changed} lines tokenize differently after growing for {lang}"


def test_new_ids_follow_every_old_id_and_mask_moves_last(base, grown):
    tok, _ = base
    old = read_model(tok.path)
    for new in grown.values():
        model = read_model(new.path)
        assert list(model.pieces)[:len(old.pieces)] == list(old.pieces)  # every old id kept
        assert new.mask_id == new.vocab_size - 1 > tok.mask_id
        added = range(tok.mask_id, new.mask_id)  # the old <mask> id is the first new piece
        assert new.decode(list(added)) and all(i not in new.special_ids for i in added)
        # A new piece never spells text the old vocabulary covers, nor text of old languages.
        vocabulary = vocabulary_characters(old)
        assert all(set(p.piece) - vocabulary - {"▁"} for p in model.pieces[len(old.pieces):])


def test_new_script_needs_far_fewer_tokens(base, grown):
    tok, _ = base
    for lang, floor in (("yo_NG", 0.1), ("ti_ET", 0.5)):
        before, after = (tokens_per_character(t, udhr(lang)) for t in (tok, grown[lang]))
        assert after < before - floor, (lang, before, after)


def test_protected_characters_stay_with_byte_fallback(base, grown):
    tok, protected = base
    assert protected  # the 19 languages' text has characters the 8000 pieces lack
    for new in grown.values():
        added = read_model(new.path).pieces[len(read_model(tok.path).pieces):]
        assert not {char for p in added for char in p.piece} & protected


def test_fewer_pieces_than_asked_when_the_text_runs_out(base):
    tok, protected = base
    learned = learn_pieces(udhr("yo_NG"), "yo_NG", read_model(tok.path), 100_000, protected)
    assert 0 < len(learned.pieces) < 100_000 and learned.requested == 100_000
    floor = min(p.score for p in read_model(tok.path).pieces if p.type == 1)
    assert min(score for _, score in learned.pieces) >= floor  # byte-fallback penalty unchanged


def test_text_in_a_covered_script_is_refused(base):
    tok, protected = base
    with pytest.raises(ExtensionError, match="de_DE has no letters the vocabulary lacks"):
        learn_pieces(udhr("de_DE"), "de_DE", read_model(tok.path), 64, protected)


def test_transformers_tokenizer_of_the_grown_model_gives_our_ids(grown):
    for lang, new in grown.items():
        lines = udhr(lang) + udhr("en_XX")[:20]
        fast = build_tokenizer(new.path)
        ours = new.encode_batch(lines)
        theirs = [e.ids[1:-1] for e in fast.encode_batch(lines)]  # without <s> ... </s>
        assert ours == theirs, lang


def test_old_spelling_and_piece_bytes(base, grown):
    tok, _ = base
    new = grown["ti_ET"]
    pieces = [p.piece for p in read_model(new.path).pieces[len(read_model(tok.path).pieces):]]
    spelled = old_spelling(tok.path, pieces)
    assert [tok.decode(ids) for ids in spelled] == [p.replace("▁", " ").strip() for p in pieces]
    sizes = piece_bytes(new)
    for line in udhr("ti_ET")[:20]:
        ids = new.encode(line)  # the dummy prefix ▁ counts as the space before the line
        assert int(sizes[ids].sum()) == len(line.encode("utf-8")) + 1


def test_an_extension_clashing_with_old_pieces_is_refused(base, tmp_path):
    tok, _ = base
    first = read_model(tok.path).pieces[10].piece
    with pytest.raises(ExtensionError, match="has the pieces"):
        extend_tokenizer(tok.path, [(first, -5.0)], tmp_path / "sp.model")
    assert not Path(tmp_path / "sp.model").exists()
