"""Pre-training: a fresh model (or every weight of a transformers folder, ``init_from``) trained
on every language of the prepared data, each language through its own modules (or, with
``data.shared_module``, all through one module set: the baseline X-MOD is compared with)."""

from __future__ import annotations

import dataclasses

from omegaconf import OmegaConf

from xmod_core.languages import check_language_code, check_language_list
from xmod_core.shards import read_manifest
from xmod_pretrain.config import Config
from xmod_pretrain.data.prepared import ensure_prepared
from xmod_pretrain.interop import hf_tokenizer_file, load_hf_weights, model_config_from_hf
from xmod_pretrain.model.config import ModelConfig
from xmod_pretrain.model.xmod import XmodForMaskedLM, count_parameters
from xmod_pretrain.recipes.base import Recipe, train_and_valid
from xmod_pretrain.schema import ConfigError


class Pretrain(Recipe):
    manifest: dict

    @classmethod
    def dry_run(cls, cfg: Config) -> None:
        """Print the resolved config and the model's size without data, processes or memory."""
        model_cfg = cfg.model
        if model_cfg.vocab_size is None or not model_cfg.languages:
            model_cfg = resolve_model_config(cfg, read_manifest(cfg.data.dir))
        total, active = count_parameters(model_cfg)
        print(OmegaConf.to_yaml(OmegaConf.structured(dataclasses.replace(cfg, model=model_cfg))))
        per_module = (total - active) / max(len(model_cfg.languages) - 1, 1)
        print(f"parameters: {total / 1e6:.1f}M in all, {active / 1e6:.1f}M active per language "
              f"({len(model_cfg.languages)} languages, {per_module / 1e6:.2f}M per language "
              "module set)")

    def prepare(self) -> Config:
        cfg, data = self.cfg, self.cfg.data
        tokenizer = hf_tokenizer_file(cfg.init_from) if cfg.init_from else None
        self.manifest = ensure_prepared(
            data.dir, data.source, info=self.info, tokenizer=tokenizer,
            vocab_size=data.vocab_size, valid_fraction=data.valid_fraction,
            workers=data.prepare_workers, run_dir=cfg.run_dir)
        if cfg.init_from:  # its architecture and language order replace model
            cfg = dataclasses.replace(cfg, model=model_config_from_hf(cfg.init_from))
        return dataclasses.replace(cfg, model=resolve_model_config(cfg, self.manifest))

    def build_data(self, cfg: Config):
        return train_and_valid(cfg, self.info, self.manifest)

    def build_model(self, cfg: Config) -> XmodForMaskedLM:
        model = XmodForMaskedLM(cfg.model)
        if cfg.init_from:
            load_hf_weights(model, cfg.init_from)
            if self.info.is_main:
                print(f"initialised every weight from {cfg.init_from}", flush=True)
        return model


def resolve_model_config(cfg: Config, manifest: dict) -> ModelConfig:
    """Fill the model's vocabulary size and languages from the data where the config leaves them."""
    vocab = manifest["tokenizer"]["vocab_size"]
    model = cfg.model
    if model.vocab_size is not None and model.vocab_size != vocab:
        raise ConfigError(f"model.vocab_size={model.vocab_size} but the tokenizer in "
                          f"{cfg.data.dir} has {vocab} ids: the model config and the data do not "
                          "belong together. An experiment sets both (+exp=demo for the demo's "
                          "data, +exp=base for XLM-R's tokenizer); model.vocab_size=null takes "
                          "the size from the data")
    languages = model.languages or list(manifest["languages"])
    shared = cfg.data.shared_module
    if shared is not None:  # the shared baseline: one module set, named by a language code
        check_language_code(shared, "data.shared_module")
        if model.languages not in ([], [shared]):
            raise ConfigError(f"data.shared_module={shared} runs every language through one "
                              f"module set, but model.languages lists {model.languages}")
        languages = [shared]
    return dataclasses.replace(model, vocab_size=vocab,
                               languages=check_language_list(languages, "model.languages"))


RECIPE = Pretrain
