"""transformers tokenizer files for a SentencePiece model in XLM-R's id layout, byte fallback kept.

transformers' own conversion of a SentencePiece model (``XLMRobertaTokenizer``) drops
``byte_fallback``, so every character the model would encode as UTF-8 bytes (Yoruba's tone marks,
say) becomes ``<unk>``. Here the ``tokenizers`` pipeline is built from the model file itself so
that it gives ``Tokenizer.encode``'s ids:

    normalizer      NFC (as ``Tokenizer.encode``), the model's own character map, then
                    SentencePiece's whitespace rules (strip, collapse, ``▁`` for space, dummy prefix)
    pre-tokenizer   a split before every ``▁``, when pieces only start with one (SentencePiece's
                    whitespace splitting): then no segmentation crosses it anyway
    model           Unigram over XLM-R's ids, with the model's scores and byte fallback
    post-processor  ``<s> A </s>`` and ``<s> A </s></s> B </s>``, as XLM-R
    decoder         byte pieces back to UTF-8, ``▁`` back to spaces

Two differences remain, both inherent. Like every transformers tokenizer, it reads the
special-token strings (``<s>``, ``</s>``, ``<pad>``, ``<unk>``, ``<mask>``) in text as those tokens,
which ``Tokenizer.encode`` does not: that is what lets a fill-mask prompt say ``<mask>``. And
SentencePiece adds scores along the whole line in float32, ``tokenizers`` in float64: where two
segmentations of a word differ by less than float32 resolves at that point of a long line,
SentencePiece keeps whichever it met first and ``tokenizers`` the better one (both spell the
same text; none of the bundled corpus's 27,000 lines with the demo's 8,000-piece tokenizer).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import Unigram

from xmod_core.atomic import atomic_path, write_text
from xmod_core.shards import TOKENIZER_FILE
from xmod_core.tokenizer import BOS_ID, EOS_ID, UNK_ID, Tokenizer
from xmod_pretrain.interop.config import TransformersFolderError

TOKENIZER_JSON = "tokenizer.json"
SPACE = "▁"  # U+2581, SentencePiece's visible space

# SentencePiece piece types (sentencepiece_model.proto).
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 3, 4, 5, 6
UNIGRAM = 1
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
            "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}


@dataclass(frozen=True)
class Piece:
    """One SentencePiece piece: its text, its score (a log probability) and its type."""

    text: str
    score: float
    type: int


@dataclass(frozen=True)
class SentencePieceModel:
    """What a SentencePiece model file says about encoding (the parts a tokenizer.json needs)."""

    pieces: list[Piece]
    model_type: int
    treat_whitespace_as_suffix: bool
    precompiled_charsmap: bytes
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool


def _fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: varints and fixed-width values as
    ints, length-delimited ones as bytes. Read by hand, so that no protobuf runtime (whose
    version must match the generated code) is needed for the handful of fields used here."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = message[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(message):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, varint()
        elif wire == 2:
            size = varint()
            yield number, message[pos:pos + size]
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, int.from_bytes(message[pos:pos + width], "little")
            pos += width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} (field {number})")


def _piece(message: bytes) -> Piece:
    text, score, kind = "", 0.0, NORMAL
    for number, value in _fields(message):
        if number == 1:
            text = value.decode("utf-8")
        elif number == 2:
            score = struct.unpack("<f", struct.pack("<I", value))[0]
        elif number == 3:
            kind = value
    return Piece(text, score, kind)


def read_sentencepiece(path: str | Path) -> SentencePieceModel:
    """Parse a SentencePiece model file (``ModelProto``); absent fields take the proto defaults."""
    pieces: list[Piece] = []
    trainer: dict[int, int | bytes] = {}
    normalizer: dict[int, int | bytes] = {}
    for number, value in _fields(Path(path).read_bytes()):
        if number == 1:
            pieces.append(_piece(value))
        elif number == 2:
            trainer = dict(_fields(value))
        elif number == 3:
            normalizer = dict(_fields(value))
    return SentencePieceModel(
        pieces=pieces,
        model_type=int(trainer.get(3, UNIGRAM)),
        treat_whitespace_as_suffix=bool(trainer.get(24, False)),
        precompiled_charsmap=bytes(normalizer.get(2, b"")),
        add_dummy_prefix=bool(normalizer.get(3, True)),
        remove_extra_whitespaces=bool(normalizer.get(4, True)),
        escape_whitespaces=bool(normalizer.get(5, True)),
    )


def _check_supported(model: SentencePieceModel, path: Path) -> None:
    """Refuse settings this pipeline does not reproduce (none of them is used by XLM-R or us)."""
    problems = []
    if model.model_type != UNIGRAM:
        problems.append("it is not a unigram model")
    if model.treat_whitespace_as_suffix or not model.escape_whitespaces:
        problems.append("its whitespace handling is not SentencePiece's default")
    if any(p.type == USER_DEFINED for p in model.pieces):
        problems.append("it has user-defined pieces")
    if problems:
        raise ValueError(f"{path}: cannot write a matching tokenizer.json: {'; '.join(problems)}")


def _vocabulary(model: SentencePieceModel) -> list[tuple[str, float]]:
    """XLM-R's ids: <s> <pad> </s> <unk>, SentencePiece's pieces from 3 on, <mask> last.

    SentencePiece never matches control, byte or unused pieces against text; the ``tokenizers``
    Unigram would, so literal text ``<0x41>`` would become one byte token. Their score is set below any
    spelling of the same text with ordinary pieces (each at least the lowest score), which makes
    the lattice prefer that spelling, as SentencePiece does, whenever each of its characters is in
    the vocabulary. Byte fallback looks byte tokens up by name, so their score does not matter there.
    """
    lowest = min(0.0, min(p.score for p in model.pieces if p.type == NORMAL))
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    for p in model.pieces[3:]:
        never_matched = p.type in (CONTROL, BYTE, UNUSED)
        vocab.append((p.text, len(p.text) * lowest - 10.0 if never_matched else p.score))
    vocab.append(("<mask>", 0.0))
    return vocab


def _normalizer(model: SentencePieceModel) -> normalizers.Normalizer:
    """SentencePiece's normalisation, after the NFC that ``Tokenizer.encode`` applies first.

    With ``remove_extra_whitespaces`` SentencePiece drops leading spaces, collapses runs of
    spaces, and drops trailing ``▁`` after escaping (a literal ``▁`` in the text included). Only
    U+0020 counts as a space here: tabs and other blanks are what the character map makes of them.
    """
    steps: list[normalizers.Normalizer] = [normalizers.NFC()]
    if model.precompiled_charsmap:
        steps.append(normalizers.Precompiled(model.precompiled_charsmap))
    if model.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", SPACE))
    if model.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))  # leaves empty text empty, as SentencePiece
    if model.remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex(f"{SPACE}+$"), ""))
    return normalizers.Sequence(steps)


def build_tokenizer(sp_path: str | Path) -> HFTokenizer:
    """A ``tokenizers.Tokenizer`` that encodes text as ``Tokenizer.from_file(sp_path)`` does
    (up to the two differences the module docstring names)."""
    sp_path = Path(sp_path)
    Tokenizer.from_file(sp_path)  # refuses a model without XLM-R's special pieces
    model = read_sentencepiece(sp_path)
    _check_supported(model, sp_path)
    has_bytes = any(p.type == BYTE for p in model.pieces)
    tok = HFTokenizer(Unigram(_vocabulary(model), unk_id=UNK_ID, byte_fallback=has_bytes))
    tok.normalizer = _normalizer(model)
    if not any(SPACE in p.text[1:] for p in model.pieces if p.type == NORMAL):
        tok.pre_tokenizer = pre_tokenizers.Metaspace(SPACE, prepend_scheme="never", split=True)
    scheme = "always" if model.add_dummy_prefix else "never"
    tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                     decoders.Metaspace(SPACE, prepend_scheme=scheme)])
    bos, eos = SPECIALS["bos_token"], SPECIALS["eos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, BOS_ID), (eos, EOS_ID)],
    )
    # <mask> takes the space before it, as in XLM-R: "Paris is the <mask>." -> "▁the", "<mask>".
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials] +
                           [AddedToken("<mask>", special=True, normalized=False, lstrip=True)])
    return tok


def write_tokenizer_files(sp_path: str | Path, out_dir: str | Path,
                          model_max_length: int) -> list[Path]:
    """Write what ``AutoTokenizer.from_pretrained(out_dir)`` loads; return the files written.

    ``tokenizer_config.json`` names ``PreTrainedTokenizerFast`` on purpose: transformers 5 would
    rebuild an ``XLMRobertaTokenizer`` from the vocabulary alone, dropping byte fallback and the
    normaliser, while ``PreTrainedTokenizerFast`` loads ``tokenizer.json`` as written.
    """
    out_dir = Path(out_dir)
    tok = build_tokenizer(sp_path)
    with atomic_path(out_dir / TOKENIZER_JSON) as tmp:
        tok.save(str(tmp))
    with atomic_path(out_dir / TOKENIZER_FILE) as tmp:
        shutil.copyfile(sp_path, tmp)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **SPECIALS,
              "model_max_length": model_max_length, "clean_up_tokenization_spaces": False}
    write_text(out_dir / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    write_text(out_dir / "special_tokens_map.json", json.dumps(SPECIALS, indent=2) + "\n")
    names = (TOKENIZER_JSON, TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json")
    return [out_dir / name for name in names]


def hf_tokenizer_file(folder: str | Path) -> Path:
    """The folder's ``sentencepiece.bpe.model``, checked to be in XLM-R's id layout."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise TransformersFolderError(f"{folder} has no {TOKENIZER_FILE}: the SentencePiece model "
                                "is needed to keep the folder's token ids")
    Tokenizer.from_file(path)  # a model in another id layout fails here, not mid-training
    return path
