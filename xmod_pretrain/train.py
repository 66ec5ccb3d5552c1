"""The pre-training loop: build -> resume -> train -> validate -> save.

One step = ``grad_accum_steps`` micro-batches on each of ``world_size`` ranks; every micro-batch is
one language (drawn by the sampler) and activates only that language's modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from xmod_core.errors import UserError
from xmod_core.languages import check_language_code, check_language_list, language_index
from xmod_core.outputs import new_output_dir
from xmod_core.shards import MANIFEST, TOKENIZER_FILE, check_run_tokenizer, read_manifest
from xmod_pretrain.anchor import LanguageAnchor
from xmod_pretrain.checkpoint import (
    TRAINER_STATE,
    Checkpointer,
    complete_checkpoints,
    latest_checkpoint,
    resume_checkpoint,
)
from xmod_pretrain.config import Config, ConfigError, ModelConfig
from xmod_pretrain.data import (
    DataError,
    LanguageSampler,
    Masker,
    MicroBatch,
    ShardSet,
    validation_batches,
)
from xmod_pretrain.distributed import DistInfo, barrier, init_distributed
from xmod_pretrain.engine import (
    all_reduce_gradients,
    build_engine,
    optimizer_parameter_count,
    reduces_gradients_itself,
)
from xmod_pretrain.evaluation import masked_lm_loss
from xmod_pretrain.interop import hf_tokenizer_file, load_hf_weights, model_config_from_hf
from xmod_pretrain.metrics import (
    MetricsLogger,
    flatten,
    format_table,
    measure_matmul_peak,
    perplexity,
    train_line,
)
from xmod_pretrain.model import (
    XmodForMaskedLM,
    count_parameters,
    model_flops_per_token,
)
from xmod_pretrain.optim import LanguageAdamW
from xmod_pretrain.paths import resolve_paths
from xmod_pretrain.posthoc import (
    build_grown_model,
    plan_add_language,
    prepare_new_languages,
    source_validation,
)
from xmod_pretrain.runlock import lock_run_dir
from xmod_pretrain.runs import load_config, sidecars
from xmod_pretrain.signals import StopRequest, signal_name, stop_when_orphaned


class NonFiniteLoss(RuntimeError):
    """A NaN or inf loss: the run stops before it can be saved."""


class PeerLost(RuntimeError):
    """A collective failed with several ranks: a peer died or stopped responding."""


# Settings whose change on resume gives other batches or another schedule than the run had.
SHAPES_THE_RUN = ("data.", "optim.", "train.seed", "train.micro_batch_size",
                  "train.grad_accum_steps")
PLACE_ONLY = {"data.dir", "data.source", "data.prepare_workers", "data.verify_shards"}


class OutOfMemory(UserError):
    """A step that does not fit in memory: the message says which step and what to lower."""


def classify_failure(err: RuntimeError, info: DistInfo, step: int, batch: tuple[int, int],
                     latest: Path | None) -> RuntimeError | UserError:
    """What a RuntimeError in the loop means to the user. Out of memory (the accelerator's or the
    host's allocator) names the step, the micro-batch shape and what to lower; an accelerator or
    communication library error keeps its own text and traceback; any other error with several
    ranks is a collective that failed because a peer died or hung (gloo's and NCCL's errors say
    little more)."""
    text = str(err)
    resume = f"resume from {latest}" if latest else "the run has no checkpoint yet"
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in text.lower() \
            or "can't allocate memory" in text:
        return OutOfMemory(
            f"rank {info.rank}: out of memory in step {step}, micro-batches of {batch[0]} x "
            f"{batch[1]} tokens ({text.splitlines()[0][:200]}). Lower train.micro_batch_size "
            "(raise train.grad_accum_steps to keep the global batch) or data.seq_len, or shard "
            f"more: deepspeed=zero3, deepspeed.offload_optimizer=true; then {resume}")
    if isinstance(err, NonFiniteLoss) or info.world_size == 1 \
            or any(marker in text for marker in ACCELERATOR_ERRORS):
        return err
    return PeerLost(f"rank {info.rank}: a collective failed at step {step}, most likely because a "
                    f"peer process died or stopped responding ({err}). Restart the same command: "
                    f"{resume}.")


# Errors of the accelerator itself, not of a lost peer: reported as they are.
ACCELERATOR_ERRORS = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "NCCL error", "HIP error")


class RunStateError(UserError):
    """The run directory cannot be started as asked (resume flags, another model); nothing was
    written to it."""


class NothingToTrain(Exception):
    """The run's latest checkpoint is at or past ``train.max_steps``: the start ends at once."""


def ensure_prepared(cfg: Config, info: DistInfo, tokenizer: Path | None = None) -> dict:
    """Read the data manifest; on first use, prepare it from ``data.source`` (rank 0 only),
    with ``tokenizer`` if given, else training one."""
    data = cfg.data
    if not (Path(data.dir) / MANIFEST).is_file():
        if data.source is None:
            raise DataError(f"no prepared data in {data.dir} and data.source is null")
        if info.is_main:
            from data_prep.prepare import prepare

            print(f"preparing {data.dir} from {data.source} (first use)", flush=True)
            with new_output_dir(data.dir, overwrite=True, option="data.dir", data=True) as out:
                prepare(data.source, out, vocab_size=data.vocab_size, tokenizer=tokenizer,
                        valid_fraction=data.valid_fraction, workers=data.prepare_workers)
        barrier()
    return read_manifest(data.dir)


def resolve_model_config(cfg: Config, manifest: dict) -> ModelConfig:
    """Fill the model's vocabulary size and languages from the data where the config leaves them."""
    vocab = manifest["tokenizer"]["vocab_size"]
    model = cfg.model
    if model.vocab_size is not None and model.vocab_size != vocab:
        raise ConfigError(f"model.vocab_size={model.vocab_size} but the tokenizer in "
                          f"{cfg.data.dir} has {vocab} ids")
    languages = model.languages or list(manifest["languages"])
    shared = cfg.data.shared_module
    if shared is not None:  # the shared baseline: one module set, named by a language code
        check_language_code(shared, "data.shared_module")
        if model.languages not in ([], [shared]):
            raise ConfigError(f"data.shared_module={shared} runs every language through one "
                              f"module set, but model.languages lists {model.languages}")
        languages = [shared]
    return dataclasses.replace(model, vocab_size=vocab,
                               languages=check_language_list(languages, "model.languages"))


def dry_run(cfg: Config) -> None:
    """Print the resolved config and the model's size without data, processes or memory."""
    model_cfg = cfg.model
    if model_cfg.vocab_size is None or not model_cfg.languages:
        model_cfg = resolve_model_config(cfg, read_manifest(cfg.data.dir))
    total, active = count_parameters(model_cfg)
    print(OmegaConf.to_yaml(OmegaConf.structured(dataclasses.replace(cfg, model=model_cfg))))
    print(f"parameters: {total / 1e6:.1f}M in all, {active / 1e6:.1f}M active per language "
          f"({len(model_cfg.languages)} languages, "
          f"{(total - active) / max(len(model_cfg.languages) - 1, 1) / 1e6:.2f}M per language module set)")


class Trainer:
    """Owns one training run; every rank builds one."""

    cfg: Config
    info: DistInfo                # rank, world size
    run_dir: Path
    languages: list[str]          # model module order (index = language id)
    sampler: LanguageSampler      # train micro-batches, deterministic from (seed, step, index)
    valid: dict[str, list[MicroBatch]]
    engine: object                # deepspeed.DeepSpeedEngine around XmodForMaskedLM
    optimizer: LanguageAdamW      # inside the engine; told each step's languages
    checkpointer: Checkpointer
    metrics: MetricsLogger
    step: int                     # optimizer steps done

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.info = init_distributed(cfg.deepspeed.dist_timeout_s)
        self._set_threads()
        self.run_dir = Path(cfg.run_dir)
        self.plan = plan_add_language(cfg) if cfg.add_language.languages else None
        barrier()  # every rank has checked the run directory before rank 0 writes to it
        manifest, model_cfg = self._data_and_model_config()
        self.cfg = cfg = dataclasses.replace(cfg, model=model_cfg)
        self.languages = model_cfg.languages
        self.resume_from, resume_state = self._resume_point()
        if resume_state and resume_state["step"] >= cfg.train.max_steps:
            raise NothingToTrain(f"{self.resume_from} is at step {resume_state['step']} and "
                                 f"train.max_steps={cfg.train.max_steps}: nothing to train (raise "
                                 "train.max_steps to go on)")
        self._build_data(manifest)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = self._build_model()
        self.engine, self.optimizer = build_engine(model, cfg, self.info)
        self.reduce_gradients = self.info.world_size > 1 and reduces_gradients_itself(cfg)
        # Ranks on different languages must hand DeepSpeed the same gradients: see anchor.py.
        # One rank needs no anchor (it cost 9% of the demo's step); ZeRO-3 runs share the language
        # across ranks instead (and its partitioned parameters cannot be read outside the forward).
        anchored = self.info.world_size > 1 and cfg.deepspeed.zero_stage < 3
        self.anchor = LanguageAnchor(model) if anchored else None
        self._print(f"optimizer: {optimizer_parameter_count(self.engine):,} trainable parameters "
                    f"of {sum(p.numel() for p in model.parameters()):,}")
        self.checkpointer = Checkpointer(self.run_dir, self.info, cfg.train.keep_checkpoints,
                                         self._sidecars())
        if self.info.is_main:  # rank 0 holds the run lock: no save of this run is under way
            for name in self.checkpointer.remove_partial_saves():
                print(f"removed {name}, the remains of a save that did not finish", flush=True)
        self.metrics = MetricsLogger(self.run_dir, cfg.logging, self.info.is_main,
                                     dataclasses.asdict(cfg))
        self.step, self.tokens_seen, self.first_valid = 0, 0, None
        self.stop_request = StopRequest(self.run_dir, lambda: self.step + 1, self.info.is_main)
        self._resume()
        self._init_window()

    # ---- construction -------------------------------------------------------------------

    def _data_and_model_config(self) -> tuple[dict, ModelConfig]:
        """The data manifest (prepared on first use) and the model's full config: grown from the
        source run (add-language), a transformers folder's (init_from), or the config's."""
        cfg = self.cfg
        if self.plan:
            return prepare_new_languages(cfg, self.plan, self.info), self.plan.model_cfg
        if cfg.init_from:
            manifest = ensure_prepared(cfg, self.info, hf_tokenizer_file(cfg.init_from))
            check_run_tokenizer(hf_tokenizer_file(cfg.init_from), cfg.data.dir)
            cfg = dataclasses.replace(cfg, model=model_config_from_hf(cfg.init_from))
        else:
            manifest = ensure_prepared(cfg, self.info)
        return manifest, resolve_model_config(cfg, manifest)

    def _build_model(self) -> XmodForMaskedLM:
        """A fresh model, a transformers checkpoint's (init_from), or a grown one (add-language)."""
        if self.plan:
            return build_grown_model(self.plan, self.cfg.add_language.init)
        model = XmodForMaskedLM(self.cfg.model)
        if self.cfg.init_from:
            load_hf_weights(model, self.cfg.init_from)
            self._print(f"initialised every weight from {self.cfg.init_from}")
        return model

    def _set_threads(self) -> None:
        threads = self.cfg.train.threads or max(1, (os.cpu_count() or 1) // self.info.local_world_size)
        torch.set_num_threads(threads)

    def _build_data(self, manifest: dict) -> None:
        data = self.cfg.data
        if data.language_per == "rank" and self.cfg.deepspeed.zero_stage == 3 and self.info.world_size > 1:
            raise ConfigError(
                "deepspeed.zero_stage=3 gathers each module's weights with all ranks together, so "
                "ranks cannot run different languages in one micro-step: set data.language_per=step"
            )
        if data.shared_module is not None and self.plan:
            raise ConfigError("data.shared_module is for pre-training: add-language gives each new "
                              "language modules of its own")
        data_langs = check_language_list(data.languages or list(manifest["languages"]), "data.languages")
        lang_ids = [language_index(self.languages, data.shared_module or lang) for lang in data_langs]
        masker = Masker(data.masking, self.cfg.model.vocab_size)
        train = ShardSet(data.dir, "train", data_langs, data.verify_shards)
        self.sampler = LanguageSampler(train, data, masker, self.cfg.train.micro_batch_size,
                                       self.cfg.train.seed, lang_ids)
        self.valid = self._valid_batches(data.dir, data_langs, masker)
        source = source_validation(self.plan) if self.plan else None
        if source:  # the old languages beside the new: their loss must not move
            self.valid.update(self._valid_batches(*source, masker))

    def _valid_batches(self, data_dir: str, langs: list[str], masker: Masker) -> dict:
        valid, train = ShardSet(data_dir, "valid", langs, self.cfg.data.verify_shards), self.cfg.train
        modules = self.cfg.data.shared_module  # None: each language through its own
        return {lang: validation_batches(valid, d, language_index(self.languages, modules or lang),
                                         masker, train.micro_batch_size, self.cfg.data.seq_len,
                                         train.eval_batches, train.seed)
                for d, lang in enumerate(langs)}

    def _sidecars(self) -> dict:
        files = sidecars(self.cfg, Path(self.cfg.data.dir) / TOKENIZER_FILE)
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(files["config.yaml"], encoding="utf-8")
        return files

    def _resume_point(self) -> tuple[Path | None, dict]:
        """The checkpoint this start resumes from (None: a fresh run) and its trainer state,
        checked against the config. It writes only to repair ``latest`` (recovered, or moved off
        a corrupt checkpoint); a refused start otherwise leaves the run as it was."""
        resume = self.cfg.train.resume
        if resume is False:
            if complete_checkpoints(self.run_dir / "checkpoints"):
                raise RunStateError(f"{self.run_dir} holds checkpoints and train.resume=false: "
                                    "pick another run_dir, or resume")
            return None, {}
        latest = resume_checkpoint(self.run_dir, self.info)  # verified, repaired if need be
        if latest is None:
            if resume:
                raise RunStateError(f"train.resume=true but {self.run_dir} has no checkpoint")
            return None, {}
        self._check_same_model(latest)
        check_run_tokenizer(latest / TOKENIZER_FILE, self.cfg.data.dir)
        self._warn_changed_settings(latest)
        return latest, json.loads((latest / TRAINER_STATE).read_text(encoding="utf-8"))

    def _resume(self) -> None:
        if self.resume_from is None:
            return
        state = self.checkpointer.load(self.engine, self.resume_from)
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.first_valid = state.get("first_valid")
        self._print(f"resumed from {self.resume_from} at step {self.step}")

    def _check_same_model(self, checkpoint: Path) -> None:
        saved = load_config(checkpoint / "config.yaml").model
        if saved != self.cfg.model:
            diff = [f"{f.name} {getattr(saved, f.name)!r} -> {getattr(self.cfg.model, f.name)!r}"
                    for f in dataclasses.fields(ModelConfig)
                    if getattr(saved, f.name) != getattr(self.cfg.model, f.name)]
            raise RunStateError(f"{checkpoint} was trained with another model ({'; '.join(diff)}):"
                                " resume with its model config, or pick another run_dir")

    def _warn_changed_settings(self, checkpoint: Path) -> None:
        """Say which settings that shape the batches or the schedule differ from the
        checkpoint's: allowed (fairseq allows it too), but the run is then not the uninterrupted
        one, and a changed max_steps silently reshapes the learning rate."""
        # Every leaf by its dotted key: {"data.alpha": 0.7, ...}
        saved, now = (flatten(dataclasses.asdict(cfg), ".")
                      for cfg in (load_config(checkpoint / "config.yaml"), self.cfg))
        changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in now.items()
                   if key.startswith(SHAPES_THE_RUN) and key not in PLACE_ONLY
                   and saved.get(key) != value]
        if self.cfg.optim.total_steps is None and saved.get("train.max_steps") != now["train.max_steps"]:
            changed.append(f"train.max_steps {saved.get('train.max_steps')} -> "
                           f"{now['train.max_steps']} (the schedule's length, optim.total_steps "
                           f"being null: set optim.total_steps={saved.get('train.max_steps')} to "
                           "keep the learning rate where it was)")
        if changed and self.info.is_main:
            print(f"warning: resuming {checkpoint.name} with settings other than its run's: "
                  f"{'; '.join(changed)}. The batches or the learning rate from here differ from "
                  "an uninterrupted run's", file=sys.stderr, flush=True)

    # ---- the loop -----------------------------------------------------------------------

    def train(self) -> dict[str, float] | None:
        """Train to ``max_steps``; return the final per-language valid loss (None if stopped
        early by a signal, after saving a checkpoint)."""
        try:
            return self._train()
        except RuntimeError as err:
            train = self.cfg.train
            failure = classify_failure(err, self.info, self.step + 1,
                                       (train.micro_batch_size, self.cfg.data.seq_len),
                                       latest_checkpoint(self.run_dir))
            if failure is err:
                raise
            raise failure from err
        finally:
            self.metrics.close()

    def _train(self) -> dict[str, float] | None:
        cfg = self.cfg.train
        if self.first_valid is None:
            self.first_valid = self.validate()
        self._reset_window()  # tokens/s counts training only
        last_saved = self.step
        while self.step < cfg.max_steps:
            self.train_step()
            self.step += 1
            if self.step % cfg.log_every == 0:
                self._log_window()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                self.validate()
            stop = self.stop_request.agreed(self.info.world_size, self.engine.device)
            if stop or (cfg.save_every and self.step % cfg.save_every == 0):
                self.save()
                last_saved = self.step
            if stop:
                self._print(f"stopping on {signal_name(stop)} after step {self.step}; "
                            "the same command resumes from the checkpoint")
                return None
        final = self.validate()
        if last_saved != self.step or latest_checkpoint(self.run_dir) is None:
            self.save()
        if self.plan:
            self._report_transfer()
        return final

    def train_step(self) -> None:
        """One optimizer step: this rank's micro-batches of the global batch, in order."""
        accum, world = self.cfg.train.grad_accum_steps, self.info.world_size
        present = [self.languages[i] for i in self.sampler.step_languages(self.step, accum, world)]
        self.optimizer.present = frozenset(present)
        if self.anchor:
            self.anchor.set_languages(present)
        losses, langs = [], []
        for micro in range(accum):
            index = micro * world + self.info.rank  # position in the global batch
            batch = self.sampler.micro_batch(self.step, micro, index)
            # Dropout noise is a function of (seed, step, index) too: resumable, world-size free.
            torch.manual_seed(hash((self.cfg.train.seed, self.step, index)) & 0x7FFF_FFFF)
            loss = self._forward(batch)
            self.engine.backward(loss)
            if self.reduce_gradients and micro == accum - 1:  # ZeRO-0: see engine.py
                all_reduce_gradients(self.engine)
            self.engine.step()
            losses.append(loss.detach().float())
            langs.append(batch.lang)
            self.window_loss[batch.lang] += losses[-1]
            self.window_count[batch.lang] += 1
        self._check_finite(torch.stack(losses), langs)
        self.tokens_seen += accum * world * batch.input_ids.numel()

    def _check_finite(self, losses: torch.Tensor, langs: list[int]) -> None:
        """Stop before a NaN/inf can reach a checkpoint (one host sync per step)."""
        finite = torch.isfinite(losses)
        if not bool(finite.all()):
            bad = self.languages[langs[int((~finite).nonzero()[0])]]
            raise NonFiniteLoss(
                f"rank {self.info.rank}: loss is {float(losses[~finite][0])} at step "
                f"{self.step + 1} on a {bad} micro-batch; stopping without saving. Lower "
                f"optim.lr or check the data; {latest_checkpoint(self.run_dir)} is intact."
            )

    def _forward(self, batch: MicroBatch) -> torch.Tensor:
        device = self.engine.device
        out = self.engine(batch.input_ids.to(device), batch.lang,
                          mlm_positions=batch.mlm_positions.to(device),
                          mlm_targets=batch.mlm_targets.to(device))
        return out.loss

    def validate(self) -> dict[str, float]:
        """Token-weighted valid loss per language; rank 0 prints the table."""
        losses = {lang: self.evaluate(batches) for lang, batches in self.valid.items()}
        self._report_valid(losses)
        return losses

    @torch.no_grad()
    def evaluate(self, batches: list[MicroBatch], through: int | None = None) -> float:
        """Token-weighted masked-LM loss of ``batches``, through the modules of language index
        ``through`` if given (zero-shot transfer) or of their own language. Every rank runs the
        same batches, so ZeRO-3's collective gathers line up and no reduction is needed."""
        self.engine.eval()
        loss = masked_lm_loss(self._forward, batches, through)
        self.engine.train()
        return loss

    def _report_transfer(self) -> None:
        """Each new language's valid perplexity through the best existing language's modules:
        what the new modules must beat."""
        old = [lang for lang in self.languages if lang not in self.plan.new_languages]
        for lang in self.plan.new_languages:
            via = {other: self.evaluate(self.valid[lang], language_index(self.languages, other))
                   for other in old}
            best = min(via, key=via.get)
            own = self.evaluate(self.valid[lang])
            record = {"step": self.step, "split": "transfer", "language": lang, "own": own,
                      "best_existing": best, "via": via}
            self.metrics.log(record, f"{lang}: ppl {perplexity(own):.2f} with its own modules, "
                                     f"{perplexity(via[best]):.2f} through {best}'s (the best "
                                     f"of {len(old)} existing)")

    def save(self) -> None:
        state = {"step": self.step, "tokens_seen": self.tokens_seen,
                 "sampler": {"seed": self.cfg.train.seed, "next_step": self.step},
                 "first_valid": self.first_valid}
        path = self.checkpointer.save(self.engine, self.step, state)
        self._print(f"saved checkpoint {path}")

    # ---- reporting ----------------------------------------------------------------------

    def _init_window(self) -> None:
        device = self.engine.device
        self.window_loss = torch.zeros(len(self.languages), device=device)
        self.window_count = torch.zeros(len(self.languages), device=device)
        self._reset_window()
        model_cfg, data = self.cfg.model, self.cfg.data
        masked = data.masking.prob * (data.seq_len - 2) / data.seq_len
        self.flops_per_token = model_flops_per_token(model_cfg, data.seq_len, masked)
        dtype = torch.bfloat16 if self.cfg.train.precision == "bf16" else torch.float32
        self.peak_flops = measure_matmul_peak(device, dtype) * self.info.world_size

    def _log_window(self) -> None:
        """Reduce the window's per-language losses over ranks; rank 0 prints and records them."""
        stats = torch.stack([self.window_loss, self.window_count])
        if self.info.world_size > 1:
            dist.all_reduce(stats)
        sums, counts = stats.cpu().tolist()
        elapsed = time.perf_counter() - self.window_start
        tokens_per_s = (self.tokens_seen - self.window_tokens) / elapsed
        mfu = tokens_per_s * self.flops_per_token / self.peak_flops
        lang_loss = {lang: s / c for lang, s, c in zip(self.languages, sums, counts) if c}
        loss = sum(sums) / max(sum(counts), 1)
        lr = self.engine.get_lr()[0]
        record = {"step": self.step, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s,
                  "mfu": mfu, "tokens_seen": self.tokens_seen, "lang_loss": lang_loss}
        self.metrics.log(record, train_line(self.step, self.cfg.train.max_steps, loss, lr,
                                            tokens_per_s, mfu, lang_loss))
        self._reset_window()

    def _reset_window(self) -> None:
        self.window_loss.zero_()
        self.window_count.zero_()
        self.window_start, self.window_tokens = time.perf_counter(), self.tokens_seen

    def _report_valid(self, losses: dict[str, float]) -> None:
        record = {"step": self.step, "split": "valid", "lang_loss": losses,
                  "lang_ppl": {lang: perplexity(v) for lang, v in losses.items()}}
        table = format_table(losses, f"valid @ step {self.step}", start=self.first_valid)
        self.metrics.log(record, table)

    def _print(self, text: str) -> None:
        if self.info.is_main:
            print(text, flush=True)


def run(cfg: Config) -> None:
    cfg = resolve_paths(cfg)  # the run's config.yaml then reads the same from any directory
    if cfg.train.dry_run:
        dry_run(cfg)
        return
    info = init_distributed(cfg.deepspeed.dist_timeout_s)
    lock = lock_run_dir(cfg.run_dir, info)  # first: nothing reads or writes the run before it
    stop_when_orphaned()
    started = False
    try:
        trainer = Trainer(cfg)
        started = True
        trainer.train()
    except NothingToTrain as done:
        print(done, flush=True)
    finally:
        if lock:
            # Every check comes before the first write, so a refused start leaves an existing
            # run as it was; a new one it made (half-prepared add-language data) goes entirely.
            lock.release(remove_new_run_dir=not started)
