"""The benchmark suite at quick sizes: structure and consistency of its results, its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import BENCHMARKS
from bench.__main__ import main, run_one
from bench.languages import COUNTS
from bench.memory import STAGES, per_rank
from bench.zero3 import LAYOUTS
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


def test_throughput_ratios_are_ours_over_theirs(tmp_path):
    result = run_one("throughput", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "throughput", ("throughput.png",))
    quick = result["configs"]["quick"]
    for run in ("ours", "ours_compiled", "ours_engine", "transformers"):
        assert len(quick[run]["times_s"]) >= 3 and quick[run]["per_s"] > 0
        assert math.isclose(quick[run]["per_s"], quick["tokens_per_step"] / quick[run]["median_s"])
    assert math.isclose(quick["ratio"], quick["ours"]["per_s"] / quick["transformers"]["per_s"])
    assert math.isclose(quick["ratio_engine"],
                        quick["ours_engine"]["per_s"] / quick["transformers"]["per_s"])
    assert math.isclose(quick["compiled_over_eager"],
                        quick["ours_compiled"]["per_s"] / quick["ours"]["per_s"])
    assert quick["compile_backend"] == "aot_eager" and quick["compile_s"] > 0
    check_target(result["target"])
    assert result["target"]["value"] == quick["ratio"]
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
    for run, mfu in result["mfu"].items():
        assert 0 < mfu < 1
        assert math.isclose(mfu, result["tokens_per_s"][run] * flops / result["peak_flops"])
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
    assert fp32["ZeRO-3"]["8 ranks"] == pytest.approx(fp32["ZeRO-3"]["1 ranks"] / 8)
    assert fp32["ZeRO-1"]["8 ranks"] > fp32["ZeRO-2"]["8 ranks"] > fp32["ZeRO-3"]["8 ranks"]
    assert sum(per_rank(10, 0, 1, "fp32").values()) == 10 * 16
    assert sum(per_rank(10, 0, 1, "bf16").values()) == 10 * 16  # 2 + 2 + 4 master + 8


def test_data_prep_rates_are_consistent(tmp_path):
    result = run_one("data_prep", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "data_prep", ("data_prep.png",))
    raw = result["sentencepiece_mb_per_s"]
    assert raw > 0 and result["corpus_bytes"] >= 0.5e6
    for workers, prep in result["data_prep"].items():
        assert math.isclose(prep["mb_per_s_per_worker"], prep["mb_per_s"] / int(workers))
        ratio = result["target_vs_sentencepiece"][workers]
        assert math.isclose(ratio["value"], prep["mb_per_s_per_worker"] / raw)
        check_target(ratio)
    scaling = result["data_prep"]["2"]["mb_per_s"] / result["data_prep"]["1"]["mb_per_s"]
    assert math.isclose(result["target_scaling"]["value"], scaling)
    sampler = result["sampler"]
    assert math.isclose(sampler["ratio"], sampler["batches_per_s"] * sampler["step_s"])
    check_target(result["target_sampler"])


def test_languages_ratios_are_against_four_languages(tmp_path):
    result = run_one("languages", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "languages", ("languages.png",))
    rows = {(r["zero_stage"], r["update_absent_languages"], r["languages"]): r for r in result["rows"]}
    assert len(rows) == len(result["rows"]) == 2 * 2 * len(COUNTS)
    for (stage, policy, _), row in rows.items():
        fewest = rows[stage, policy, COUNTS[0]]["step_s"]
        assert row["step_s"] > 0 and math.isclose(row["vs_4_languages"], row["step_s"] / fewest)
    default = [r["vs_4_languages"] for r in result["rows"] if not r["update_absent_languages"]]
    assert result["worst_ratio_default_policy"] == max(default)
    assert result["met"] == (max(default) <= result["goal"])


@pytest.mark.integration
def test_zero3_compares_three_real_two_process_runs(tmp_path):
    result = run_one("zero3", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "zero3")
    rates = result["tokens_per_s"]
    assert set(rates) == set(LAYOUTS) and all(r > 0 for r in rates.values())
    for name, ratio in result["vs_zero2_per_rank"].items():
        assert math.isclose(ratio, rates[name] / rates["zero2_per_rank"])


@pytest.mark.integration
def test_checkpoint_cost_is_measured_on_every_rank_of_both_stages(tmp_path):
    result = run_one("checkpoint", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "checkpoint")
    assert set(result["stages"]) == {"ZeRO-2", "ZeRO-3"}
    for ranks in result["stages"].values():
        assert set(ranks) == {"rank 0", "rank 1"}
        for f in ranks.values():
            assert 0 < f["loop_held_s"] <= f["published_s"] and f["peak_added_gib"] >= 0


def test_the_accelerator_check_runs_its_three_steps_on_the_cpu(tmp_path):
    result = run_one("gpu", quick=True, out_dir=tmp_path)
    check_files(tmp_path, "gpu")
    assert result["device"] == "cpu" and result["sync_check"] == "not run: no CUDA device"
    assert result["peak_source"].startswith("measured: bfloat16")
    runs = result["runs"]
    for name, r in runs.items():
        assert r["per_s"] > 0
        assert math.isclose(r["mfu"], r["per_s"] * result["flops_per_token"] / result["peak_flops"])
        assert math.isclose(result["speedup_over_transformers"][name],
                            r["per_s"] / runs["transformers"]["per_s"])
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
