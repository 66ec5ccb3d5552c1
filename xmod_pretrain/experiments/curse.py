"""The curse of multilinguality at demo scale: X-MOD against a shared model (Pfeiffer et al., 2022,
Figure 2).

For each number of languages n, two runs train on the first n languages of a fixed order with the
same model, steps, batch and learning rate (``conf/exp/curse.yaml``): ``xmod`` gives every
language modules of its own; ``shared`` runs every language through one module set
(``data.shared_module``), so a language has exactly the same active parameters in both. The
order starts with the evaluation languages, present in every run, and their final valid
perplexity is compared as languages are added.

    xmod_pretrain curse                                 # 8 runs into runs/curse, then the report
    xmod_pretrain curse --ns 2 5 train.max_steps=100    # any Hydra override, every run
    xmod_pretrain curse --transfer 19                   # and zero-shot transfer of the n=19 runs

A run that finished is kept, so the same command continues after an interruption. Writes
``curse.json``, ``curse.csv``, ``curse.md`` and ``curse.png`` into ``--out`` (with
``--transfer``, also ``curse_transfer.json`` and ``.md``, and the transfers in ``OUT/transfer/``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xmod_core.errors import UserError
from xmod_core.languages import check_language_list
from xmod_core.outputs import CONFIG_FILE
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.config import Config, quoted
from xmod_pretrain.data.prepared import ensure_prepared
from xmod_pretrain.experiments.curse_transfer import TransferRequest, check_transfer_ns, compare
from xmod_pretrain.experiments.curse_transfer import markdown as transfer_markdown
from xmod_pretrain.experiments.curse_transfer import write as write_transfer
from xmod_pretrain.model.xmod import count_parameters
from xmod_pretrain.runs.driver import compose_run, run_in_process
from xmod_pretrain.runs.paths import resolve_paths
from xmod_pretrain.runs.records import load_config
from xmod_pretrain.training.metrics import METRICS_FILE, perplexity, read_records

# el_GR has the most text of the bundled corpus and zh_CN the least, in two scripts of their own;
# then languages of other scripts and families come before more of the same (Latin, Romance).
ORDER = ("el_GR", "zh_CN", "en_XX", "ru_RU", "ja_XX", "de_DE", "ko_KR", "vi_VN", "es_XX", "cs_CZ",
         "fr_XX", "id_ID", "it_IT", "nl_XX", "pt_XX", "ro_RO", "sv_SE", "ca_ES", "da_DK")
EVAL_LANGUAGES = ("el_GR", "zh_CN")
NS = (2, 5, 10, 19)
VARIANTS = ("xmod", "shared")
LABELS = {"xmod": "X-MOD", "shared": "shared"}
SHARED_MODULE = "mul_XX"  # ISO 639-2 "mul": multiple languages
# Keys the driver sets per run; an override of them would make the runs differ in more than n.
DRIVER_KEYS = ("run_dir", "data.languages", "data.shared_module", "model.languages")


class CurseError(UserError, ValueError):
    """An experiment that cannot run as asked."""


@dataclass
class Plan:
    out: Path
    order: list[str]
    eval_languages: list[str]
    ns: list[int]
    overrides: list[str]
    """Hydra overrides for every run, after ``+exp=curse``."""
    transfer_ns: list[int] = field(default_factory=list)
    """The ns whose two runs are also compared by zero-shot transfer (curse_transfer.py)."""
    seeds: int = 3
    """Fine-tuning seeds of each classification transfer."""
    transfer_steps: int | None = None
    """Fine-tuning steps (None: transfer's default epochs)."""

    def run_dir(self, variant: str, n: int) -> Path:
        return self.out / f"{variant}-{n}"

    def run_overrides(self, variant: str, n: int) -> list[str]:
        languages = f"[{','.join(self.order[:n])}]"
        own = [f"run_dir={quoted(self.run_dir(variant, n))}", f"data.languages={languages}"]
        # X-MOD: modules for the n languages only (not for every language of the data).
        own.append(f"model.languages={languages}" if variant == "xmod"
                   else f"data.shared_module={SHARED_MODULE}")
        return [*self.overrides, *own]


@dataclass
class Result:
    """The final validation of one run."""

    variant: str
    n: int
    run_dir: str
    step: int
    lang_loss: dict[str, float]
    parameters: int
    active_parameters: int
    """Shared weights plus one module set: the same for both variants."""


# ---- configuration ----------------------------------------------------------------------------

def compose_config(overrides: Sequence[str]) -> Config:
    """``+exp=curse`` with ``overrides``, typed and checked, as a training run sees it."""
    return compose_run(["+exp=curse", *overrides])


def prepare_data(cfg: Config) -> list[str]:
    """The prepared data's languages, preparing ``data.dir`` once (every run then shares it)."""
    data = cfg.data
    manifest = ensure_prepared(data.dir, data.source, vocab_size=data.vocab_size,
                               valid_fraction=data.valid_fraction, workers=data.prepare_workers)
    return list(manifest["languages"])


def check_plan(plan: Plan, available: list[str]) -> None:
    """Every language known and in the data, every n possible, the evaluation languages in every
    run; a CurseError naming the problem otherwise."""
    try:
        check_language_list(plan.order, "--languages")
        check_language_list(plan.eval_languages, "--eval-languages")
    except ValueError as err:
        raise CurseError(str(err)) from None
    missing = [lang for lang in plan.order if lang not in available]
    if missing:
        raise CurseError(f"language(s) {', '.join(missing)} not in the prepared data; it has: "
                         f"{', '.join(available)}")
    bad = [n for n in plan.ns if not 1 <= n <= len(plan.order)]
    if bad or not plan.ns:
        raise CurseError(f"--ns {' '.join(map(str, plan.ns))}: each n must be between 1 and "
                         f"{len(plan.order)}, the languages in the order")
    first = plan.order[:min(plan.ns)]
    outside = [lang for lang in plan.eval_languages if lang not in first]
    if outside or not plan.eval_languages:
        raise CurseError(f"evaluation language(s) {', '.join(outside) or '(none)'} must be among "
                         f"the first {min(plan.ns)} of the order ({', '.join(first)}), so that "
                         "every run has them")
    check_transfer_ns(plan.order, plan.transfer_ns, plan.ns,
                      TransferRequest(plan.seeds, plan.transfer_steps), CurseError)
    fixed = [o for o in plan.overrides if o.lstrip("+~").split("=")[0] in DRIVER_KEYS]
    if fixed:
        raise CurseError(f"{', '.join(fixed)}: the driver sets {', '.join(DRIVER_KEYS)} per run")


# ---- the runs ---------------------------------------------------------------------------------

def final_validation(run_dir: Path) -> dict | None:
    """The last ``split == "valid"`` record of ``run_dir/metrics.jsonl``, if any."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    valid = [r for r in read_records(path) if r.get("split") == "valid"]
    return valid[-1] if valid else None


def is_complete(run_dir: Path, cfg: Config) -> bool:
    """Trained to the end and saved: its last validation is at ``max_steps``. A run made with
    other settings is refused rather than mixed into the comparison."""
    if not (run_dir / CONFIG_FILE).is_file():
        return False
    saved, asked = load_config(run_dir / CONFIG_FILE), resolve_paths(cfg)  # runs store absolute paths
    differ = [name for name in ("data", "train", "optim")
              if getattr(saved, name) != getattr(asked, name)]
    model = dataclasses.replace(saved.model, vocab_size=cfg.model.vocab_size,
                                languages=cfg.model.languages)
    if model != cfg.model:
        differ.append("model")
    if differ:
        raise CurseError(f"{run_dir} was trained with other settings ({', '.join(differ)} "
                         "differ): delete it or pick another --out")
    last = final_validation(run_dir)
    return (last is not None and last["step"] == cfg.train.max_steps
            and latest_checkpoint(run_dir) is not None)


def train(cfg: Config, label: str) -> None:
    """One training run, in this process, its output in ``run_dir/train.log``."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "train.log"
    print(f"{label} training into {run_dir} (its output: {log})", flush=True)
    start = time.perf_counter()
    try:
        run_in_process(cfg, log)
    except UserError as err:
        raise CurseError(f"{label} training failed: {err} ({log} has its output)") from None
    print(f"{label} done in {time.perf_counter() - start:.0f} s", flush=True)


def run_all(plan: Plan) -> list[Result]:
    """Train every (variant, n) not yet complete; read every final validation."""
    results, total = [], len(plan.ns) * len(VARIANTS)
    for i, (n, variant) in enumerate(((n, v) for n in plan.ns for v in VARIANTS), 1):
        cfg = compose_config(plan.run_overrides(variant, n))
        run_dir = plan.run_dir(variant, n)
        label = f"[{i}/{total}] {variant}, {n} language(s)"
        if is_complete(run_dir, cfg):
            print(f"{label}: complete in {run_dir}, kept", flush=True)
        else:
            train(cfg, label)
        results.append(read_result(run_dir, variant, n))
    return results


def read_result(run_dir: Path, variant: str, n: int) -> Result:
    last = final_validation(run_dir)
    if last is None:
        raise CurseError(f"{run_dir / 'metrics.jsonl'} has no validation record")
    total, active = count_parameters(load_config(run_dir / CONFIG_FILE).model)
    return Result(variant, n, str(run_dir), last["step"], last["lang_loss"], total, active)


# ---- the report -------------------------------------------------------------------------------

def mean_loss(result: Result, languages: Sequence[str]) -> float:
    """Mean loss over ``languages``; its perplexity is the geometric mean of theirs."""
    return sum(result.lang_loss[lang] for lang in languages) / len(languages)


def table_rows(results: list[Result], languages: Sequence[str]) -> list[dict]:
    """One row per (variant, n, language), the evaluation languages and their mean."""
    rows = []
    for r in results:
        losses = {**{lang: r.lang_loss[lang] for lang in languages},
                  "mean": mean_loss(r, languages)}
        rows += [{"variant": r.variant, "n": r.n, "language": lang, "loss": loss,
                  "ppl": perplexity(loss)} for lang, loss in losses.items()]
    return rows


def markdown_table(rows: list[dict], ns: Sequence[int]) -> str:
    """Perplexity, one line per (language, variant), one column per n."""
    ppl = {(r["language"], r["variant"], r["n"]): r["ppl"] for r in rows}
    languages = list(dict.fromkeys(r["language"] for r in rows))
    lines = ["| language | model | " + " | ".join(f"n={n}" for n in ns) + " |",
             "|---|---|" + "---:|" * len(ns)]
    for lang in languages:
        for variant in VARIANTS:
            cells = " | ".join(f"{ppl[lang, variant, n]:.1f}" for n in ns)
            lines.append(f"| {lang} | {LABELS[variant]} | {cells} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], languages: Sequence[str], ns: Sequence[int], steps: int,
           path: Path) -> Path:
    """Perplexity against the number of languages, X-MOD against shared: the mean of the
    evaluation languages first, then one panel per language."""
    from matplotlib.figure import Figure

    panels = ["mean", *languages]
    fig = Figure(figsize=(3.6 * len(panels), 3.8), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    styles = {"xmod": ("tab:blue", "-", "o"), "shared": ("tab:orange", "--", "s")}
    for ax, lang in zip(axes, panels):
        for variant in VARIANTS:
            points = sorted((r["n"], r["ppl"]) for r in rows
                            if r["language"] == lang and r["variant"] == variant)
            color, line, marker = styles[variant]
            ax.plot(*zip(*points), color=color, linestyle=line, marker=marker,
                    linewidth=2.2 if lang == "mean" else 1.4, label=LABELS[variant])
        title = f"geometric mean: {', '.join(languages)}" if lang == "mean" else lang
        ax.set(title=title, xlabel="languages in pre-training", xscale="log")
        ax.set_xticks(list(ns), [str(n) for n in ns])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("valid perplexity (lower is better)")
    axes[0].legend()
    fig.suptitle(f"Perplexity as languages are added, same {steps} steps each")
    fig.savefig(path)
    return path


def write_outputs(plan: Plan, results: list[Result], cfg: Config) -> list[Path]:
    """``curse.json`` (every run, every language), ``curse.csv`` and ``curse.md`` (the
    evaluation languages) and ``curse.png``."""
    rows = table_rows(results, plan.eval_languages)
    paths = [plan.out / f"curse.{ext}" for ext in ("json", "csv", "md", "png")]
    settings = {"steps": cfg.train.max_steps, "micro_batch_size": cfg.train.micro_batch_size,
                "seq_len": cfg.data.seq_len, "lr": cfg.optim.lr, "seed": cfg.train.seed,
                "overrides": plan.overrides}
    summary = {"order": plan.order, "eval_languages": plan.eval_languages, "ns": plan.ns,
               "shared_module": SHARED_MODULE, "settings": settings,
               "runs": [dataclasses.asdict(r) for r in results], "table": rows}
    paths[0].write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    with open(paths[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths[2].write_text(markdown_table(rows, plan.ns), encoding="utf-8")
    figure(rows, plan.eval_languages, plan.ns, cfg.train.max_steps, paths[3])
    return paths


# ---- command line -----------------------------------------------------------------------------

def parse_args(argv: Sequence[str]) -> Plan:
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain curse",
        description="X-MOD against a shared model with the same active parameters, trained on a "
                    "growing number of languages with the same budget; anything else on the line "
                    "is a Hydra override for every run (train.max_steps=100).")
    parser.add_argument("--ns", type=int, nargs="+", default=list(NS),
                        help=f"numbers of languages (default {' '.join(map(str, NS))})")
    parser.add_argument("--languages", nargs="+", default=list(ORDER),
                        help="the order languages are added in; run n takes the first n")
    parser.add_argument("--eval-languages", nargs="+", default=list(EVAL_LANGUAGES),
                        help="the languages compared (among the first min(ns) of the order)")
    parser.add_argument("--out", default="runs/curse", help="runs and report (default runs/curse)")
    parser.add_argument("--transfer", type=int, nargs="+", default=[], metavar="N",
                        help="also compare zero-shot transfer (guide-topic, udhr-retrieval, "
                             "fine-tuned on en_XX) of the two runs of each such n")
    parser.add_argument("--seeds", type=int, default=3,
                        help="fine-tuning seeds of each guide-topic transfer (default 3)")
    parser.add_argument("--transfer-steps", type=int,
                        help="fine-tuning steps instead of transfer's default 3 epochs")
    # Overrides first, so that --ns 2 5 train.max_steps=100 does not read an override as an n.
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    return Plan(Path(args.out), args.languages, args.eval_languages, sorted(set(args.ns)), overrides,
                sorted(set(args.transfer)), args.seeds, args.transfer_steps)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment; the exit status is 1 on unusable input or a failed run."""
    plan = parse_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    try:
        cfg = compose_config(plan.overrides)
        check_plan(plan, prepare_data(cfg))
        results = run_all(plan)
        paths = write_outputs(plan, results, compose_config(plan.run_overrides("xmod", plan.ns[0])))
        print(markdown_table(table_rows(results, plan.eval_languages), plan.ns), end="")
        if plan.transfer_ns:
            rows = compare(plan.out, plan.order, plan.transfer_ns, VARIANTS,
                           TransferRequest(plan.seeds, plan.transfer_steps), CurseError)
            paths += write_transfer(plan.out, rows, plan.transfer_ns, LABELS)
            print(transfer_markdown(rows, plan.transfer_ns, LABELS), end="")
    except UserError as err:  # CurseError, and the data's own errors on first use
        print(f"xmod_pretrain curse: error: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"wrote {', '.join(map(str, paths))} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
