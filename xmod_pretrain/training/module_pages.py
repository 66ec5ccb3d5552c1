"""Paged module state (``optim.module_state=host``): every language's weights and AdamW moments
live in host memory (pinned on CUDA), and only the languages a step runs are on the device.

The sampler knows the next step's languages, so at the start of a step their state is sent to
the device while this step runs (on CUDA on a side stream, which the first forward that needs
them waits for). A language of both steps stays; any other is copied back into its host buffers
and its device tensors are freed. Device memory for the modules is then this step's and the
next step's languages, whatever the number registered.

Every page-in copies, on the CPU too: there the "device" is host memory as well, and a copy
keeps the two places apart, so that a lost copy-back shows in the losses (tests/).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from xmod_pretrain.training.optim import LanguageAdamW

MOMENTS = ("exp_avg", "exp_avg_sq")


class ModulePages:
    """Where each language's state is: on the host (every language, the source of truth while
    it is away) and on the device (the ``resident`` ones, the truth while they are there)."""

    def __init__(self, by_language: dict[str, list[tuple[str, nn.Parameter]]],
                 optimizer: LanguageAdamW | None, device: torch.device):
        self.params = {lang: [p for _, p in params] for lang, params in by_language.items()}
        self.optimizer, self.device = optimizer, device
        self.pin = device.type == "cuda"
        self.side = torch.cuda.Stream(device) if self.pin else None
        self.host: dict[nn.Parameter, dict[str, torch.Tensor]] = {}
        for params in self.params.values():
            for param in params:
                param.data = self._host_copy(param.data)
                self.host[param] = {"weight": param.data}
        self.resident: set[str] = set()
        self.wanted: frozenset[str] = frozenset()  # this step's and the next step's languages
        self.in_flight: set[str] = set()  # sent on the side stream, not yet waited for

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.pin)
        return host.copy_(tensor)

    def begin_step(self, present: Iterable[str], upcoming: Iterable[str]) -> None:
        """Before a step's first forward: ``present`` on the device, and ``upcoming`` (the next
        step's languages) on its way there; every other language back on the host."""
        present, upcoming = set(present), set(upcoming)
        self.wanted = frozenset(present | upcoming)
        self._page_out(self.resident - self.wanted)
        self._page_in(present - self.resident)
        self.wait()
        self._page_in(upcoming - self.resident, ahead=True)

    def ensure(self, language: str) -> None:
        """``language`` on the device before a forward through it (validation runs every
        language: one at a time beside the step's, so memory stays bounded)."""
        if language not in self.resident:
            self._page_out(self.resident - self.wanted)
            self._page_in({language})
        self.wait()

    def wait(self) -> None:
        """The main stream waits for the copies sent ahead; their tensors now belong to it."""
        if self.side is not None and self.in_flight:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self.side)
            for lang in self.in_flight:
                for tensor in self._device_tensors(lang):
                    tensor.record_stream(main)
        self.in_flight.clear()

    def device_bytes(self) -> int:
        """Bytes of module state held outside the host buffers: the resident languages'."""
        return sum(t.numel() * t.element_size() for lang in self.resident
                   for t in self._device_tensors(lang))

    def host_bytes(self) -> int:
        """Bytes of the host buffers: every language's weights, and its moments once stepped."""
        return sum(t.numel() * t.element_size() for buffers in self.host.values()
                   for t in buffers.values())

    # ---- moving state ----------------------------------------------------------------------

    def _device_tensors(self, lang: str) -> list[torch.Tensor]:
        tensors = []
        for param in self.params[lang]:
            tensors.append(param.data)
            state = self._state(param)
            tensors += [state[key] for key in MOMENTS if key in state]
        return tensors

    def _state(self, param: nn.Parameter) -> dict:
        return {} if self.optimizer is None else self.optimizer.state.get(param, {})

    @torch.no_grad()
    def _page_in(self, languages: set[str], ahead: bool = False) -> None:
        if not languages:
            return
        stream = self.side if ahead and self.side is not None else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))  # copies-back first
            self.in_flight |= languages
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for lang in sorted(languages):
                for param in self.params[lang]:
                    param.data = self._to_device(param.data)
                    state = self._state(param)
                    for key in MOMENTS:
                        if key in state:
                            state[key] = self._to_device(state[key])
        self.resident |= languages

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        copy = torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device)
        return copy.copy_(tensor, non_blocking=self.pin)

    @torch.no_grad()
    def _page_out(self, languages: set[str]) -> None:
        for lang in sorted(languages):
            for param in self.params[lang]:
                host = self.host[param]
                host["weight"].copy_(param.data, non_blocking=self.pin)
                param.data = host["weight"]
                state = self._state(param)
                for key in MOMENTS:
                    if key in state:
                        if key not in host:  # the moments exist from the language's first step
                            host[key] = self._host_copy(state[key])
                        else:
                            host[key].copy_(state[key], non_blocking=self.pin)
                        state[key] = host[key]
        self.resident -= languages
        if self.pin and languages:
            # The host buffers are read by the next page-in and by checkpoints: complete.
            torch.cuda.current_stream(self.device).synchronize()
