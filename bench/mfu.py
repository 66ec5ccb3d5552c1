"""Model FLOPs utilisation at the mid config: the model FLOPs our step must do per second, over
the fp32 matmul peak this process measures on this machine in the same run.

The FLOP count is ``model_flops_per_token`` (the MLM head on the masked tokens only), for ours
and for transformers alike: transformers' MFU is the same useful work per second, so the head it
computes over every token counts as waste, not as work.
"""

from __future__ import annotations

import torch

from bench.common import MID, QUICK, machine, measure_pair, target
from bench.throughput import QUICK_BACKEND
from xmod_pretrain.model.xmod import model_flops_per_token
from xmod_pretrain.training.peak import measure_matmul_peak

GOAL = 0.5  # ours >= 50% of the measured matmul peak at the mid config
RUNS = ("ours", "ours_compiled", "ours_engine", "transformers")


def run(quick: bool) -> dict:
    size = QUICK if quick else MID
    warmup, timed = (1, 3) if quick else (2, 5)
    cpu = torch.device("cpu")
    # The peak before and after the steps, the higher kept: a moment of contention from another
    # process during one measurement must not raise MFU.
    peaks = [measure_matmul_peak(cpu)[0]]
    pair = measure_pair(size, warmup, timed, QUICK_BACKEND if quick else "inductor")
    peaks.append(measure_matmul_peak(cpu)[0])
    peak = max(peaks)
    flops = model_flops_per_token(size.model_config(), size.seq, pair["masked_fraction"])
    mfu = {name: pair[name]["per_s"] * flops / peak for name in RUNS}
    return {"machine": machine(), "config": size.name, "size": pair["size"],
            "flops_per_token": flops, "peak_flops": peak, "peaks_measured": peaks,
            "tokens_per_s": {name: pair[name]["per_s"] for name in RUNS},
            "flops_per_s": {name: pair[name]["per_s"] * flops for name in RUNS},
            "mfu": mfu, "target": target(mfu["ours"], GOAL),
            "target_engine": target(mfu["ours_engine"], GOAL), "steps": pair}


def report(result: dict) -> str:
    lines = [(f"config {result['config']}: {result['flops_per_token'] / 1e6:.1f} MFLOP/token, "
             f"measured fp32 matmul peak {result['peak_flops'] / 1e9:.1f} GFLOP/s"),
             f"{'run':<14} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>7}"]
    for name in RUNS:
        lines.append(f"{name:<14} {result['tokens_per_s'][name]:>10,.0f} "
                     f"{result['flops_per_s'][name] / 1e9:>9.1f} {result['mfu'][name]:>7.1%}")
    for key in ("target", "target_engine"):
        t = result[key]
        lines.append(f"{key}: MFU {t['value']:.1%} vs >= {t['goal']:.0%}: "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
