"""What every kind of run hands the Trainer, and the steps a recipe takes to build it.

The launcher (``runs/launch.py``) drives a recipe in a fixed order: the constructor checks the
request against the world (source runs, text, the run directory) and writes nothing; ``prepare``
makes the data on first use and returns the config with the model complete; ``build`` makes the
parts; ``after_training`` reports what the kind of run promises beyond the validation table.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xmod_core.languages import check_language_list, language_index
from xmod_core.shards import TOKENIZER_FILE
from xmod_pretrain.checkpoint.language_files import InheritedFiles
from xmod_pretrain.config import Config
from xmod_pretrain.data.masking import Masker, MicroBatch
from xmod_pretrain.data.sampler import LanguageSampler, validation_batches
from xmod_pretrain.data.shards import ShardSet
from xmod_pretrain.model.xmod import XmodForMaskedLM, model_flops_per_token
from xmod_pretrain.schema import ConfigError
from xmod_pretrain.training.distributed import DistInfo
from xmod_pretrain.training.trainer import RunParts, Trainer


class Recipe:
    """One kind of run; subclasses implement ``prepare``, ``build_data`` and ``build_model``."""

    shared_trains = True  # every shared weight trains (MFU counts their weight gradients)

    def __init__(self, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info

    @classmethod
    def dry_run(cls, cfg: Config) -> None:
        raise ConfigError(f"train.dry_run=true is for pre-training, not recipe={cfg.recipe.value}")

    def prepare(self) -> Config:
        """Data on first use; the config with ``model`` complete (vocabulary, languages)."""
        raise NotImplementedError

    def build(self, cfg: Config) -> RunParts:
        sampler, valid = self.build_data(cfg)
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        return RunParts(model=self.build_model(cfg), sampler=sampler, valid=valid,
                        flops_per_token=self.flops_per_token(cfg), tokenizer=self.tokenizer(cfg),
                        inherited=self.inherited_languages())

    def tokenizer(self, cfg: Config) -> Path:
        """The SentencePiece model of the run: the prepared data's."""
        return Path(cfg.data.dir) / TOKENIZER_FILE

    def flops_per_token(self, cfg: Config) -> float:
        """Training FLOPs of a masked-LM input token (the MLM head on the masked share only)."""
        masked = cfg.data.masking.prob * (cfg.data.seq_len - 2) / cfg.data.seq_len
        return model_flops_per_token(cfg.model, cfg.data.seq_len, masked, self.shared_trains)

    def build_data(self, cfg: Config) -> tuple[LanguageSampler, dict[str, list[MicroBatch]]]:
        raise NotImplementedError

    def build_model(self, cfg: Config) -> XmodForMaskedLM:
        raise NotImplementedError

    def inherited_languages(self) -> InheritedFiles | None:
        """The languages the built model holds exactly as another run's checkpoint does."""
        return None

    def after_training(self, trainer: Trainer) -> None:
        """Reports beyond the final validation, once training reached ``max_steps``."""


def train_and_valid(cfg: Config, info: DistInfo, manifest: dict) -> tuple[LanguageSampler, dict]:
    """The train sampler and validation batches over ``cfg.data``'s languages (all of the
    manifest when it names none), each through its own modules or the shared module set."""
    data = cfg.data
    langs = check_language_list(data.languages or list(manifest["languages"]), "data.languages")
    languages = cfg.model.languages
    lang_ids = [language_index(languages, data.shared_module or lang) for lang in langs]
    masker = Masker(data.masking, cfg.model.vocab_size)
    train = ShardSet(data.dir, "train", langs, data.verify_shards)
    sampler = LanguageSampler(train, data, masker, cfg.train.micro_batch_size, cfg.train.seed,
                              lang_ids)
    return sampler, valid_sets(cfg, data.dir, langs, masker)


def valid_sets(cfg: Config, data_dir: str, langs: list[str], masker: Masker) -> dict:
    """Fixed validation micro-batches of ``langs`` in ``data_dir``, by language."""
    train, modules = cfg.train, cfg.data.shared_module  # None: each language through its own
    valid = ShardSet(data_dir, "valid", langs, cfg.data.verify_shards)
    return {lang: validation_batches(valid, d, language_index(cfg.model.languages, modules or lang),
                                     masker, train.micro_batch_size, cfg.data.seq_len,
                                     train.eval_batches, train.seed)
            for d, lang in enumerate(langs)}
