"""The training log: a line every ``train.log_every`` steps (and at step 1) with the loss and
per-language loss of the window since the last line, tokens/s, the gradient norm, MFU and
loss-spike warnings; it decides when a line is due and stops the run on a NaN/inf loss.

The window's losses stay in device tensors between lines, so a training step never waits on the
device; a log line is the one host sync (and a reduction over ranks) of its step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.config import Config
from xmod_pretrain.training.clipping import GlobalClip
from xmod_pretrain.training.config import Precision
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.failures import NonFiniteLoss
from xmod_pretrain.training.metrics import MetricsLogger, SpikeWatch, language_line, train_line
from xmod_pretrain.training.peak import PeakMeter, find_peak


class ProgressLog:
    """The window of losses since the last log line, and the line itself."""

    def __init__(self, cfg: Config, info: DistInfo, device: torch.device, languages: list[str],
                 flops_per_token: float, metrics: MetricsLogger, clip: GlobalClip,
                 learning_rate: Callable[[], float]):
        self.every, self.max_steps = cfg.train.log_every, cfg.train.max_steps
        self.info, self.device, self.languages, self.metrics = info, device, languages, metrics
        self.learning_rate = learning_rate
        self.run_dir = Path(cfg.run_dir)
        self.flops_per_token = flops_per_token
        self.loss = torch.zeros(len(languages), device=device)       # sums since the last line
        self.count = torch.zeros(len(languages), device=device)
        self.nonfinite = torch.zeros(len(languages), device=device)  # NaN/inf micro-batches
        self.spikes = SpikeWatch(cfg.logging.loss_spike_factor, cfg.logging.spike_window)
        self.clip = clip  # the step's global gradient norm, before clipping
        self.peak = self._find_peak(cfg)
        self.start(0, 0)

    def _find_peak(self, cfg: Config) -> PeakMeter:
        device = self.device
        dtype = torch.bfloat16 if cfg.train.precision == Precision.bf16 else torch.float32
        if device.type != "cuda" and cfg.train.peak_tflops is None:
            self._print("measuring the matmul peak for MFU")
        peak = find_peak(device, dtype, self.info.world_size, cfg.train.tf32,
                         cfg.train.peak_tflops)
        self._print(f"MFU peak: {peak.flops / 1e12:.3g} TFLOP/s ({peak.source})")
        return PeakMeter(peak, device, dtype, self.info.world_size)

    def due(self, step: int) -> bool:
        """Step 1 (a first line within seconds), then every ``log_every`` steps."""
        return step == 1 or step % self.every == 0

    def start(self, step: int, tokens_seen: int) -> None:
        """Training starts (or resumes) at ``step``: the wall clock and the window start here."""
        self.train_start = time.perf_counter()
        self._restart(step, tokens_seen)

    def elapsed(self) -> float:
        return time.perf_counter() - self.train_start

    def count_loss(self, loss: torch.Tensor, lang: int) -> None:
        """Add a micro-batch's loss to the window; a NaN/inf is counted apart."""
        finite = torch.isfinite(loss)
        self.loss[lang] += torch.where(finite, loss, 0.0)
        self.count[lang] += finite
        self.nonfinite[lang] += ~finite

    def check_finite(self, step: int) -> None:
        """Stop before a NaN/inf can reach a checkpoint (a save calls this): a collective."""
        self._raise_if_nonfinite(self._summed_over_ranks(self.nonfinite[None])[0], step)

    def write(self, step: int, tokens_seen: int) -> None:
        """Reduce the window over ranks; rank 0 prints and records the line."""
        sums, counts, nonfinite = self._summed_over_ranks(
            torch.stack([self.loss, self.count, self.nonfinite]))
        self._raise_if_nonfinite(nonfinite, step)
        now = time.perf_counter()
        elapsed = now - self.window_start
        tokens_per_s = (tokens_seen - self.window_tokens) / elapsed
        updates_per_s = (step - self.window_step) / elapsed
        lang_loss = {lang: s / c for lang, s, c in zip(self.languages, sums, counts) if c}
        loss = sum(sums) / max(sum(counts), 1)
        record = {"step": step, "loss": loss, "grad_norm": self._last_grad_norm(),
                  "lr": self.learning_rate(), "tokens_per_s": tokens_per_s,
                  "updates_per_s": updates_per_s, "tokens_seen": tokens_seen,
                  "wall_s": now - self.train_start, "lang_loss": lang_loss}
        record["mfu"], raised = self.peak.mfu(tokens_per_s * self.flops_per_token)
        if raised:
            self.metrics.warn(raised)
        record["peak_flops"], record["peak_source"] = self.peak.peak.flops, self.peak.peak.source
        eta = (self.max_steps - step) / max(updates_per_s, 1e-9)
        median = self.spikes.check(loss)
        if median is not None:
            record["loss_spike"] = True
            self.metrics.warn(f"loss spike at step {step}: {loss:.4f} is "
                              f"{loss / median:.1f}x the median {median:.4f} of the last "
                              f"{len(self.spikes.recent) - 1} log lines")
        self.metrics.log(record, f"{train_line(record, self.max_steps, eta)}\n"
                                 f"{language_line(lang_loss)}")
        self._restart(step, tokens_seen)

    def _restart(self, step: int, tokens_seen: int) -> None:
        for window in (self.loss, self.count, self.nonfinite):
            window.zero_()
        self.window_start, self.window_tokens = time.perf_counter(), tokens_seen
        self.window_step = step

    def _raise_if_nonfinite(self, nonfinite: list[float], step: int) -> None:
        """Given the window's non-finite counts summed over ranks (so all ranks raise together)."""
        bad = {lang: int(n) for lang, n in zip(self.languages, nonfinite) if n}
        if bad:
            listed = ", ".join(f"{n} {lang}" for lang, n in bad.items())
            latest = latest_checkpoint(self.run_dir)
            stands = f"{latest} is intact" if latest else "the run has no checkpoint yet"
            raise NonFiniteLoss(
                f"loss is NaN or inf between steps {self.window_step + 1} and {step} "
                f"({listed} micro-batch(es)); stopping without saving. Lower optim.lr or check "
                f"the data; {stands}.")

    def _summed_over_ranks(self, stats: torch.Tensor) -> list[list[float]]:
        """Rows of ``stats`` summed over ranks, on the host (this waits on the device)."""
        if self.info.world_size > 1:
            stats = stats.clone()
            dist.all_reduce(stats)
        return stats.cpu().tolist()

    def _last_grad_norm(self) -> float | None:
        """The global gradient norm of the step just taken, before clipping."""
        norm = self.clip.norm
        return None if norm is None else float(norm)

    def _print(self, text: str) -> None:
        if self.info.is_main:
            print(text, flush=True)
