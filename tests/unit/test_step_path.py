"""The training step's path to the device: no host sync in a step, batches made one step ahead
(the same ones, in the same order), a NaN caught before any save."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.overrides import TorchFunctionMode

import xmod_pretrain
from bench.common import single_process_group
from tests.support.launch import TINY_MODEL
from xmod_pretrain.config import CONF_DIR, register_configs
from xmod_pretrain.recipes import recipe_class
from xmod_pretrain.runs.launch import build_trainer
from xmod_pretrain.training.failures import NonFiniteLoss
from xmod_pretrain.training.prefetch import Prefetcher

# Each test builds a DeepSpeed engine and a Trainer in this process.
pytestmark = pytest.mark.slow

# Tensor methods that make the host wait for the device (a pipeline stall on an accelerator).
SYNCS = {"item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__",
         "__index__", "equal", "allclose"}
OURS = str(Path(xmod_pretrain.__file__).parent)
TORCH = str(Path(torch.__file__).parent)


class SyncRecorder(TorchFunctionMode):
    """Counts host syncs by the code that asked: ours (xmod_pretrain) or a library's."""

    def __init__(self):
        super().__init__()
        self.ours: Counter = Counter()
        self.theirs: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            caller = _caller_outside_torch()
            (self.ours if caller.startswith(OURS) else self.theirs)[f"{name} at {caller}"] += 1
        return func(*args, **(kwargs or {}))


def _caller_outside_torch() -> str:
    frame = sys._getframe(2)
    while frame and (frame.f_code.co_filename.startswith(TORCH) or
                     frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame else "?"


def make_trainer(info, run_dir: Path, data_dir: Path, *overrides: str):
    """A Trainer in this process (one rank), on the tiny model and data."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        composed = compose("config", overrides=[
            "+exp=demo", f"run_dir={run_dir}", f"data.dir={data_dir}", "data.source=null",
            *TINY_MODEL, "train.eval_every=0", "train.save_every=0", *overrides])
    cfg = OmegaConf.to_object(composed)
    return build_trainer(recipe_class(cfg)(cfg, info), info)


@pytest.fixture(scope="module")
def world():
    with single_process_group() as info:
        yield info


@pytest.mark.parametrize("zero", [0, 2])
def test_a_training_step_never_waits_on_the_device(world, tiny_data, tmp_path, zero):
    trainer = make_trainer(world, tmp_path / "run", tiny_data, f"deepspeed=zero{zero}",
                           "train.grad_accum_steps=2", "train.max_steps=4", "train.log_every=3")
    trainer.batches = Prefetcher(trainer._micro_batch, 0, 2, pin=False)
    trainer.progress.start(0, 0)
    try:
        recorder = SyncRecorder()
        for _ in range(3):  # steps 1-3; step 3 is a log step: its gradient norm is kept too
            with recorder:
                trainer.train_step()
                trainer.stop_request.agreed()
            trainer.state.step += 1
        assert not recorder.ours, recorder.ours
        print(f"DeepSpeed's host syncs in 3 steps of ZeRO-{zero}: {dict(recorder.theirs)}")
        with recorder:
            trainer.progress.write(trainer.step, trainer.state.tokens_seen)  # one sync, ours
        assert sum(recorder.ours.values()) >= 1
    finally:
        trainer.batches.close()
        trainer.close()


def test_prefetched_batches_are_the_samplers_in_its_order(world, tiny_data, tmp_path):
    trainer = make_trainer(world, tmp_path / "run", tiny_data, "train.grad_accum_steps=3")
    prefetch = Prefetcher(trainer._micro_batch, 5, 3, pin=False, ahead=4)
    try:
        for step in range(5, 9):
            for micro in range(3):
                got, expected = prefetch.get(step, micro), trainer._micro_batch(step, micro)
                assert got.lang == expected.lang
                for name, value in expected.model_inputs().items():
                    if isinstance(value, torch.Tensor):
                        assert torch.equal(got.model_inputs()[name], value), (step, micro, name)
        with pytest.raises(RuntimeError, match=r"prefetched micro-batch \(9, 0\), but the loop "
                                               r"asked for \(9, 1\)"):
            prefetch.get(9, 1)
    finally:
        prefetch.close()
        trainer.close()
    assert not prefetch.worker.is_alive()


def test_a_failing_sampler_fails_the_step_that_asks(world, tiny_data, tmp_path):
    def make(step: int, micro: int):
        if step == 2:
            raise ValueError("shard unreadable")
        return step, micro

    prefetch = Prefetcher(make, 1, 1, pin=False)
    assert prefetch.get(1, 0) == (1, 0)
    with pytest.raises(RuntimeError, match="prefetch thread failed") as failed:
        prefetch.get(2, 0)
    assert isinstance(failed.value.__cause__, ValueError)
    prefetch.close()


def test_a_nan_is_caught_at_the_save_before_the_log_step(world, tiny_data, tmp_path):
    trainer = make_trainer(world, tmp_path / "run", tiny_data, "train.max_steps=6",
                           "train.log_every=100")
    trainer.progress.count_loss(torch.tensor(float("nan")), 1)
    trainer.state.step = 3
    lang = trainer.languages[1]
    with pytest.raises(NonFiniteLoss, match=rf"between steps 1 and 3 \(1 {lang} micro-batch.*"
                                            "the run has no checkpoint yet"):
        trainer.save()
    assert not (tmp_path / "run" / "checkpoints").exists()
    trainer.close()
