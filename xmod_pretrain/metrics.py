"""Rank-0 progress: a log line per N steps, metrics.jsonl, validation tables, and wandb and
TensorBoard when enabled (both get the same scalars)."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from xmod_pretrain.config import LoggingConfig


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


TENSORBOARD_DIR = "tensorboard"


class MetricsLogger:
    """Writes what rank 0 measures: stdout, ``run_dir/metrics.jsonl`` and optionally wandb and
    TensorBoard. Every record gets ``time`` (Unix seconds) and ``elapsed_s`` (since this start)."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, enabled: bool, run_config: dict):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.started = time.time()
        self.wandb = self.tensorboard = None
        if enabled and cfg.wandb:
            import wandb

            self.wandb = wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode.value,
                                    dir=str(run_dir), config=run_config, name=run_dir.name)
        if enabled and cfg.tensorboard:
            self.tensorboard = _tensorboard_writer(run_dir / TENSORBOARD_DIR)

    def log(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {**record, "time": round(now, 3), "elapsed_s": round(now - self.started, 3)}
        if line:
            print(line, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {key: value for key, value in flatten(record, "/").items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)
                   and key not in ("step", "time")}
        if self.wandb is not None:
            self.wandb.log(scalars, step=record.get("step"))
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, global_step=record.get("step"),
                                            walltime=now)

    def warn(self, text: str) -> None:
        if self.enabled:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch imports tensorboard lazily: its absence shows here
        from xmod_pretrain.config import ConfigError

        raise ConfigError("logging.tensorboard=true needs the tensorboard package: pip install "
                          "'xmod-pretrain[tensorboard]' (or pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(folder))


class SpikeWatch:
    """Flags a loss far above the recent ones: more than ``factor`` x the median of the last
    ``window`` log lines (fairseq and torchtitan users watch for these by eye)."""

    def __init__(self, factor: float, window: int):
        self.factor, self.recent = factor, deque(maxlen=window)

    def check(self, loss: float) -> float | None:
        """The median ``loss`` spiked above (None if it did not), then remember ``loss``."""
        median = statistics.median(self.recent) if len(self.recent) >= 3 else None
        self.recent.append(loss)
        if self.factor and median is not None and loss > self.factor * median:
            return median
        return None


def flatten(record: dict[str, Any], sep: str, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined by ``sep``: ``{"lang_loss/en_XX": ...}``."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, sep, f"{prefix}{key}{sep}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def duration(seconds: float) -> str:
    """``1h02m``, ``4m05s``, ``12s``: wall time as a log line shows it."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def train_line(record: dict[str, Any], max_steps: int, eta_s: float) -> str:
    """The line fairseq and torchtitan users read: progress, loss, gradient norm (before
    clipping), learning rate, throughput, MFU, wall time and what is left."""
    gnorm = record.get("grad_norm")
    return (f"step {record['step']:>6}/{max_steps} | loss {record['loss']:.4f} | "
            f"gnorm {'-' if gnorm is None else f'{gnorm:.3f}'} | lr {record['lr']:.2e} | "
            f"tok/s {record['tokens_per_s']:,.0f} | upd/s {record['updates_per_s']:.2f} | "
            f"mfu {100 * record['mfu']:.1f}% | {duration(record['wall_s'])} "
            f"(eta {duration(eta_s)})")


def language_line(lang_loss: dict[str, float], shown: int = 3) -> str:
    """Per-language losses in one short line: all of them when few, else the best and the worst
    ``shown`` (metrics.jsonl keeps every one)."""
    ranked = sorted(lang_loss.items(), key=lambda item: item[1])
    if len(ranked) <= 2 * shown:
        return "         " + " ".join(f"{lang} {loss:.3f}" for lang, loss in ranked)
    best = " ".join(f"{lang} {loss:.3f}" for lang, loss in ranked[:shown])
    worst = " ".join(f"{lang} {loss:.3f}" for lang, loss in ranked[-shown:])
    return f"         {len(ranked)} languages: best {best} | worst {worst}"
