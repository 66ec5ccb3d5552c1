"""The FLOP/s peak MFU divides by: the vendor's dense figure for a known accelerator, else a
measurement, and never below what the run itself achieved.

A small matmul timed once understates an H100's peak (it cannot fill the chip) and, on a busy
CPU, understates that too (MFU then read 122-143%). So a known accelerator uses its datasheet
figure, and a measured peak is raised when the model's own FLOP/s shows it was low.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

TERA = 1e12

# Dense tensor-core peaks per device, in TFLOP/s: (pattern matched in torch.cuda.get_device_name(),
# name, bf16, tf32, fp32 without tensor cores, source). Datasheets that quote "with sparsity"
# figures are halved to dense. More specific names come first ("H100 PCIe" before "H100"); the
# MI250X has no tf32, so its fp32 matrix peak stands in.
VENDOR_PEAKS: tuple[tuple[str, str, float, float, float, str], ...] = (
    (r"H200 NVL", "NVIDIA H200 NVL", 835.5, 417.5, 60.0, "NVIDIA H200 datasheet (NVL column)"),
    (r"H200", "NVIDIA H200 SXM", 989.5, 494.5, 67.0, "NVIDIA H200 datasheet (SXM column)"),
    (r"H100 NVL", "NVIDIA H100 NVL", 835.5, 417.5, 60.0, "NVIDIA H100 datasheet (NVL column)"),
    (r"H100 PCIe", "NVIDIA H100 PCIe", 756.5, 378.0, 51.0, "NVIDIA H100 datasheet (PCIe column)"),
    (r"H100", "NVIDIA H100 SXM", 989.5, 494.5, 67.0, "NVIDIA H100 datasheet (SXM column)"),
    (r"A100", "NVIDIA A100", 312.0, 156.0, 19.5, "NVIDIA A100 datasheet"),
    (r"L40S", "NVIDIA L40S", 362.05, 183.0, 91.6, "NVIDIA L40S datasheet"),
    (r"\bL4\b", "NVIDIA L4", 121.0, 60.0, 30.3, "NVIDIA L4 datasheet"),
    (r"MI300X", "AMD Instinct MI300X", 1307.4, 653.7, 163.4, "AMD Instinct MI300X datasheet"),
    (r"MI250X", "AMD Instinct MI250X", 383.0, 95.7, 95.7, "AMD Instinct MI250X datasheet"),
)


@dataclass
class Peak:
    """FLOP/s of all ranks together, and where the figure comes from (the log says it)."""

    flops: float
    source: str
    measured: bool  # a measurement (raised when the run outpaces it), not a datasheet figure


def vendor_peak(device_name: str, dtype: torch.dtype, tf32: bool) -> tuple[float, str] | None:
    """(FLOP/s of one device, source) of a known accelerator at ``dtype``; None if unknown."""
    for pattern, name, bf16, tf32_peak, fp32, source in VENDOR_PEAKS:
        if re.search(pattern, device_name):
            if dtype in (torch.bfloat16, torch.float16):
                return bf16 * TERA, f"{name} {source}, dense bf16/fp16"
            if tf32:
                return tf32_peak * TERA, f"{name} {source}, dense tf32"
            return fp32 * TERA, f"{name} {source}, fp32 (no tensor cores)"
    return None


MIN_MATMUL_SIZE = 128


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                        size: int = 1024, trials: int = 10,
                        seconds: float = 0.1) -> tuple[float, int]:
    """(achievable matmul FLOP/s of this process on ``device``, the matrix size used); 2 cores
    give about 200 GFLOP/s in fp32. The best of ``trials`` short trials, so a moment of
    contention from another process does not lower it; a longer contention does, which
    ``PeakMeter`` corrects later. The size halves (not below 128) while one matmul takes longer
    than a whole trial: a dtype without native support (bf16 on most CPUs) runs a
    1024-matmul for seconds, and ten trials would hold the start of a run for half a minute."""
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up: one-time costs (thread pool, allocation) are not timed
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        if time.perf_counter() - start <= seconds or size // 2 < MIN_MATMUL_SIZE:
            break
        size //= 2
    best = 0.0
    for _ in range(trials):
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < seconds:  # one matmul at least
            a @ b
            done += 1
        _synchronize(device)
        best = max(best, 2 * size**3 * done / (time.perf_counter() - start))
    return best, size


def _synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on ``device``: CUDA runs them asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def find_peak(device: torch.device, dtype: torch.dtype, world_size: int, tf32: bool,
              given_tflops: float | None = None) -> Peak:
    """``given_tflops`` (one rank's, from the config) if set, else the datasheet peak of a known
    accelerator, else a measurement on this process's device; times ``world_size`` (every rank
    runs the same device)."""
    if given_tflops is not None:
        return Peak(given_tflops * TERA * world_size,
                    f"train.peak_tflops={given_tflops:g} x {world_size} rank(s)", measured=False)
    if device.type == "cuda":
        known = vendor_peak(torch.cuda.get_device_name(device), dtype, tf32)
        if known is not None:
            flops, source = known
            return Peak(flops * world_size, f"{source} x {world_size} rank(s)", measured=False)
    flops, size = measure_matmul_peak(device, dtype)
    kind = str(dtype).removeprefix("torch.")
    return Peak(flops * world_size, f"measured: {kind} {size}x{size} matmul on {device.type}, best "
                f"of 10 x 0.1 s, x {world_size} rank(s)", measured=True)


class PeakMeter:
    """MFU against a peak that a run cannot exceed: when the model's FLOP/s pass a measured
    peak (measured while the machine was busy), the peak is re-measured, and at least what the
    run achieved is kept. A datasheet peak is never changed."""

    def __init__(self, peak: Peak, device: torch.device, dtype: torch.dtype, world_size: int):
        self.peak, self.device, self.dtype, self.world_size = peak, device, dtype, world_size

    def mfu(self, flops_per_s: float) -> tuple[float, str | None]:
        """(MFU, a warning when the peak was raised, else None)."""
        if not self.peak.measured or flops_per_s <= self.peak.flops:
            return flops_per_s / self.peak.flops, None
        old = self.peak.flops
        remeasured = measure_matmul_peak(self.device, self.dtype)[0] * self.world_size
        self.peak.flops = max(remeasured, flops_per_s)
        self.peak.source += "; raised during the run"
        return flops_per_s / self.peak.flops, (
            f"the model ran at {flops_per_s / 1e9:.1f} GFLOP/s, above the {old / 1e9:.1f} "
            f"GFLOP/s peak measured at start (the machine was busy then): the peak is now "
            f"{self.peak.flops / 1e9:.1f} GFLOP/s")
