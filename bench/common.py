"""What the benchmarks share: the machine, step timing, the paired models, results and plots.

"Ours" is the trainer's step: ``XmodForMaskedLM`` with ``build_optimizer``'s AdamW, alone,
with its layers compiled (``compile_layers``), and inside our DeepSpeed engine (ZeRO-0, one
process). "Theirs" is transformers' ``XmodForMaskedLM``
with ``torch.optim.AdamW``, loaded with the same weights and given the same masked batch. Both
run fp32 in train mode (dropout on), one step = forward + backward + optimizer step + zero_grad.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch._dynamo
import transformers

from xmod_core.languages import XMOD_BASE_LANGUAGES
from xmod_core.tokenizer import BOS_ID, EOS_ID
from xmod_pretrain.config import Config
from xmod_pretrain.data.config import MaskingConfig
from xmod_pretrain.data.masking import Masker
from xmod_pretrain.interop import hf_config
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.training.config import DeepSpeedConfig, OptimConfig, TrainConfig
from xmod_pretrain.training.distributed import DistInfo, init_distributed
from xmod_pretrain.training.engine import TrainingEngine, build_training_engine
from xmod_pretrain.training.optim import build_optimizer

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = RESULTS_DIR.parent.parent

Step = Callable[[], None]


# ---- the machine ------------------------------------------------------------------------------

def machine() -> dict:
    """What the figures were measured on; every result carries it."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for a while. Quick runs use one: their ops are
    so small that, on a busy machine, two threads spend more time waiting for each other (every
    op synchronises them) than computing."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# ---- timing -----------------------------------------------------------------------------------

def time_steps(step: Step, warmup: int, timed: int) -> list[float]:
    """Seconds of each of ``timed`` calls of ``step``, after ``warmup`` untimed ones (these pay
    for first allocations, Adam's lazily created state and DeepSpeed's one-off work)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def rate(times: list[float], work: float) -> dict:
    """Median step time and ``work`` (tokens, bytes) per second at that median."""
    median = statistics.median(times)
    return {"median_s": median, "per_s": work / median, "times_s": times}


def target(value: float, goal: float) -> dict:
    """A figure beside its target: met when ``value >= goal``."""
    return {"value": value, "goal": goal, "met": bool(value >= goal)}


# ---- configurations and batches ---------------------------------------------------------------

def language_codes(count: int) -> list[str]:
    """The xmod-base languages, then made-up codes (xaa_XX, xab_XX, ..., xaa_XA, ...) beyond."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    made_up = (f"x{a}{b}_X{region}" for region in "X" + letters.upper().replace("X", "")
               for a, b in itertools.product(letters, repeat=2))
    return list(itertools.islice(itertools.chain(XMOD_BASE_LANGUAGES, made_up), count))


@dataclass(frozen=True)
class Size:
    """A model and batch shape to benchmark, with ``languages`` languages: xmod-base's first,
    then made-up codes (``language_codes``)."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    languages: int
    batch: int
    seq: int

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab, hidden_size=self.hidden,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           intermediate_size=self.intermediate,
                           languages=language_codes(self.languages))

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


SMALL = Size("small", hidden=256, layers=4, heads=4, intermediate=1024, vocab=250002,
             languages=81, batch=8, seq=128)
# Twice as wide and deep as SMALL: the encoder, not the vocabulary, dominates the FLOPs.
MID = Size("mid", hidden=512, layers=8, heads=8, intermediate=2048, vocab=250002,
           languages=81, batch=8, seq=128)
QUICK = Size("quick", hidden=32, layers=2, heads=4, intermediate=64, vocab=1002,
             languages=3, batch=2, seq=16)


@dataclass
class Batch:
    """One language's masked micro-batch, in both models' forms."""

    lang: int
    input_ids: torch.Tensor  # [B, S], masking applied
    positions: torch.Tensor  # [M] flat indices of the masked tokens
    targets: torch.Tensor  # [M] their original ids

    @property
    def labels(self) -> torch.Tensor:
        """transformers' form: the targets at their positions, -100 (ignored) elsewhere."""
        labels = torch.full((self.input_ids.numel(),), -100, dtype=torch.long)
        labels[self.positions] = self.targets
        return labels.view_as(self.input_ids)

    @property
    def masked_fraction(self) -> float:
        return len(self.positions) / self.input_ids.numel()


def masked_batch(size: Size, seed: int = 0, lang: int = 1) -> Batch:
    """Random tokens in ``<s> ... </s>`` windows, masked by the trainer's own Masker (15%)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(EOS_ID + 2, size.vocab - 1, size=(size.batch, size.seq))
    tokens[:, 0], tokens[:, -1] = BOS_ID, EOS_ID
    inputs, positions, targets = (torch.from_numpy(a) for a in
                                  Masker(MaskingConfig(), size.vocab)(tokens, rng))
    return Batch(lang, inputs, positions, targets)


# ---- the paired models ------------------------------------------------------------------------

def ours_step(model: XmodForMaskedLM, optimizer: torch.optim.Optimizer, batch: Batch) -> Step:
    # The trainer tells our AdamW which languages the step holds; the others are not stepped.
    optimizer.present = frozenset({model.languages[batch.lang]})

    def step() -> None:
        loss = model(batch.input_ids, batch.lang, batch.positions, batch.targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def engine_step(training: TrainingEngine, batch: Batch, upcoming: Sequence[str] = ()) -> Step:
    """The trainer's calls: the step's start (``upcoming``: the next step's languages), the
    forward, the backward, the modules' reduction and both optimizers' steps (which zero the
    gradients), for a step of one micro-batch."""
    present = [training.deepspeed.module.languages[batch.lang]]

    def step() -> None:
        training.begin_step(present, upcoming)
        loss = training(input_ids=batch.input_ids, lang=batch.lang,
                        mlm_positions=batch.positions, mlm_targets=batch.targets).loss
        training.backward(loss)
        training.micro_step(present, last=True)
    return step


def theirs_step(model: transformers.XmodForMaskedLM, optimizer: torch.optim.Optimizer,
                batch: Batch) -> Step:
    lang_ids = torch.full((batch.input_ids.size(0),), batch.lang)
    labels = batch.labels

    def step() -> None:
        loss = model(input_ids=batch.input_ids, lang_ids=lang_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def theirs_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """torch's AdamW with its defaults, except the hyper-parameters ours uses."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def engine_config(cfg: ModelConfig, micro_batch: int, zero_stage: int = 0) -> Config:
    return Config(model=cfg, deepspeed=DeepSpeedConfig(zero_stage=zero_stage),
                  train=TrainConfig(micro_batch_size=micro_batch))


@contextlib.contextmanager
def single_process_group() -> Iterator[DistInfo]:
    """The trainer's process group as a world of one, in this process.

    The group, once made, stays for the life of the process: DeepSpeed caches its groups, and
    an engine built after the group was destroyed and made again fails. The environment it
    sets (RANK, MASTER_PORT, ...) is restored on leaving, so that subprocesses started later
    do not take themselves for rank 0 of this group (and try to bind its port).
    """
    saved = dict(os.environ)
    try:
        yield init_distributed(timeout_s=600)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def in_child(fn: Callable, *args):
    """``fn(*args)`` in a fresh process, its result returned. A DeepSpeed engine is never freed
    in the process that built it (its parameters' gradient hooks hold it), so a benchmark that
    builds many engines of full size builds each batch of them in a child of its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def measure_pair(size: Size, warmup: int, timed: int, compile_backend: str = "inductor") -> dict:
    """Tokens/s of ours (model + optimizer), ours with compiled layers (``compile_backend``),
    ours through the engine, and transformers', one after the other (all at once would not fit
    beside other work), from the same weights. The compiled run's first step, which compiles,
    is timed apart (``compile_s``)."""
    cfg, batch, optim = size.model_config(), masked_batch(size), OptimConfig()
    torch.manual_seed(0)
    model = XmodForMaskedLM(cfg).train()
    weights = copy.deepcopy(model.state_dict())
    step = ours_step(model, build_optimizer(model.named_parameters(), optim), batch)
    timings = {"ours": time_steps(step, warmup, timed)}
    model.load_state_dict(weights)
    model.compile_layers(backend=compile_backend)
    step = ours_step(model, build_optimizer(model.named_parameters(), optim), batch)
    compile_s = time_steps(step, 0, 1)[0]
    timings["ours_compiled"] = time_steps(step, max(warmup - 1, 0), timed)
    del model, step
    torch._dynamo.reset()
    with single_process_group() as info:
        model = XmodForMaskedLM(cfg)
        model.load_state_dict(weights)
        training = build_training_engine(model, engine_config(cfg, size.batch), info)
        timings["ours_engine"] = time_steps(engine_step(training, batch), warmup, timed)
        del training, model
    # The config.json our export writes: the same mapping users load models with.
    theirs = transformers.XmodForMaskedLM(transformers.XmodConfig(**hf_config(cfg))).train()
    theirs.load_state_dict(weights, strict=True)
    timings["transformers"] = time_steps(
        theirs_step(theirs, theirs_optimizer(theirs, optim), batch), warmup, timed)
    rates = {name: rate(times, size.tokens) for name, times in timings.items()}
    return {"size": dataclasses.asdict(size), "tokens_per_step": size.tokens,
            "masked_fraction": batch.masked_fraction, "warmup_steps": warmup,
            "compile_backend": compile_backend, "compile_s": compile_s, **rates}


# ---- results ----------------------------------------------------------------------------------

def write_json(result: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def bar_chart(path: Path, title: str, ylabel: str, groups: dict[str, dict[str, float]]) -> Path:
    """Grouped bars: one group per key of ``groups``, one bar per series inside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = list(next(iter(groups.values())))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(series):
        xs = [g + i * width for g in range(len(groups))]
        values = [groups[g][name] for g in groups]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], list(groups))
    ax.set(title=title, ylabel=ylabel)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
