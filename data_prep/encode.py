"""Text blocks -> uint32 token ids, in worker processes, in input order, with bounded memory."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.pool
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from data_prep.textio import TextBlock
from xmod_core.tokenizer import Tokenizer

Chunk = tuple[np.ndarray, np.ndarray]
"""Flat token ids of a run of lines (each line's ids then </s>), and each line's id count."""
ChunkOf = Callable[[], Chunk]
"""Waits for a block's chunk."""

_tokenizer: Tokenizer | None = None  # one per worker, loaded by _load_tokenizer


def _load_tokenizer(path: str) -> None:
    global _tokenizer
    _tokenizer = Tokenizer.from_file(path)


def _encode_block(block: TextBlock) -> Chunk:
    assert _tokenizer is not None, "_load_tokenizer runs first, as the pool's initializer"
    # Reading and normalising happen here too, so that they scale with the workers. One
    # SentencePiece thread per process: the parallelism is the processes.
    return _tokenizer.encode_flat(block.lines(), num_threads=1)


class ParallelEncoder:
    """Encode streams of text blocks with ``workers`` processes (1: a thread of this process).

    Use as a context manager; ``encode`` keeps at most two blocks per worker in flight, so a
    corpus of any size streams through in constant memory, and chunks come back in input order.
    """

    def __init__(self, tokenizer_path: str | Path, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.tokenizer_path = str(tokenizer_path)
        self.workers = workers
        self._pool: multiprocessing.pool.Pool | None = None

    def __enter__(self) -> ParallelEncoder:
        if self.workers == 1:
            # A thread (SentencePiece releases the GIL): nothing is pickled, and this process
            # writes and fsyncs shards while the next blocks are being encoded.
            self._pool = multiprocessing.pool.ThreadPool(1, _load_tokenizer, (self.tokenizer_path,))
        else:
            # spawn: workers start clean, without copies of this process's threads or locks.
            context = multiprocessing.get_context("spawn")
            with _ctrl_c_ignored():
                self._pool = context.Pool(self.workers, _load_tokenizer, (self.tokenizer_path,))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def encode(self, blocks: Iterable[TextBlock]) -> Iterator[tuple[TextBlock, ChunkOf]]:
        """Each block, in order, with the call that waits for its token chunk (and raises a
        worker's error, such as the block's bad text). The block comes before its chunk, so a
        caller can finish a language whose last block is done before the next one's error
        stops it. Take each chunk before the next pair: that keeps memory bounded."""
        assert self._pool is not None, "encode runs inside the with block"
        pending: deque = deque()
        for block in blocks:
            pending.append((block, self._pool.apply_async(_encode_block, (block,)).get))
            if len(pending) > 2 * self.workers:
                yield pending.popleft()
        yield from pending


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """SIGINT ignored while the workers are started, which keeps it ignored in them from their
    first instruction: Ctrl-C reaches the whole process group, and only this process handles it
    (stopping the pool), so no worker prints a KeyboardInterrupt traceback of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
