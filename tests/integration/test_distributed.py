"""Data parallelism: 2 ranks equal 1 rank with accumulation, under every ZeRO stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.support.launch import TINY_MODEL, read_metrics, run_training
from tests.support.parity import assert_same_training, final_weights
from xmod_core.shards import read_manifest
from xmod_pretrain.checkpoint.language_files import language_manifest, read_language_files
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.data.config import DataConfig
from xmod_pretrain.data.masking import Masker
from xmod_pretrain.data.sampler import LanguageSampler
from xmod_pretrain.data.shards import ShardSet
from xmod_pretrain.model.xmod import language_of_parameter

pytestmark = pytest.mark.integration

# NOTE: Adam's first updates are g / (|g| + eps): with the default eps a gradient that is zero but
# for rounding (summed in another order on another rank layout) moves its weight by a full ±lr.
# A larger eps keeps such noise at noise level, so fp32 tolerance can be asserted.
STEPS = ["train.max_steps=8", "train.log_every=1", "train.eval_every=0", "train.save_every=8",
         "optim.warmup_steps=2", "optim.eps=1e-3"]


def tiny_sampler(tiny_data, language_per: str = "rank") -> tuple[LanguageSampler, list[str]]:
    """The sampler the tiny runs use (seed 1, batch 8), and its languages."""
    manifest = read_manifest(tiny_data)
    langs = list(manifest["languages"])
    cfg = DataConfig(dir=str(tiny_data), seq_len=64, language_per=language_per)
    sampler = LanguageSampler(ShardSet(tiny_data, "train", langs), cfg,
                              Masker(cfg.masking, manifest["tokenizer"]["vocab_size"]), 8, 1,
                              list(range(len(langs))))
    return sampler, langs


def test_ranks_draw_different_languages_in_one_step(tiny_data):
    """The premise of the next test: with language_per=rank, ranks differ within a step."""
    sampler, _ = tiny_sampler(tiny_data)
    assert any(sampler.language(s, 0, 0) != sampler.language(s, 0, 1) for s in range(8))


# yo_NG has modules but no data: it is absent from every step.
WITH_ABSENT = ["model.languages=[de_DE,el_GR,en_XX,ru_RU,yo_NG]", *STEPS]
PER_STEP = ["data.language_per=step"]


@pytest.fixture(scope="module")
def initial_weights(tiny_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("initial")
    run_training(run, tiny_data, *WITH_ABSENT, "train.max_steps=0")
    return final_weights(run)


def moved_languages(initial: dict, run) -> set[str]:
    final = final_weights(run)
    return {language_of_parameter(k) for k in initial
            if language_of_parameter(k) and not torch.equal(initial[k], final[k])}


def languages_present(tiny_data, language_per: str) -> set[str]:
    """The languages of any micro-batch of the 8 steps of a 2-rank run."""
    sampler, langs = tiny_sampler(tiny_data, language_per)
    return {langs[i] for step in range(8) for i in sampler.step_languages(step, 1, 2)}


@pytest.fixture(scope="module")
def one_rank(tiny_data, tmp_path_factory) -> Path:
    """One rank under ZeRO-0 with two micro-batches a step: what every stage's two ranks must
    train like. ZeRO-1/2 on one rank have nothing to shard, so their one-rank runs are not
    compared separately."""
    run = tmp_path_factory.mktemp("one_rank") / "run"
    run_training(run, tiny_data, *WITH_ABSENT, "deepspeed=zero0", "train.grad_accum_steps=2")
    return run


@pytest.fixture(scope="module")
def zero3_two_ranks(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """8 steps under ZeRO-3 on two ranks of different languages: (the run, its stdout)."""
    run = tmp_path_factory.mktemp("zero3") / "run"
    return run, run_training(run, tiny_data, *WITH_ABSENT, "deepspeed=zero3", nproc=2).stdout


# ZeRO-1 is ZeRO-2's optimizer (DeepSpeed's stage_1_and_2) without the gradient partitioning:
# ZeRO-2 stands for both (test_resume_anywhere resumes a ZeRO-1 run to the same training).
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_two_ranks_equal_one_rank_with_accumulation(tiny_data, tmp_path, stage, one_rank,
                                                    initial_weights, request):
    """Same global batch (2 micro-batches a step), same data, each rank on its own language:
    the same losses step for step and the same final weights, every language's modules
    included; the modules of the languages no step held are untouched. ZeRO-3 too: its
    collective gathers hold the shared weights only."""
    if stage == 3:
        two, stdout = request.getfixturevalue("zero3_two_ranks")
    else:
        two = tmp_path / "two"
        stdout = run_training(two, tiny_data, *WITH_ABSENT, f"deepspeed=zero{stage}",
                              nproc=2).stdout
    replicas = "language modules" if stage == 3 else "weights"  # ZeRO-3 shards the rest
    assert f"{replicas} identical on all 2 ranks" in stdout
    assert_same_training(one_rank, two)
    present = languages_present(tiny_data, "rank")
    assert "yo_NG" not in present
    assert moved_languages(initial_weights, two) == present


def test_zero3_with_shared_languages_equals_plain_data_parallel(tiny_data, tmp_path,
                                                                initial_weights):
    """data.language_per=step (ranks share each micro-step's language) remains an option: under
    ZeRO-3 it trains exactly like ZeRO-0, and leaves absent languages alone too."""
    zero0, zero3 = tmp_path / "zero0", tmp_path / "zero3"
    run_training(zero0, tiny_data, *WITH_ABSENT, *PER_STEP, "deepspeed=zero0", nproc=2)
    proc = run_training(zero3, tiny_data, *WITH_ABSENT, *PER_STEP, "deepspeed=zero3", nproc=2)
    assert "weights identical" not in proc.stdout  # ZeRO-3 ranks hold slices, not replicas
    assert_same_training(zero0, zero3)
    assert moved_languages(initial_weights, zero3) == languages_present(tiny_data, "step")


def test_zero3_with_per_rank_languages_resumes_exactly_across_module_state(tiny_data, tmp_path,
                                                                           zero3_two_ranks):
    """ZeRO-3 with ranks on different languages, stopped at step 3 and at step 6, the middle
    third with optim.module_state=host (the modules in host memory, a step's languages on the
    device): the losses, the last validation and the weights of 8 steps straight, to the last
    bit (host state is the same arithmetic on the same values, only copied between places; a
    resume restores every value). Each language's file carries its module's AdamW state (the
    absent yo_NG's none: it never had a step), written from host memory and read into device
    memory and back, and a save writes the files of the languages trained since the last one
    only; the manifest keeps naming the others' earlier files."""
    common = ["model.languages=[de_DE,el_GR,en_XX,ru_RU,yo_NG]", *STEPS[1:], "deepspeed=zero3",
              "train.save_every=3"]
    host = "optim.module_state=host"
    straight, resumed = zero3_two_ranks[0], tmp_path / "resumed"
    run_training(resumed, tiny_data, "train.max_steps=3", "optim.total_steps=8", *common,
                 nproc=2)
    sampler, langs = tiny_sampler(tiny_data)
    first = latest_checkpoint(resumed)
    saved = read_language_files(first, language_manifest(first), with_state=True)
    for lang in {langs[i] for step in range(3) for i in sampler.step_languages(step, 1, 2)}:
        assert any(k.endswith("::exp_avg_sq") for k in saved[lang]), lang
    assert not any("::" in k for k in saved["yo_NG"])
    run_training(resumed, tiny_data, "train.max_steps=6", "optim.total_steps=8", *common, host,
                 nproc=2)
    before = language_manifest(latest_checkpoint(resumed))
    proc = run_training(resumed, tiny_data, "train.max_steps=8", *common, nproc=2)
    assert "resumed from" in proc.stdout
    assert_same_training(straight, resumed, tol=0)
    assert read_metrics(resumed)[1][-1]["lang_loss"] == read_metrics(straight)[1][-1]["lang_loss"]
    after = language_manifest(latest_checkpoint(resumed))
    trained = {langs[i] for step in range(6, 8) for i in sampler.step_languages(step, 1, 2)}
    rewritten = {lang for lang in after if after[lang] != before[lang]}
    assert rewritten == trained and "yo_NG" not in rewritten


def test_update_absent_languages_moves_every_module(tiny_data, tmp_path, initial_weights):
    """fairseq's behaviour on request, on ranks of different languages (the optimizer alone:
    tests/unit/test_optim.py). The language store steps the modules whatever the ZeRO stage
    of the shared weights, so one stage stands for all."""
    run = tmp_path / "run"
    run_training(run, tiny_data, *WITH_ABSENT, "deepspeed=zero2",
                 "optim.update_absent_languages=true", nproc=2)
    assert "yo_NG" in moved_languages(initial_weights, run)


@pytest.mark.parametrize("group", ["zero2_offload", "zero3_offload"])
def test_cpu_offload_runs(tiny_data, tmp_path, group):
    run = tmp_path / "run"
    run_training(run, tiny_data, "train.max_steps=3", "train.eval_every=0", f"deepspeed={group}")
    assert latest_checkpoint(run).name == "step_00000003"


def test_kill_one_rank_others_exit_and_restart_resumes_exactly(tiny_data, tmp_path):
    """kill -9 one of two ranks mid-run: the other exits within the collective timeout with a
    message, and the same command resumes to the losses of an uninterrupted run."""
    args = ["train.max_steps=14", "train.log_every=1", "train.eval_every=0",
            "train.save_every=4", "optim.warmup_steps=2", "deepspeed.dist_timeout_s=30"]
    straight = tmp_path / "straight"
    run_training(straight, tiny_data, *args, nproc=2)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "xmod_pretrain", "+exp=demo", f"run_dir={run}", f"data.dir={tiny_data}",
           "data.source=null", *TINY_MODEL, *args]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    # What is left of the run after its step-4 checkpoint takes about a second: the kill follows
    # rank 0's line that the checkpoint is saved as soon as it is written (a poll could be late).
    hung = threading.Timer(300, launcher.kill)
    hung.start()
    before, workers = [], []
    for line in launcher.stdout:
        before.append(line)
        if " 1/14 |" in line:  # both workers are up: found now, not in the second that counts
            workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                     text=True).stdout.split()
        if line.startswith("saved checkpoint") and line.rstrip().endswith("step_00000004"):
            break
    hung.cancel()
    assert launcher.poll() is None and len(workers) == 2, "".join(before)[-4000:]
    killed_at = time.monotonic()
    os.kill(int(workers[-1]), signal.SIGKILL)
    output = "".join(before) + launcher.communicate(timeout=120)[0]
    assert time.monotonic() - killed_at < 90
    assert launcher.returncode != 0
    assert "a peer process died or stopped responding" in output
    resumed = run_training(run, tiny_data, *args, nproc=2)
    assert "resumed from" in resumed.stdout
    ref, got = read_metrics(straight)[0], read_metrics(run)[0]
    last = {r["step"]: r["loss"] for r in got}  # the resumed run's value of each step wins
    for r in ref:
        assert last[r["step"]] == pytest.approx(r["loss"], rel=1e-5), r["step"]
