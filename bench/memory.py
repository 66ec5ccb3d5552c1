"""Memory per rank of xmod-base's training state under ZeRO 0-3, from the sharding, checked
against the tensors our DeepSpeed engine and language store really hold for a tiny model.

Per element of the shared weights: fp32 training keeps params 4 B, grads 4 B and Adam's m and v
8 B; ZeRO-1 shards the optimizer state, ZeRO-2 the grads too, ZeRO-3 the params too. The language
modules live outside DeepSpeed, whole on every rank, in fp32 (params and m and v: 12 B, and 4 B of
grads for the step's languages only, freed by the step). DeepSpeed's ZeRO optimizers also
keep an fp32 copy of each rank's partition (the "master" weights) even when training in fp32;
the measurement below shows it, so the formula counts it (4 B / ranks from ZeRO-1 on). bf16
keeps bf16 params and grads beside an fp32 master copy and fp32 m and v. Activations and
DeepSpeed's communication buckets are not counted: they do not scale with the parameters.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench.common import (
    Size,
    bar_chart,
    engine_config,
    engine_step,
    machine,
    masked_batch,
    single_process_group,
)
from xmod_pretrain.config import CONF_DIR
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM, count_parameters
from xmod_pretrain.training.config import ModuleState, OptimConfig
from xmod_pretrain.training.engine import build_training_engine

STAGES = (0, 1, 2, 3)
RANKS = (1, 2, 4, 8)
BYTES = {"fp32": {"params": 4, "grads": 4, "master": 4, "adam": 8},
         "bf16": {"params": 2, "grads": 2, "master": 4, "adam": 8}}
MODULE_BYTES = 12  # a module element: fp32 param, m and v (its grad lives during a step only)
PERSISTENT = ("params", "master", "adam", "modules")  # what outlives a step; grads are freed
TINY = Size("tiny", hidden=64, layers=2, heads=4, intermediate=128, vocab=1002, languages=3,
            batch=2, seq=16)
# optim.module_state: xmod-base's modules on the device per rank at these registered counts,
# a step of STEP_LANGUAGES languages (8 ranks, one language each); the tiny model measured with
# PRESENT languages cycling.
MODULE_STATES = ("device", "host")
REGISTERED = (81, 500, 2000)
STEP_LANGUAGES = 8
PRESENT = 4
TOLERANCE = 0.02  # measured vs formula (flat buffers are padded for alignment)
GIB = 2**30


def per_rank(shared: int, modules: int, stage: int, ranks: int,
             precision: str) -> dict[str, float]:
    """Bytes per rank of each part of the training state: ``shared`` elements in DeepSpeed,
    ``modules`` elements (every language's, all with Adam state) in the language store."""
    size = BYTES[precision]

    def part(name: str, sharded: bool) -> float:
        return shared * size[name] / (ranks if sharded else 1)

    # fp32 without ZeRO steps the model's own params: no separate master copy.
    master = 0.0 if precision == "fp32" and stage == 0 else part("master", stage >= 1)
    return {"params": part("params", stage >= 3), "grads": part("grads", stage >= 2),
            "master": master, "adam": part("adam", stage >= 1), "modules": modules * MODULE_BYTES}


def split_parameters(cfg: ModelConfig) -> tuple[int, int]:
    """(shared elements, every language module's elements) of ``cfg``."""
    total, active = count_parameters(cfg)
    module = (total - active) // (len(cfg.languages) - 1)
    return active - module, total - active + module


def base_config() -> ModelConfig:
    """conf/model/base.yaml, typed (81 languages, XLM-R's vocabulary)."""
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                             OmegaConf.load(Path(CONF_DIR) / "model" / "base.yaml"))
    return OmegaConf.to_object(merged)


def table(shared: int, modules: int, precision: str) -> dict[str, dict[str, float]]:
    """GiB per rank: {"ZeRO-s": {"n ranks": GiB}}."""
    return {f"ZeRO-{s}": {f"{n} ranks": sum(per_rank(shared, modules, s, n, precision).values())
                          / GIB for n in RANKS} for s in STAGES}


def measure_tiny(stage: int) -> dict:
    """Bytes of the engine's params, fp32 partitions and optimizer state after one step of a
    tiny model at world size 1, beside the formula's. Every module is stepped (as after a run
    long enough for every language to appear), so Adam has state for every parameter."""
    cfg = TINY.model_config()
    shared, modules = split_parameters(cfg)
    batch = masked_batch(TINY)
    torch.manual_seed(0)
    model = XmodForMaskedLM(cfg)
    config = engine_config(cfg, TINY.batch, stage)
    config.optim = OptimConfig(update_absent_languages=True)
    with single_process_group() as info:
        training = build_training_engine(model, config, info)
        engine_step(training, batch)()
        store = training.store
        measured = sum(_storage_bytes(
            _state_tensors(model, training.deepspeed.optimizer)
            + _state_tensors(torch.nn.ParameterList(store.named.values()), store.optimizer)
        ).values())
        del training
    parts = per_rank(shared, modules, stage, 1, "fp32")
    formula = sum(v for k, v in parts.items() if k in PERSISTENT)
    # The ZeRO paper's fp32 accounting (params + m + v, no master copy), for comparison.
    textbook = parts["params"] + parts["adam"] + parts["modules"]
    return {"zero_stage": stage, "numel": shared + modules, "measured_bytes": measured,
            "formula_bytes": formula, "relative_difference": (measured - formula) / formula,
            "without_master_relative_difference": (measured - textbook) / textbook}


def _state_tensors(model: torch.nn.Module, optimizer) -> list[torch.Tensor]:
    """Params (ZeRO-3: their partitions too), DeepSpeed's fp32 partitions, Adam's m and v."""
    tensors = [t for p in model.parameters() for t in (p.data, getattr(p, "ds_tensor", None))]
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        tensors += list(getattr(optimizer, attr, []))
    inner = getattr(optimizer, "optimizer", optimizer)
    tensors += [v for state in inner.state.values() for k, v in state.items() if k != "step"]
    return tensors


def _storage_bytes(tensors: list[torch.Tensor | None]) -> dict[int, int]:
    """Bytes of each distinct storage: views (params inside DeepSpeed's flat buffers, tied
    weights) count once."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in tensors if t is not None and t.numel() > 0}


def modules_on_device(module: int, registered: int, state: str, per_step: int) -> float:
    """Bytes of language-module state a rank holds on the device, ``module`` elements a
    language: with optim.module_state=device every registered language's weights and AdamW
    moments; with host those of the step's languages and the next step's (fetched ahead). The
    step's gradients (4 B an element) come and go in both."""
    held = registered if state == "device" else min(registered, 2 * per_step)
    return held * module * MODULE_BYTES + per_step * module * 4


def measure_modules(registered: int, state: str) -> dict:
    """Module bytes on the device after steps cycling over PRESENT languages (each stepped
    twice, one a step, the next one fetched ahead), tiny model, one rank, ZeRO-2, beside the
    persistent part of the formula (device: every language's weights and the stepped ones'
    moments; host: the two resident languages', all three)."""
    size = dataclasses.replace(TINY, languages=registered)
    cfg = size.model_config()
    config = engine_config(cfg, size.batch, 2)
    config.optim = OptimConfig(module_state=ModuleState(state))
    torch.manual_seed(0)
    order = [i % PRESENT for i in range(2 * PRESENT)]
    with single_process_group() as info:
        training = build_training_engine(XmodForMaskedLM(cfg), config, info)
        store = training.store
        for k, lang in enumerate(order):
            upcoming = [cfg.languages[order[(k + 1) % len(order)]]]
            engine_step(training, masked_batch(size, k, lang), upcoming)()
        measured = store.module_bytes()["device"]
        module = sum(p.numel() for _, p in store.by_language[cfg.languages[0]])
        del training, store
    formula = (registered * module * 4 + PRESENT * module * 8 if state == "device"
               else 2 * module * MODULE_BYTES)
    return {"module_state": state, "registered": registered, "measured_bytes": measured,
            "formula_bytes": formula, "relative_difference": (measured - formula) / formula}


def run(quick: bool) -> dict:
    base = base_config()
    numel, active = count_parameters(base)
    shared, modules = split_parameters(base)
    measured = [measure_tiny(stage) for stage in STAGES]
    paged = [measure_modules(n, state) for state in MODULE_STATES
             for n in (REGISTERED[:1] + REGISTERED[-1:] if quick else REGISTERED)]
    worst = max(abs(m["relative_difference"]) for m in measured + paged)
    module = modules // len(base.languages)
    return {"machine": machine(), "base": {"parameters": numel, "active_per_language": active,
                                           "languages": len(base.languages)},
            "gib_per_rank": {p: table(shared, modules, p) for p in BYTES},
            "modules_gib": modules * MODULE_BYTES / GIB,
            "parts_per_rank_1": {p: {f"ZeRO-{s}": per_rank(shared, modules, s, 1, p)
                                     for s in STAGES}
                                 for p in BYTES},
            "module_gib_per_rank": {
                state: {n: modules_on_device(module, n, state, STEP_LANGUAGES) / GIB
                        for n in REGISTERED} for state in MODULE_STATES},
            "step_languages": STEP_LANGUAGES, "measured_modules_tiny": paged,
            "measured_tiny": measured, "worst_relative_difference": worst,
            "tolerance": TOLERANCE, "formula_matches": worst <= TOLERANCE}


def markdown(gib: dict[str, dict[str, float]]) -> str:
    ranks = list(next(iter(gib.values())))
    rows = ["| stage | " + " | ".join(ranks) + " |", "|---|" + "---:|" * len(ranks)]
    rows += [f"| {stage} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |"
             for stage, row in gib.items()]
    return "\n".join(rows)


def module_markdown(gib: dict[str, dict[int, float]]) -> str:
    counts = list(next(iter(gib.values())))
    rows = ["| optim.module_state | " + " | ".join(f"{n:,} languages" for n in counts) + " |",
            "|---|" + "---:|" * len(counts)]
    rows += [f"| {state} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |"
             for state, row in gib.items()]
    return "\n".join(rows)


def report(result: dict) -> str:
    base = result["base"]
    lines = [(f"xmod-base: {base['parameters']:,} parameters ({base['languages']} languages); "
             "GiB per rank for params + grads + optimizer state")]
    for precision, gib in result["gib_per_rank"].items():
        lines += [f"\n{precision}:", markdown(gib)]
    lines.append("\nmeasured, tiny model, 1 rank (params + fp32 partitions + Adam state):")
    lines += [f"  ZeRO-{m['zero_stage']}: {m['measured_bytes']:,} B measured, "
              f"{m['formula_bytes']:,.0f} B formula ({m['relative_difference']:+.2%}; "
              f"{m['without_master_relative_difference']:+.1%} against the formula without "
              "DeepSpeed's fp32 master copy)"
              for m in result["measured_tiny"]]
    lines += [f"\nlanguage modules on the device per rank (GiB, fp32, {result['step_languages']} "
              "languages a step):", module_markdown(result["module_gib_per_rank"])]
    lines.append("measured, tiny model, 1 rank (module weights and AdamW moments on the device):")
    lines += [f"  module_state={m['module_state']}, {m['registered']:,} languages: "
              f"{m['measured_bytes']:,} B measured, {m['formula_bytes']:,.0f} B formula "
              f"({m['relative_difference']:+.2%})" for m in result["measured_modules_tiny"]]
    lines.append(f"formula within {result['tolerance']:.0%}: {result['formula_matches']}")
    return "\n".join(lines)


def plot(result: dict, out_dir: Path) -> list[Path]:
    gib = result["gib_per_rank"]["fp32"]
    return [bar_chart(out_dir / "memory.png", "xmod-base training state per rank, fp32",
                      "GiB per rank", gib)]
