"""Whole transformers X-MOD folders: written from a model or a run, read as a run's checkpoint.

    config.json          an XmodConfig: the run's languages in module order, default_language
    model.safetensors    every weight under transformers' name, fp32, each tied tensor once
    tokenizer.json, sentencepiece.bpe.model, tokenizer_config.json, special_tokens_map.json

``transformers.AutoModelForMaskedLM`` and ``AutoTokenizer`` load such a folder as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from xmod_core.atomic import atomic_path, follow_umask, write_text
from xmod_core.outputs import CHECKPOINTS, new_output_dir
from xmod_pretrain.checkpoint.layout import WEIGHTS
from xmod_pretrain.config import Config
from xmod_pretrain.interop.config import HF_CONFIG, hf_config, model_config_from_hf
from xmod_pretrain.interop.tokenizer import hf_tokenizer_file, write_tokenizer_files
from xmod_pretrain.interop.weights import (
    NOT_WEIGHTS,
    drop_tied_copies,
    model_weights,
    read_hf_weights,
    run_weights,
)
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM
from xmod_pretrain.runs.records import RunCheckpoint, open_run


def write_folder(weights: Mapping[str, torch.Tensor], cfg: ModelConfig,
                  tokenizer_path: str | Path, out_dir: str | Path,
                  default_language: str | None, head: Mapping | None = None) -> None:
    """Write config.json, model.safetensors and the tokenizer files into ``out_dir``; ``head``
    adds to (or replaces in) config.json what a model other than the masked LM needs."""
    out_dir = Path(out_dir)
    config = hf_config(cfg, default_language)  # first: an unknown default language writes nothing
    config.update(head or {})
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
    write_folder(model_weights(model), model.config, tokenizer_path, out_dir, default_language)


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
        write_folder(run_weights(run), run.config.model, run.tokenizer, out, default_language)
    return run


def export_classifier(checkpoint: RunCheckpoint, labels: list[str], out_dir: str | Path,
                      default_language: str | None = None, overwrite: bool = False) -> None:
    """A fine-tuned classifier checkpoint (recipes/transfer.py) as a transformers folder that
    ``AutoModelForSequenceClassification`` loads: ``roberta.*`` and ``classifier.*`` weights,
    the labels as ``id2label``."""
    head = {"architectures": ["XmodForSequenceClassification"], "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
            "classifier_dropout": checkpoint.config.transfer.classifier_dropout,
            "problem_type": "single_label_classification"}
    with new_output_dir(out_dir, overwrite) as out:
        write_folder(checkpoint.weights(), checkpoint.config.model, checkpoint.tokenizer, out,
                     default_language, head)


class HFCheckpoint(RunCheckpoint):
    """A transformers X-MOD folder seen as a run's checkpoint, so add-language can grow it."""

    def weights(self) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in read_hf_weights(self.path).items() if not k.startswith(NOT_WEIGHTS)}
        drop_tied_copies(state, self.path)
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
    return (Path(path) / HF_CONFIG).is_file() and not (Path(path) / CHECKPOINTS).exists()
