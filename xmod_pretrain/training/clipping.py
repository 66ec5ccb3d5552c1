"""Gradient clipping by the norm of every gradient of a step: the shared weights' and the step's
language modules', which two different optimizers step (DeepSpeed's over the shared weights,
the language store's over the modules).

DeepSpeed clips only what it holds, so its own clipping is off (engine.py) and both optimizers
scale their gradients by the one coefficient computed here. DeepSpeed measures the shared part
(over its partitions, reduced over ranks) before it calls our optimizer, and the store measures
its part after reducing the step's modules' gradients; the coefficient is computed from both on
first use in a step and kept for the rest of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class GlobalClip:
    """``max_norm / (norm + 1e-6)``, at most 1, from the global 2-norm of a step's gradients, as
    ``torch.nn.utils.clip_grad_norm_`` computes it (``max_norm`` 0: the norm is only kept)."""

    def __init__(self, max_norm: float):
        self.max_norm = max_norm
        self.device = torch.device("cpu")  # the engine's, once there is one (engine.py)
        # The shared weights' norm, set by engine.py: DeepSpeed's, or measured over whole
        # gradients; None when no shared weight trains.
        self.shared_norm: Callable[[], torch.Tensor | float | None] = lambda: None
        self.modules_sq: torch.Tensor | None = None
        self.norm: torch.Tensor | None = None  # the last step's, before clipping
        self._coefficient: torch.Tensor | None = None

    def begin_step(self, modules_sq: torch.Tensor | None) -> None:
        """A new step, with the sum of squares of the step's module gradients (None: none)."""
        self.modules_sq, self._coefficient = modules_sq, None

    def coefficient(self) -> torch.Tensor:
        """This step's factor for every gradient (a device tensor: nothing waits on the device)."""
        if self._coefficient is None:
            total = torch.zeros((), device=self.device)
            if self.modules_sq is not None:
                total = total + self.modules_sq
            shared = self.shared_norm()
            if shared is not None:
                total = total + torch.as_tensor(shared, dtype=torch.float32,
                                                device=self.device).square()
            self.norm = total.sqrt()
            self._coefficient = (torch.clamp(self.max_norm / (self.norm + 1e-6), max=1.0)
                                 if self.max_norm > 0 else torch.ones_like(self.norm))
        return self._coefficient

    def apply(self, grads: Iterable[torch.Tensor]) -> None:
        """Scale ``grads`` in place by this step's coefficient."""
        coefficient = self.coefficient()
        grads = list(grads)
        if grads and self.max_norm > 0:
            torch._foreach_mul_(grads, coefficient.to(grads[0].device))


def squared_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """The sum of squares of ``grads`` (None for none), in fp32."""
    norms = [torch.linalg.vector_norm(g.float()) for g in grads]
    return torch.stack(norms).square().sum() if norms else None
