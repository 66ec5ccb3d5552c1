"""Transfer: fine-tune a classifier on the source language, evaluate it zero-shot on the others.

As X-MOD is used (transformers' and fairseq's documentation): the pre-trained encoder gets a
classification head, the embeddings and every language module are frozen
(``freeze_embeddings_and_language_adapters``), and the rest trains on the source language's
train split through the source language's modules. A checkpoint is saved each epoch; the one
with the best source dev accuracy is chosen (no target language is looked at), then evaluated
on every target's test split through the target's own modules, and through the source's as the
ablation. One run is one seed; ``xmod_pretrain transfer`` runs the seeds and the summary.

A seed's run records its task's content hash when it starts (``task.json``) and resumes only on
the same content. A stop signal during its training saves and ends the run, as in pre-training;
one during its evaluation lets the evaluation finish and then ends the process
(``SeedStopped``). A seed trained to its end but never evaluated (killed, or aborted by a second
Ctrl-C, while it was scored) is evaluated by its next start.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from xmod_core.atomic import write_text
from xmod_core.languages import language_index
from xmod_core.shards import read_manifest
from xmod_core.tokenizer import Tokenizer
from xmod_pretrain.checkpoint.choice import resume_checkpoint
from xmod_pretrain.checkpoint.layout import TRAINER_STATE
from xmod_pretrain.config import Config
from xmod_pretrain.interop import is_hf_folder, open_hf_folder
from xmod_pretrain.model.xmod import model_flops_per_token
from xmod_pretrain.recipes.base import Recipe
from xmod_pretrain.recipes.transfer.batches import ExampleSampler, encode_rows, fixed_batches
from xmod_pretrain.recipes.transfer.classifier import (
    XmodForSequenceClassification,
    freeze_embeddings_and_language_adapters,
    load_encoder,
)
from xmod_pretrain.recipes.transfer.scoring import accuracy, predictions, wilson_interval
from xmod_pretrain.recipes.transfer.tasks import (
    ClassificationTask,
    TransferTaskError,
    check_targets,
    load_task,
)
from xmod_pretrain.runs.records import (
    RunCheckpoint,
    available_steps,
    check_own_run_dir,
    open_run,
    same_path,
)
from xmod_pretrain.schema import ConfigError
from xmod_pretrain.training.distributed import DistInfo, barrier
from xmod_pretrain.training.signals import StopRequest
from xmod_pretrain.training.trainer import Trainer

SEED_RESULT = "transfer.json"  # one seed's evaluation, in its run directory
TASK_RECORD = "task.json"  # the task a seed's run trains on, and its content hash
EVAL_BATCH = 64


class SeedStopped(SystemExit):
    """A stop signal arrived while a seed was evaluated: with its result written, the process
    ends with status 0, as a stopped training does, and no later seed starts (``xmod_pretrain
    transfer`` catches it to say what the same command does next)."""

    def __init__(self, signum: int):
        super().__init__(0)
        self.signum = signum


class Transfer(Recipe):
    """Fine-tune ``transfer.source_run`` on ``transfer.task`` in ``transfer.source``."""

    def __init__(self, cfg: Config, info: DistInfo):
        super().__init__(cfg, info)
        req = cfg.transfer
        if req.task is None or req.source_run is None:
            raise ConfigError("recipe=transfer needs transfer.task and transfer.source_run "
                              "(xmod_pretrain transfer --from RUN --task TASK)")
        self.source = open_source_model(req.source_run)
        task = load_task(req.task, req.source, req.targets or text_languages(self.source))
        if not isinstance(task, ClassificationTask):
            raise ConfigError(f"transfer.task={req.task} trains nothing: run it with "
                              "xmod_pretrain transfer, which scores it directly")
        self.task = task
        self.targets = check_targets(task, req.targets, text_languages(self.source))
        self.modules = module_indices(self.source, [req.source, *self.targets])
        check_run_dir(cfg, task, info)

    def prepare(self) -> Config:
        cfg, req = self.cfg, self.cfg.transfer
        per_step = self.cfg.train.micro_batch_size * cfg.train.grad_accum_steps * self.info.world_size
        steps_per_epoch = max(1, math.ceil(len(self.task.train) / per_step))
        steps = req.steps or max(1, round(req.epochs * steps_per_epoch))
        every = max(1, round(steps / req.epochs)) if req.steps else steps_per_epoch
        train = dataclasses.replace(cfg.train, max_steps=steps, eval_every=every, save_every=every,
                                    keep_checkpoints=0)  # every epoch's: the choice needs them
        if self.info.is_main:
            record_task(Path(cfg.run_dir), req.task, self.task)
        prepared = dataclasses.replace(cfg, model=self.source.config.model, train=train)
        self.evaluate_if_never_evaluated(prepared)
        return prepared

    def evaluate_if_never_evaluated(self, cfg: Config) -> None:
        """A seed at its last step without its result: evaluate it now (the start then has
        nothing to train). The checkpoint is the one a resume would take, verified."""
        run_dir = Path(cfg.run_dir)
        if (run_dir / SEED_RESULT).is_file():
            return
        latest = resume_checkpoint(run_dir, self.info)
        if latest is None or trained_step(latest) < cfg.train.max_steps:
            return
        if self.info.is_main:
            self.write_result(cfg, run_dir)
        barrier()

    def write_result(self, cfg: Config, run_dir: Path) -> None:
        result = evaluate_seed(cfg, run_dir, self.task, self.targets, self.modules)
        write_text(run_dir / SEED_RESULT, json.dumps(result, indent=1) + "\n")
        chosen = result["chosen_step"]
        print(f"chose step {chosen} (source dev accuracy {result['dev'][str(chosen)]:.4f}); "
              f"wrote {run_dir / SEED_RESULT}", flush=True)

    def tokenizer(self, cfg: Config) -> Path:
        return self.source.tokenizer

    def build_data(self, cfg: Config):
        tokenizer, task = Tokenizer.from_file(self.source.tokenizer), self.task
        source = self.modules[task.source]
        rows = encode_rows(tokenizer, task.train, cfg.data.seq_len)
        train = cfg.train
        sampler = ExampleSampler(rows, task.label_ids(task.train), source, tokenizer.pad_id,
                                 train.micro_batch_size,
                                 train.grad_accum_steps * self.info.world_size, train.seed)
        dev = fixed_batches(encode_rows(tokenizer, task.dev, cfg.data.seq_len),
                            task.label_ids(task.dev), source, tokenizer.pad_id, EVAL_BATCH)
        return sampler, {f"{task.source} dev": dev}

    def build_model(self, cfg: Config) -> XmodForSequenceClassification:
        model = XmodForSequenceClassification(cfg.model, len(self.task.labels),
                                              cfg.transfer.classifier_dropout)
        load_encoder(model, self.source.weights())
        freeze_embeddings_and_language_adapters(model)
        return model

    def flops_per_token(self, cfg: Config) -> float:
        return model_flops_per_token(cfg.model, cfg.data.seq_len, masked_fraction=0.0,
                                     modules_train=False)

    def after_training(self, trainer: Trainer) -> None:
        if trainer.info.is_main:
            self.write_result(trainer.cfg, trainer.run_dir)
        barrier()
        stop = stop_since_training(trainer.stop_request)
        if stop:
            raise SeedStopped(stop)


def stop_since_training(stops: StopRequest) -> int:
    """The stop signal any rank received after training ended (0: none). Training read the
    agreement in flight; one more round, waited for, covers the evaluation."""
    return stops.agreed() or stops.finish()


def trained_step(checkpoint: Path) -> int:
    return json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))["step"]


def open_source_model(path: str) -> RunCheckpoint:
    """The pre-trained model: a run's latest checkpoint, or a transformers X-MOD folder."""
    return open_hf_folder(path) if is_hf_folder(path) else open_run(path)


def text_languages(source: RunCheckpoint) -> list[str]:
    """The languages a model can read through modules: its own, or, in a shared-module run,
    those it was pre-trained on (all run through the one set)."""
    data = source.config.data
    if not data.shared_module:
        return list(source.languages)
    return list(data.languages) or list(read_manifest(data.dir)["languages"])


def module_indices(source: RunCheckpoint, languages: list[str]) -> dict[str, int]:
    """The module index each language runs through: its own, or, in a run pre-trained with
    ``data.shared_module`` (the curse's baseline), that one set for every language."""
    shared = source.config.data.shared_module
    missing = [lang for lang in languages if (shared or lang) not in source.languages]
    if missing:
        raise TransferTaskError(f"{source.run_dir} has no modules for {', '.join(missing)} (it "
                                f"has {', '.join(source.languages)}); add them with "
                                "xmod_pretrain add-language, or choose --targets")
    return {lang: language_index(source.languages, shared or lang) for lang in languages}


def check_run_dir(cfg: Config, task: ClassificationTask, info: DistInfo | None = None) -> None:
    """The run directory is new, empty, or this same request started before (resumed) on a
    task of the same content. Reads only: the command checks every seed before the first
    starts (``info`` None: silently), and each seed again under its lock."""
    req = cfg.transfer
    check_own_run_dir(cfg, info, "--out", f"a transfer run of {req.task} from {req.source_run}",
                      transfer_request)
    check_same_content(Path(cfg.run_dir), req.task, task)


def transfer_request(cfg: Config) -> dict[str, object]:
    """What makes a transfer seed's run what it is: a resumed one must ask the same."""
    req = cfg.transfer
    return {"--from": same_path(req.source_run), "--task": req.task, "--source": req.source}


def check_same_content(run_dir: Path, spec: str, task: ClassificationTask) -> None:
    """The task reads as it did when the run started: its labels, its examples, its hub
    revision unchanged (a run from before the record has none to compare)."""
    record = run_dir / TASK_RECORD
    if not record.is_file():
        return
    was = json.loads(record.read_text(encoding="utf-8"))["content_hash"]
    if was != task.content_hash:
        raise TransferTaskError(
            f"{run_dir} was trained on task {spec} with content hash {was[:12]}, but the task "
            f"now hashes {task.content_hash[:12]} (its files or revision changed): train it "
            "into a new --out, or restore the task to resume this one")


def record_task(run_dir: Path, spec: str, task: ClassificationTask) -> None:
    """``task.json`` when the run starts (kept on every resume: the check compares with it)."""
    record = run_dir / TASK_RECORD
    if not record.is_file():
        write_text(record, json.dumps({"task": spec, "content_hash": task.content_hash},
                                      indent=1) + "\n")


def load_classifier(checkpoint: RunCheckpoint) -> XmodForSequenceClassification:
    """A fine-tuned checkpoint as a plain classifier (fp32, eval mode, no gradients)."""
    weights = checkpoint.weights()
    num_labels = weights["classifier.out_proj.weight"].size(0)
    with torch.device("meta"):
        model = XmodForSequenceClassification(checkpoint.config.model, num_labels)
    model.load_state_dict(weights, assign=True)
    return model.requires_grad_(False).eval()


def choose_checkpoint(dev_accuracy: dict[int, float]) -> int:
    """The step with the best source dev accuracy; the earliest of equals."""
    return max(sorted(dev_accuracy), key=lambda step: dev_accuracy[step])


def epoch_steps(cfg: Config, run_dir: Path) -> list[int]:
    """The checkpoints the choice is made among: each epoch's and the last; not one a stop
    signal saved in between, so that a stopped and resumed seed chooses as an uninterrupted
    one does."""
    train = cfg.train
    return [step for step in available_steps(run_dir)
            if step % train.save_every == 0 or step == train.max_steps]


def evaluate_seed(cfg: Config, run_dir: Path, task: ClassificationTask, targets: list[str],
                  modules: dict[str, int]) -> dict:
    """Choose the checkpoint on the source dev split, then score every language's test split
    through its own modules (``modules``: language -> index) and through the source's."""
    tokenizer = Tokenizer.from_file(open_run(run_dir).tokenizer)
    source = modules[task.source]

    def batches(examples, lang):
        return fixed_batches(encode_rows(tokenizer, examples, cfg.data.seq_len),
                             task.label_ids(examples), modules[lang], tokenizer.pad_id,
                             EVAL_BATCH)

    dev = batches(task.dev, task.source)
    gold_dev = task.label_ids(task.dev)
    dev_accuracy = {step: accuracy(predictions(load_classifier(open_run(run_dir, step)), dev),
                                   gold_dev) for step in epoch_steps(cfg, run_dir)}
    chosen = choose_checkpoint(dev_accuracy)
    model = load_classifier(open_run(run_dir, chosen))
    rows = []
    for lang in [task.source, *targets]:
        test, gold = batches(task.test[lang], lang), task.label_ids(task.test[lang])
        for scored_by, through in ((lang, None), (task.source, source)):
            if through is not None and modules[lang] == source:
                continue  # the same modules as the first row: the source, or a shared set
            acc = accuracy(predictions(model, test, through), gold)
            rows.append({"language": lang, "modules": scored_by, "accuracy": acc, "n": len(gold),
                         "ci95": wilson_interval(acc, len(gold))})
    return {"task": task.name, "source": task.source, "seed": cfg.train.seed,
            "labels": task.labels, "dev": {str(k): v for k, v in dev_accuracy.items()},
            "chosen_step": chosen, "rows": rows}


RECIPE = Transfer
