"""Micro-batches drawn one step ahead on a background thread, so the device never waits for the
sampler: the next step's batches are masked (numpy, which releases the GIL) and, on CUDA, pinned
while the current step runs; the trainer then copies them with ``non_blocking=True``.

The batches and their order are the sampler's: the thread calls the same pure function of
(step, micro-step, index) the loop would, in the loop's order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch

_DONE = object()  # the worker's last item after an error or a close


class Prefetcher:
    """``get(step, micro)`` returns ``make(step, micro)``, made ahead by a worker thread.

    The worker runs ``ahead`` micro-batches in front of the loop (a step's worth: the loop's
    ``grad_accum_steps``), from ``start_step`` on, and pins every tensor when ``pin`` (CUDA).
    """

    def __init__(self, make: Callable[[int, int], Any], start_step: int, micro_steps: int,
                 pin: bool, ahead: int | None = None):
        self.make, self.micro_steps, self.pin = make, micro_steps, pin
        self.ready: queue.Queue = queue.Queue(maxsize=ahead or micro_steps)
        self.closing = threading.Event()
        self.error: BaseException | None = None
        self.worker = threading.Thread(target=self._fill, args=(start_step,), daemon=True,
                                       name="batch-prefetch")
        self.worker.start()

    def get(self, step: int, micro: int) -> Any:
        """The micro-batch ``micro`` of ``step``; the loop asks for them in order."""
        item = self.ready.get()
        if item is _DONE:
            raise RuntimeError("the batch prefetch thread failed") from self.error
        key, batch = item
        if key != (step, micro):  # a loop that skipped or repeated a micro-batch: a bug
            raise RuntimeError(f"prefetched micro-batch {key}, but the loop asked for "
                               f"{(step, micro)}")
        return batch

    def close(self) -> None:
        """Stop the worker (it notices within 0.1 s, or after the batch it is making)."""
        self.closing.set()
        self.worker.join()

    def _fill(self, step: int) -> None:
        try:
            while not self.closing.is_set():
                for micro in range(self.micro_steps):
                    batch = self.make(step, micro)
                    if self.pin:
                        batch = pinned(batch)
                    self._put(((step, micro), batch))
                step += 1
        except BaseException as err:  # handed to the loop, which raises it from get()
            self.error = err
            self._put(_DONE)

    def _put(self, item: Any) -> None:
        while not self.closing.is_set():
            try:
                self.ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue


def pinned(batch: Any) -> Any:
    """``batch`` (a dataclass of tensors and ints) with every tensor in pinned host memory."""
    fields = {name: value.pin_memory() if isinstance(value, torch.Tensor) else value
              for name, value in vars(batch).items()}
    return type(batch)(**fields)
