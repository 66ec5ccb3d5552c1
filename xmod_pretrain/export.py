"""A run's model to and from transformers' X-MOD format.

Export (``xmod_pretrain export --from RUN_DIR --out DIR``) writes a folder that
``transformers.AutoModelForMaskedLM`` and ``AutoTokenizer`` load as they are::

    config.json          an XmodConfig: the run's languages in module order, default_language
    model.safetensors    every weight under transformers' name, fp32, each tied tensor once
    tokenizer.json, sentencepiece.bpe.model, tokenizer_config.json, special_tokens_map.json

Our parameter names are transformers' (model.py), so the weights are a copy; what needs care is the
config (``XmodConfig``'s defaults are not XLM-R's) and the tokenizer (hf_tokenizer.py).

Import, for ``init_from=PATH`` (a transformers X-MOD folder such as a copy of facebook/xmod-base):
``model_config_from_hf``, ``load_hf_weights`` and ``hf_tokenizer_file``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from xmod_core.atomic import atomic_path, follow_umask, write_text
from xmod_core.errors import UserError
from xmod_core.languages import check_language_list, language_index
from xmod_core.outputs import new_output_dir
from xmod_core.tokenizer import BOS_ID, EOS_ID, Tokenizer
from xmod_pretrain.checkpoint import WEIGHTS
from xmod_pretrain.config import Config, ModelConfig
from xmod_pretrain.hf_tokenizer import SENTENCEPIECE_FILE, write_tokenizer_files
from xmod_pretrain.model import XmodForMaskedLM
from xmod_pretrain.runs import RunCheckpoint, open_run

HF_CONFIG = "config.json"
# Decoder tensors tied to others: stored once, under the name they are tied to.
TIED = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias"}
# In transformers checkpoints but not weights of a masked LM: XmodModel's pooler, and the
# position-id buffer that transformers saved before 4.31.
NOT_WEIGHTS = ("roberta.pooler.", "roberta.embeddings.position_ids")
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
# transformers' XmodConfig defaults for our fields: what a config.json means when it omits one.
# Some differ from ours (layer_norm_eps 1e-12, 512 positions), so export writes every field.
XMOD_CONFIG_DEFAULTS = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, layer_norm_eps=1e-12, initializer_range=0.02,
    pad_token_id=1, adapter_reduction_factor=2, pre_norm=False, ln_before_adapter=True,
    adapter_layer_norm=False, adapter_reuse_layer_norm=True, languages=["en_XX"],
)
# XmodConfig settings our model implements one way only: (default when omitted, required value).
FIXED_SETTINGS = {
    "hidden_act": ("gelu", "gelu"), "type_vocab_size": (2, 1),
    "position_embedding_type": ("absolute", "absolute"), "tie_word_embeddings": (True, True),
    "is_decoder": (False, False), "add_cross_attention": (False, False),
}


class TransformersFolderError(UserError, FileNotFoundError, ValueError):
    """A folder that is not a transformers X-MOD model this code can read: a file is missing, or
    its config asks for something the model does not implement."""


class WeightMismatchError(UserError, ValueError):
    """Weights and model disagree: names missing, unexpected, or of the wrong shape."""


# ---- weights ---------------------------------------------------------------------------------


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


# ---- export ----------------------------------------------------------------------------------


def hf_config(cfg: ModelConfig, default_language: str | None = None) -> dict:
    """config.json for transformers' XmodConfig: every field explicit, XLM-R's special ids."""
    languages = list(cfg.languages)
    default = languages[language_index(languages, default_language or languages[0])]
    ours = {f.name: getattr(cfg, f.name) for f in fields(ModelConfig)}
    return {
        "architectures": ["XmodForMaskedLM"], "model_type": "xmod", **ours,
        "languages": languages, "default_language": default,
        **{key: required for key, (_, required) in FIXED_SETTINGS.items()},
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
    }


def _write_folder(weights: Mapping[str, torch.Tensor], cfg: ModelConfig,
                  tokenizer_path: str | Path, out_dir: str | Path,
                  default_language: str | None) -> None:
    """Write config.json, model.safetensors and the tokenizer files into ``out_dir``."""
    out_dir = Path(out_dir)
    config = hf_config(cfg, default_language)  # first: an unknown default language writes nothing
    # Real tokens take positions pad+1 .. pad+L, so L stops below the table size (512 of 514).
    write_tokenizer_files(tokenizer_path, out_dir, cfg.max_position_embeddings - cfg.pad_token_id - 1)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in weights.items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        follow_umask(tmp)
    write_text(out_dir / HF_CONFIG, json.dumps(config, indent=2) + "\n")


def export_model(model: XmodForMaskedLM, tokenizer_path: str | Path, out_dir: str | Path,
                 default_language: str | None = None) -> None:
    """Write a transformers X-MOD folder for an in-memory model and its SentencePiece model.

    ``default_language`` (the first language when None) is what transformers uses when a forward
    gets no ``lang_ids``.
    """
    _write_folder(model_weights(model), model.config, tokenizer_path, out_dir, default_language)


def run_weights(run: RunCheckpoint) -> dict[str, torch.Tensor]:
    """A checkpoint's consolidated fp32 weights, checked against the model it was saved with."""
    weights = run.weights()
    check_weights(expected_shapes(run.config.model), {k: v.shape for k, v in weights.items()},
                  run.path / WEIGHTS)
    return weights


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None,
               default_language: str | None = None, overwrite: bool = False) -> RunCheckpoint:
    """Export a run's latest checkpoint (or that of ``step``) as a transformers X-MOD folder;
    return the checkpoint exported. ``out_dir`` must be new or empty unless ``overwrite``, and
    never a run or inside one's checkpoints.

    Reads only the checkpoint's consolidated ``model.safetensors``, so a ZeRO-3 run exports the
    same way, and nothing pickled is ever loaded.
    """
    with new_output_dir(out_dir, overwrite) as out:
        run = open_run(run_dir, step)
        _write_folder(run_weights(run), run.config.model, run.tokenizer, out, default_language)
    return run


# ---- import ----------------------------------------------------------------------------------


def model_config_from_hf(folder: str | Path) -> ModelConfig:
    """The ModelConfig of a transformers X-MOD folder's config.json, languages in its order.

    Omitted keys mean transformers' XmodConfig defaults, as they do for transformers. Settings
    our model has no switch for (a second token type, another activation) raise ValueError.
    """
    path = Path(folder) / HF_CONFIG
    if not path.is_file():
        raise TransformersFolderError(f"{folder} has no {HF_CONFIG}: not a transformers model folder")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("model_type") != "xmod":
        raise TransformersFolderError(f"{path}: model_type is {raw.get('model_type')!r}, not 'xmod'")
    for key, (default, required) in FIXED_SETTINGS.items():
        if raw.get(key, default) != required:
            raise TransformersFolderError(f"{path}: {key} is {raw.get(key, default)!r}; this model supports "
                             f"only {required!r}")
    values = {key: raw.get(key, default) for key, default in XMOD_CONFIG_DEFAULTS.items()}
    factor = values["adapter_reduction_factor"]
    if factor != int(factor):
        raise TransformersFolderError(f"{path}: adapter_reduction_factor {factor} is not a whole number")
    values["adapter_reduction_factor"] = int(factor)
    values["languages"] = check_language_list(values["languages"], str(path))
    return ModelConfig(**values)


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


def _drop_tied_copies(state: dict[str, torch.Tensor], source: Path) -> None:
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
    _drop_tied_copies(state, folder)
    own = model_weights(model)
    check_weights({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in state.items()},
                  folder)
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])


class HFCheckpoint(RunCheckpoint):
    """A transformers X-MOD folder seen as a run's checkpoint, so add-language can grow it."""

    def weights(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in read_hf_weights(self.path).items() if not k.startswith(NOT_WEIGHTS)}
        _drop_tied_copies(state, self.path)
        return state


def open_hf_folder(folder: str | Path) -> HFCheckpoint:
    """A transformers folder as a read-only checkpoint: its config, languages and tokenizer."""
    folder = Path(folder)
    model_cfg = model_config_from_hf(folder)
    config = Config(run_dir=str(folder), model=model_cfg)
    return HFCheckpoint(run_dir=folder, path=folder, config=config, languages=model_cfg.languages,
                        tokenizer=hf_tokenizer_file(folder), trainer_state={"step": 0})


def is_hf_folder(path: str | Path) -> bool:
    """A transformers folder (config.json, no checkpoints/) rather than a run directory."""
    return (Path(path) / "config.json").is_file() and not (Path(path) / "checkpoints").exists()


def hf_tokenizer_file(folder: str | Path) -> Path:
    """The folder's ``sentencepiece.bpe.model``, checked to be in XLM-R's id layout."""
    path = Path(folder) / SENTENCEPIECE_FILE
    if not path.is_file():
        raise TransformersFolderError(f"{folder} has no {SENTENCEPIECE_FILE}: the SentencePiece model "
                                "is needed to keep the folder's token ids")
    Tokenizer.from_file(path)  # a model in another id layout fails here, not mid-training
    return path


# ---- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``xmod_pretrain export --from RUN_DIR --out DIR [--step N] [--default-language CODE]``."""
    parser = argparse.ArgumentParser(
        prog="xmod_pretrain export",
        description="Write a run's checkpoint as a transformers X-MOD folder "
                    "(AutoModelForMaskedLM / AutoTokenizer load it).")
    parser.add_argument("--from", dest="run_dir", required=True, metavar="RUN_DIR",
                        help="the run directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--step", type=int, metavar="N", help="checkpoint step (default: latest)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (never a run or its checkpoints)")
    parser.add_argument("--default-language", metavar="CODE",
                        help="language transformers uses without lang_ids (default: the first)")
    args = parser.parse_args(argv)
    try:
        run = export_run(args.run_dir, args.out, args.step, args.default_language, args.overwrite)
    except (UserError, OSError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) else err  # KeyError quotes its text
        print(f"xmod_pretrain export: error: {message}", file=sys.stderr)
        return 1
    print(f"exported {run.path} ({len(run.languages)} languages: {', '.join(run.languages)}) "
          f"to {args.out}")
    return 0
