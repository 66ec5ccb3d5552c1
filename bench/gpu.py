"""The accelerator check: xmod-base (81 languages, vocabulary 250002, 16 x 512 tokens) in bf16 on
one CUDA device, ours through our training engine (ZeRO-2, one process) eager, with compiled
layers, and eager with 1,000 languages registered (the step should cost what 81 cost), against transformers' XmodForMaskedLM + torch AdamW with bf16 weights, in one run:
tokens/s, MFU against the device's datasheet peak, peak device memory, and whether our step
makes the host wait (``set_sync_debug_mode``).

NOTE: transformers' X-MOD cannot train under bf16 autocast (what its Trainer's ``bf16=True``
does): ``lang_adapter`` writes bf16 module outputs into an fp32 tensor with ``index_put`` and
fails ("Index put requires the source and destination dtypes match", transformers 5.24). So its
weights and optimizer run in bf16 outright, with no fp32 master copy: less work and memory than
our engine's bf16 (fp32 master weights), which favours it.

Not in the default ``python -m bench`` list: ``python -m bench gpu`` on a CUDA machine. With
``--quick`` it runs the same code on the CPU at the quick size (what the tests run).
"""

from __future__ import annotations

import dataclasses
import sys
import traceback

import torch
import torch._dynamo
import transformers

from bench.common import (
    QUICK,
    Size,
    engine_config,
    engine_step,
    machine,
    masked_batch,
    rate,
    single_process_group,
    theirs_optimizer,
    theirs_step,
    time_steps,
)
from bench.throughput import QUICK_BACKEND
from xmod_pretrain.interop import hf_config
from xmod_pretrain.model.xmod import XmodForMaskedLM, model_flops_per_token
from xmod_pretrain.training.config import OptimConfig, Precision
from xmod_pretrain.training.engine import build_training_engine
from xmod_pretrain.training.peak import find_peak

BASE = Size("base", hidden=768, layers=12, heads=12, intermediate=3072, vocab=250002,
            languages=81, batch=16, seq=512)
RUNS = ("ours", "ours_compiled", "ours_1000_languages", "transformers")
MANY = 1000  # languages registered in the third run (its batch is still one language)


def run(quick: bool) -> dict:
    if not quick and not torch.cuda.is_available():  # xmod-base on a CPU would run for hours
        sys.exit("python -m bench gpu: no CUDA device here; it measures xmod-base on one GPU "
                 "(--quick runs the same code on the CPU at a tiny size)")
    device = torch.device("cpu" if quick else "cuda")
    size = QUICK if quick else BASE
    warmup, timed = (1, 2) if quick else (3, 10)
    batch = masked_batch(size)
    results = {"ours": measure_ours(size, batch, device, None, warmup, timed),
               "ours_compiled": measure_ours(size, batch, device,
                                             QUICK_BACKEND if quick else "inductor", warmup, timed),
               "ours_1000_languages": measure_ours(dataclasses.replace(size, languages=MANY),
                                                   batch, device, None, warmup, timed),
               "transformers": measure_theirs(size, batch, device, warmup, timed)}
    peak = find_peak(device, torch.bfloat16, world_size=1, tf32=True)
    flops = model_flops_per_token(size.model_config(), size.seq, batch.masked_fraction)
    for name in RUNS:
        results[name]["mfu"] = results[name]["per_s"] * flops / peak.flops
    return {"machine": machine(), "device": _device_name(device), "config": size.name,
            "precision": "bf16", "zero_stage": 2, "tokens_per_step": size.tokens,
            "flops_per_token": flops, "peak_flops": peak.flops, "peak_source": peak.source,
            "runs": results, "sync_check": sync_check(size, batch, device),
            "speedup_over_transformers": {name: results[name]["per_s"] /
                                          results["transformers"]["per_s"] for name in RUNS}}


def measure_ours(size: Size, batch, device: torch.device, backend: str | None, warmup: int,
                 timed: int) -> dict:
    """Our engine's step (ZeRO-2, bf16), eager or with layers compiled by ``backend``."""
    with single_process_group() as info:
        training = _engine(size, device, info)
        if backend is not None:
            training.deepspeed.module.compile_layers(backend=backend)
        step = _synced(engine_step(training, _on(batch, device)), device)
        _reset_memory(device)
        compile_s = time_steps(step, 0, 1)[0]
        result = {**rate(time_steps(step, warmup, timed), size.tokens),
                  "first_step_s": compile_s, "peak_memory_gib": _peak_memory(device)}
        del training, step
    torch._dynamo.reset()
    return result


def measure_theirs(size: Size, batch, device: torch.device, warmup: int, timed: int) -> dict:
    cfg = size.model_config()
    with torch.device(device):
        model = transformers.XmodForMaskedLM(transformers.XmodConfig(**hf_config(cfg)))
    model = model.to(torch.bfloat16).train()
    optimizer = theirs_optimizer(model, OptimConfig())
    step = _synced(theirs_step(model, optimizer, _on(batch, device)), device)
    _reset_memory(device)
    result = {**rate(time_steps(step, warmup, timed), size.tokens),
              "peak_memory_gib": _peak_memory(device)}
    del model, optimizer
    return result


def sync_check(size: Size, batch, device: torch.device) -> str:
    """Three of our engine's steps under ``torch.cuda.set_sync_debug_mode("error")``: "passed",
    or where the first host sync came from. Only on CUDA."""
    if device.type != "cuda":
        return "not run: no CUDA device"
    with single_process_group() as info:
        training = _engine(size, device, info)
        step = engine_step(training, _on(batch, device))
        step()  # the first step allocates and may sync; the check is of the steady state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                step()
            return "passed"
        except RuntimeError as err:
            where = traceback.extract_tb(err.__traceback__)[-2]
            return f"host sync at {where.filename}:{where.lineno} ({where.line}): {err}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
            del training


def _engine(size: Size, device: torch.device, info):
    with torch.device(device):
        model = XmodForMaskedLM(size.model_config())
    cfg = engine_config(size.model_config(), size.batch, zero_stage=2)
    cfg.train.precision = Precision.bf16
    return build_training_engine(model, cfg, info)


def _on(batch, device: torch.device):
    return type(batch)(batch.lang, *(t.to(device) for t in
                                     (batch.input_ids, batch.positions, batch.targets)))


def _synced(step, device: torch.device):
    """``step`` followed by a device sync, so that its time is the device's."""
    def synced() -> None:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return synced


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def report(result: dict) -> str:
    lines = [f"{result['config']} on {result['device']}, bf16, ZeRO-2, one process; "
             f"{result['tokens_per_step']} tokens a step; MFU peak "
             f"{result['peak_flops'] / 1e12:.4g} TFLOP/s ({result['peak_source']})",
             f"{'run':<20} {'tokens/s':>10} {'vs tf':>7} {'MFU':>7} {'first step s':>13} "
             f"{'peak GiB':>9}"]
    for name in RUNS:
        r = result["runs"][name]
        memory = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}"
        first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else "-"
        lines.append(f"{name:<20} {r['per_s']:>10,.0f} "
                     f"{result['speedup_over_transformers'][name]:>6.2f}x {r['mfu']:>7.1%} "
                     f"{first:>13} {memory:>9}")
    lines.append(f"sync check: {result['sync_check']}")
    return "\n".join(lines)
