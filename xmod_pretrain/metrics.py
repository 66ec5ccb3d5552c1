"""Rank-0 progress: a log line per N steps, metrics.jsonl, validation tables, wandb if enabled."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from xmod_pretrain.config import LoggingConfig


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                        size: int = 1024, trials: int = 5, seconds: float = 0.1) -> float:
    """Achievable matmul FLOP/s of this process on ``device``: the denominator of MFU.

    Measured rather than looked up, so MFU compares against what this machine can do with the
    threads this process has (2 cores here give about 200 GFLOP/s in fp32). The best of a few
    short trials, so a moment of contention from another process does not lower the peak.
    """
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = 0.0
    for _ in range(trials):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            done += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 * done / (time.perf_counter() - start))
    return best


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def format_table(losses: dict[str, float], title: str,
                 start: dict[str, float] | None = None) -> str:
    """Per-language loss and perplexity, one language a row; with ``start``, the first
    validation's loss beside it, so a reader sees each language's progress."""
    head = f"  {'language':<10} " + (f"{'start':>8} " if start else "") + f"{'loss':>8} {'ppl':>10}"
    rows = [title, head]
    for lang, loss in losses.items():
        first = f"{start[lang]:>8.4f} " if start else ""
        rows.append(f"  {lang:<10} {first}{loss:>8.4f} {perplexity(loss):>10.2f}")
    mean = sum(losses.values()) / len(losses)
    first = f"{sum(start.values()) / len(start):>8.4f} " if start else ""
    rows.append(f"  {'mean':<10} {first}{mean:>8.4f} {perplexity(mean):>10.2f}")
    return "\n".join(rows)


class MetricsLogger:
    """Writes what rank 0 measures: stdout, ``run_dir/metrics.jsonl`` and optionally wandb."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, enabled: bool, run_config: dict):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.wandb = None
        if enabled and cfg.wandb:
            import wandb

            self.wandb = wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode,
                                    dir=str(run_dir), config=run_config, name=run_dir.name)

    def log(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        if line:
            print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(flatten(record, "/"), step=record.get("step"))

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def flatten(record: dict[str, Any], sep: str, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined by ``sep``: ``{"lang_loss/en_XX": ...}``."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, sep, f"{prefix}{key}{sep}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def train_line(step: int, max_steps: int, loss: float, lr: float, tokens_per_s: float,
               mfu: float, lang_loss: dict[str, float]) -> str:
    langs = " ".join(f"{lang} {value:.3f}" for lang, value in lang_loss.items())
    return (f"step {step:>6}/{max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
            f"tok/s {tokens_per_s:,.0f} | mfu {100 * mfu:.1f}% | {langs}")
