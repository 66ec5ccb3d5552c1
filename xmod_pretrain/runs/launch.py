"""A training start, in its fixed order: lock the run directory, let the config's recipe check
the request and prepare the data, decide where to resume, build the parts, then train.

A run directory is never inside another run. Once the recipe's checks have passed, a new run's
``config.yaml`` records the request (``runs.record_start``), so that a start killed while it
prepares data is recognised by the same command; nothing else is written before the resume
point's checks, apart from data prepared on first use. A refused start leaves an existing run as
it was, and a new run directory it made goes entirely.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from xmod_core.outputs import CONFIG_FILE, check_not_inside_run
from xmod_pretrain.checkpoint.resume import NothingToTrain, resume_point
from xmod_pretrain.config import Config, check_config
from xmod_pretrain.recipes import recipe_class
from xmod_pretrain.recipes.base import Recipe
from xmod_pretrain.runs.lock import lock_run_dir
from xmod_pretrain.runs.paths import resolve_paths
from xmod_pretrain.runs.records import record_start
from xmod_pretrain.training.distributed import (
    DistInfo,
    barrier,
    join_process_group,
    start_deepspeed,
)
from xmod_pretrain.training.signals import stop_when_orphaned
from xmod_pretrain.training.trainer import Trainer


def run(cfg: Config) -> None:
    cfg = resolve_paths(cfg)  # the run's config.yaml then reads the same from any directory
    recipe = recipe_class(cfg)
    if cfg.train.dry_run:
        recipe.dry_run(cfg)
        return
    check_not_inside_run(cfg.run_dir, "run_dir")  # before the lock makes its folder
    info = join_process_group(cfg.deepspeed.dist_timeout_s)  # torch's only: DeepSpeed comes later
    cfg = dataclasses.replace(cfg, train=cfg.train.for_ranks(info.world_size))
    lock = lock_run_dir(cfg.run_dir, info)  # first: nothing reads or writes the run before it
    stop_when_orphaned()
    started = False
    recorded_before = (Path(cfg.run_dir) / CONFIG_FILE).exists()  # read under the lock
    try:
        kind = recipe(cfg, info)  # checks the request against the world; writes nothing
        trainer = build_trainer(kind, info)
        started = True
        try:
            trainer.train(then=kind.after_training)
        finally:
            trainer.close()
    except NothingToTrain as done:
        print(done, flush=True)
    finally:
        if lock:
            lock.release(remove_new_run_dir=not started)
            if not started and not recorded_before:  # a refused start leaves a folder as it was
                (Path(cfg.run_dir) / CONFIG_FILE).unlink(missing_ok=True)


def build_trainer(recipe: Recipe, info: DistInfo) -> Trainer:
    """The Trainer over ``recipe``'s parts, resumed where the run directory says."""
    configure_torch(recipe.cfg, info)
    barrier()  # every rank has checked the run directory before rank 0 writes to it
    record_start(recipe.cfg, info)
    cfg = recipe.prepare()
    check_config(cfg)  # what the recipe completed (the model, transfer's schedule) is checked too
    resume_from = resume_point(cfg, info)
    # After every check that needs no model: DeepSpeed takes seconds to import, and on a CPU its
    # first start in an install compiles an op (about 40 s), so a refusal never waits for it.
    start_deepspeed(info, cfg.deepspeed.dist_timeout_s)
    if info.is_main:
        print(f"building the model ({cfg.recipe.value}) and its data", flush=True)
    parts = recipe.build(cfg)
    return Trainer(cfg, info, parts, resume_from)


def configure_torch(cfg: Config, info: DistInfo) -> None:
    """CPU threads per process, and tf32 for fp32 matmuls on CUDA (``train.tf32``)."""
    threads = cfg.train.threads or max(1, (os.cpu_count() or 1) // info.local_world_size)
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
    torch.backends.cudnn.allow_tf32 = cfg.train.tf32
