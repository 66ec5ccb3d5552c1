"""Weights between our model and a transformers X-MOD folder.

Our parameter names are transformers' (model/xmod.py), so the weights are a copy; tied decoder tensors
are stored once, under the name they are tied to (``model.TIED``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from xmod_core.errors import UserError
from xmod_pretrain.checkpoint.layout import WEIGHTS
from xmod_pretrain.interop.config import TransformersFolderError
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import TIED, XmodForMaskedLM
from xmod_pretrain.runs.records import RunCheckpoint

# In transformers checkpoints but not weights of a masked LM: XmodModel's pooler, and the
# position-id buffer that transformers saved before 4.31.
NOT_WEIGHTS = ("roberta.pooler.", "roberta.embeddings.position_ids")

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


class WeightMismatchError(UserError, ValueError):
    """Weights and model disagree: names missing, unexpected, or of the wrong shape."""


def model_weights(model: XmodForMaskedLM) -> dict[str, torch.Tensor]:
    """The model's tensors by transformers' name, each tied tensor once (as checkpoints hold them)."""
    return {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in TIED}


def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Name -> shape of every weight of a model with ``cfg`` (built on meta: no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in model_weights(XmodForMaskedLM(cfg)).items()}


def _listed(names: list[str], limit: int = 12) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_weights(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Size],
                  source: str | Path) -> None:
    """Raise WeightMismatchError naming every missing, unexpected or wrongly shaped weight."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{n} (has {list(found[n])}, model needs {list(expected[n])})"
                    for n in set(expected) & set(found) if found[n] != expected[n])
    problems = [f"{what} ({len(names)}): {_listed(names)}" for what, names in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if names]
    if problems:
        raise WeightMismatchError(f"{source}: weights do not fit the model:\n  " +
                                  "\n  ".join(problems))


def read_hf_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers folder: safetensors, or a .bin read with weights_only=True."""
    folder = Path(folder)
    name = next((n for n in HF_WEIGHT_FILES if (folder / n).is_file()), None)
    if name is None:
        raise TransformersFolderError(f"{folder} has no weights (looked for {', '.join(HF_WEIGHT_FILES)})")
    files = [folder / name]
    if name.endswith(".index.json"):  # sharded: the index maps each tensor to its shard
        weight_map = json.loads(files[0].read_text(encoding="utf-8"))["weight_map"]
        files = [folder / shard for shard in sorted(set(weight_map.values()))]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            state.update(load_file(str(file)))
        else:  # weights_only: a pickle could otherwise run code
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def drop_tied_copies(state: dict[str, torch.Tensor], source: Path) -> None:
    """Remove tied decoder tensors from ``state``; a copy that differs from its source is an error
    (this model cannot hold it: the decoder always reads the embeddings and ``lm_head.bias``)."""
    for copy, original in TIED.items():
        tensor = state.pop(copy, None)
        if tensor is not None and original in state and not torch.equal(tensor, state[original]):
            raise WeightMismatchError(f"{source}: {copy} differs from {original}, which this "
                                      "model ties it to")


def load_hf_weights(model: XmodForMaskedLM, folder: str | Path) -> None:
    """Copy every weight of a transformers X-MOD folder into ``model``, in place.

    Each of the model's weights must be there with its shape and nothing else may be, except
    XmodModel's pooler and tied copies; otherwise WeightMismatchError names each offender.
    The model's tensors must hold memory (not meta) and be whole: call it before DeepSpeed
    partitions them.
    """
    folder = Path(folder)
    state = {k: v for k, v in read_hf_weights(folder).items() if not k.startswith(NOT_WEIGHTS)}
    drop_tied_copies(state, folder)
    own = model_weights(model)
    check_weights({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in state.items()},
                  folder)
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])


def run_weights(run: RunCheckpoint) -> dict[str, torch.Tensor]:
    """A checkpoint's consolidated fp32 weights, checked against the model it was saved with."""
    weights = run.weights()
    check_weights(expected_shapes(run.config.model), {k: v.shape for k, v in weights.items()},
                  run.path / WEIGHTS)
    return weights
