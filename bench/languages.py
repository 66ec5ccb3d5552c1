"""Step time against the number of languages registered: 4, 81, 1,000 and 2,000, everything
else equal.

The micro-batches cycle over the same 4 languages whatever the number registered, so the other
languages are absent from every step. With the default optimizer policy
(``optim.update_absent_languages=false``) their modules are neither stepped nor moved, so the step
should cost the same; ``update_absent_languages=true`` (fairseq's and DeepSpeed's behaviour) steps
them all, and shows what that costs (measured up to 81 languages: beyond, it is the same line
continued). Timed through the training engine the trainer uses (DeepSpeed over the shared
weights, the language store over the modules), one process, under ZeRO-0, 2 and 3, at the
throughput benchmark's small config.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from pathlib import Path

import torch

from bench.common import (
    QUICK,
    SMALL,
    Size,
    Step,
    engine_config,
    engine_step,
    in_child,
    machine,
    masked_batch,
    single_process_group,
    time_steps,
)
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.engine import build_training_engine

COUNTS = (4, 81, 1000, 2000)
PRESENT = 4  # the languages the micro-batches cycle over
STAGES = (0, 2, 3)
GOAL = 1.05  # 2,000 languages may cost at most 5% more than 4
# (optim.update_absent_languages, the counts measured with it); --quick: the ends alone
POLICIES = ((False, COUNTS), (True, COUNTS[:2]))
QUICK_POLICIES = ((False, (COUNTS[0], COUNTS[-1])), (True, COUNTS[:1]))


def cycling_step(size: Size, count: int, stage: int, update_absent: bool, info: DistInfo) -> Step:
    """One training step through our engine per call, cycling over the PRESENT languages."""
    cfg = dataclasses.replace(size, languages=count).model_config()
    config = engine_config(cfg, size.batch, stage)
    config.optim.update_absent_languages = update_absent
    torch.manual_seed(0)
    training = build_training_engine(XmodForMaskedLM(cfg), config, info)
    steps = itertools.cycle([engine_step(training, masked_batch(size, seed, lang))
                             for seed, lang in enumerate(range(PRESENT))])
    return lambda: next(steps)()


def median_steps(size: Size, stage: int, update_absent: bool, counts: tuple[int, ...],
                 rounds: int) -> dict[int, float]:
    """Median step time per language count. The counts take turns, PRESENT steps each, for
    ``rounds`` rounds, so that other work on the machine weighs on all of them alike."""
    with single_process_group() as info:
        steppers = {n: cycling_step(size, n, stage, update_absent, info) for n in counts}
        times: dict[int, list[float]] = {n: [] for n in counts}
        for n, step in steppers.items():
            time_steps(step, PRESENT, 0)  # warm-up: first allocations, Adam's state
        for _ in range(rounds):
            for n, step in steppers.items():
                times[n] += time_steps(step, 0, PRESENT)
    return {n: statistics.median(t) for n, t in times.items()}


def run(quick: bool) -> dict:
    size, rounds = (QUICK, 1) if quick else (SMALL, 3)
    rows = []
    for stage, (update_absent, counts) in itertools.product(
            STAGES, QUICK_POLICIES if quick else POLICIES):
        # Full size: each stage's engines (up to 2,000 languages' modules) in a process of their
        # own, or the benchmark would hold all of them at once (23 GB measured).
        times = (median_steps(size, stage, update_absent, counts, rounds) if quick
                 else in_child(median_steps, size, stage, update_absent, counts, rounds))
        rows += [{"zero_stage": stage, "update_absent_languages": update_absent, "languages": n,
                  "step_s": t, "vs_4_languages": t / times[COUNTS[0]]} for n, t in times.items()]
    worst = max(r["vs_4_languages"] for r in rows if not r["update_absent_languages"])
    return {"machine": machine(), "size": dataclasses.asdict(size), "present_languages": PRESENT,
            "warmup_steps": PRESENT, "timed_steps": rounds * PRESENT, "rows": rows,
            "worst_ratio_default_policy": worst, "goal": GOAL, "met": worst <= GOAL}


def report(result: dict) -> str:
    lines = ["| ZeRO | update_absent_languages | " + " | ".join(f"{n} languages" for n in COUNTS)
             + " |", "|---|---|" + "---|" * len(COUNTS)]
    rows = {(r["zero_stage"], r["update_absent_languages"], r["languages"]): r
            for r in result["rows"]}
    for stage, (update_absent, _) in itertools.product(STAGES, POLICIES):
        cells = [f"{r['step_s'] * 1e3:.0f} ms ({r['vs_4_languages']:.3f}x)"
                 if (r := rows.get((stage, update_absent, n))) else "not measured"
                 for n in COUNTS]
        lines.append(f"| {stage} | {str(update_absent).lower()} | " + " | ".join(cells) + " |")
    verdict = "met" if result["met"] else "NOT met"
    lines.append(f"default policy, worst ratio to 4 languages "
                 f"{result['worst_ratio_default_policy']:.3f} (goal <= {result['goal']} at "
                 f"{COUNTS[-1]:,}): {verdict}")
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for stage, (update_absent, _) in itertools.product(STAGES, POLICIES):
        rows = [r for r in result["rows"] if r["zero_stage"] == stage
                and r["update_absent_languages"] == update_absent]
        policy = "every module stepped" if update_absent else "absent languages skipped (default)"
        ax.plot([r["languages"] for r in rows], [r["step_s"] * 1e3 for r in rows], marker="o",
                linestyle="--" if update_absent else "-", label=f"ZeRO-{stage}, {policy}")
    ax.set_xscale("log")
    ax.set(title=f"Step time vs languages registered (batches cycle over {PRESENT})",
           xlabel="languages registered", ylabel="median step time (ms)", xticks=list(COUNTS))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "languages.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
