"""Lines -> uint32 token ids, in worker processes, in input order, with bounded memory."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

import numpy as np

from xmod_pretrain.tokenizer import EOS_ID, Tokenizer

TOKEN_DTYPE = np.dtype("<u4")  # the shard format: little-endian uint32
CHUNK_LINES = 2048
Chunk = tuple[np.ndarray, np.ndarray]
"""Flat token ids of a run of lines (each line's ids then </s>), and each line's id count."""

_tokenizer: Tokenizer | None = None  # one per worker process, loaded by _load_tokenizer


def _load_tokenizer(path: str) -> None:
    global _tokenizer
    _tokenizer = Tokenizer.from_file(path)


def _encode_chunk(lines: list[str]) -> Chunk:
    assert _tokenizer is not None, "_load_tokenizer runs first, as the pool's initializer"
    # One SentencePiece thread per process: the parallelism is the processes.
    ids = _tokenizer.encode_batch(lines, num_threads=1)
    counts = np.fromiter((len(x) + 1 for x in ids), dtype=np.uint32, count=len(ids))
    tokens = np.fromiter(chain.from_iterable(x + [EOS_ID] for x in ids), dtype=TOKEN_DTYPE)
    return tokens, counts


class ParallelEncoder:
    """Encode streams of lines with ``workers`` processes (1: in this process).

    Use as a context manager; ``encode`` keeps at most two chunks per worker in flight, so a
    corpus of any size streams through in constant memory, and chunks come back in input order.
    """

    def __init__(
        self, tokenizer_path: str | Path, workers: int = 2, chunk_lines: int = CHUNK_LINES
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.tokenizer_path = str(tokenizer_path)
        self.workers = workers
        self.chunk_lines = chunk_lines
        self._pool: multiprocessing.pool.Pool | None = None

    def __enter__(self) -> ParallelEncoder:
        if self.workers == 1:
            _load_tokenizer(self.tokenizer_path)
        else:
            # spawn: workers start clean, without copies of this process's threads or locks.
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, _load_tokenizer, (self.tokenizer_path,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def encode(self, lines: Iterable[str]) -> Iterator[Chunk]:
        """Token chunks of ``lines``, in order."""
        batches = _batched(lines, self.chunk_lines)
        if self._pool is None:
            yield from map(_encode_chunk, batches)
            return
        pending: deque = deque()
        for batch in batches:
            pending.append(self._pool.apply_async(_encode_chunk, (batch,)))
            if len(pending) > 2 * self.workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _batched(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while batch := list(islice(it, size)):
        yield batch
