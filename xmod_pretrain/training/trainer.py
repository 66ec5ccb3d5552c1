"""The training loop: resume -> train -> validate -> save, over the parts a recipe built.

One step = ``grad_accum_steps`` micro-batches on each of ``world_size`` ranks; every micro-batch is
one language (drawn by the sampler) and activates only that language's modules. The Trainer does
not know which kind of run it trains (recipes/ builds the parts, runs/launch.py starts it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from xmod_core.outputs import CONFIG_FILE
from xmod_pretrain.checkpoint.checkpointer import Checkpointer
from xmod_pretrain.checkpoint.language_files import InheritedFiles
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.config import Config
from xmod_pretrain.evaluation.masked_lm import masked_lm_loss
from xmod_pretrain.model.xmod import LanguageModel
from xmod_pretrain.runs.records import sidecars
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.engine import TrainingEngine, build_training_engine
from xmod_pretrain.training.failures import classify_failure
from xmod_pretrain.training.metrics import MetricsLogger, duration
from xmod_pretrain.training.prefetch import Prefetcher
from xmod_pretrain.training.progress import ProgressLog
from xmod_pretrain.training.signals import StopRequest, signal_name
from xmod_pretrain.training.validation import Validator


class Batch(Protocol):
    """A single-language micro-batch (data.MicroBatch, transfer's ExampleBatch)."""

    lang: int
    input_ids: torch.Tensor

    def model_inputs(self) -> dict: ...  # the model's keyword arguments, on the host

    @property
    def count(self) -> int: ...  # targets its mean loss is over


class Sampler(Protocol):
    """Training micro-batches, a pure function of (step, micro-step, position in the batch)."""

    def step_languages(self, step: int, micro_steps: int, world_size: int) -> set[int]: ...

    def micro_batch(self, step: int, micro_step: int, index: int) -> Batch: ...


@dataclass
class TrainerState:
    """Where the loop stands: what a checkpoint's ``trainer_state.json`` holds. The batches,
    masks, dropout and learning rate are functions of the seed and the step, so no RNG state
    is saved."""

    step: int = 0                 # optimizer steps done
    tokens_seen: int = 0          # training input tokens over all ranks
    first_valid: dict[str, float] | None = None  # the first validation, which tables compare to
    world_size: int | None = None  # the ranks that trained up to the step (None: not recorded)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TrainerState:
        """Of a checkpoint of any version: keys it does not know (an older ``sampler``, a derived
        run's ``derived_from``) are left out."""
        return cls(step=int(saved["step"]), tokens_seen=int(saved.get("tokens_seen", 0)),
                   first_valid=saved.get("first_valid"), world_size=saved.get("world_size"))


@dataclass
class RunParts:
    """The Trainer's inputs besides the config. The trainable parameters are the model's with
    ``requires_grad``: DeepSpeed trains the shared ones, the language store the modules'."""

    model: LanguageModel                 # its forward(**batch.model_inputs()) has a .loss
    sampler: Sampler                     # train micro-batches, deterministic from (seed, step, index)
    valid: dict[str, list[Batch]]        # fixed validation batches by the name the table shows
    flops_per_token: float               # training FLOPs of an input token, for MFU
    tokenizer: Path                      # the SentencePiece model every checkpoint carries
    # Languages a new run starts with exactly as another run's checkpoint holds them (add-
    # language's frozen ones): their files are linked into the run, not written again.
    inherited: InheritedFiles | None = None


def compiles(cfg: Config) -> bool:
    """``train.compile``, null resolved: on for CUDA with ZeRO 0-2 (config.check_config refuses
    it with ZeRO-3)."""
    if cfg.train.compile is not None:
        return cfg.train.compile
    return torch.cuda.is_available() and cfg.deepspeed.zero_stage < 3


class Trainer:
    """Owns one training run's loop; every rank builds one. When to log, validate and save is
    decided by the parts it calls (``progress``, ``validator``, ``checkpointer``)."""

    cfg: Config                   # model complete (vocabulary, languages)
    info: DistInfo                # rank, world size
    run_dir: Path
    languages: list[str]          # model module order (index = language id)
    sampler: Sampler              # train micro-batches, deterministic from (seed, step, index)
    valid: dict[str, list[Batch]]
    training: TrainingEngine      # DeepSpeed's engine (shared weights), the language store
    checkpointer: Checkpointer    # saves every train.save_every steps and on a stop
    metrics: MetricsLogger        # rank 0's records: metrics.jsonl, wandb, TensorBoard
    progress: ProgressLog         # the log line every train.log_every steps; NaN/inf checks
    validator: Validator          # validation every train.eval_every steps
    stop_request: StopRequest     # signals, agreed over ranks a step later
    state: TrainerState           # step, tokens seen, first validation: what a checkpoint saves
    saved_step: int | None        # the step of this run's newest checkpoint (resumed or saved)
    batches: Prefetcher           # this rank's micro-batches, made a step ahead

    def __init__(self, cfg: Config, info: DistInfo, parts: RunParts, resume_from: Path | None):
        self.cfg, self.info, self.run_dir = cfg, info, Path(cfg.run_dir)
        self.languages = cfg.model.languages
        self.sampler, self.valid = parts.sampler, parts.valid
        if compiles(cfg):
            self._print("compiling each transformer layer (torch.compile): the first training "
                        "step and the first validation take longer")
            parts.model.compile_layers()
        self._print(f"starting DeepSpeed: ZeRO-{cfg.deepspeed.zero_stage}, {info.world_size} "
                    f"rank(s), {cfg.train.precision.value}")
        self.training = build_training_engine(parts.model, cfg, info)
        paged = ("; the language modules' state in host memory (optim.module_state=host)"
                 if self.training.store.pages is not None else "")
        self._print(f"optimizer: {self.training.trainable_count():,} trainable parameters of "
                    f"{self.training.parameter_count():,}{paged}")
        self.checkpointer = self._build_checkpointer(parts.tokenizer)
        self.state, self.saved_step = TrainerState(), None
        self.stop_request = StopRequest(self.run_dir, lambda: self.step + 1, info.is_main,
                                        info.world_size)
        self._resume(resume_from, parts.inherited)
        # Built once the resume point is loaded: it cuts metrics.jsonl back to the checkpoint.
        self.metrics = MetricsLogger(self.run_dir, cfg.logging, info.is_main,
                                     dataclasses.asdict(cfg), self._first_logged_step())
        self.validator = Validator(self.valid, cfg.train, self.metrics)
        self.progress = ProgressLog(cfg, info, self.training.device, self.languages,
                                    parts.flops_per_token, self.metrics, self.training.clip,
                                    self.training.learning_rate)

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.state.step

    @property
    def engine(self):
        """DeepSpeed's engine over the shared weights."""
        return self.training.deepspeed

    # ---- construction -------------------------------------------------------------------

    def _build_checkpointer(self, tokenizer: Path) -> Checkpointer:
        files = sidecars(self.cfg, tokenizer)
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(files[CONFIG_FILE], encoding="utf-8")
        train = self.cfg.train
        checkpointer = Checkpointer(self.run_dir, self.info, train.keep_checkpoints, files,
                                    every=train.save_every)
        if self.info.is_main:  # rank 0 holds the run lock: no save of this run is under way
            for name in checkpointer.remove_partial_saves():
                print(f"removed {name}, the remains of a save that did not finish", flush=True)
        return checkpointer

    def _resume(self, checkpoint: Path | None, inherited: InheritedFiles | None) -> None:
        if checkpoint is None:
            if inherited is not None:
                self.checkpointer.inherited = inherited
                self.training.store.saved_already(inherited.manifest)
            return
        state, moved = self.checkpointer.load(self.engine, checkpoint, self.training.store,
                                              engine_state=self.training.trains_shared)
        if moved:
            self._print(moved)
        self.state = TrainerState.from_json(state)
        self.training.store.resume_schedule(self.step)
        self.saved_step = self.step
        self._print(f"resumed from {checkpoint} at step {self.step}")

    def _first_logged_step(self) -> int:
        """The first step this start logs: the step after the checkpoint, whose validation
        (which runs before a save) the log holds already; the checkpoint's own step when the
        start validates there (a fresh run: step 0)."""
        return self.step if self.state.first_valid is None else self.step + 1

    # ---- the loop -----------------------------------------------------------------------

    def train(self, then: Callable[[Trainer], None] | None = None) -> dict[str, float] | None:
        """Train to ``max_steps``; return the final per-language valid loss (None if stopped
        early by a signal, after saving a checkpoint). ``then`` runs after a run that reached
        ``max_steps`` (the recipe's own reports), its failures classified like the loop's."""
        try:
            final = self._train()
            if final is not None and then is not None:
                then(self)
            return final
        except RuntimeError as err:
            train = self.cfg.train
            failure = classify_failure(err, self.info, self.step + 1,
                                       (train.micro_batch_size, self.cfg.data.seq_len),
                                       latest_checkpoint(self.run_dir))
            if failure is err:
                raise
            raise failure from err

    def close(self) -> None:
        self.metrics.close()

    def _train(self) -> dict[str, float] | None:
        cfg = self.cfg.train
        if self.state.first_valid is None:
            self.state.first_valid = self.validate()
        self.progress.start(self.step, self.state.tokens_seen)  # tokens/s counts training only
        self.batches = Prefetcher(self._micro_batch, self.step, cfg.grad_accum_steps,
                                  pin=self.engine.device.type == "cuda")
        try:
            final = self._loop()
        except BaseException:
            self.checkpointer.wait_here()  # the last save completes; no rank is waited for
            raise
        finally:
            self.batches.close()
        self.stop_request.finish()
        self.checkpointer.finish()  # every rank learns whether the last save was published
        if final is not None:
            self._print(f"done: step {self.step}/{self.cfg.train.max_steps} after "
                        f"{duration(self.progress.elapsed())} of training; "
                        f"checkpoints in {self.checkpointer.root}")
        return final

    def _loop(self) -> dict[str, float] | None:
        while self.step < self.cfg.train.max_steps:
            self.train_step()
            self.state.step += 1
            if self.progress.due(self.step):
                self.progress.write(self.step, self.state.tokens_seen)
            if self.validator.due(self.step):
                self.validate()
            stop = self.stop_request.agreed()
            if self.checkpointer.due(self.step, stopping=bool(stop)):
                self.save()
            if stop:
                self._print(f"stopping on {signal_name(stop)} after step {self.step}; "
                            "the same command resumes from the checkpoint")
                return None
        final = self.validate()
        if self.saved_step != self.step:  # known alike on every rank (not read from the disk)
            self.save()
        return final

    def _micro_batch(self, step: int, micro: int) -> Batch:
        """This rank's micro-batch ``micro`` of ``step`` (the prefetch thread calls it)."""
        return self.sampler.micro_batch(step, micro, micro * self.info.world_size + self.info.rank)

    def train_step(self) -> None:
        """One optimizer step: this rank's micro-batches of the global batch, in order.

        Nothing here waits on the device: losses accumulate in device tensors, read on log
        steps and before a save (``_check_finite``), and the batches come from the prefetch.
        """
        present = self.step_languages(self.step)
        self.training.begin_step(present, upcoming=self.step_languages(self.step + 1))
        accum, world = self.cfg.train.grad_accum_steps, self.info.world_size
        for micro in range(accum):
            index = micro * world + self.info.rank  # position in the global batch
            batch = self.batches.get(self.step, micro)
            # Dropout noise is a function of (seed, step, index) too: resumable, world-size free.
            torch.manual_seed(hash((self.cfg.train.seed, self.step, index)) & 0x7FFF_FFFF)
            loss = self._forward(batch)
            self.training.backward(loss)
            self.training.micro_step(present, last=micro == accum - 1)
            self.progress.count_loss(loss.detach().float(), batch.lang)
        self.state.tokens_seen += accum * world * batch.input_ids.numel()

    def step_languages(self, step: int) -> list[str]:
        """The languages of ``step``'s global batch (every rank knows them, and the next
        step's, without communication)."""
        accum, world = self.cfg.train.grad_accum_steps, self.info.world_size
        return [self.languages[i] for i in self.sampler.step_languages(step, accum, world)]

    def _forward(self, batch: Batch) -> torch.Tensor:
        return self.output(batch).loss

    @torch.no_grad()
    def outputs(self, batches: list[Batch]) -> Iterator[tuple[Batch, Any]]:
        """Each of ``batches`` with the model's output on it (loss and logits), in eval mode."""
        self.engine.eval()
        try:
            for batch in batches:
                yield batch, self.output(batch)
        finally:
            self.engine.train()

    def output(self, batch: Batch):
        """The model's output (loss and logits) on ``batch``, moved to the device."""
        device = self.engine.device  # pinned (prefetched) host tensors copy asynchronously
        inputs = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                  for k, v in batch.model_inputs().items()}
        return self.training(**inputs)

    def validate(self) -> dict[str, float]:
        """Token-weighted valid loss per language; rank 0 prints the table."""
        return self.validator.run(self.step, self.evaluate, self.state.first_valid)

    @torch.no_grad()
    def evaluate(self, batches: list[Batch], through: int | None = None) -> float:
        """Target-weighted loss of ``batches`` (masked-LM: per token), through the modules of language index
        ``through`` if given (zero-shot transfer) or of their own language. Every rank runs the
        same batches, so ZeRO-3's collective gathers line up and no reduction is needed."""
        self.engine.eval()
        loss = masked_lm_loss(self._forward, batches, through)
        self.engine.train()
        return loss

    def save(self) -> None:
        """A checkpoint of this step, after checking that no loss since the last log was
        NaN/inf (on every rank: a collective, as the save is)."""
        self.progress.check_finite(self.step)
        self.state.world_size = self.info.world_size  # a start on other ranks reads it (resume.py)
        self.checkpointer.save(self.engine, self.step, self.state.to_json(),  # rank 0 says when
                               self.training.store, engine_state=self.training.trains_shared)
        self.saved_step = self.step

    def _print(self, text: str) -> None:
        if self.info.is_main:
            print(text, flush=True)
