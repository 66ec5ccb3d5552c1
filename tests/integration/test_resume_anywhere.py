"""Resume anywhere: a run stopped at step 4 goes on to step 8 on another number of ranks or
another ZeRO stage, and trains as the run of 8 steps on 2 ranks would have, to fp32 rounding (the
tolerance of the 1-vs-2-rank parity tests). The global batch (ranks x micro-batch x
accumulation) is the contract: ``train.global_batch_size`` keeps it, another one is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.support.commands import one_error_line
from tests.support.launch import cli_here, demo_args, run_training, tree_hash
from tests.support.parity import assert_same_training, final_weights
from xmod_pretrain.checkpoint.layout import TRAINER_STATE, latest_checkpoint
from xmod_pretrain.checkpoint.verify import write_checksums
from xmod_pretrain.model.xmod import language_of_parameter

pytestmark = pytest.mark.integration

# yo_NG has modules but no data: absent from every step, so bit-identical across any move.
COMMON = ["model.languages=[de_DE,el_GR,en_XX,ru_RU,yo_NG]", "train.log_every=1",
          "train.eval_every=0", "train.save_every=4", "optim.warmup_steps=2", "optim.eps=1e-3",
          "optim.total_steps=8", "train.global_batch_size=16"]


def ranks_and_stage(layout: str) -> tuple[int, list[str]]:
    """"2xZ3" -> 2 ranks, deepspeed=zero3."""
    ranks, stage = layout.split("xZ")
    return int(ranks), [f"deepspeed=zero{stage}"]


def train(run: Path, data: Path, layout: str, steps: int, *extra: str, check: bool = True):
    nproc, stage = ranks_and_stage(layout)
    return run_training(run, data, f"train.max_steps={steps}", *COMMON, *stage, *extra,
                        nproc=nproc, check=check)


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory) -> Path:
    """8 steps on 2 ranks under ZeRO-2: what every move must train like."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(run, tiny_data, "2xZ2", 8)
    return run


@pytest.fixture(scope="module")
def halves(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """Runs stopped at step 4, by the layout that wrote them."""
    root = tmp_path_factory.mktemp("halves")
    runs = {}
    for layout in ("2xZ2", "1xZ0"):
        runs[layout] = root / layout
        train(runs[layout], tiny_data, layout, 4)
    return runs


def continued(halves: dict[str, Path], source: str, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(halves[source], run)
    return run


def absent_modules(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in final_weights(run).items() if language_of_parameter(k) == "yo_NG"}


def forget_the_ranks(run: Path) -> None:
    """Make the checkpoint one written before trainer_state.json named its ranks."""
    checkpoint = latest_checkpoint(run)
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    del state["world_size"]
    (checkpoint / TRAINER_STATE).write_text(json.dumps(state))
    write_checksums(checkpoint)


def moved(run: Path, data: Path, source: str, target: str, step: int, to: int) -> None:
    """Train ``run`` (at ``step``, written by ``source``) to ``to`` on ``target``."""
    proc = train(run, data, target, to)
    (ranks, _), (now, _) = ranks_and_stage(source), ranks_and_stage(target)
    plural = {1: "1 rank", 2: "2 ranks"}
    assert (f"resuming step_{step:08d} written by {plural[ranks]} under ZeRO-{source[-1]} on "
            f"{plural[now]} under ZeRO-{target[-1]}: optimizer state re-partitioned") in proc.stdout
    assert "warning" not in proc.stderr  # the accumulation follows the ranks: no setting changed


def assert_trained_as(straight: Path, run: Path) -> None:
    assert_same_training(straight, run)
    mine, theirs = absent_modules(run), absent_modules(straight)
    assert mine and all(torch.equal(mine[k], theirs[k]) for k in mine)


# 2 -> 1 rank and 1 -> 2, ZeRO-0 -> 2 and 2 -> 0. The first checkpoint does not say which ranks
# wrote it (as before this version): DeepSpeed's own record does.
@pytest.mark.parametrize("source, target", [("2xZ2", "1xZ2"), ("1xZ0", "2xZ2"), ("2xZ2", "1xZ0")])
def test_a_move_trains_as_the_run_that_stayed(halves, straight, tiny_data, tmp_path, source,
                                              target):
    run = continued(halves, source, tmp_path)
    if target == "1xZ2":
        forget_the_ranks(run)
    moved(run, tiny_data, source, target, 4, 8)
    assert_trained_as(straight, run)


def test_zero2_to_zero3_then_zero1(halves, straight, tiny_data, tmp_path):
    run = continued(halves, "2xZ2", tmp_path)
    moved(run, tiny_data, "2xZ2", "2xZ3", 4, 6)
    moved(run, tiny_data, "2xZ3", "2xZ1", 6, 8)
    assert_trained_as(straight, run)


def test_another_global_batch_is_refused_then_allowed(halves, tiny_data, tmp_path):
    """In this process (one rank): the refusal comes before anything is written."""
    run = continued(halves, "2xZ2", tmp_path)
    before = tree_hash(run)
    args = [*demo_args(run, tiny_data, "train.max_steps=6", *COMMON), "deepspeed=zero2"]
    proc = cli_here(*args, "train.global_batch_size=null")
    assert ("was trained with a global batch of 16 sequences (2 rank(s) x "
            "train.micro_batch_size=8 x train.grad_accum_steps=1); this start's is 8 (1 rank(s) "
            "x 8 x 1). Set train.global_batch_size=16") in one_error_line(proc)
    assert tree_hash(run) == before
    proc = cli_here(*args, "train.global_batch_size=8", "train.allow_batch_change=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("warning: the global batch changes from 16 sequences") == 1
    assert "averages 0.5x the sequences" in proc.stderr
    assert latest_checkpoint(run).name == "step_00000006"
    # A second start in this process, after the first left its process group (and DeepSpeed
    # the groups it had cached), builds its engine over a group of its own.
    args[args.index("train.max_steps=6")] = "train.max_steps=7"
    proc = cli_here(*args, "train.global_batch_size=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert latest_checkpoint(run).name == "step_00000007"
