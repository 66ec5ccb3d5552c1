"""``xmod_pretrain transfer``: zero-shot cross-lingual transfer of a pre-trained run.

    xmod_pretrain transfer --from runs/demo --task guide-topic [--source en_XX] [--targets ...]
        [--epochs 3 | --steps N] [--seeds 3] [--out DIR] [--export DIR] [Hydra overrides]
    xmod_pretrain transfer --from runs/demo+yo_NG --task udhr-retrieval [--layer -1]

A classification task runs the ``transfer`` recipe once per seed (``OUT/seed<k>``, resumable
like any run, under torchrun and any ZeRO stage), then prints and writes the table over seeds
with the baselines. A retrieval task trains nothing: it scores the model directly.

A stop signal (Ctrl-C, SIGTERM, SIGUSR1) ends the command after the seed it reaches, saved, with
exit status 0: no later seed starts, and the same command goes on from there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from xmod_core.help import DefaultsHelpFormatter
from xmod_core.languages import language_index
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.config import Config, quoted
from xmod_pretrain.recipes.transfer.batches import encode_rows
from xmod_pretrain.recipes.transfer.recipe import (
    SEED_RESULT,
    SeedStopped,
    check_run_dir,
    module_indices,
    open_source_model,
    text_languages,
)
from xmod_pretrain.recipes.transfer.scoring import (
    accuracy,
    bag_of_ids,
    bag_of_ids_classifier,
    bag_of_ids_predictions,
    majority_label,
    pooled_states,
    top1,
)
from xmod_pretrain.recipes.transfer.summary import (
    accuracy_table,
    aggregate,
    baseline_row,
    write_summary,
)
from xmod_pretrain.recipes.transfer.tasks import (
    BUNDLED_TASKS,
    ClassificationTask,
    RetrievalTask,
    check_targets,
    load_task,
)
from xmod_pretrain.runs.driver import compose_run, run_in_process
from xmod_pretrain.runs.inference import encode_padded, masked_lm
from xmod_pretrain.training.signals import signal_name

BAG_OF_IDS, MAJORITY = "bag-of-ids", "majority class"
BEST_EXISTING = "best existing modules"


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    tasks = "; ".join(f"{name}: {line}" for name, line in BUNDLED_TASKS.items())
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain transfer",
        description="Fine-tune on one language with the embeddings and language modules frozen, "
                    "evaluate zero-shot on every other through its own modules.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--from", dest="source_run", required=True,
                        help="pre-trained run, or a transformers X-MOD folder (read only)")
    parser.add_argument("--task", required=True,
                        help=f"{tasks}; or a folder / JSON manifest of JSONL files; or "
                             "hf:NAME[:CONFIG], a datasets source with a config per language "
                             "(XNLI's layout)")
    parser.add_argument("--source", default="en_XX", help="the language fine-tuned on")
    parser.add_argument("--targets", nargs="+", default=[],
                        help="languages evaluated (default: every one with test data)")
    parser.add_argument("--epochs", type=float, default=3.0, help="passes over the source train split")
    parser.add_argument("--steps", type=int, help="optimizer steps instead of --epochs")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs, seeds 1..N")
    parser.add_argument("--layer", type=int, default=-1,
                        help="retrieval: hidden layer mean-pooled (0 embeddings, -1 last)")
    parser.add_argument("--out", help="output folder (default: FROM-TASK)")
    parser.add_argument("--export", help="write the best seed's classifier as a transformers folder")
    args, overrides = parser.parse_known_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: at least 1")
    return args, overrides


def main(argv: list[str]) -> int:
    args, overrides = parse(argv)
    source = open_source_model(args.source_run)  # before any DeepSpeed start: fails in a second
    task = load_task(args.task, args.source, args.targets or text_languages(source))
    targets = check_targets(task, args.targets, text_languages(source))
    modules = module_indices(source, [task.source, *targets])
    args.out = Path(args.out or f"{str(args.source_run).rstrip('/')}-{task.name}")
    if isinstance(task, RetrievalTask):
        retrieval(args, task, targets, source, modules)
    else:
        classification(args, task, targets, overrides)
    return 0


# ---- classification ------------------------------------------------------------------------


def seed_config(args: argparse.Namespace, seed: int, overrides: list[str]) -> Config:
    """The ``transfer`` experiment for one seed, with the user's Hydra overrides."""
    fixed = ["+exp=transfer", f"run_dir={quoted(args.out / f'seed{seed}')}", f"train.seed={seed}",
             f"transfer.source_run={quoted(args.source_run)}", f"transfer.task={quoted(args.task)}",
             f"transfer.source={args.source}", f"transfer.targets=[{','.join(args.targets)}]",
             f"transfer.epochs={args.epochs}"]
    if args.steps is not None:
        fixed.append(f"transfer.steps={args.steps}")
    return compose_run(fixed + overrides)


def classification(args: argparse.Namespace, task: ClassificationTask, targets: list[str],
                   overrides: list[str]) -> None:
    from xmod_pretrain.training.distributed import barrier, join_process_group

    configs = [seed_config(args, seed, overrides) for seed in range(1, args.seeds + 1)]
    for cfg in configs:  # before any DeepSpeed start: a changed task is refused in seconds
        check_run_dir(cfg, task)
    if not train_seeds(configs):
        return
    info = join_process_group(configs[0].deepspeed.dist_timeout_s)
    if info.is_main:
        results = [json.loads((Path(c.run_dir) / SEED_RESULT).read_text(encoding="utf-8"))
                   for c in configs]
        source = open_source_model(args.source_run)
        rows = aggregate(results) + classification_baselines(task, [task.source, *targets],
                                                             source.tokenizer, configs[0])
        columns = present_columns(rows, ["own modules", f"{task.source} modules", BAG_OF_IDS,
                                         MAJORITY])
        meta = {"task": task.name, "model": str(args.source_run), "source": task.source,
                "metric": "accuracy", "seeds": args.seeds, "epochs": args.epochs,
                "steps": args.steps, "labels": task.labels, "content_hash": task.content_hash,
                "chosen_steps": [r["chosen_step"] for r in results]}
        title = (f"{args.source_run} -> {task.name}, fine-tuned on {task.source}: accuracy, mean "
                 f"±std over {args.seeds} seed(s) [95% interval over the test set]")
        print(accuracy_table(rows, title, columns), flush=True)
        for path in write_summary(args.out, meta, rows, columns, 1 / len(task.labels)):
            print(f"wrote {path}", flush=True)
        if args.export:
            export_best(args, results, configs, task.labels)
    barrier()


def train_seeds(configs: list[Config]) -> bool:
    """Each seed's run in turn; False when a stop signal ended one (no later seed started)."""
    from xmod_pretrain.training.distributed import join_process_group

    for k, cfg in enumerate(configs, 1):
        try:
            run_in_process(cfg)
            if (Path(cfg.run_dir) / SEED_RESULT).is_file():
                continue
            said, resumes = f"seed {k} of {len(configs)} stopped before its last step", True
        except SeedStopped as stop:
            said = f"stopping on {signal_name(stop.signum)} after seed {k}'s evaluation"
            resumes = False
        if join_process_group(cfg.deepspeed.dist_timeout_s).is_main:
            print(f"transfer: {said}; the same command {what_is_left(k, len(configs), resumes)}",
                  flush=True)
        return False
    return True


def what_is_left(k: int, n: int, resumes: bool) -> str:
    """What the same command does after seed ``k`` of ``n`` stopped (``resumes``: mid-training)."""
    later = [] if k == n else [f"runs seed {n}" if k + 1 == n else f"runs seeds {k + 1}-{n}"]
    steps = ["resumes it"] * resumes + later + ["writes the summary"]
    return ", ".join(steps[:-1]) + " and " + steps[-1] if len(steps) > 1 else steps[0]


def present_columns(rows: list[dict], columns: list[str]) -> list[str]:
    """The columns some row is scored by: a shared-module run has no source-modules ablation,
    a run without added languages no best-existing one."""
    return [c for c in columns if any(r["scored_by"] == c for r in rows)]


def classification_baselines(task: ClassificationTask, languages: list[str], tokenizer_path: Path,
                             cfg: Config) -> list[dict]:
    """Bag-of-ids logistic regression fitted on the source train split, and the source train
    split's majority class, on each language's test split."""
    tokenizer = Tokenizer.from_file(tokenizer_path)
    train_rows = encode_rows(tokenizer, task.train, cfg.data.seq_len)
    train_labels = task.label_ids(task.train)
    weights = bag_of_ids_classifier(train_rows, train_labels, len(task.labels), tokenizer.vocab_size)
    majority = majority_label(train_labels)
    rows = []
    for lang in languages:
        gold = task.label_ids(task.test[lang])
        predicted = bag_of_ids_predictions(
            weights, encode_rows(tokenizer, task.test[lang], cfg.data.seq_len))
        rows.append(baseline_row(lang, BAG_OF_IDS, accuracy(predicted, gold), len(gold)))
        rows.append(baseline_row(lang, MAJORITY, accuracy([majority] * len(gold), gold), len(gold)))
    return rows


def export_best(args: argparse.Namespace, results: list[dict], configs: list[Config],
                labels: list[str]) -> None:
    """The chosen checkpoint of the seed with the best source dev accuracy."""
    from xmod_pretrain.interop import export_classifier
    from xmod_pretrain.runs.records import open_run

    best = max(range(len(results)),
               key=lambda i: results[i]["dev"][str(results[i]["chosen_step"])])
    checkpoint = open_run(configs[best].run_dir, results[best]["chosen_step"])
    export_classifier(checkpoint, labels, args.export, default_language=args.source)
    print(f"exported seed {configs[best].train.seed}'s step {checkpoint.step} to {args.export}",
          flush=True)


# ---- retrieval -----------------------------------------------------------------------------


def retrieval(args: argparse.Namespace, task: RetrievalTask, targets: list[str], source,
              modules: dict[str, int]) -> None:
    """Top-1 accuracy of finding each part's translation, source -> target and back, from
    mean-pooled hidden states, each side through its own modules; the ablations: the target
    through the source's modules, and a language added post-hoc through the existing language
    whose modules served its text best when it was added (by masked-LM loss, not this task)."""
    model = masked_lm(source.config.model, source.weights())
    tokenizer = Tokenizer.from_file(source.tokenizer)
    encoded = {lang: encode_padded(tokenizer, task.items[lang], model.longest_sequence)
               for lang in [task.source, *targets]}

    def states(lang: str, index: int) -> torch.Tensor:
        return pooled_states(model, *encoded[lang], index, args.layer)

    src = states(task.source, modules[task.source])
    n = len(task.keys)
    best_existing = added_languages_best_existing(source)
    rows = []

    def row(lang: str, scored_by: str, index: int) -> dict:
        tgt = states(lang, index)
        return baseline_row(lang, scored_by, (top1(src, tgt) + top1(tgt, src)) / 2, n)

    for lang in targets:
        src_ids, tgt_ids = (bag_of_ids(encoded[x][0].tolist(), tokenizer.vocab_size)
                            for x in (task.source, lang))
        overlap = (top1(src_ids, tgt_ids) + top1(tgt_ids, src_ids)) / 2
        rows += [row(lang, "own modules", modules[lang]), baseline_row(lang, BAG_OF_IDS, overlap, n)]
        if modules[lang] != modules[task.source]:  # a shared-module run has one set for all
            rows.append(row(lang, f"{task.source} modules", modules[task.source]))
        if lang in best_existing:
            rows.append(row(lang, BEST_EXISTING, language_index(source.languages,
                                                                best_existing[lang])))
    columns = present_columns(rows, ["own modules", f"{task.source} modules", BEST_EXISTING,
                                     BAG_OF_IDS])
    meta = {"task": task.name, "model": str(args.source_run), "source": task.source,
            "metric": "top-1 accuracy", "layer": args.layer, "parts": n,
            "shared_module": source.config.data.shared_module, "best_existing": best_existing}
    title = (f"{args.source_run} -> {task.name}: top-1 accuracy {task.source} <-> target over "
             f"{n} parts (mean of both directions) [95% interval], layer {args.layer}; chance "
             f"{1 / n:.3f}")
    notes = [f"  {BEST_EXISTING}: {lang} through {other}'s, the best existing for its text when "
             "it was added" for lang, other in best_existing.items() if lang in targets]
    print("\n".join([accuracy_table(rows, title, columns), *notes]), flush=True)
    for path in write_summary(args.out, meta, rows, columns, 1 / n):
        print(f"wrote {path}", flush=True)


def added_languages_best_existing(source) -> dict[str, str]:
    """Language added post-hoc -> the existing language whose modules gave its valid text the
    lowest masked-LM loss at the end of add-language (its ``transfer`` record)."""
    from xmod_pretrain.evaluation.report import read_metrics

    if not (Path(source.run_dir) / "metrics.jsonl").is_file():  # a transformers folder
        return {}
    return {r["language"]: r["best_existing"] for r in read_metrics(Path(source.run_dir))[2]}
