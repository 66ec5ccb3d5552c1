"""DeepSpeed's checkpoint files loaded without unpickling code."""

from __future__ import annotations

from collections import OrderedDict

import torch


def deepspeed_safe_globals() -> list:
    """The non-tensor types DeepSpeed puts in its checkpoint files, allowed for unpickling."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [OrderedDict, LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def use_weights_only_loading(engine) -> None:
    """Make DeepSpeed load its checkpoint files with ``torch.load(weights_only=True)``.

    NOTE: DeepSpeed's own engine calls ``torch.load(weights_only=False)``, which would run any code
    pickled into a checkpoint file. Ours only rebuilds tensors, containers and the few plain
    DeepSpeed types listed in ``deepspeed_safe_globals``.
    """
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(deepspeed_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    safe = WeightsOnlyCheckpointEngine()
    safe.zipfile_serialization = engine.checkpoint_engine.zipfile_serialization
    engine.checkpoint_engine = safe
    if hasattr(engine.optimizer, "checkpoint_engine"):
        engine.optimizer.checkpoint_engine = safe
