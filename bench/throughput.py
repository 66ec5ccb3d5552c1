"""Training tokens/s, ours over transformers', at the small config (XLM-R's vocabulary) and a
mid one; plus a profile of our step, to say where its time goes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import (
    MID,
    QUICK,
    SMALL,
    Size,
    bar_chart,
    machine,
    masked_batch,
    measure_pair,
    ours_step,
    target,
)
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.training.config import OptimConfig
from xmod_pretrain.training.optim import build_optimizer

GOAL = 3.0  # ours >= 3x transformers at the small config
SERIES = {"ours": "ours", "ours_compiled": "ours (compiled)",
          "ours_engine": "ours (DeepSpeed engine)", "transformers": "transformers"}
# Quick runs compile through AOTAutograd without inductor's code generation (a minute on 2
# cores even for the quick model): the compiled path runs, its speed is not the point.
QUICK_BACKEND = "aot_eager"


def run(quick: bool) -> dict:
    sizes = [QUICK] if quick else [SMALL, MID]
    warmup, timed = (1, 3) if quick else (2, 5)
    configs = {}
    for size in sizes:
        pair = measure_pair(size, warmup, timed, QUICK_BACKEND if quick else "inductor")
        theirs = pair["transformers"]["per_s"]
        pair["ratio"] = pair["ours"]["per_s"] / theirs
        pair["ratio_engine"] = pair["ours_engine"]["per_s"] / theirs
        pair["compiled_over_eager"] = pair["ours_compiled"]["per_s"] / pair["ours"]["per_s"]
        configs[size.name] = pair
    first = configs[sizes[0].name]
    return {"machine": machine(), "configs": configs,
            "target": {"config": sizes[0].name, **target(first["ratio"], GOAL)},
            "target_engine": {"config": sizes[0].name, **target(first["ratio_engine"], GOAL)},
            "profile": profile_ours(sizes[0])}


def profile_ours(size: Size, steps: int = 2, top: int = 12) -> dict:
    """torch.profiler over ``steps`` of our step (after one warm-up): the ops with the most
    self CPU time, and each one's share of the profiled time."""
    torch.manual_seed(0)
    model = XmodForMaskedLM(size.model_config()).train()
    optimizer = build_optimizer(model.named_parameters(), OptimConfig())
    step = ours_step(model, optimizer, masked_batch(size))
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "calls": e.count // steps, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total} for e in events[:top]]
    return {"config": size.name, "steps": steps, "ms_per_step": total / 1e3 / steps, "top_ops": ops}


def report(result: dict) -> str:
    lines = [(f"{'config':<8} {'ours tok/s':>11} {'compiled':>9} {'engine tok/s':>13} "
              f"{'transformers':>13} {'ours/tf':>8} {'engine/tf':>10} {'compiled/ours':>14} "
              f"{'compile s':>10}")]
    for name, c in result["configs"].items():
        lines.append(f"{name:<8} {c['ours']['per_s']:>11,.0f} {c['ours_compiled']['per_s']:>9,.0f} "
                     f"{c['ours_engine']['per_s']:>13,.0f} {c['transformers']['per_s']:>13,.0f} "
                     f"{c['ratio']:>7.2f}x {c['ratio_engine']:>9.2f}x "
                     f"{c['compiled_over_eager']:>13.2f}x {c['compile_s']:>10.1f}")
    for key in ("target", "target_engine"):
        t = result[key]
        lines.append(f"{key}: {t['value']:.2f}x vs >= {t['goal']}x at {t['config']}: "
                     f"{'met' if t['met'] else 'NOT met'}")
    p = result["profile"]
    lines.append(f"profile of ours ({p['config']}, {p['ms_per_step']:.0f} ms/step), top self time:")
    lines += [f"  {op['share']:>6.1%} {op['self_ms_per_step']:>9.1f} ms  {op['calls']:>5}x  "
              f"{op['op']}" for op in p["top_ops"]]
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    groups = {name: {label: c[key]["per_s"] for key, label in SERIES.items()}
              for name, c in result["configs"].items()}
    return [bar_chart(out_dir / "throughput.png", "Training throughput, fp32 CPU", "tokens/s",
                      groups)]
