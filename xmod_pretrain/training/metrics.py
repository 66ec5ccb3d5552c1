"""Rank-0 progress: a log line per N steps, metrics.jsonl, validation tables, and wandb and
TensorBoard when enabled (both get the same scalars).

``metrics.jsonl`` holds one JSON record a line, each with its ``step``. A start cuts it back to
the steps its checkpoint holds (``keep_before``): a resume from step S keeps the records up to S
and drops what a stopped attempt logged after it, so the file holds one record per (split, step),
consistent with the checkpoint, for every reader; ``read_records`` is the one reader.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from xmod_core.atomic import write_bytes, write_text
from xmod_core.errors import UserError
from xmod_pretrain.training.config import LoggingConfig

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # one wandb run per run directory, across its starts


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def loss_table(losses: dict[str, float], title: str,
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


class MetricsError(UserError, ValueError):
    """A line of metrics.jsonl that is not a record."""


TORN_HINT = "a torn last line (what a crash mid-write leaves) is dropped when the run resumes"
EDITED_HINT = "fix or delete that line"


def _record(line: bytes) -> dict[str, Any]:
    """The record of one line; a ValueError that says what is wrong with it."""
    try:
        record = json.loads(line)
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"not JSON ({err})") from None
    step = record.get("step") if isinstance(record, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        raise ValueError('not a record (a JSON object with an integer "step")')
    return record


def _numbered_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(line number from 1, content) of the lines that are not blank."""
    return [(number, line) for number, line in enumerate(data.split(b"\n"), 1) if line.strip()]


def _checked(path: Path, number: int, line: bytes, hint: str) -> dict[str, Any]:
    try:
        return _record(line)
    except ValueError as err:
        raise MetricsError(f"{path}:{number}: {err}; {hint}") from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics.jsonl, in file order. A line that is not a record raises a
    MetricsError naming ``path:line`` and what is wrong with it."""
    lines = _numbered_lines(Path(path).read_bytes())
    return [_checked(Path(path), number, line, TORN_HINT if i == len(lines) - 1 else EDITED_HINT)
            for i, (number, line) in enumerate(lines)]


def keep_before(path: Path, first_step: int) -> list[str]:
    """Cut ``path`` back to its records of steps before ``first_step`` (the first step a start
    logs), atomically; return what was dropped, as lines to print.

    A torn last line (a crash mid-write: it does not parse) is dropped; any other line that is
    not a record raises a MetricsError naming it (an edit by hand, for the user to fix). Nothing
    is written when nothing is dropped.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = _numbered_lines(data)
    if not lines:
        return []
    *body, (last_number, last) = lines
    records = [(line, _checked(path, number, line, EDITED_HINT)) for number, line in body]
    notes = []
    try:
        records.append((last, _record(last)))
    except ValueError as err:
        notes.append(f"{path}:{last_number}: dropped a torn last line ({len(last)} bytes, {err}), "
                     "what a crash mid-write leaves")
    dropped = sorted(record["step"] for _, record in records if record["step"] >= first_step)
    if dropped:
        after = ("after the checkpoint this start resumes from" if first_step
                 else "by an earlier start that saved no checkpoint")
        steps = (f"step {dropped[0]}" if dropped[0] == dropped[-1]
                 else f"steps {dropped[0]}-{dropped[-1]}")
        notes.append(f"{path}: dropped {len(dropped)} record(s) of {steps}, logged {after}")
    if notes or not data.endswith(b"\n"):  # a whole last record without its newline gets one
        write_bytes(path, b"".join(line + b"\n" for line, record in records
                                   if record["step"] < first_step))
    return notes


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line with one write(): a crash can tear only the last line."""
    data = (json.dumps(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        while data:  # a regular file takes it whole unless the disk fills
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


class MetricsLogger:
    """Writes what rank 0 measures: stdout, ``run_dir/metrics.jsonl`` and optionally wandb and
    TensorBoard. Every record gets ``time`` (Unix seconds) and ``elapsed_s`` (since this start).

    ``first_step`` is the first step this start logs: 0 for a fresh run, else the step after the
    checkpoint it resumes from (the checkpoint's own step if it validates there again). Rank 0
    cuts metrics.jsonl back to the steps before it, TensorBoard hides its events from that step
    on (``purge_step``), and wandb rewinds the run's history to it (``resume_from``).
    """

    def __init__(self, run_dir: Path, cfg: LoggingConfig, enabled: bool, run_config: dict,
                 first_step: int):
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.started = time.time()
        self.wandb = self.tensorboard = None
        if not enabled:
            return
        for note in keep_before(self.path, first_step):
            print(note, flush=True)
        if cfg.wandb:
            self.wandb = _wandb_run(run_dir, cfg, run_config, first_step)
        if cfg.tensorboard:
            self.tensorboard = _tensorboard_writer(run_dir / TENSORBOARD_DIR, first_step)

    def log(self, record: dict[str, Any], line: str | None = None) -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {**record, "time": round(now, 3), "elapsed_s": round(now - self.started, 3)}
        if line:
            print(line, flush=True)
        append_record(self.path, record)
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


def _wandb_run(run_dir: Path, cfg: LoggingConfig, run_config: dict, first_step: int):
    """One wandb run per run directory: its id is kept in the run directory, and a resume
    rewinds that run's history to ``first_step`` (what a stopped attempt logged from there on is
    archived by wandb, as metrics.jsonl drops it). A fresh start, or a run whose earlier starts
    had wandb off, begins a new wandb run."""
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    known = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
    if first_step and known:
        where = {"resume_from": f"{known}?_step={first_step}"}
    else:
        known = uuid.uuid4().hex[:12]
        write_text(id_file, known + "\n")
        where = {"id": known}
    return wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode.value, dir=str(run_dir),
                      config=run_config, name=run_dir.name, **where)


def _tensorboard_writer(folder: Path, first_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch imports tensorboard lazily: its absence shows here
        from xmod_pretrain.schema import ConfigError

        raise ConfigError("logging.tensorboard=true needs the tensorboard package: pip install "
                          "'xmod-pretrain[tensorboard]' (or pip install tensorboard)") from None
    # TensorBoard hides the events of earlier files at steps >= purge_step: what a stopped
    # attempt logged after the checkpoint, as metrics.jsonl drops it
    return SummaryWriter(log_dir=str(folder), purge_step=first_step)


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
