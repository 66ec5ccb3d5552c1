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
from xmod_pretrain.training.config import ModuleState
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.engine import build_training_engine
from xmod_pretrain.training.language_store import LanguageStore

COUNTS = (4, 81, 1000, 2000)
PRESENT = 4  # the languages the micro-batches cycle over
STAGES = (0, 2, 3)
GOAL = 1.05  # 2,000 languages may cost at most 5% more than 4
# (optim.update_absent_languages, optim.module_state, the counts measured with them); --quick:
# the ends alone
POLICIES = ((False, "device", COUNTS), (False, "host", COUNTS), (True, "device", COUNTS[:2]))
QUICK_POLICIES = ((False, "device", (COUNTS[0], COUNTS[-1])),
                  (False, "host", (COUNTS[0], COUNTS[-1])), (True, "device", COUNTS[:1]))


def cycling_step(size: Size, count: int, stage: int, update_absent: bool, module_state: str,
                 info: DistInfo) -> tuple[Step, LanguageStore]:
    """One training step through our engine per call, cycling over the PRESENT languages (each
    step's start told the next one's, as the trainer does), and the engine's language store."""
    cfg = dataclasses.replace(size, languages=count).model_config()
    config = engine_config(cfg, size.batch, stage)
    config.optim.update_absent_languages = update_absent
    config.optim.module_state = ModuleState(module_state)
    torch.manual_seed(0)
    training = build_training_engine(XmodForMaskedLM(cfg), config, info)
    steps = itertools.cycle([
        engine_step(training, masked_batch(size, seed, lang),
                    upcoming=[cfg.languages[(lang + 1) % PRESENT]])
        for seed, lang in enumerate(range(PRESENT))])
    return (lambda: next(steps)()), training.store


def median_steps(size: Size, stage: int, update_absent: bool, module_state: str,
                 counts: tuple[int, ...], rounds: int) -> dict[int, dict]:
    """Per language count, the median step time and the module state's bytes on the device
    and on the host after the steps. The counts take turns, PRESENT steps each, for ``rounds``
    rounds, so that other work on the machine weighs on all of them alike."""
    with single_process_group() as info:
        steppers = {n: cycling_step(size, n, stage, update_absent, module_state, info)
                    for n in counts}
        times: dict[int, list[float]] = {n: [] for n in counts}
        for n, (step, _) in steppers.items():
            time_steps(step, PRESENT, 0)  # warm-up: first allocations, Adam's state
        for _ in range(rounds):
            for n, (step, _) in steppers.items():
                times[n] += time_steps(step, 0, PRESENT)
        return {n: {"step_s": statistics.median(times[n]), **store.module_bytes()}
                for n, (_, store) in steppers.items()}


def run(quick: bool) -> dict:
    size, rounds = (QUICK, 1) if quick else (SMALL, 3)
    rows = []
    for stage, (update_absent, module_state, counts) in itertools.product(
            STAGES, QUICK_POLICIES if quick else POLICIES):
        # Full size: each stage's engines (up to 2,000 languages' modules) in a process of their
        # own, or the benchmark would hold all of them at once (23 GB measured).
        args = (size, stage, update_absent, module_state, counts, rounds)
        measured = median_steps(*args) if quick else in_child(median_steps, *args)
        rows += [{"zero_stage": stage, "update_absent_languages": update_absent,
                  "module_state": module_state, "languages": n, **m,
                  "vs_4_languages": m["step_s"] / measured[COUNTS[0]]["step_s"]}
                 for n, m in measured.items()]
    device = {(r["zero_stage"], r["languages"]): r["step_s"] for r in rows
              if not r["update_absent_languages"] and r["module_state"] == "device"}
    for row in rows:  # what paging costs: host state against device state, same count
        if row["module_state"] == "host":
            row["vs_device_state"] = row["step_s"] / device[row["zero_stage"], row["languages"]]
    worst = max(r["vs_4_languages"] for r in rows if not r["update_absent_languages"])
    return {"machine": machine(), "size": dataclasses.asdict(size), "present_languages": PRESENT,
            "warmup_steps": PRESENT, "timed_steps": rounds * PRESENT, "rows": rows,
            "worst_ratio_default_policy": worst, "goal": GOAL, "met": worst <= GOAL}


def policy_name(update_absent: bool, module_state: str) -> str:
    return ("every module stepped" if update_absent
            else f"absent skipped, module_state={module_state}")


def report(result: dict) -> str:
    lines = ["| ZeRO | policy | " + " | ".join(f"{n} languages" for n in COUNTS) + " |",
             "|---|---|" + "---|" * len(COUNTS)]
    rows = {(r["zero_stage"], r["update_absent_languages"], r["module_state"], r["languages"]): r
            for r in result["rows"]}
    for stage, (update_absent, state, _) in itertools.product(STAGES, POLICIES):
        cells = [f"{r['step_s'] * 1e3:.0f} ms ({r['vs_4_languages']:.3f}x)"
                 if (r := rows.get((stage, update_absent, state, n))) else "not measured"
                 for n in COUNTS]
        lines.append(f"| {stage} | {policy_name(update_absent, state)} | " + " | ".join(cells)
                     + " |")
    verdict = "met" if result["met"] else "NOT met"
    lines.append(f"absent languages skipped, worst ratio to 4 languages "
                 f"{result['worst_ratio_default_policy']:.3f} (goal <= {result['goal']} at "
                 f"{COUNTS[-1]:,}): {verdict}")
    lines += ["\nmodule state in MB, on the device / in host buffers, and host-state steps "
              "against device-state ones:",
              "| ZeRO | module_state | " + " | ".join(f"{n} languages" for n in COUNTS) + " |",
              "|---|---|" + "---|" * len(COUNTS)]
    for stage, state in itertools.product(STAGES, ("device", "host")):
        cells = [f"{r['device'] / 1e6:,.1f} / {r['host'] / 1e6:,.1f}"
                 + (f" ({r['vs_device_state']:.3f}x)" if "vs_device_state" in r else "")
                 if (r := rows.get((stage, False, state, n))) else "not measured"
                 for n in COUNTS]
        lines.append(f"| {stage} | {state} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for stage, (update_absent, state, _) in itertools.product(STAGES, POLICIES):
        rows = [r for r in result["rows"] if r["zero_stage"] == stage
                and r["update_absent_languages"] == update_absent and r["module_state"] == state]
        ax.plot([r["languages"] for r in rows], [r["step_s"] * 1e3 for r in rows], marker="o",
                linestyle="--" if update_absent else (":" if state == "host" else "-"),
                label=f"ZeRO-{stage}, {policy_name(update_absent, state)}")
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
