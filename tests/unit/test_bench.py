"""The benchmark suite at quick sizes: structure and consistency of its results, its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import BENCHMARKS
from bench.__main__ import main, run_one
from bench.checkpoint import COUNTS as SAVE_COUNTS
from bench.checkpoint import TRAINED
from bench.languages import COUNTS, QUICK_POLICIES
from bench.languages import STAGES as STAGES_MEASURED
from bench.memory import STAGES, per_rank
from bench.zero3 import QUICK_LAYOUTS
from xmod_pretrain.model.xmod import model_flops_per_token

# Each benchmark builds models and DeepSpeed engines in this process.
pytestmark = pytest.mark.slow

MACHINE_KEYS = {"cpu", "cores", "threads", "torch"}


def check_files(out: Path, name: str, plots: tuple[str, ...] = ()) -> dict:
    saved = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
    assert saved["quick"] is True and MACHINE_KEYS <= set(saved["machine"])
    for png in plots:
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and (out / png).stat().st_size > 5000
    return saved


def check_target(t: dict) -> None:
    assert t["met"] == (t["value"] >= t["goal"])


def test_throughput_times_four_ways_of_running_the_model(tmp_path):
    result = run_one("throughput", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "throughput", ("throughput.png",))
    quick = result["configs"]["quick"]
    for run in ("ours", "ours_compiled", "ours_engine", "transformers"):
        assert len(quick[run]["times_s"]) >= 3 and quick[run]["per_s"] > 0
    assert all(quick[ratio] > 0 for ratio in ("ratio", "ratio_engine", "compiled_over_eager"))
    assert quick["compile_backend"] == "aot_eager" and quick["compile_s"] > 0
    check_target(result["target"])
    ops = result["profile"]["top_ops"]
    assert ops and all(op["self_ms_per_step"] >= 0 for op in ops)
    assert sum(op["share"] for op in ops) <= 1 + 1e-9


def test_mfu_is_model_flops_over_measured_peak(tmp_path):
    from bench.common import QUICK

    result = run_one("mfu", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "mfu")
    assert result["peak_flops"] == max(result["peaks_measured"]) > 1e8
    flops = model_flops_per_token(QUICK.model_config(), QUICK.seq,
                                  result["steps"]["masked_fraction"])
    assert math.isclose(result["flops_per_token"], flops)
    assert result["mfu"] and all(0 < mfu < 1 for mfu in result["mfu"].values())
    check_target(result["target"])


def test_memory_formula_matches_the_engine_and_shards(tmp_path):
    result = run_one("memory", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "memory", ("memory.png",))
    assert [m["zero_stage"] for m in result["measured_tiny"]] == list(STAGES)
    assert all(abs(m["relative_difference"]) <= result["tolerance"]
               for m in result["measured_tiny"])
    assert result["formula_matches"]
    n = result["base"]["parameters"]
    assert 800e6 < n < 900e6  # xmod-base with 81 languages: 852.7M
    fp32 = result["gib_per_rank"]["fp32"]
    assert len(set(fp32["ZeRO-0"].values())) == 1  # nothing sharded
    modules = result["modules_gib"]  # whole on every rank, outside ZeRO's sharding
    assert fp32["ZeRO-3"]["8 ranks"] - modules == pytest.approx(
        (fp32["ZeRO-3"]["1 ranks"] - modules) / 8)
    assert fp32["ZeRO-1"]["8 ranks"] > fp32["ZeRO-2"]["8 ranks"] > fp32["ZeRO-3"]["8 ranks"]
    assert sum(per_rank(10, 0, 0, 1, "fp32").values()) == 10 * 16
    assert sum(per_rank(10, 0, 0, 1, "bf16").values()) == 10 * 16  # 2 + 2 + 4 master + 8
    assert sum(per_rank(0, 10, 3, 8, "bf16").values()) == 10 * 12  # fp32 modules, unsharded
    # optim.module_state=host: a step's languages on the device at any count registered, as
    # measured, where device state grows with every language.
    paged = {(m["module_state"], m["registered"]): m for m in result["measured_modules_tiny"]}
    assert paged[("host", 81)]["measured_bytes"] == paged[("host", 2000)]["measured_bytes"]
    assert paged[("device", 2000)]["measured_bytes"] > 20 * paged[("device", 81)]["measured_bytes"]
    assert all(abs(m["relative_difference"]) <= result["tolerance"] for m in paged.values())
    host = result["module_gib_per_rank"]["host"]
    assert len(set(host.values())) == 1 and host[2000] < result["module_gib_per_rank"]["device"][81]


def test_data_prep_is_measured_with_one_and_two_workers(tmp_path):
    result = run_one("data_prep", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "data_prep", ("data_prep.png",))
    assert result["sentencepiece_mb_per_s"] > 0 and result["corpus_bytes"] >= 0.5e6
    assert set(result["data_prep"]) == set(result["target_vs_sentencepiece"]) == {"1", "2"}
    for workers, prep in result["data_prep"].items():
        assert prep["mb_per_s"] > 0
        check_target(result["target_vs_sentencepiece"][workers])
    check_target(result["target_scaling"])
    assert result["sampler"]["batches_per_s"] > 0
    check_target(result["target_sampler"])


def test_layouts_measures_each_layout_a_killed_preparation_and_the_sample_memory(tmp_path):
    result = run_one("layouts", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "layouts", ("layouts.png",))
    assert set(result["layouts"]) == {"text", "cc100", "fineweb2"}
    assert all(r["mb_per_s"] > 0 and r["documents_per_s"] > 0 for r in result["layouts"].values())
    resume = result["resume"]
    assert result["languages"] // 2 <= resume["done_when_killed"] < result["languages"]
    assert resume["resumed_s"] > 0 and resume["whole_s"] > 0
    memory = result["sample_memory"]
    assert set(memory) == {"19", "1000"}
    budget_mb = result["tokenizer_sample_gb"] * 1000
    for languages, m in memory.items():  # the budget, each language stopping within a line
        assert budget_mb <= m["sample_mb"] < budget_mb + int(languages) * 1e-3
        assert m["corpus_mb"] > 2 * m["sample_mb"] and m["added_mib"] > 0


def test_languages_ratios_are_against_four_languages(tmp_path):
    result = run_one("languages", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "languages", ("languages.png",))
    rows = {(r["zero_stage"], r["update_absent_languages"], r["module_state"], r["languages"]): r
            for r in result["rows"]}
    assert len(rows) == len(result["rows"]) == len(STAGES_MEASURED) * sum(
        len(counts) for _, _, counts in QUICK_POLICIES)
    assert {key[-1] for key in rows} == {4, 2000} and COUNTS[-1] == 2000
    assert all(row["step_s"] > 0 and row["vs_4_languages"] > 0 for row in result["rows"])
    assert all(row["vs_4_languages"] == 1 for row in result["rows"] if row["languages"] == COUNTS[0])
    assert result["met"] == (result["worst_ratio_default_policy"] <= result["goal"])
    # Memory per rank: device state grows with the languages registered; host state keeps the
    # same bytes on the device at 4 and 2,000, and the rest in its host buffers.
    for stage in STAGES_MEASURED:
        device = [rows[stage, False, "device", n] for n in (4, 2000)]
        host = [rows[stage, False, "host", n] for n in (4, 2000)]
        assert device[1]["device"] > 100 * device[0]["device"] and device[1]["host"] == 0
        assert host[0]["device"] == host[1]["device"] > 0
        assert host[1]["host"] > 100 * host[0]["device"]
        assert all(r["vs_device_state"] > 0 for r in host)


@pytest.mark.integration
def test_zero3_compares_real_two_process_runs(tmp_path):
    result = run_one("zero3", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "zero3")
    rates = result["tokens_per_s"]
    assert set(rates) == set(result["vs_zero2_per_rank"]) == set(QUICK_LAYOUTS)
    assert all(r > 0 for r in rates.values()) and result["vs_zero2_per_rank"]["zero2_per_rank"] == 1
    # Per-rank languages under ZeRO-3 draw the batches ZeRO-2's do: the same training.
    losses = result["last_loss"]
    assert losses["zero3_per_rank"] == pytest.approx(losses["zero2_per_rank"], rel=1e-3)


@pytest.mark.integration
def test_checkpoint_cost_is_measured_on_every_rank_of_both_stages(tmp_path):
    result = run_one("checkpoint", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "checkpoint")
    assert set(result["stages"]) == {"ZeRO-2", "ZeRO-3"}
    for ranks in result["stages"].values():
        assert set(ranks) == {"rank 0", "rank 1"}
        for f in ranks.values():
            assert 0 < f["loop_held_s"] <= f["published_s"] and f["peak_added_gib"] >= 0
    # A save after 4 languages trained writes their 4 files, whatever the number registered.
    languages = result["languages"]
    assert set(languages["registered"]) == {str(n) for n in SAVE_COUNTS} and SAVE_COUNTS[-1] == 2000
    for figures in languages["registered"].values():
        assert figures["language_files"] == TRAINED and figures["bytes"] > 0
    assert languages["met"] == (languages["worst_ratio"] <= languages["goal"])


def test_the_accelerator_check_runs_its_steps_on_the_cpu(tmp_path):
    """Ours eager, compiled and with 1,000 languages registered, and transformers'."""
    result = run_one("gpu", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "gpu")
    assert result["device"] == "cpu" and result["sync_check"] == "not run: no CUDA device"
    assert result["peak_source"].startswith("measured: bfloat16")
    runs = result["runs"]
    assert set(result["speedup_over_transformers"]) == set(runs) == {
        "ours", "ours_compiled", "ours_1000_languages", "transformers"}
    assert all(r["per_s"] > 0 and r["mfu"] > 0 for r in runs.values())
    assert runs["ours_compiled"]["first_step_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_accelerator_check_refuses_at_once_without_cuda(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device here.*--quick"):
        main(["gpu", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_runner_runs_named_benchmarks_in_order_and_refuses_unknown(tmp_path, capsys):
    assert BENCHMARKS[:3] == ["throughput", "mfu", "languages"]  # the order
    assert "gpu" not in BENCHMARKS  # it needs a CUDA device: run only when named
    assert main(["memory", "--quick", "--out", str(tmp_path)]) == 0
    assert "== memory" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.json", "memory.png"]
    with pytest.raises(SystemExit):
        main(["nonsense", "--quick", "--out", str(tmp_path)])
