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
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as model_pb2
from tokenizers import AddedToken, Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from xmod_core.atomic import atomic_path, write_text
from xmod_core.shards import TOKENIZER_FILE
from xmod_core.tokenizer import (
    BOS_ID,
    BYTE,
    CONTROL,
    EOS_ID,
    NORMAL,
    SPACE,
    UNK_ID,
    UNUSED,
    USER_DEFINED,
    Tokenizer,
    read_model,
)
from xmod_pretrain.interop.config import TransformersFolderError

TOKENIZER_JSON = "tokenizer.json"
UNIGRAM = model_pb2.TrainerSpec.UNIGRAM
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
            "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}


def _check_supported(model: model_pb2.ModelProto, path: Path) -> None:
    """Refuse settings this pipeline does not reproduce (none of them is used by XLM-R or us)."""
    problems = []
    if model.trainer_spec.model_type != UNIGRAM:
        problems.append("it is not a unigram model")
    if model.trainer_spec.treat_whitespace_as_suffix or not model.normalizer_spec.escape_whitespaces:
        problems.append("its whitespace handling is not SentencePiece's default")
    if any(p.type == USER_DEFINED for p in model.pieces):
        problems.append("it has user-defined pieces")
    if problems:
        raise ValueError(f"{path}: cannot write a matching tokenizer.json: {'; '.join(problems)}")


def _vocabulary(model: model_pb2.ModelProto) -> list[tuple[str, float]]:
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
        vocab.append((p.piece, len(p.piece) * lowest - 10.0 if never_matched else p.score))
    vocab.append(("<mask>", 0.0))
    return vocab


def _normalizer(model: model_pb2.ModelProto) -> normalizers.Normalizer:
    """SentencePiece's normalisation, after the NFC that ``Tokenizer.encode`` applies first.

    With ``remove_extra_whitespaces`` SentencePiece drops leading spaces, collapses runs of
    spaces, and drops trailing ``▁`` after escaping (a literal ``▁`` in the text included). Only
    U+0020 counts as a space here: tabs and other blanks are what the character map makes of them.
    """
    spec = model.normalizer_spec
    steps: list[normalizers.Normalizer] = [normalizers.NFC()]
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", SPACE))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))  # leaves empty text empty, as SentencePiece
    if spec.remove_extra_whitespaces:
        steps.append(normalizers.Replace(Regex(f"{SPACE}+$"), ""))
    return normalizers.Sequence(steps)


def build_tokenizer(sp_path: str | Path) -> HFTokenizer:
    """A ``tokenizers.Tokenizer`` that encodes text as ``Tokenizer.from_file(sp_path)`` does
    (up to the two differences the module docstring names)."""
    sp_path = Path(sp_path)
    Tokenizer.from_file(sp_path)  # refuses a model without XLM-R's special pieces
    model = read_model(sp_path)
    _check_supported(model, sp_path)
    has_bytes = any(p.type == BYTE for p in model.pieces)
    tok = HFTokenizer(Unigram(_vocabulary(model), unk_id=UNK_ID, byte_fallback=has_bytes))
    tok.normalizer = _normalizer(model)
    if not any(SPACE in p.piece[1:] for p in model.pieces if p.type == NORMAL):
        tok.pre_tokenizer = pre_tokenizers.Metaspace(SPACE, prepend_scheme="never", split=True)
    scheme = "always" if model.normalizer_spec.add_dummy_prefix else "never"
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
