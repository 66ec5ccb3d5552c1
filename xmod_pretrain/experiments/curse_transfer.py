"""The curse experiment's zero-shot transfer comparison: ``xmod_pretrain transfer`` on the
X-MOD and the shared-module run of each n in ``--transfer``, both bundled tasks, side by side.

Every run is fine-tuned on the source language (en_XX) and scored on each other language of the
run: X-MOD through the target's own modules, the shared model through its one module set (it
has no other). What is compared is the mean over the targets of each run, with the standard
deviation over fine-tuning seeds (classification) and Wilson's 95% interval over the pooled test
examples; the bag-of-ids baseline is the same for both variants (one tokenizer).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xmod_core.errors import UserError
from xmod_pretrain.recipes.transfer.command import main as transfer_main
from xmod_pretrain.recipes.transfer.scoring import wilson_interval
from xmod_pretrain.recipes.transfer.summary import SUMMARY
from xmod_pretrain.recipes.transfer.tasks import GUIDE_TOPIC, UDHR_RETRIEVAL, load_task
from xmod_pretrain.runs.driver import output_to

TASKS = (GUIDE_TOPIC, UDHR_RETRIEVAL)
SOURCE = "en_XX"
OWN, BAG_OF_IDS = "own modules", "bag-of-ids"


def transfer_dir(out: Path, variant: str, n: int, task: str) -> Path:
    return out / "transfer" / f"{variant}-{n}-{task}"


@dataclass(frozen=True)
class TransferRequest:
    seeds: int = 3
    steps: int | None = None  # None: transfer's default epochs


def run_transfer(run_dir: Path, out_dir: Path, task: str, targets: Sequence[str],
                 request: TransferRequest, label: str, error: type[Exception]) -> None:
    """One ``transfer`` command, run in this process with its output in ``out_dir.log``; kept
    when its summary exists and was made with the same seeds and steps (each seed resumes like
    any run, so an interrupted one continues)."""
    summary = out_dir / f"{SUMMARY}.json"
    if summary.is_file():
        made = json.loads(summary.read_text(encoding="utf-8"))
        if task != UDHR_RETRIEVAL and (made.get("seeds"), made.get("steps")) != (request.seeds,
                                                                                request.steps):
            raise error(f"{out_dir} holds a transfer with {made.get('seeds')} seed(s) and steps "
                        f"{made.get('steps')}, not {request.seeds} and {request.steps}: delete "
                        "it or pick another --out")
        print(f"{label}: complete in {out_dir}, kept", flush=True)
        return
    argv = ["--from", str(run_dir), "--task", task, "--source", SOURCE, "--targets", *targets,
            "--seeds", str(request.seeds), "--out", str(out_dir),
            *(["--steps", str(request.steps)] if request.steps else [])]
    log = out_dir.with_name(out_dir.name + ".log")
    print(f"{label}: transfer {' '.join(argv)} (its output: {log})", flush=True)
    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:  # in this process, as the curse's training runs
        with output_to(log):
            transfer_main(argv)
    except UserError as err:
        raise error(f"{label} failed: {err} ({log} has its output)") from None
    if not summary.is_file():  # a stop signal ended it after a seed, saved
        raise error(f"{label} stopped before its summary (see {log}); the same command resumes it")
    print(f"{label} done in {time.perf_counter() - start:.0f} s", flush=True)


def target_mean(out_dir: Path) -> dict:
    """The mean over the targets of one transfer: accuracy through the run's modules (each
    seed's mean, then their mean and std), the bag-of-ids baseline, and the pooled interval."""
    summary = json.loads((out_dir / f"{SUMMARY}.json").read_text(encoding="utf-8"))
    rows = [r for r in summary["rows"] if r["language"] != summary["source"]]
    own = [r for r in rows if r["scored_by"] == OWN]
    seeds = [out_dir / f"seed{k}" / "transfer.json" for k in range(1, summary.get("seeds", 0) + 1)]
    per_seed = [statistics.fmean(r["accuracy"] for r in json.loads(p.read_text())["rows"]
                                 if r["language"] != summary["source"]
                                 and r["modules"] == r["language"]) for p in seeds]
    accuracy = statistics.fmean(r["accuracy"] for r in own)
    pooled = sum(r["n"] for r in own)
    return {"accuracy": accuracy, "std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
            "seeds": len(per_seed), "ci95": list(wilson_interval(accuracy, pooled)),
            "targets": len(own), "examples": pooled, "chance": summary["chance"],
            BAG_OF_IDS: statistics.fmean(r["accuracy"] for r in rows
                                         if r["scored_by"] == BAG_OF_IDS)}


def compare(out: Path, order: Sequence[str], ns: Sequence[int], variants: Sequence[str],
            request: TransferRequest, error: type[Exception]) -> list[dict]:
    """Run both tasks on every (variant, n) of ``ns``; one row per (task, variant, n)."""
    rows, total = [], len(TASKS) * len(ns) * len(variants)
    jobs = [(task, n, variant) for task in TASKS for n in ns for variant in variants]
    for i, (task, n, variant) in enumerate(jobs, 1):
        out_dir = transfer_dir(out, variant, n, task)
        targets = [lang for lang in order[:n] if lang != SOURCE]
        run_transfer(out / f"{variant}-{n}", out_dir, task, targets, request,
                     f"[transfer {i}/{total}] {task}, {variant}, {n} language(s)", error)
        rows.append({"task": task, "variant": variant, "n": n, **target_mean(out_dir)})
    return rows


def check_transfer_ns(order: Sequence[str], ns: Sequence[int], trained: Sequence[int],
                      request: TransferRequest, error: type[Exception]) -> None:
    """Each n is one of the trained ones, its runs hold the source language, and both tasks
    have test data for every language of them."""
    if request.steps is not None and request.steps < 1:
        raise error(f"--transfer-steps {request.steps}: at least 1")
    if request.seeds < 1:
        raise error(f"--seeds {request.seeds}: at least 1")
    covered = task_languages() if ns else set()
    for n in ns:
        missing = sorted({lang for lang in order[:n] if lang not in covered})
        if missing:
            raise error(f"--transfer {n}: {', '.join(missing)} not in both bundled transfer tasks "
                        f"(guide-topic and udhr-retrieval share {', '.join(sorted(covered))})")
        if n not in trained:
            raise error(f"--transfer {n}: not one of --ns ({' '.join(map(str, trained))})")
        if SOURCE not in order[:n]:
            raise error(f"--transfer {n}: the first {n} languages of the order "
                        f"({', '.join(order[:n])}) lack {SOURCE}, the language fine-tuned on")
        if n < 2:
            raise error(f"--transfer {n}: a run of one language has no target to transfer to")


def task_languages() -> set[str]:
    """The languages with test data in both bundled tasks."""
    topic, udhr = (load_task(task, SOURCE) for task in TASKS)
    return set(topic.test) & set(udhr.items)


def markdown(rows: list[dict], ns: Sequence[int], labels: dict[str, str]) -> str:
    """Mean target accuracy, one line per (task, model), one column per n."""
    cell = {(r["task"], r["variant"], r["n"]): r for r in rows}
    lines = ["| task | model | " + " | ".join(f"n={n}" for n in ns) + " |",
             "|---|---|" + "---:|" * len(ns)]
    for task in TASKS:
        for variant, label in labels.items():
            shown = []
            for n in ns:
                r = cell[task, variant, n]
                spread = f" ±{r['std']:.3f}" if r["seeds"] > 1 else ""
                shown.append(f"{r['accuracy']:.3f}{spread} [{r['ci95'][0]:.2f}, "
                             f"{r['ci95'][1]:.2f}]")
            lines.append(f"| {task} | {label} | " + " | ".join(shown) + " |")
        first = next(iter(labels))
        lines.append(f"| {task} | {BAG_OF_IDS} | "
                     + " | ".join(f"{cell[task, first, n][BAG_OF_IDS]:.3f}" for n in ns) + " |")
        lines.append(f"| {task} | chance | "
                     + " | ".join(f"{cell[task, first, n]['chance']:.3f}" for n in ns) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, rows: list[dict], ns: Sequence[int], labels: dict[str, str]) -> list[Path]:
    """``curse_transfer.json`` (every row) and ``curse_transfer.md`` (the table)."""
    paths = [out / "curse_transfer.json", out / "curse_transfer.md"]
    paths[0].write_text(json.dumps({"source": SOURCE, "ns": list(ns), "rows": rows}, indent=1)
                        + "\n", encoding="utf-8")
    paths[1].write_text(markdown(rows, ns, labels), encoding="utf-8")
    return paths
