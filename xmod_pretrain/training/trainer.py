"""The training loop: resume -> train -> validate -> save, over the parts a recipe built.

One step = ``grad_accum_steps`` micro-batches on each of ``world_size`` ranks; every micro-batch is
one language (drawn by the sampler) and activates only that language's modules. The Trainer does
not know which kind of run it trains (recipes/ builds the parts, runs/launch.py starts it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from xmod_core.outputs import CONFIG_FILE
from xmod_pretrain.training.anchor import LanguageAnchor
from xmod_pretrain.checkpoint.checkpointer import Checkpointer
from xmod_pretrain.checkpoint.layout import latest_checkpoint
from xmod_pretrain.config import Config
from xmod_pretrain.training.config import Precision
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.engine import (
    all_reduce_gradients,
    build_engine,
    gradient_norm,
    optimizer_parameter_count,
    parameter_count,
    reduces_gradients_itself,
    reports_gradient_norm,
)
from xmod_pretrain.evaluation.masked_lm import masked_lm_loss
from xmod_pretrain.training.failures import NonFiniteLoss, classify_failure
from xmod_pretrain.training.metrics import (
    MetricsLogger,
    SpikeWatch,
    duration,
    language_line,
    loss_table,
    perplexity,
    train_line,
)
from xmod_pretrain.model.xmod import LanguageModel
from xmod_pretrain.training.optim import LanguageAdamW
from xmod_pretrain.training.peak import PeakMeter, find_peak
from xmod_pretrain.training.prefetch import Prefetcher
from xmod_pretrain.runs.records import sidecars
from xmod_pretrain.training.signals import StopRequest, signal_name


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

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> TrainerState:
        """Of a checkpoint of any version: keys it does not know (an older ``sampler``, a derived
        run's ``derived_from``) are left out."""
        return cls(step=int(saved["step"]), tokens_seen=int(saved.get("tokens_seen", 0)),
                   first_valid=saved.get("first_valid"))


@dataclass
class RunParts:
    """The Trainer's inputs besides the config. The trainable parameters are the model's with
    ``requires_grad``: the optimizer groups them (shared, and per language: optim.py)."""

    model: LanguageModel                 # its forward(**batch.model_inputs()) has a .loss
    sampler: Sampler                     # train micro-batches, deterministic from (seed, step, index)
    valid: dict[str, list[Batch]]        # fixed validation batches by the name the table shows
    flops_per_token: float               # training FLOPs of an input token, for MFU
    tokenizer: Path                      # the SentencePiece model every checkpoint carries


def compiles(cfg: Config) -> bool:
    """``train.compile``, null resolved: on for CUDA with ZeRO 0-2 (config.check_config refuses
    it with ZeRO-3)."""
    if cfg.train.compile is not None:
        return cfg.train.compile
    return torch.cuda.is_available() and cfg.deepspeed.zero_stage < 3


class Trainer:
    """Owns one training run's loop; every rank builds one."""

    cfg: Config                   # model complete (vocabulary, languages)
    info: DistInfo                # rank, world size
    run_dir: Path
    languages: list[str]          # model module order (index = language id)
    sampler: Sampler              # train micro-batches, deterministic from (seed, step, index)
    valid: dict[str, list[Batch]]
    engine: object                # deepspeed.DeepSpeedEngine around the recipe's model
    optimizer: LanguageAdamW      # inside the engine; told each step's languages
    reduce_gradients: bool        # the trainer averages gradients itself (ZeRO-0: engine.py)
    anchor: LanguageAnchor | None  # one gradient order on every rank (several ranks, ZeRO < 3)
    checkpointer: Checkpointer
    metrics: MetricsLogger
    stop_request: StopRequest     # signals, agreed over ranks a step later
    step: int                     # optimizer steps done
    saved_step: int | None        # the step of this run's newest checkpoint (resumed or saved)
    tokens_seen: int
    first_valid: dict[str, float] | None  # the first validation, what later tables compare to
    window_loss: torch.Tensor     # per-language loss sums and counts since the last log line
    window_count: torch.Tensor
    window_nonfinite: torch.Tensor  # micro-batches whose loss was NaN/inf, checked at log/save
    batches: Prefetcher           # this rank's micro-batches, made a step ahead
    window_start: float           # perf_counter, tokens_seen and step at the window's start
    window_tokens: int
    window_step: int
    train_start: float            # perf_counter when the loop started: wall time and ETA
    own_grad_norm: bool           # DeepSpeed keeps no gradient norm here: measured on log steps
    grad_norm: torch.Tensor | None
    spikes: SpikeWatch            # loss spike warnings
    flops_per_token: float        # model FLOPs of a trained token, and the peak, for MFU
    peak: PeakMeter

    def __init__(self, cfg: Config, info: DistInfo, parts: RunParts, resume_from: Path | None):
        self.cfg, self.info, self.run_dir = cfg, info, Path(cfg.run_dir)
        self.languages = cfg.model.languages
        self.sampler, self.valid = parts.sampler, parts.valid
        self.flops_per_token = parts.flops_per_token
        if compiles(cfg):
            self._print("compiling each transformer layer (torch.compile): the first training "
                        "step and the first validation take longer")
            parts.model.compile_layers()
        self._print(f"starting DeepSpeed: ZeRO-{cfg.deepspeed.zero_stage}, {info.world_size} "
                    f"rank(s), {cfg.train.precision.value}")
        self.engine, self.optimizer = build_engine(parts.model, cfg, info)
        self._print(f"optimizer: {optimizer_parameter_count(self.engine):,} trainable parameters "
                    f"of {parameter_count(parts.model):,}")
        self.reduce_gradients = info.world_size > 1 and reduces_gradients_itself(cfg)
        self.anchor = self._build_anchor(parts.model)
        self.checkpointer = self._build_checkpointer(parts.tokenizer)
        self.step, self.tokens_seen, self.first_valid, self.saved_step = 0, 0, None, None
        self.stop_request = StopRequest(self.run_dir, lambda: self.step + 1, info.is_main,
                                        info.world_size)
        self._resume(resume_from)
        # Built once the resume point is loaded: it cuts metrics.jsonl back to the checkpoint.
        self.metrics = MetricsLogger(self.run_dir, cfg.logging, info.is_main,
                                     dataclasses.asdict(cfg), self._first_logged_step())
        self._init_window()

    # ---- construction -------------------------------------------------------------------

    def _build_anchor(self, model: LanguageModel) -> LanguageAnchor | None:
        # Ranks on different languages must hand DeepSpeed the same gradients: see anchor.py.
        # One rank needs no anchor (it cost 9% of the demo's step); ZeRO-3 runs share the language
        # across ranks instead (and its partitioned parameters cannot be read outside the forward).
        anchored = self.info.world_size > 1 and self.cfg.deepspeed.zero_stage < 3
        return LanguageAnchor(model) if anchored else None

    def _build_checkpointer(self, tokenizer: Path) -> Checkpointer:
        files = sidecars(self.cfg, tokenizer)
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(files[CONFIG_FILE], encoding="utf-8")
        checkpointer = Checkpointer(self.run_dir, self.info, self.cfg.train.keep_checkpoints, files)
        if self.info.is_main:  # rank 0 holds the run lock: no save of this run is under way
            for name in checkpointer.remove_partial_saves():
                print(f"removed {name}, the remains of a save that did not finish", flush=True)
        return checkpointer

    def _resume(self, checkpoint: Path | None) -> None:
        if checkpoint is None:
            return
        state = TrainerState.from_json(self.checkpointer.load(self.engine, checkpoint))
        self.step, self.tokens_seen, self.first_valid = state.step, state.tokens_seen, state.first_valid
        self.saved_step = self.step
        self._print(f"resumed from {checkpoint} at step {self.step}")

    def _first_logged_step(self) -> int:
        """The first step this start logs: the step after the checkpoint, whose validation
        (which runs before a save) the log holds already; the checkpoint's own step when the
        start validates there (a fresh run: step 0)."""
        return self.step if self.first_valid is None else self.step + 1

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
        if self.first_valid is None:
            self.first_valid = self.validate()
        self._reset_window()  # tokens/s counts training only
        self.train_start = time.perf_counter()
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
                        f"{duration(time.perf_counter() - self.train_start)} of training; "
                        f"checkpoints in {self.checkpointer.root}")
        return final

    def _loop(self) -> dict[str, float] | None:
        cfg = self.cfg.train
        while self.step < cfg.max_steps:
            self.train_step()
            self.step += 1
            if self.logs_at(self.step):
                self._log_window()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                self.validate()
            stop = self.stop_request.agreed()
            if stop or (cfg.save_every and self.step % cfg.save_every == 0):
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
        accum, world = self.cfg.train.grad_accum_steps, self.info.world_size
        present = [self.languages[i] for i in self.sampler.step_languages(self.step, accum, world)]
        self.optimizer.present = frozenset(present)
        if self.anchor:
            self.anchor.set_languages(present)
        for micro in range(accum):
            index = micro * world + self.info.rank  # position in the global batch
            batch = self.batches.get(self.step, micro)
            # Dropout noise is a function of (seed, step, index) too: resumable, world-size free.
            torch.manual_seed(hash((self.cfg.train.seed, self.step, index)) & 0x7FFF_FFFF)
            loss = self._forward(batch)
            self.engine.backward(loss)
            if self.reduce_gradients and micro == accum - 1:  # ZeRO-0: see engine.py
                all_reduce_gradients(self.engine)
            if micro == accum - 1 and self.own_grad_norm and self.logs_at(self.step + 1):
                self.grad_norm = gradient_norm(self.engine)  # before engine.step() clips
            self.engine.step()
            self._count_loss(loss.detach().float(), batch.lang)
        self.tokens_seen += accum * world * batch.input_ids.numel()

    def _count_loss(self, loss: torch.Tensor, lang: int) -> None:
        """Add a micro-batch's loss to the window; a NaN/inf is counted apart."""
        finite = torch.isfinite(loss)
        self.window_loss[lang] += torch.where(finite, loss, 0.0)
        self.window_count[lang] += finite
        self.window_nonfinite[lang] += ~finite

    def logs_at(self, step: int) -> bool:
        """Step 1 (a first line within seconds), then every ``log_every`` steps."""
        return step == 1 or step % self.cfg.train.log_every == 0

    def _check_finite(self, nonfinite: list[float]) -> None:
        """Stop before a NaN/inf can reach a checkpoint, on a log step or before a save, given
        the window's non-finite counts summed over ranks (so all ranks raise together)."""
        bad = {lang: int(n) for lang, n in zip(self.languages, nonfinite) if n}
        if bad:
            listed = ", ".join(f"{n} {lang}" for lang, n in bad.items())
            latest = latest_checkpoint(self.run_dir)
            stands = f"{latest} is intact" if latest else "the run has no checkpoint yet"
            raise NonFiniteLoss(
                f"loss is NaN or inf between steps {self.window_step + 1} and {self.step} "
                f"({listed} micro-batch(es)); stopping without saving. Lower optim.lr or check "
                f"the data; {stands}.")

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
        return self.engine(**inputs)

    def validate(self) -> dict[str, float]:
        """Token-weighted valid loss per language; rank 0 prints the table."""
        losses = {lang: self.evaluate(batches) for lang, batches in self.valid.items()}
        self._report_valid(losses)
        return losses

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
        self._check_finite(self._summed_over_ranks(self.window_nonfinite[None])[0])
        state = TrainerState(self.step, self.tokens_seen, self.first_valid)
        self.checkpointer.save(self.engine, self.step, state.to_json())  # rank 0 says when saved
        self.saved_step = self.step

    # ---- reporting ----------------------------------------------------------------------

    def _init_window(self) -> None:
        device = self.engine.device
        self.window_loss = torch.zeros(len(self.languages), device=device)
        self.window_count = torch.zeros(len(self.languages), device=device)
        self.window_nonfinite = torch.zeros(len(self.languages), device=device)
        self._reset_window()
        self.own_grad_norm, self.grad_norm = not reports_gradient_norm(self.engine), None
        self.spikes = SpikeWatch(self.cfg.logging.loss_spike_factor, self.cfg.logging.spike_window)
        dtype = torch.bfloat16 if self.cfg.train.precision == Precision.bf16 else torch.float32
        given = self.cfg.train.peak_tflops
        if device.type != "cuda" and given is None:
            self._print("measuring the matmul peak for MFU")
        peak = find_peak(device, dtype, self.info.world_size, self.cfg.train.tf32, given)
        self.peak = PeakMeter(peak, device, dtype, self.info.world_size)
        self._print(f"MFU peak: {peak.flops / 1e12:.3g} TFLOP/s ({peak.source})")

    def _log_window(self) -> None:
        """Reduce the window's per-language losses over ranks; rank 0 prints and records them.
        The one host sync of a log step, and the NaN/inf check."""
        sums, counts, nonfinite = self._summed_over_ranks(
            torch.stack([self.window_loss, self.window_count, self.window_nonfinite]))
        self._check_finite(nonfinite)
        now = time.perf_counter()
        elapsed = now - self.window_start
        tokens_per_s = (self.tokens_seen - self.window_tokens) / elapsed
        updates_per_s = (self.step - self.window_step) / elapsed
        lang_loss = {lang: s / c for lang, s, c in zip(self.languages, sums, counts) if c}
        loss = sum(sums) / max(sum(counts), 1)
        record = {"step": self.step, "loss": loss, "grad_norm": self._last_grad_norm(),
                  "lr": self.engine.get_lr()[0], "tokens_per_s": tokens_per_s,
                  "updates_per_s": updates_per_s,
                  "tokens_seen": self.tokens_seen, "wall_s": now - self.train_start,
                  "lang_loss": lang_loss}
        record["mfu"], raised = self.peak.mfu(tokens_per_s * self.flops_per_token)
        if raised:
            self.metrics.warn(raised)
        record["peak_flops"], record["peak_source"] = self.peak.peak.flops, self.peak.peak.source
        eta = (self.cfg.train.max_steps - self.step) / max(updates_per_s, 1e-9)
        median = self.spikes.check(loss)
        if median is not None:
            record["loss_spike"] = True
            self.metrics.warn(f"loss spike at step {self.step}: {loss:.4f} is "
                              f"{loss / median:.1f}x the median {median:.4f} of the last "
                              f"{len(self.spikes.recent) - 1} log lines")
        self.metrics.log(record, f"{train_line(record, self.cfg.train.max_steps, eta)}\n"
                                 f"{language_line(lang_loss)}")
        self._reset_window()

    def _summed_over_ranks(self, stats: torch.Tensor) -> list[list[float]]:
        """Rows of ``stats`` summed over ranks, on the host (this waits on the device)."""
        if self.info.world_size > 1:
            stats = stats.clone()
            dist.all_reduce(stats)
        return stats.cpu().tolist()

    def _last_grad_norm(self) -> float | None:
        """The global gradient norm of the step just taken, before clipping."""
        norm = self.grad_norm if self.own_grad_norm else self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def _reset_window(self) -> None:
        for window in (self.window_loss, self.window_count, self.window_nonfinite):
            window.zero_()
        self.window_start, self.window_tokens = time.perf_counter(), self.tokens_seen
        self.window_step = self.step

    def _report_valid(self, losses: dict[str, float]) -> None:
        record = {"step": self.step, "split": "valid", "lang_loss": losses,
                  "lang_ppl": {lang: perplexity(v) for lang, v in losses.items()}}
        table = loss_table(losses, f"valid @ step {self.step}", start=self.first_valid)
        self.metrics.log(record, table)

    def _print(self, text: str) -> None:
        if self.info.is_main:
            print(text, flush=True)
