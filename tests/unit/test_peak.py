"""The MFU denominator: datasheet peaks for known accelerators, a measured one elsewhere, and
no MFU above 100%."""

from __future__ import annotations

import re

import pytest
import torch

from xmod_pretrain.training.peak import (
    MIN_MATMUL_SIZE,
    Peak,
    PeakMeter,
    find_peak,
    measure_matmul_peak,
    vendor_peak,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("name, dtype, tf32, tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, True, 989.5),  # SXM
    ("NVIDIA H100 PCIe", torch.bfloat16, True, 756.5),
    ("NVIDIA H100 NVL", torch.float32, True, 417.5),
    ("NVIDIA H200", torch.bfloat16, True, 989.5),
    ("NVIDIA H200 NVL", torch.bfloat16, True, 835.5),
    ("NVIDIA A100-SXM4-80GB", torch.float32, True, 156.0),
    ("NVIDIA A100-PCIE-40GB", torch.float32, False, 19.5),
    ("NVIDIA L4", torch.bfloat16, True, 121.0),
    ("NVIDIA L40S", torch.bfloat16, True, 362.05),
    ("AMD Instinct MI300X", torch.bfloat16, True, 1307.4),
])
def test_known_accelerators_use_their_dense_datasheet_peak(name, dtype, tf32, tflops):
    flops, source = vendor_peak(name, dtype, tf32)
    assert flops == pytest.approx(tflops * 1e12)
    assert "datasheet" in source


def test_an_unknown_device_has_no_datasheet_peak():
    assert vendor_peak("Tesla V100-SXM2-16GB", torch.bfloat16, True) is None


def test_the_cpu_peak_is_measured_and_says_so():
    peak = find_peak(CPU, torch.float32, world_size=2, tf32=True)
    # 1024 unless one matmul outlasted a trial (a very busy machine): then a smaller size
    assert peak.measured and re.match(r"measured: float32 (\d+)x\1 matmul on cpu", peak.source)
    assert "x 2 rank(s)" in peak.source and peak.flops > 1e8


def test_a_matmul_slower_than_a_trial_is_measured_at_a_smaller_size():
    """A dtype this device runs slowly (bf16 on most CPUs) would hold every trial for seconds; a
    trial shorter than any matmul stands in for it, halving the size down to the floor."""
    flops, size = measure_matmul_peak(CPU, torch.float32, size=512, trials=2, seconds=1e-9)
    assert size == MIN_MATMUL_SIZE and flops > 0


def test_a_given_peak_is_per_rank_measures_nothing_and_is_never_raised():
    peak = find_peak(CPU, torch.float32, world_size=4, tf32=True, given_tflops=2.5)
    assert (peak.flops, peak.source, peak.measured) == (10e12, "train.peak_tflops=2.5 x 4 rank(s)",
                                                       False)
    meter = PeakMeter(peak, CPU, torch.float32, world_size=4)
    assert meter.mfu(20e12) == (pytest.approx(2.0), None) and meter.peak.flops == 10e12


def test_a_run_faster_than_its_measured_peak_raises_the_peak_not_mfu_above_one():
    low = Peak(1e6, "measured: a busy moment", measured=True)  # far below any real CPU
    meter = PeakMeter(low, CPU, torch.float32, world_size=1)
    mfu, warning = meter.mfu(5e7)
    assert mfu <= 1.0 and meter.peak.flops >= 5e7
    assert "above the 0.0 GFLOP/s peak measured at start" in warning
    assert meter.peak.source.endswith("raised during the run")
    assert meter.mfu(meter.peak.flops / 2) == (pytest.approx(0.5), None)


def test_a_datasheet_peak_is_never_changed():
    sheet = Peak(989.5e12, "NVIDIA H100 SXM datasheet", measured=False)
    meter = PeakMeter(sheet, CPU, torch.bfloat16, world_size=1)
    assert meter.mfu(494.75e12) == (pytest.approx(0.5), None)
    assert meter.peak.flops == 989.5e12
