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


# Names as torch.cuda.get_device_name() reports them, and the datasheet column each belongs to: a
# generic pattern ("H100", "L4") listed before a specific one would take the specific card.
REPORTED = [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA L4", "NVIDIA L4 "), ("NVIDIA L40S", "L40S"),
    ("AMD Instinct MI300X", "MI300X"),
]


@pytest.mark.parametrize("name, column", REPORTED)
def test_a_reported_device_name_finds_its_own_datasheet_column(name, column):
    for dtype, tf32 in ((torch.bfloat16, True), (torch.float32, True), (torch.float32, False)):
        _, source = vendor_peak(name, dtype, tf32)
        assert column in source and "datasheet" in source, (name, source)


@pytest.mark.parametrize("name", [name for name, _ in REPORTED])
def test_narrower_numbers_never_have_a_lower_peak(name):
    """bf16 tensor cores >= tf32 tensor cores >= fp32 without them: a swapped column would make
    a bf16 run's MFU look higher than an fp32 run's at the same speed."""
    bf16, _ = vendor_peak(name, torch.bfloat16, True)
    tf32, _ = vendor_peak(name, torch.float32, True)
    fp32, _ = vendor_peak(name, torch.float32, False)
    assert bf16 >= tf32 >= fp32 > 1e12


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
