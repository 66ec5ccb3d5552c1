"""The real CLI end to end: one process, two processes under torchrun, resume."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support.launch import TINY_PEAK_TFLOPS, read_metrics, run_training

pytestmark = pytest.mark.integration


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_single_process_trains_and_checkpoints(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = run_training(run, tiny_data, "train.max_steps=40", "train.log_every=5",
                        "train.eval_every=20", "train.save_every=20", "deepspeed=zero2",
                        "logging.tensorboard=true", "train.peak_tflops=null",
                        own_process=True)  # its output as a user sees it
    train, valid = read_metrics(run)
    assert [r["step"] for r in train] == [1, *range(5, 41, 5)]  # a first line at step 1
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "updates_per_s", "mfu", "wall_s",
            "time", "elapsed_s", "lang_loss"} <= set(train[0])
    assert all(r["grad_norm"] > 0 for r in train)
    assert train[0]["peak_source"].startswith("measured: float32")
    assert [r["elapsed_s"] for r in train] == sorted(r["elapsed_s"] for r in train)
    # Start-up says what it is doing before the first step.
    for line in ("building the model", "starting DeepSpeed: ZeRO-2", "measuring the matmul peak"):
        assert line in proc.stdout, line
    assert "gnorm" in proc.stdout and "eta" in proc.stdout
    # Warnings no user can act on are not printed.
    for noise in ("Setting accelerator to CPU", "untested optimizer", "FutureWarning"):
        assert noise not in proc.stdout + proc.stderr, noise
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in train]
    assert [e.value for e in events.Scalars("grad_norm")] == pytest.approx(
        [r["grad_norm"] for r in train])
    # Per-language validation at the start, mid-way and the end; every language improves.
    assert [r["step"] for r in valid] == [0, 20, 40]
    first, last = valid[0]["lang_loss"], valid[-1]["lang_loss"]
    assert set(first) == {"en_XX", "de_DE", "ru_RU", "el_GR"}
    assert all(last[lang] < first[lang] - 0.5 for lang in first), (first, last)
    assert "valid @ step 40" in proc.stdout and "tok/s" in proc.stdout
    checkpoints = run / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_00000040"
    saved = checkpoints / "step_00000040"
    for sidecar in ("model.safetensors", "trainer_state.json", "config.yaml", "languages.json",
                    "sentencepiece.bpe.model"):
        assert (saved / sidecar).is_file(), sidecar
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == 40
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    assert json.loads((saved / "languages.json").read_text()) == list(manifest["languages"])
    assert (checkpoints / "step_00000020").is_dir()  # keep_checkpoints=2 keeps both


def test_resume_continues_exactly(tiny_data, tmp_path):
    """Train 10, stop, resume to 20 == train 20 straight (same data, RNG, LR schedule)."""
    common = ["train.max_steps=20", "train.log_every=1", "train.eval_every=0",
              "train.save_every=10", "optim.warmup_steps=5"]
    straight = tmp_path / "straight"
    run_training(straight, tiny_data, *common)
    resumed = tmp_path / "resumed"
    run_training(resumed, tiny_data, *common[1:], "train.max_steps=10", "optim.total_steps=20")
    proc = run_training(resumed, tiny_data, *common)
    assert "resumed from" in proc.stdout
    ref, _ = read_metrics(straight)
    got, _ = read_metrics(resumed)
    assert [r["step"] for r in got] == list(range(1, 21))
    for a, b in zip(ref, got):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6), (a["step"], a, b)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)


def test_two_processes_zero2(tiny_data, tmp_path):
    run = tmp_path / "run"
    proc = run_training(run, tiny_data, "train.max_steps=30", "train.log_every=5",
                        "train.eval_every=0", "train.save_every=30", "deepspeed=zero2",
                        nproc=2)
    train, valid = read_metrics(run)  # only rank 0 writes
    assert [r["step"] for r in train] == [1, 5, 10, 15, 20, 25, 30]
    first, last = valid[0]["lang_loss"], valid[-1]["lang_loss"]
    assert mean(last.values()) < mean(first.values()) - 0.5
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    # Two ranks' DeepSpeed shards of the ZeRO-2 optimizer state.
    shards = list((run / "checkpoints" / "step_00000030").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert proc.stdout.count("valid @ step 30") == 1  # rank 0 alone reports
    # A given MFU peak is per rank, taken as it is (nothing measured), and never raised.
    assert "measuring the matmul peak" not in proc.stdout
    peak = TINY_PEAK_TFLOPS * 1e12 * 2
    flops_per_token = train[0]["mfu"] * peak / train[0]["tokens_per_s"]
    for r in train:
        assert r["peak_flops"] == peak
        assert r["peak_source"] == f"train.peak_tflops={TINY_PEAK_TFLOPS:g} x 2 rank(s)"
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops_per_token / peak)


def test_refuses_bad_config_naming_the_key(tiny_data, tmp_path):
    proc = run_training(tmp_path / "r", tiny_data, "train.max_step=3", check=False)
    assert proc.returncode != 0
    assert "max_step" in proc.stderr + proc.stdout


def test_wandb_offline_needs_no_network(tiny_data, tmp_path):
    run = tmp_path / "run"
    run_training(run, tiny_data, "train.max_steps=2", "train.log_every=1", "train.eval_every=0",
                 "logging.wandb=true", env={"WANDB_MODE": "offline"})
    offline = list((run / "wandb").glob("offline-run-*/*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
