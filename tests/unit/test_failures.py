"""What a failed step is called: out of memory, an accelerator error, or a lost peer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.failures import NonFiniteLoss, OutOfMemory, PeerLost, classify_failure

TWO_RANKS, ONE_RANK = DistInfo(1, 2, 1, 2), DistInfo(0, 1, 0, 1)
LATEST = Path("runs/x/checkpoints/step_00000200")


def classify(err: RuntimeError, info: DistInfo = TWO_RANKS, latest: Path | None = LATEST):
    return classify_failure(err, info, 201, (16, 512), latest)


@pytest.mark.parametrize("err", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 68719476736 bytes"),
])
@pytest.mark.parametrize("info", [TWO_RANKS, ONE_RANK])
def test_out_of_memory_names_the_step_the_shape_and_what_to_lower(err, info):
    failure = classify(err, info)
    assert isinstance(failure, OutOfMemory)  # a user error: one line, not "a peer died"
    text = str(failure)
    assert f"rank {info.rank}: out of memory in step 201, micro-batches of 16 x 512 tokens" in text
    assert "train.micro_batch_size" in text and "deepspeed=zero3" in text
    assert text.endswith(f"then resume from {LATEST}")
    assert classify(err, info, latest=None).args[0].endswith("the run has no checkpoint yet")


def test_accelerator_errors_and_nan_keep_their_own_report():
    for err in (RuntimeError("CUDA error: an illegal memory access was encountered"),
                RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"),
                NonFiniteLoss("loss is nan at step 3")):
        assert classify(err) is err


def test_another_failure_with_several_ranks_is_a_lost_peer_and_alone_is_itself():
    err = RuntimeError("Connection closed by peer [127.0.0.1]:29500")
    lost = classify(err)
    assert isinstance(lost, PeerLost) and "a peer process died" in str(lost)
    assert str(LATEST) in str(lost)
    assert classify(err, ONE_RANK) is err
