"""What a failed training step means to the user: out of memory, an accelerator fault, a lost
peer, or a loss that is not finite."""

from __future__ import annotations

from pathlib import Path

import torch

from xmod_core.errors import UserError
from xmod_pretrain.training.distributed import DistInfo


class NonFiniteLoss(UserError, RuntimeError):
    """A NaN or inf loss: the run stops before it can be saved. A user error (the message names
    the steps and what to lower), so the command line prints it as one line; a RuntimeError, so
    that the loop's failure handling sees it as a failed step."""


class PeerLost(RuntimeError):
    """A collective failed with several ranks: a peer died or stopped responding."""


class OutOfMemory(UserError):
    """A step that does not fit in memory: the message says which step and what to lower."""


# Errors of the accelerator itself, not of a lost peer: reported as they are.
ACCELERATOR_ERRORS = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "NCCL error", "HIP error")


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
