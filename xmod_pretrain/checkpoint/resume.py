"""Where a start picks up: a fresh run, or the run directory's newest verified checkpoint
(choice.py chooses it), checked against the config before anything is written."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import Enum
from pathlib import Path

from xmod_core.errors import UserError
from xmod_core.outputs import CHECKPOINTS, CONFIG_FILE
from xmod_core.shards import TOKENIZER_FILE, check_run_tokenizer, is_prepared
from xmod_pretrain.checkpoint.choice import resume_checkpoint
from xmod_pretrain.checkpoint.language_files import MANIFEST
from xmod_pretrain.checkpoint.layout import DEEPSPEED_STATE, TRAINER_STATE, complete_checkpoints
from xmod_pretrain.checkpoint.reshard import saved_layout
from xmod_pretrain.config import Config
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.runs.records import load_config
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.metrics import flatten

# Settings whose change on resume gives other batches or another schedule than the run had.
SHAPES_THE_RUN = ("data.", "optim.", "train.seed", "train.micro_batch_size",
                  "train.grad_accum_steps")
# Where things are, not what the run computes (module_state: where the modules' state lives).
PLACE_ONLY = {"data.dir", "data.source", "data.prepare_workers", "data.verify_shards",
              "optim.module_state"}
# How the ranks of a start share the global batch: the same batches on any split.
BATCH_LAYOUT = {"train.grad_accum_steps", "train.global_batch_size"}


class RunStateError(UserError):
    """The run directory cannot be started as asked (resume flags, another model); nothing was
    written to it."""


class NothingToTrain(Exception):
    """The run's latest checkpoint is at or past ``train.max_steps``: the start ends at once."""


def resume_point(cfg: Config, info: DistInfo) -> Path | None:
    """The checkpoint this start resumes from (None: a fresh run), checked against the config
    (``cfg.model`` complete). It writes only to repair ``latest`` (recovered, or moved off a
    corrupt checkpoint); a refused start otherwise leaves the run as it was. NothingToTrain if
    the checkpoint is at ``train.max_steps`` already."""
    run_dir, resume = Path(cfg.run_dir), cfg.train.resume
    if resume is False:
        if complete_checkpoints(run_dir / CHECKPOINTS):
            raise RunStateError(f"{run_dir} holds checkpoints and train.resume=false: "
                                "pick another run_dir, or resume")
        return None
    latest = resume_checkpoint(run_dir, info)  # verified, repaired if need be
    if latest is None:
        if resume:
            raise RunStateError(f"train.resume=true but {run_dir} has no checkpoint")
        return None
    saved = load_config(latest / CONFIG_FILE)
    check_same_model(latest, saved.model, cfg.model)
    check_language_state(latest)
    if is_prepared(cfg.data.dir):  # recipes on prepared shards (transfer reads its own task)
        check_run_tokenizer(latest / TOKENIZER_FILE, cfg.data.dir)
    state = json.loads((latest / TRAINER_STATE).read_text(encoding="utf-8"))
    step = state["step"]
    same_batch = check_global_batch(latest, saved_world_size(latest, state), saved, cfg, info)
    warn_changed_settings(latest, step, saved, cfg, info, same_batch)
    if step >= cfg.train.max_steps:
        raise NothingToTrain(f"{latest} is at step {step} and train.max_steps="
                             f"{cfg.train.max_steps}: nothing to train (raise train.max_steps, "
                             "or --steps of add-language and transfer, to go on)")
    return latest


def check_language_state(checkpoint: Path) -> None:
    """Refuse a checkpoint whose language modules' optimizer state sits inside DeepSpeed's
    files (written before the modules left DeepSpeed's groups): it cannot be resumed exactly.
    Everything that reads its weights still does."""
    if (checkpoint / MANIFEST).is_file() or not (checkpoint / DEEPSPEED_STATE).is_file():
        return
    raise RunStateError(
        f"{checkpoint} keeps its language modules' optimizer state inside DeepSpeed's files, as "
        f"checkpoints did before each language had its own file (listed in {MANIFEST}): this "
        "version cannot resume it exactly. Its weights still serve evaluate, export, load_run "
        "and add-language --from; to train on, start a new run_dir from them with add-language "
        "or finish this run with the version that wrote it")


def saved_world_size(checkpoint: Path, state: dict) -> int | None:
    """The ranks that trained ``checkpoint``: its trainer state says, or (written before it
    did) DeepSpeed's record; None for a checkpoint without either."""
    if state.get("world_size"):
        return int(state["world_size"])
    try:
        return saved_layout(checkpoint).world_size
    except FileNotFoundError:
        return None


def check_global_batch(checkpoint: Path, saved_world: int | None, saved: Config, cfg: Config,
                       info: DistInfo) -> bool:
    """Whether the global batch (ranks x micro-batch x accumulation) is the checkpoint's: the
    contract under which a run continues exactly on other ranks. Another one is refused unless
    ``train.allow_batch_change``, which warns once."""
    if saved_world is None:
        return False
    before = saved_world * saved.train.micro_batch_size * saved.train.grad_accum_steps
    now = info.world_size * cfg.train.micro_batch_size * cfg.train.grad_accum_steps
    if before == now:
        if info.is_main and saved_world != info.world_size:
            print(f"the global batch of {now} sequences is {info.world_size} rank(s) x "
                  f"{cfg.train.micro_batch_size} x {cfg.train.grad_accum_steps} micro-step(s) "
                  f"now (the checkpoint's: {saved_world} x {saved.train.micro_batch_size} x "
                  f"{saved.train.grad_accum_steps})", flush=True)
        return True
    was = (f"{before} sequences ({saved_world} rank(s) x train.micro_batch_size="
           f"{saved.train.micro_batch_size} x train.grad_accum_steps="
           f"{saved.train.grad_accum_steps})")
    asked = (f"{now} ({info.world_size} rank(s) x {cfg.train.micro_batch_size} x "
             f"{cfg.train.grad_accum_steps})")
    if not cfg.train.allow_batch_change:
        raise RunStateError(
            f"{checkpoint} was trained with a global batch of {was}; this start's is {asked}. "
            f"Set train.global_batch_size={before} to continue the same run on "
            f"{info.world_size} rank(s), or train.allow_batch_change=true to change it")
    if info.is_main:
        print(f"warning: the global batch changes from {was} to {asked}: each step from here "
              f"averages {now / before:.3g}x the sequences, and the learning rate schedule "
              "still counts steps", file=sys.stderr, flush=True)
    return False


def check_same_model(checkpoint: Path, saved: ModelConfig, asked: ModelConfig) -> None:
    if saved != asked:
        diff = [f"{f.name} {getattr(saved, f.name)!r} -> {getattr(asked, f.name)!r}"
                for f in dataclasses.fields(ModelConfig)
                if getattr(saved, f.name) != getattr(asked, f.name)]
        raise RunStateError(f"{checkpoint} was trained with another model ({'; '.join(diff)}):"
                            " resume with its model config, or pick another run_dir")


def warn_changed_settings(checkpoint: Path, step: int, saved_cfg: Config, cfg: Config,
                          info: DistInfo, same_batch: bool) -> None:
    """Say which settings that shape the batches or the schedule differ from the checkpoint's:
    allowed (fairseq allows it too), but the run is then not the uninterrupted one, and a
    changed max_steps silently reshapes the learning rate. With the same global batch
    (``same_batch``), the accumulation is only how this start's ranks share it."""
    # Every leaf by its dotted key: {"data.alpha": 0.7, ...}
    saved, now = (flatten(dataclasses.asdict(c), ".") for c in (saved_cfg, cfg))
    layout_only = PLACE_ONLY | (BATCH_LAYOUT if same_batch else set())
    changed = [f"{key} {_shown(saved.get(key))} -> {_shown(value)}" for key, value in now.items()
               if key.startswith(SHAPES_THE_RUN) and key not in layout_only
               and saved.get(key) != value]
    before, after = saved.get("train.max_steps"), now["train.max_steps"]
    if cfg.optim.total_steps is None and before != after:
        changed.append(f"train.max_steps {before} -> {after} (the schedule's length, "
                       f"optim.total_steps being null: "
                       f"{_schedule_change(step, before, saved_cfg.optim.warmup(before))})")
    if changed and info.is_main:
        print(f"warning: resuming {checkpoint.name} with settings other than its run's: "
              f"{'; '.join(changed)}. The batches or the learning rate from here differ from "
              "an uninterrupted run's", file=sys.stderr, flush=True)


def _shown(value) -> str:
    """A setting as the config writes it (an enum by its value)."""
    return repr(value.value if isinstance(value, Enum) else value)


def _schedule_change(step: int, before: int, warmup: int) -> str:
    """What a new ``train.max_steps`` does to the learning rate of a run resumed at ``step``
    (``warmup``: the old schedule's warmup steps)."""
    if step >= before and warmup >= before:
        return (f"the old schedule ended at step {before} inside its {warmup}-step warmup; the "
                "learning rate follows the longer schedule from this step")
    if step >= before:  # the old schedule had decayed to its end: keeping it would train at 0
        return (f"the learning rate, decayed to its end at step {before}, follows the longer "
                "schedule from this step")
    return f"set optim.total_steps={before} to keep the learning rate where it was"
