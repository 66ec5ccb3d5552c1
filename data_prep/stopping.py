"""Ctrl-C and SIGTERM during a preparation: stop at the next safe point, not wherever the signal
lands.

An exception raised from a signal handler can surface inside multiprocessing's own locks and
queues, and the encoding pool then hangs on its way down. So ``stop_on_signals`` only records the
signal, and ``check`` (called between encoded blocks and between the tokenizer sample's lines)
raises it where nothing is half-done. A second signal raises at once, for a user who will not
wait. Without ``stop_on_signals`` (the trainer's first-use preparation, whose own handlers
decide) ``check`` does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, a job's time limit), handled as Ctrl-C is."""


STOPS = {signal.SIGINT: KeyboardInterrupt, signal.SIGTERM: Terminated}
_asked: list[type[KeyboardInterrupt]] = []  # the stops signalled, first one first


def exit_status(stop: KeyboardInterrupt) -> int:
    """The shell's status for a command ended by the stop's signal: 128 + its number."""
    signum = next(s for s, kind in STOPS.items() if kind is type(stop))
    return 128 + signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask ``check`` to stop (a second one stops at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread; a caller's thread keeps its own
        return

    def ask(signum: int, frame: object) -> None:
        _asked.append(STOPS[signal.Signals(signum)])
        if len(_asked) > 1:
            raise _asked[0]

    previous = {signum: signal.signal(signum, ask) for signum in STOPS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _asked.clear()


def check() -> None:
    """Raise the stop a signal asked for, if any."""
    if _asked:
        raise _asked[0]


def checked(items: Iterable[T]) -> Iterator[T]:
    """``items``, with ``check`` before each."""
    for item in items:
        check()
        yield item
