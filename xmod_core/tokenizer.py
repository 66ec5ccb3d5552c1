"""SentencePiece tokenizer in XLM-R's id layout, and training of such a model.

XLM-R (and so X-MOD) puts fairseq's four specials in front of the SentencePiece pieces:

    id 0 <s>   1 <pad>   2 </s>   3 <unk>   4 .. len(sp) = pieces 3 .. len(sp)-1   len(sp)+1 <mask>

The SentencePiece model itself holds <unk>, <s>, </s> as pieces 0, 1, 2 and no pad, so piece i
(i >= 3) is id i + 1 and SentencePiece's unk (piece 0) is id 3. A model in this layout is read
unchanged by transformers' ``XLMRobertaTokenizer``; ``vocab_size`` (embedding rows) is
``len(sp) + 2``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, cast

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from xmod_core.atomic import write_bytes
from xmod_core.errors import UserError
from xmod_core.shards import TOKEN_DTYPE

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# Piece ids the SentencePiece model must have for the layout above (XLM-R's model has them).
SP_UNK_ID, SP_BOS_ID, SP_EOS_ID, SP_PAD_ID = 0, 1, 2, -1
PIECE_OFFSET = 1  # id = piece + 1 for every real piece (fairseq's dictionary shift)
SPACE = "\u2581"  # "▁", SentencePiece's visible space
# Piece types of sentencepiece_model.proto, as the model file stores them.
_PIECE = model_pb2.ModelProto.SentencePiece
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = (_PIECE.NORMAL, _PIECE.CONTROL, _PIECE.USER_DEFINED,
                                               _PIECE.UNUSED, _PIECE.BYTE)

TextSource = str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str]


class TokenizerError(UserError, ValueError):
    """A file that is not a SentencePiece model in XLM-R's id layout."""


class VocabularyTooLarge(UserError, ValueError):
    """More pieces asked for than the training text holds; the message gives the most it does."""


class VocabularyTooSmall(UserError, ValueError):
    """Fewer pieces asked for than the text has characters; the message gives the fewest."""


# SentencePiece's own words for these: "Vocabulary size too high (8000). Please set it to a
# value <= 1293." and "Vocabulary size is smaller than required_chars. 1000 vs 1295. ...".
_TOO_HIGH = re.compile(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)")


class Tokenizer:
    """Encode text to X-MOD token ids and back. Build with ``Tokenizer.from_file``."""

    def __init__(self, sp: spm.SentencePieceProcessor, path: Path, sha256: str) -> None:
        self._sp = sp
        self._path = path
        self._sha256 = sha256
        self._pieces = sp.get_piece_size()
        # Id of each piece, for mapping whole arrays at once (``_to_ids`` maps one list).
        self._ids = np.arange(PIECE_OFFSET, self._pieces + PIECE_OFFSET, dtype=TOKEN_DTYPE)
        self._ids[[SP_UNK_ID, SP_BOS_ID, SP_EOS_ID]] = UNK_ID, BOS_ID, EOS_ID

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a SentencePiece model; raise ValueError unless it has XLM-R's special pieces."""
        path = Path(path)
        data = path.read_bytes()
        try:
            sp = spm.SentencePieceProcessor(model_proto=data)
        except RuntimeError as e:
            raise TokenizerError(f"{path} is not a SentencePiece model ({e})") from None
        layout = (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
        if layout != (SP_UNK_ID, SP_BOS_ID, SP_EOS_ID, SP_PAD_ID):
            raise TokenizerError(
                f"{path}: SentencePiece ids (unk, bos, eos, pad) are {layout}; XLM-R's layout "
                f"needs {(SP_UNK_ID, SP_BOS_ID, SP_EOS_ID, SP_PAD_ID)} (train with unk_id=0, "
                "bos_id=1, eos_id=2, pad_id=-1)"
            )
        return cls(sp, path, hashlib.sha256(data).hexdigest())

    @property
    def path(self) -> Path:
        """The model file this tokenizer was loaded from."""
        return self._path

    @property
    def sha256(self) -> str:
        """SHA-256 of the model file: identifies the tokenizer in manifests and checkpoints."""
        return self._sha256

    @property
    def vocab_size(self) -> int:
        """Number of ids (embedding rows): SentencePiece pieces + <pad> + <mask>."""
        return self._pieces + 2

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def mask_id(self) -> int:
        """The last id."""
        return self._pieces + PIECE_OFFSET

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that are not text: <s> <pad> </s> <unk> <mask> (never chosen for masking)."""
        return frozenset({BOS_ID, PAD_ID, EOS_ID, UNK_ID, self.mask_id})

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (NFC-normalised first), without <s> or </s>."""
        return self._to_ids(self._sp.encode(unicodedata.normalize("NFC", text)))

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """``encode`` of every text, in SentencePiece's thread pool (-1: all cores)."""
        normal = [unicodedata.normalize("NFC", t) for t in texts]
        return [self._to_ids(p) for p in self._sp.encode(normal, num_threads=num_threads)]

    def encode_flat(
        self, lines: Sequence[str], num_threads: int = -1
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ids of every line, each line's followed by </s>, as one uint32 array; and each
        line's number of ids (its </s> included), as uint32.

        For text that is NFC already (``data_prep``'s lines): it is not normalised again, so
        other text gets other ids than from ``encode``.
        """
        pieces = self._sp.encode(list(lines), add_eos=True, num_threads=num_threads)
        counts = np.fromiter(map(len, pieces), np.uint32, len(pieces))
        flat = np.fromiter(chain.from_iterable(pieces), np.int32, int(counts.sum(dtype=np.int64)))
        return self._ids[flat], counts

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; <s> <pad> </s> <mask> are dropped, <unk> reads as SentencePiece's ⁇."""
        pieces = []
        for i in ids:
            i = int(i)
            if i == UNK_ID:
                pieces.append(SP_UNK_ID)
            elif PIECE_OFFSET + 3 <= i < self.mask_id:
                pieces.append(i - PIECE_OFFSET)
            elif i not in self.special_ids:
                raise ValueError(f"token id {i} is outside this tokenizer's 0..{self.mask_id}")
        return self._sp.decode(pieces)

    def _to_ids(self, pieces: list[int]) -> list[int]:
        # Encoding never yields the control pieces <s> </s> (1, 2); only unk (0) needs remapping.
        return [p + PIECE_OFFSET if p else UNK_ID for p in pieces]

    def __repr__(self) -> str:
        return f"Tokenizer({str(self._path)!r}, vocab_size={self.vocab_size})"


def train_tokenizer(
    text: TextSource,
    out_path: str | os.PathLike,
    vocab_size: int,
    *,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 10_000_000,
    seed: int = 0,
    num_threads: int = 2,
) -> Tokenizer:
    """Train a unigram SentencePiece model in XLM-R's layout and write it to ``out_path``.

    ``text`` is a file path, a list or tuple of file paths (one sentence per line), or any other
    iterable of lines (a generator, say). ``vocab_size`` counts SentencePiece pieces; the
    tokenizer has two ids more. With ``byte_fallback`` a character outside the vocabulary becomes
    its UTF-8 bytes instead of <unk>, so scripts and diacritics never seen in training (Yoruba's
    tone marks, for one) still encode losslessly. Corpora above ``input_sentence_size`` lines are
    subsampled at random; the same input and ``seed`` give the same model.

    Normalisation is left to the caller (NFC, as ``data_prep`` does): the model's own normaliser
    is the identity, so ``decode(encode(line)) == line`` for any whitespace-normalised NFC line.
    """
    options: dict[str, Any] = dict(
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        byte_fallback=True,
        unk_id=SP_UNK_ID,
        bos_id=SP_BOS_ID,
        eos_id=SP_EOS_ID,
        pad_id=SP_PAD_ID,
        normalization_rule_name="identity",
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        num_threads=num_threads,
    )
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    source, lines = _input_option(text)
    try:
        spm.SentencePieceTrainer.train(**options, **source, model_writer=model, minloglevel=1)
    except RuntimeError as e:
        if lines is not None and lines.error is not None:
            raise lines.error  # the caller's own error, which SentencePiece wrapped
        too_high = _TOO_HIGH.search(str(e))
        if too_high:
            raise VocabularyTooLarge(
                f"a vocabulary of {vocab_size} pieces is more than this text supports (at most "
                f"{too_high[1]}): lower the vocabulary size (prepare --vocab-size, or "
                f"data.vocab_size when training prepares the data) to {too_high[1]} or less, "
                "or give more text") from None
        too_low = _TOO_LOW.search(str(e))
        if too_low:
            raise VocabularyTooSmall(
                f"a vocabulary of {vocab_size} pieces is fewer than this text's characters need "
                f"({too_low[1]}, each a piece of its own): raise the vocabulary size (prepare "
                f"--vocab-size, or data.vocab_size when training prepares the data) to "
                f"{too_low[1]} or more") from None
        raise ValueError(f"SentencePiece training failed: {e}") from e
    out_path = Path(out_path)
    write_bytes(out_path, model.getvalue())
    return Tokenizer.from_file(out_path)


def _input_option(text: TextSource) -> tuple[dict, _Lines | None]:
    """``input=`` for file paths, ``sentence_iterator=`` for lines (and their reader)."""
    if isinstance(text, (str, os.PathLike)):
        text = [text]
    if isinstance(text, (list, tuple)):
        for path in text:
            if not Path(path).is_file():
                raise FileNotFoundError(f"tokenizer training text {path} does not exist")
        return {"input": ",".join(str(p) for p in text)}, None
    lines = _Lines(cast(Iterable[str], text))
    return {"sentence_iterator": iter(lines)}, lines


class _Lines:
    """Non-empty lines of an iterable, remembering an error it raises: SentencePiece would turn
    it into a RuntimeError that names neither its type nor, always, its cause."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = lines
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self._lines:
                if line.strip():
                    yield line
        except BaseException as e:  # a stop asked for by a signal, too (data_prep.stopping)
            self.error = e
            raise


def read_model(path: str | Path) -> model_pb2.ModelProto:
    """A SentencePiece model file as its protobuf message (pieces, trainer and normalizer
    settings; absent fields read as the proto's defaults), through the module sentencepiece
    ships: the one reader of the file's contents."""
    model = model_pb2.ModelProto()
    model.ParseFromString(Path(path).read_bytes())
    return model
