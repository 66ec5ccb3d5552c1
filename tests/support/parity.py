"""Two runs that must have trained alike: their losses step for step and final weights."""

from __future__ import annotations

import pytest
import torch

from tests.support.launch import read_metrics
from xmod_pretrain.runs.records import open_run


def final_weights(run) -> dict[str, torch.Tensor]:
    return open_run(run).weights()


def assert_same_training(a, b, tol=2e-4) -> None:
    """Losses and final weights agree to fp32 tolerance. ZeRO-0 agrees to the last digit printed;
    ZeRO-1/2 reduce-scatter gradients in buckets, in another summation order, which moves the
    loss by about 4e-5 relative after a few steps."""
    (ta, _), (tb, _) = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in ta] == [r["step"] for r in tb]
    for x, y in zip(ta, tb):
        assert x["loss"] == pytest.approx(y["loss"], rel=tol), x["step"]
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=tol, atol=tol), key
